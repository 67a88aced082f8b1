/* Port of mlx-lm mlx_lm/models/cache.py `KVCache` (update_and_fetch growth
 * in steps of 256, trim) at ml-explore/mlx-lm@d78bf58e217c904ec282ed8da9b947491f78c022. */
#include "kv_cache.h"

#include <stdio.h>
#include <string.h>

void nmlx_kv_cache_init(nmlx_kv_cache *c, int64_t kv_heads, int64_t head_dim,
                        int64_t max_capacity) {
    memset(c, 0, sizeof *c);
    c->kv_heads = kv_heads;
    c->head_dim = head_dim;
    c->max_capacity = max_capacity;
}

void nmlx_kv_cache_free(nmlx_kv_cache *c, nmlx_backend *be) {
    void *bufs[] = {c->keys, c->values, c->keys16, c->values16};
    nmlx_backend_free_bufs(be, bufs, sizeof bufs / sizeof bufs[0]);
    c->keys = c->values = NULL;
    c->keys16 = c->values16 = NULL;
    c->capacity = c->offset = 0;
}

/* Copies the first `rows` positions of every head from a buffer of capacity
 * old_cap into one of capacity new_cap (mlx-lm concatenates along axis 2);
 * es = bytes per element. */
static void copy_heads(nmlx_backend *be, char *dst, const char *src, int64_t heads, int64_t new_cap,
                       int64_t old_cap, int64_t rows, int64_t hd, size_t es) {
    for (int64_t h = 0; h < heads; h++)
        be->ops->copy(be, dst + (size_t)(h * new_cap * hd) * es,
                      src + (size_t)(h * old_cap * hd) * es, (size_t)(rows * hd) * es);
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
    bool half = c->dtype != NMLX_DT_F32;
    size_t es = half ? sizeof(uint16_t) : sizeof(float);
    size_t bytes = (size_t)(c->kv_heads * cap * c->head_dim) * es;
    void *k = be->ops->alloc(be, bytes);
    void *v = be->ops->alloc(be, bytes);
    if (!k || !v) {
        if (k) be->ops->free(be, k);
        if (v) be->ops->free(be, v);
        char what[96];
        snprintf(what, sizeof what, "KV cache of %lld positions", (long long)cap);
        return nmlx_backend_fail_alloc(be, 2 * bytes, what);
    }
    void *old_k = half ? (void *)c->keys16 : (void *)c->keys;
    void *old_v = half ? (void *)c->values16 : (void *)c->values;
    if (old_k) {
        copy_heads(be, k, old_k, c->kv_heads, cap, c->capacity, c->offset, c->head_dim, es);
        copy_heads(be, v, old_v, c->kv_heads, cap, c->capacity, c->offset, c->head_dim, es);
        be->ops->free(be, old_k);
        be->ops->free(be, old_v);
    }
    if (half)
        c->keys16 = k, c->values16 = v;
    else
        c->keys = k, c->values = v;
    c->capacity = cap;
    return NMLX_OK;
}

/* Rounds n floats to the cache's half dtype (host memory: half-precision
 * caches exist on host backends only). F16 saturates at +-65504 rather than
 * overflowing to infinity (which would turn attention into NaN). */
static void store_half(nmlx_dtype dt, uint16_t *dst, const float *src, int64_t n) {
    if (dt == NMLX_DT_BF16) {
        for (int64_t i = 0; i < n; i++)
            dst[i] = nmlx_f32_to_bf16(src[i]);
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        float x = src[i];
        x = x > 65504.0f ? 65504.0f : x < -65504.0f ? -65504.0f : x;
        dst[i] = nmlx_f32_to_f16(x);
    }
}

void nmlx_kv_cache_append(nmlx_kv_cache *c, nmlx_backend *be, const float *k, const float *v,
                          int64_t T) {
    int64_t hd = c->head_dim, kvh = c->kv_heads;
    if (c->dtype != NMLX_DT_F32) {
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < kvh; h++) {
                int64_t dst = (h * c->capacity + c->offset + t) * hd;
                int64_t src = (t * kvh + h) * hd;
                store_half(c->dtype, c->keys16 + dst, k + src, hd);
                store_half(c->dtype, c->values16 + dst, v + src, hd);
            }
        c->offset += T;
        return;
    }
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
