/* A checkpoint rewritten in a test (test_moe_layers, test_moe_quant):
 * tensors collected as safetensors items whose names and data the ckpt
 * keeps, then written with a fixture's config.json (edited) as a model
 * folder. Header-only; include after harness.h. */
#ifndef NMLX_TEST_CKPT_UTIL_H
#define NMLX_TEST_CKPT_UTIL_H

#include "io/safetensors_write.h"

#include <fcntl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    nmlx_st_item items[256];
    size_t n;
    void *keep[256];
    size_t nkeep;
} ckpt;

/* bytes (+1) of zeros, freed by ckpt_free */
static inline void *ckpt_keep(ckpt *c, size_t bytes) {
    return c->keep[c->nkeep++] = calloc(1, bytes + 1);
}

/* a tensor (its name copied, its data not) */
static inline void ckpt_add(ckpt *c, const char *name, nmlx_dtype dt, int ndim,
                            const int64_t *shape, const void *data) {
    nmlx_st_item *it = &c->items[c->n++];
    it->name = strcpy(ckpt_keep(c, strlen(name) + 1), name);
    it->dtype = dt;
    it->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        it->shape[i] = shape[i];
    it->data = data;
}

static inline void ckpt_free(ckpt *c) {
    for (size_t i = 0; i < c->nkeep; i++)
        free(c->keep[i]);
    c->nkeep = c->n = 0;
}

/* dir/model.safetensors from c, and dir/config.json: fixture's with the
 * keys of `edit` (may be NULL) set. */
static inline bool ckpt_write(const ckpt *c, const char *fixture, const char *dir, json_t *edit) {
    char path[4200];
    snprintf(path, sizeof path, "mkdir -p %s", dir);
    if (system(path) != 0) return false;
    snprintf(path, sizeof path, "%s/config.json", fixture);
    json_t *cfg = json_load_file(path, 0, NULL);
    if (edit) json_object_update(cfg, edit);
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_dump_file(cfg, path, JSON_INDENT(1));
    json_decref(cfg);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    bool ok = fd >= 0 && nmlx_st_write_fd(fd, path, c->items, c->n) == NMLX_OK;
    if (fd >= 0) close(fd);
    return ok;
}

#endif
