/* A small read-only JSON DOM for tokenizer.json.
 *
 * Why not jansson: a 10-30 MB tokenizer.json takes jansson 0.4-2.4 s (each
 * object is a hash table, each string a separate allocation), slower than the
 * HuggingFace loader we must beat. This parser decodes strings in place in one
 * copy of the file and keeps nodes in one array; objects are plain member
 * lists, which is all the loader needs (it walks them in order). */
#ifndef NMLX_TOK_JSON_H
#define NMLX_TOK_JSON_H

#include "common.h"

#include <stddef.h>
#include <stdint.h>

typedef enum tj_type {
    TJ_NULL,
    TJ_FALSE,
    TJ_TRUE,
    TJ_NUMBER,
    TJ_STRING,
    TJ_ARRAY,
    TJ_OBJECT
} tj_type;

typedef struct tj_node {
    const char *key;  /* member name inside an object, else NULL */
    const char *str;  /* TJ_STRING: decoded UTF-8, NUL-terminated */
    double num;       /* TJ_NUMBER */
    uint32_t key_len; /* bytes of key */
    uint32_t len;     /* TJ_STRING: bytes; TJ_ARRAY/TJ_OBJECT: children */
    uint32_t first;   /* first child index (0 = none) */
    uint32_t next;    /* next sibling index (0 = none) */
    uint8_t type;
} tj_node;

typedef struct tj_doc {
    char *buf;      /* the file, strings decoded in place */
    tj_node *nodes; /* nodes[0] is the root */
    size_t n_nodes, cap_nodes;
} tj_doc;

/* Parses `len` bytes of `text` (copied). `what` names the file in errors. */
nmlx_status tj_parse(const char *text, size_t len, const char *what, tj_doc *doc);
void tj_free(tj_doc *doc);

static inline const tj_node *tj_root(const tj_doc *d) { return &d->nodes[0]; }
static inline const tj_node *tj_first(const tj_doc *d, const tj_node *n) {
    return n->first ? &d->nodes[n->first] : NULL;
}
static inline const tj_node *tj_next(const tj_doc *d, const tj_node *n) {
    return n->next ? &d->nodes[n->next] : NULL;
}
/* Member `key` of an object (first match), NULL if absent or not an object. */
const tj_node *tj_get(const tj_doc *d, const tj_node *obj, const char *key);
/* The i-th element of an array (linear walk), NULL if out of range. */
const tj_node *tj_at(const tj_doc *d, const tj_node *arr, size_t i);
/* Helpers: NULL unless the node has that type. */
const char *tj_str(const tj_node *n);
int tj_is_null(const tj_node *n); /* NULL node or JSON null */
/* Boolean member with a default when absent or null; -1 if of another type. */
int tj_bool(const tj_doc *d, const tj_node *obj, const char *key, int dflt);

#endif
