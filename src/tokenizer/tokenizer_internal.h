/* Internal structures of the tokenizer (HuggingFace tokenizer.json).
 *
 * The pipeline follows the reference library stage by stage, but keeps only
 * what ids need (no offsets): added-token split -> normalizers -> added-token
 * split on normalized text -> pre-tokenizers -> BPE -> post-processor.
 * Sequences of components are flattened into arrays at load time. */
#ifndef NMLX_TOKENIZER_INTERNAL_H
#define NMLX_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include "common.h"

#include <pcre2.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* ---- growable byte buffer ---------------------------------------------- */
typedef struct tok_buf {
    char *p;
    size_t len, cap;
} tok_buf;
nmlx_status tok_buf_reserve(tok_buf *b, size_t extra);
nmlx_status tok_buf_append(tok_buf *b, const void *s, size_t n);
void tok_buf_free(tok_buf *b);

/* Room for one more element in the array *v of n used (*cap allocated,
 * elem bytes each): full, it doubles, from `first` when empty. False if out
 * of memory (*v and *cap unchanged; the caller names what failed). */
bool tok_grow(void **v, size_t n, size_t *cap, size_t elem, size_t first);

/* ---- string -> int32 hash map (keys owned elsewhere) -------------------- */
typedef struct tok_map_slot {
    const char *s;
    uint32_t len;
    uint32_t hash;
    int32_t value;
} tok_map_slot;
typedef struct tok_map {
    tok_map_slot *slots; /* s == NULL: empty */
    size_t cap, n;       /* cap is a power of two */
} tok_map;
uint32_t tok_hash(const char *s, size_t n);
nmlx_status tok_map_init(tok_map *m, size_t expected);
/* Inserts or overwrites. */
nmlx_status tok_map_put(tok_map *m, const char *s, size_t n, int32_t value);
/* -1 if absent. */
int32_t tok_map_get(const tok_map *m, const char *s, size_t n);
void tok_map_clear(tok_map *m);
void tok_map_free(tok_map *m);

/* ---- (id, id) -> (rank, new id) map for merges ------------------------- */
typedef struct tok_pair_slot {
    uint64_t key;
    uint32_t rank; /* UINT32_MAX: empty */
    int32_t new_id;
} tok_pair_slot;
typedef struct tok_pair_map {
    tok_pair_slot *slots;
    size_t cap, n;
} tok_pair_map;
nmlx_status tok_pair_map_init(tok_pair_map *m, size_t expected);
void tok_pair_map_put(tok_pair_map *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id);
/* NULL if absent. */
static inline const tok_pair_slot *tok_pair_map_get(const tok_pair_map *m, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    size_t mask = m->cap - 1, i = (size_t)(h >> 32) & mask;
    for (;;) {
        const tok_pair_slot *s = &m->slots[i];
        if (s->rank == UINT32_MAX) return NULL;
        if (s->key == key) return s;
        i = (i + 1) & mask;
    }
}
void tok_pair_map_free(tok_pair_map *m);

/* ---- patterns (regex or literal) ---------------------------------------- */
typedef struct tok_pattern {
    pcre2_code *re; /* regex, or NULL for a literal */
    char *literal;  /* literal string (String patterns) */
    size_t literal_len;
} tok_pattern;
nmlx_status tok_pattern_compile(tok_pattern *p, const char *src, size_t len, int is_regex,
                                const char *what);
void tok_pattern_free(tok_pattern *p);

/* Per-call regex state: match data and a JIT stack grown on demand. */
typedef struct tok_match_ctx {
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *stack;
} tok_match_ctx;
void tok_match_ctx_free(tok_match_ctx *c);

/* One match event: [start, end) and whether it is a match (else a gap). */
typedef struct tok_span {
    uint32_t start, end;
    int is_match;
} tok_span;
typedef struct tok_spans {
    tok_span *v;
    size_t n, cap;
} tok_spans;
nmlx_status tok_spans_push(tok_spans *s, uint32_t start, uint32_t end, int is_match);
/* Appends to `out` the events of `pat` over s[0..n) the way the reference's
 * find_matches does (gaps and matches covering the string; an empty string
 * gives one empty gap). */
nmlx_status tok_pattern_find(const tok_pattern *pat, tok_match_ctx *mc, const char *s, size_t n,
                             tok_spans *out);

/* ---- components ---------------------------------------------------------- */
typedef enum norm_kind {
    NORM_NFC,
    NORM_NFD,
    NORM_NFKC,
    NORM_NFKD,
    NORM_REPLACE,
    NORM_PREPEND,
    NORM_LOWERCASE,
    NORM_STRIP
} norm_kind;
typedef struct tok_normalizer {
    norm_kind kind;
    tok_pattern pat; /* Replace */
    char *content;   /* Replace content / Prepend string */
    size_t content_len;
    int left, right; /* Strip */
} tok_normalizer;

typedef enum split_behavior {
    SPLIT_REMOVED,
    SPLIT_ISOLATED,
    SPLIT_MERGED_PREV,
    SPLIT_MERGED_NEXT,
    SPLIT_CONTIGUOUS
} split_behavior;

typedef enum pretok_kind {
    PT_SPLIT,
    PT_BYTELEVEL,
    PT_METASPACE,
    PT_DIGITS,
    PT_PUNCTUATION,
    PT_WHITESPACE,
    PT_WHITESPACE_SPLIT
} pretok_kind;
enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };
typedef struct tok_pretok {
    pretok_kind kind;
    tok_pattern pat; /* Split, Whitespace, ByteLevel's regex */
    split_behavior behavior;
    int invert;
    int add_prefix_space, use_regex; /* ByteLevel */
    char rep[5];                     /* Metaspace replacement (UTF-8) */
    int rep_len;
    int prepend_scheme, split; /* Metaspace */
    int individual_digits;     /* Digits */
} tok_pretok;

typedef enum dec_kind {
    DEC_BYTELEVEL,
    DEC_BYTEFALLBACK,
    DEC_METASPACE,
    DEC_REPLACE,
    DEC_FUSE,
    DEC_STRIP
} dec_kind;
typedef struct tok_decoder {
    dec_kind kind;
    tok_pattern pat; /* Replace */
    char *content;
    size_t content_len;
    char rep[5]; /* Metaspace replacement, Strip content */
    int rep_len;
    int prepend_scheme; /* Metaspace */
    int start, stop;    /* Strip */
} tok_decoder;

typedef struct tok_added {
    char *content;
    uint32_t len;
    int32_t id;
    uint8_t special, lstrip, rstrip, single_word, normalized;
    char *norm; /* normalized content (normalized tokens) */
    uint32_t norm_len;
} tok_added;

/* Byte trie of added tokens for leftmost-longest matching. */
typedef struct tok_trie_node {
    int32_t child;   /* first child, -1 none */
    int32_t sibling; /* next sibling, -1 none */
    int32_t added;   /* index into tok->added of a token ending here, -1 none */
    uint8_t byte;
} tok_trie_node;
typedef struct tok_trie {
    tok_trie_node *nodes;
    size_t n, cap;
    uint8_t first_byte[256]; /* 1 if some token starts with this byte */
} tok_trie;

/* A small cache of words already split into ids (keys in the model's key
 * space). Fixed pools; cleared when full. Used by one encode call at a time
 * (trylock); a call that cannot take it runs without a cache. */
typedef struct tok_cache {
    pthread_mutex_t lock;
    tok_map map; /* word -> offset in ids (ids[off] = count, then ids) */
    char *keys;
    size_t keys_len, keys_cap;
    int32_t *ids;
    size_t ids_len, ids_cap;
    int ready;
} tok_cache;

typedef struct tok_bpe {
    tok_map vocab;     /* token string -> id */
    tok_map raw_vocab; /* byte mode: raw bytes of the token -> id */
    char *raw_pool;
    tok_pair_map merges;
    int byte_mode; /* the last pre-tokenizer is ByteLevel: work on raw bytes */
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t unk_id;
    char *prefix, *suffix; /* continuing_subword_prefix, end_of_word_suffix */
    size_t prefix_len, suffix_len;
    int32_t byte_ids[256];     /* byte mode: id of each single byte */
    int32_t fallback_ids[256]; /* byte_fallback: id of <0xXX> */
    int32_t ascii_ids[128];    /* char mode: id of each ASCII char */
} tok_bpe;

struct nmlx_tokenizer {
    /* id -> token string (model vocab and added tokens) */
    char *pool;
    uint32_t *tok_off, *tok_len; /* tok_len UINT32_MAX: no token */
    uint8_t *special;            /* per id */
    int32_t n_ids;               /* max id + 1 */

    tok_bpe bpe;
    tok_normalizer *norms;
    size_t n_norms;
    tok_pretok *pretoks;
    size_t n_pretoks;
    tok_decoder *decs;
    size_t n_decs;
    int has_decoder;
    int has_byte_fallback_decoder;
    /* A Strip decoder removing more than one leading or any trailing char
     * makes a decode not extend the decode of its prefix: the streaming
     * detokenizer then holds everything until the flush. */
    int stream_hold_all;
    /* post-processor, compiled to prefix + A + suffix */
    int32_t *post_prefix, *post_suffix;
    size_t n_post_prefix, n_post_suffix;

    tok_added *added;
    size_t n_added;
    tok_map added_map; /* content -> id */
    tok_trie trie_raw, trie_norm;
    int has_raw_added, has_norm_added;

    int32_t bos_id, eos_id;
    tok_cache cache;
};

/* ---- stages ------------------------------------------------------------- */

/* A piece of text in an arena: [off, off+len), already a token if id >= 0. */
typedef struct tok_piece {
    uint32_t off, len;
    int32_t id;
    uint8_t at_start; /* starts at offset 0 of the original text */
} tok_piece;
typedef struct tok_pieces {
    tok_piece *v;
    size_t n, cap;
} tok_pieces;
nmlx_status tok_pieces_push(tok_pieces *p, uint32_t off, uint32_t len, int32_t id, int at_start);

/* Scratch of one encode call. */
typedef struct tok_work {
    tok_buf arena;
    tok_pieces a, b;
    tok_spans spans, spans2;
    tok_match_ctx mc;
    tok_buf tmp, tmp2;
    int32_t *ids;
    size_t n_ids, cap_ids;
    /* BPE scratch */
    void *sym;
    size_t sym_cap;
    void *heap;
    size_t heap_cap;
    tok_cache *cache; /* held cache or NULL */
} tok_work;
nmlx_status tok_work_push_id(tok_work *w, int32_t id);

/* Applies the normalizer chain to s[0..n), appending the result to `out`. */
nmlx_status tok_normalize(const nmlx_tokenizer *tok, tok_work *w, const char *s, size_t n,
                          tok_buf *out);
/* Runs the pre-tokenizers: w->a (pieces) -> w->a. */
nmlx_status tok_pretokenize(const nmlx_tokenizer *tok, tok_work *w);
/* BPE of one word (in the model's key space), appending ids to w. */
nmlx_status tok_bpe_word(const nmlx_tokenizer *tok, tok_work *w, const char *s, size_t n);
/* Splits w->a on added tokens of `trie` (normalized: the normalized set). */
nmlx_status tok_split_added(const nmlx_tokenizer *tok, tok_work *w, int normalized);
void tok_work_free(tok_work *w);

nmlx_status tok_cache_init(tok_cache *c);
void tok_cache_free(tok_cache *c);

/* Trie. */
nmlx_status tok_trie_add(tok_trie *t, const char *s, size_t n, int32_t added_index);
void tok_trie_free(tok_trie *t);

/* ---- unicode helpers (tok_unicode.c) ------------------------------------ */
/* Decodes one code point of valid UTF-8 at s (n > 0 bytes left); *len gets
 * its byte length. */
uint32_t tok_utf8_decode(const char *s, size_t n, int *len);
int tok_utf8_encode(uint32_t cp, char *out); /* returns bytes written */
static inline int tok_utf8_len(unsigned char c) {
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}
/* Copies s[0..n) to out replacing each maximal invalid subsequence with
 * U+FFFD (WHATWG / JS TextDecoder / Rust from_utf8_lossy rule). */
nmlx_status tok_utf8_repair(const char *s, size_t n, tok_buf *out);
int tok_utf8_valid(const char *s, size_t n);
int tok_is_whitespace(uint32_t cp); /* White_Space property */
int tok_is_word(uint32_t cp);       /* regex \w (Unicode) */
int tok_is_numeric(uint32_t cp);    /* N* categories */
int tok_is_punctuation(uint32_t cp);

/* Byte-level alphabet: byte -> code point and back (-1 if not in it). */
uint32_t tok_byte_to_cp(uint8_t b);
int tok_cp_to_byte(uint32_t cp);

/* ---- decode (tok_decode.c) ---------------------------------------------- */
nmlx_status tok_decode_ids(const nmlx_tokenizer *tok, const int32_t *ids, size_t n,
                           int skip_special, tok_buf *out);

#endif
