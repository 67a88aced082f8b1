/* Live-chunk KV cache (see chunked_kv_cache.h). */
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
    c->cap = chunk < max_context ? chunk : max_context;
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
    c->offset = c->start = c->valid = 0;
}

nmlx_status nmlx_chunked_kv_cache_reserve(const nmlx_chunked_kv_cache *c, int64_t n) {
    if (c->valid != c->offset - c->start)
        return nmlx_fail(NMLX_ERR_INVALID_ARG,
                         "the attention chunk cache no longer holds positions %lld..%lld (a trim "
                         "went back past the start of an attention chunk); reset the session or "
                         "trim to position %lld or earlier",
                         (long long)(c->start + c->valid), (long long)(c->offset - 1),
                         (long long)c->start);
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
    if (c->offset % c->chunk == 0) { /* a new chunk: nothing before it is seen again */
        c->start = c->offset;
        c->valid = 0;
    }
    int64_t row0 = c->offset - c->start, hd = c->head_dim, kvh = c->kv_heads;
    assert(row0 + T <= c->cap);
    size_t row = (size_t)hd * sizeof(float);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < kvh; h++) {
            int64_t dst = (h * c->cap + row0 + t) * hd, src = (t * kvh + h) * hd;
            be->ops->copy(be, c->keys + dst, k + src, row);
            be->ops->copy(be, c->values + dst, v + src, row);
        }
    c->offset += T;
    c->valid = c->offset - c->start;
    *view = (nmlx_kv_view){.keys = c->keys,
                           .values = c->values,
                           .cap = c->cap,
                           .n_kv = c->valid,
                           .q_row = row0,
                           .window = 0};
}

int64_t nmlx_chunked_kv_cache_trim(nmlx_chunked_kv_cache *c, int64_t n) {
    if (n > c->offset) n = c->offset;
    if (n <= 0) return 0;
    int64_t to = c->offset - n;
    if (to < c->start) { /* back into an earlier chunk, whose rows are gone */
        c->start = to - to % c->chunk;
        c->valid = 0;
    } else if (c->valid > to - c->start) {
        c->valid = to - c->start;
    }
    c->offset = to;
    return n;
}
