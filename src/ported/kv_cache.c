/* Port of mlx-lm mlx_lm/models/cache.py `KVCache` (update_and_fetch growth
 * in steps of 256, trim) at ml-explore/mlx-lm@d78bf58e217c904ec282ed8da9b947491f78c022. */
#include "kv_cache.h"

#include <string.h>

void nmlx_kv_cache_init(nmlx_kv_cache *c, int64_t kv_heads, int64_t head_dim,
                        int64_t max_capacity) {
    memset(c, 0, sizeof *c);
    c->kv_heads = kv_heads;
    c->head_dim = head_dim;
    c->max_capacity = max_capacity;
}

void nmlx_kv_cache_free(nmlx_kv_cache *c, nmlx_backend *be) {
    if (c->keys) be->ops->free(be, c->keys);
    if (c->values) be->ops->free(be, c->values);
    c->keys = c->values = NULL;
    c->capacity = c->offset = 0;
}

/* Copies the first `rows` positions of every head from a buffer of capacity
 * old_cap into one of capacity new_cap (mlx-lm concatenates along axis 2). */
static void copy_heads(nmlx_backend *be, float *dst, const float *src, int64_t heads,
                       int64_t new_cap, int64_t old_cap, int64_t rows, int64_t hd) {
    for (int64_t h = 0; h < heads; h++)
        be->ops->copy(be, dst + h * new_cap * hd, src + h * old_cap * hd,
                      (size_t)(rows * hd) * sizeof(float));
}

nmlx_status nmlx_kv_cache_reserve(nmlx_kv_cache *c, nmlx_backend *be, int64_t n) {
    if (c->offset + n > c->max_capacity)
        return nmlx_fail(NMLX_ERR_CONTEXT_OVERFLOW,
                         "context overflow: %lld tokens held + %lld new > context length %lld",
                         (long long)c->offset, (long long)n, (long long)c->max_capacity);
    if (c->offset + n <= c->capacity) return NMLX_OK;
    int64_t steps = (c->offset + n + NMLX_KV_STEP - 1) / NMLX_KV_STEP;
    int64_t cap = steps * NMLX_KV_STEP;
    if (cap > c->max_capacity) cap = c->max_capacity;
    size_t bytes = (size_t)(c->kv_heads * cap * c->head_dim) * sizeof(float);
    float *k = be->ops->alloc(be, bytes);
    float *v = be->ops->alloc(be, bytes);
    if (!k || !v) {
        if (k) be->ops->free(be, k);
        if (v) be->ops->free(be, v);
        return nmlx_fail(NMLX_ERR_NOMEM, "KV cache: cannot allocate %zu bytes for %lld positions",
                         2 * bytes, (long long)cap);
    }
    if (c->keys) {
        copy_heads(be, k, c->keys, c->kv_heads, cap, c->capacity, c->offset, c->head_dim);
        copy_heads(be, v, c->values, c->kv_heads, cap, c->capacity, c->offset, c->head_dim);
        be->ops->free(be, c->keys);
        be->ops->free(be, c->values);
    }
    c->keys = k;
    c->values = v;
    c->capacity = cap;
    return NMLX_OK;
}

void nmlx_kv_cache_append(nmlx_kv_cache *c, nmlx_backend *be, const float *k,
                          const float *v, int64_t T) {
    int64_t hd = c->head_dim, kvh = c->kv_heads;
    size_t row = (size_t)hd * sizeof(float);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < kvh; h++) {
            int64_t dst = (h * c->capacity + c->offset + t) * hd;
            int64_t src = (t * kvh + h) * hd;
            be->ops->copy(be, c->keys + dst, k + src, row);
            be->ops->copy(be, c->values + dst, v + src, row);
        }
    c->offset += T;
}

int64_t nmlx_kv_cache_trim(nmlx_kv_cache *c, int64_t n) {
    if (n > c->offset) n = c->offset;
    if (n < 0) n = 0;
    c->offset -= n;
    return n;
}
