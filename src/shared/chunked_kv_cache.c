/* Two-slot chunked KV cache (see chunked_kv_cache.h). */
#include "chunked_kv_cache.h"

#include <assert.h>
#include <string.h>

nmlx_status nmlx_chunked_kv_cache_init(nmlx_chunked_kv_cache *c, nmlx_backend *be, int64_t kv_heads,
                                       int64_t head_dim, int64_t chunk, int64_t max_context) {
    memset(c, 0, sizeof *c);
    if (chunk <= 0 || max_context <= 0 || kv_heads <= 0 || head_dim <= 0)
        return nmlx_fail(NMLX_ERR_INTERNAL, "chunked KV cache: bad sizes (chunk %lld)",
                         (long long)chunk);
    c->kv_heads = kv_heads;
    c->head_dim = head_dim;
    c->chunk = chunk;
    c->max_context = max_context;
    /* positions below max_context: chunk k's rows (slot k % 2) end below it */
    c->cap = chunk < max_context / 2 ? 2 * chunk : max_context;
    size_t bytes = (size_t)(kv_heads * c->cap * head_dim) * sizeof(float);
    c->keys = be->ops->alloc(be, bytes);
    c->values = be->ops->alloc(be, bytes);
    if (!c->keys || !c->values) {
        nmlx_chunked_kv_cache_free(c, be);
        return nmlx_fail(NMLX_ERR_NOMEM, "chunked KV cache: cannot allocate %zu bytes", 2 * bytes);
    }
    return NMLX_OK;
}

void nmlx_chunked_kv_cache_free(nmlx_chunked_kv_cache *c, nmlx_backend *be) {
    if (c->keys) be->ops->free(be, c->keys);
    if (c->values) be->ops->free(be, c->values);
    c->keys = c->values = NULL;
    c->offset = c->lo = 0;
}

nmlx_status nmlx_chunked_kv_cache_reserve(const nmlx_chunked_kv_cache *c, int64_t n) {
    int64_t start = c->offset - c->offset % c->chunk; /* the live chunk's first position */
    if (c->lo > start)
        return nmlx_fail(NMLX_ERR_INVALID_ARG,
                         "the attention chunk cache no longer holds positions %lld..%lld (a trim "
                         "went back past the start of the attention chunk before); reset the "
                         "session or trim to position %lld or earlier",
                         (long long)start, (long long)(c->lo - 1), (long long)start);
    if (c->offset + n > c->max_context)
        return nmlx_fail(NMLX_ERR_CONTEXT_OVERFLOW,
                         "context overflow: %lld tokens held + %lld new > context length %lld",
                         (long long)c->offset, (long long)n, (long long)c->max_context);
    return NMLX_OK;
}

int64_t nmlx_chunked_kv_cache_room(const nmlx_chunked_kv_cache *c) {
    return c->chunk - c->offset % c->chunk;
}

void nmlx_chunked_kv_cache_update(nmlx_chunked_kv_cache *c, nmlx_backend *be, const float *k,
                                  const float *v, int64_t T, nmlx_kv_view *view) {
    assert(T >= 1 && T <= nmlx_chunked_kv_cache_room(c));
    int64_t C = c->chunk, kc = c->offset / C, start = kc * C;
    int64_t slot = (kc % 2) * C, row0 = c->offset - start, hd = c->head_dim, kvh = c->kv_heads;
    assert(slot + row0 + T <= c->cap);
    /* this slot held chunk kc - 2: from now on only chunk kc - 1 is kept */
    if (kc >= 1 && c->lo < start - C) c->lo = start - C;
    size_t row = (size_t)hd * sizeof(float);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < kvh; h++) {
            int64_t dst = (h * c->cap + slot + row0 + t) * hd, src = (t * kvh + h) * hd;
            be->ops->copy(be, c->keys + dst, k + src, row);
            be->ops->copy(be, c->values + dst, v + src, row);
        }
    c->offset += T;
    /* rows of head h at keys + (h * cap + slot + r) * hd: the view starts at the slot */
    *view = (nmlx_kv_view){.keys = c->keys + slot * hd,
                           .values = c->values + slot * hd,
                           .cap = c->cap,
                           .n_kv = c->offset - start,
                           .q_row = row0,
                           .window = 0};
}

int64_t nmlx_chunked_kv_cache_trim(nmlx_chunked_kv_cache *c, int64_t n) {
    if (n > c->offset) n = c->offset;
    if (n <= 0) return 0;
    c->offset -= n;
    if (c->lo > c->offset) c->lo = c->offset; /* nothing before it is held */
    return n;
}
