/* Port of mlx-lm mlx_lm/models/cache.py `RotatingKVCache` (_update_in_place,
 * _update_concat, _temporal_order, _trim, trim) at
 * ml-explore/mlx-lm@d78bf58e217c904ec282ed8da9b947491f78c022. */
#include "rotating_kv_cache.h"

#include <assert.h>

#include <string.h>

enum { ROT_STEP = 256 }; /* mlx-lm's growth step for the in-place path */

nmlx_status nmlx_rotating_kv_cache_init(nmlx_rotating_kv_cache *c, nmlx_backend *be,
                                        int64_t kv_heads, int64_t head_dim, int64_t max_size,
                                        int64_t keep, int64_t max_tokens, int64_t max_context) {
    memset(c, 0, sizeof *c);
    if (max_size <= 0 || keep < 0 || keep >= max_size || max_tokens <= 0)
        return nmlx_fail(NMLX_ERR_INTERNAL, "rotating KV cache: bad sizes (window %lld, keep %lld)",
                         (long long)max_size, (long long)keep);
    c->kv_heads = kv_heads;
    c->head_dim = head_dim;
    c->max_size = max_size;
    c->keep = keep;
    c->max_tokens = max_tokens;
    c->max_context = max_context;
    c->cap = max_size - 1 + max_tokens;
    size_t bytes = (size_t)(kv_heads * c->cap * head_dim) * sizeof(float);
    c->keys = be->ops->alloc(be, bytes);
    c->values = be->ops->alloc(be, bytes);
    c->scratch = be->ops->alloc(be, (size_t)(c->cap * head_dim) * sizeof(float));
    if (!c->keys || !c->values || !c->scratch) {
        nmlx_rotating_kv_cache_free(c, be);
        return nmlx_fail(NMLX_ERR_NOMEM, "rotating KV cache: cannot allocate %zu bytes", 2 * bytes);
    }
    return NMLX_OK;
}

void nmlx_rotating_kv_cache_free(nmlx_rotating_kv_cache *c, nmlx_backend *be) {
    if (c->keys) be->ops->free(be, c->keys);
    if (c->values) be->ops->free(be, c->values);
    if (c->scratch) be->ops->free(be, c->scratch);
    c->keys = c->values = c->scratch = NULL;
    c->offset = c->idx = c->size = 0;
}

nmlx_status nmlx_rotating_kv_cache_reserve(const nmlx_rotating_kv_cache *c, int64_t n) {
    if (c->offset + n > c->max_context)
        return nmlx_fail(NMLX_ERR_CONTEXT_OVERFLOW,
                         "context overflow: %lld tokens held + %lld new > context length %lld",
                         (long long)c->offset, (long long)n, (long long)c->max_context);
    /* n may exceed max_tokens: callers feed the tokens in chunks of at most
     * max_tokens (one update per chunk), so only the context is checked. */
    return NMLX_OK;
}

/* Rebuilds every head of buf from up to three row ranges [a0, a1) taken in
 * order (mlx-lm's concatenate along the sequence axis), through scratch. */
static void gather_rows(nmlx_rotating_kv_cache *c, nmlx_backend *be, float *buf,
                        const int64_t ranges[][2], int n_ranges) {
    int64_t hd = c->head_dim;
    size_t row = (size_t)hd * sizeof(float);
    for (int64_t h = 0; h < c->kv_heads; h++) {
        float *head = buf + h * c->cap * hd;
        int64_t n = 0;
        for (int r = 0; r < n_ranges; r++) {
            int64_t len = ranges[r][1] - ranges[r][0];
            if (len <= 0) continue;
            be->ops->copy(be, c->scratch + n * hd, head + ranges[r][0] * hd, (size_t)len * row);
            n += len;
        }
        if (n) be->ops->copy(be, head, c->scratch, (size_t)n * row);
    }
}

static void gather_both(nmlx_rotating_kv_cache *c, nmlx_backend *be, const int64_t ranges[][2],
                        int n_ranges) {
    gather_rows(c, be, c->keys, ranges, n_ranges);
    gather_rows(c, be, c->values, ranges, n_ranges);
}

/* _trim(trim_size): drops rows keep .. keep + trim_size - 1. */
static void trim_rows(nmlx_rotating_kv_cache *c, nmlx_backend *be, int64_t trim_size) {
    const int64_t r[2][2] = {{0, c->keep}, {trim_size + c->keep, c->size}};
    gather_both(c, be, r, 2);
    c->size -= trim_size;
}

/* _temporal_order: oldest row first, unused rows sliced off. */
static void temporal_order(nmlx_rotating_kv_cache *c, nmlx_backend *be) {
    if (c->idx == c->size) return;
    if (c->idx < c->offset) {
        const int64_t r[3][2] = {{0, c->keep}, {c->idx, c->size}, {c->keep, c->idx}};
        gather_both(c, be, r, 3);
    } else {
        c->size = c->idx;
    }
}

static void write_rows(nmlx_rotating_kv_cache *c, nmlx_backend *be, const float *k,
                       const float *v, int64_t T, int64_t at) {
    int64_t hd = c->head_dim, kvh = c->kv_heads;
    size_t row = (size_t)hd * sizeof(float);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < kvh; h++) {
            int64_t dst = (h * c->cap + at + t) * hd, src = (t * kvh + h) * hd;
            be->ops->copy(be, c->keys + dst, k + src, row);
            be->ops->copy(be, c->values + dst, v + src, row);
        }
}

static void update_concat(nmlx_rotating_kv_cache *c, nmlx_backend *be, const float *k,
                          const float *v, int64_t T, nmlx_kv_view *view) {
    if (c->size > 0) {
        temporal_order(c, be);
        c->idx = c->size;
        /* keep max_size - 1 old rows so every new token sees a full window */
        int64_t trim_size = c->idx - c->max_size + 1;
        if (trim_size > 0) trim_rows(c, be, trim_size);
    } else {
        c->size = 0;
    }
    int64_t old = c->size;
    write_rows(c, be, k, v, T, old);
    c->size += T;
    c->offset += T;
    c->idx = c->size;
    view->n_kv = c->size;
    view->q_row = old;
    view->window = c->max_size;
}

static void update_in_place(nmlx_rotating_kv_cache *c, nmlx_backend *be, const float *k,
                            const float *v, nmlx_kv_view *view) {
    int64_t prev = c->offset;
    if (c->size == 0 || (prev >= c->size && c->size < c->max_size)) {
        /* mlx-lm grows by min(step, max_size - prev); rows are preallocated */
        int64_t grow = c->max_size - c->size;
        c->size += grow < ROT_STEP ? grow : ROT_STEP;
        c->idx = prev < c->size ? prev : c->size;
    }
    int64_t trim_size = c->size - c->max_size;
    if (trim_size > 0) {
        trim_rows(c, be, trim_size);
        c->idx = c->max_size;
    }
    if (c->idx == c->max_size) c->idx = c->keep;
    write_rows(c, be, k, v, 1, c->idx);
    c->offset += 1;
    c->idx += 1;
    /* the one query sees every row held (a full window at most) */
    view->n_kv = c->offset < c->max_size ? c->offset : c->size;
    view->q_row = view->n_kv - 1;
    view->window = 0;
}

void nmlx_rotating_kv_cache_update(nmlx_rotating_kv_cache *c, nmlx_backend *be, const float *k,
                                   const float *v, int64_t T, nmlx_kv_view *view) {
    assert(T <= c->max_tokens); /* the buffers hold max_size - 1 + max_tokens rows */
    *view = (nmlx_kv_view){.dtype = NMLX_DT_F32}; /* f32 rows, no half-precision copy */
    view->keys = c->keys;
    view->values = c->values;
    view->cap = c->cap;
    if (T == 1) update_in_place(c, be, k, v, view);
    else update_concat(c, be, k, v, T, view);
}

int64_t nmlx_rotating_kv_cache_trim(nmlx_rotating_kv_cache *c, int64_t n) {
    if (n > c->offset) n = c->offset;
    if (n < 0) n = 0;
    c->offset -= n;
    c->idx -= n;
    if (c->idx < 0) c->idx = 0;
    if (c->offset == 0) c->idx = c->size = 0;
    return n;
}
