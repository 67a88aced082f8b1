/* KV cache of a sliding-window attention layer: keeps at most max_size
 * positions (plus the tokens of the call in flight), overwriting the oldest.
 * Port of mlx-lm mlx_lm/models/cache.py `RotatingKVCache` at
 * ml-explore/mlx-lm@d78bf58e217c904ec282ed8da9b947491f78c022:
 *  - one token (decode): written in place at a rotating index; the first
 *    `keep` positions are never overwritten;
 *  - several tokens (prefill): the buffer is put back in temporal order,
 *    trimmed to the last max_size - 1 positions (plus `keep`), and the new
 *    tokens appended, so every new token sees a full window.
 * Unlike mlx-lm the buffers are allocated once at init for the largest call
 * (max_size - 1 + max_tokens rows), so nothing allocates while decoding. */
#ifndef NMLX_PORTED_ROTATING_KV_CACHE_H
#define NMLX_PORTED_ROTATING_KV_CACHE_H

#include "common.h"
#include "compute/backend.h"

typedef struct nmlx_rotating_kv_cache {
    float *keys, *values; /* [kv_heads, cap, head_dim], backend buffers */
    float *scratch;       /* [cap, head_dim]: reordering one head */
    int64_t kv_heads, head_dim, cap;
    int64_t max_size, keep;
    int64_t max_tokens;  /* largest T of one update */
    int64_t max_context; /* positions a session may hold in all */
    int64_t offset;      /* tokens seen: position of the next token */
    int64_t idx;         /* mlx-lm `_idx`: next write row */
    int64_t size;        /* rows in use (mlx-lm keys.shape[2]); 0 = empty */
} nmlx_rotating_kv_cache;

/* What attention reads after an update: rows [0, n_kv) of keys/values;
 * query t sits at row q_row + t and sees rows j <= q_row + t (and
 * j > q_row + t - window when window > 0). */
typedef struct nmlx_kv_view {
    const float *keys, *values;
    int64_t cap, n_kv, q_row, window;
    nmlx_dtype dtype;                   /* F32: keys/values; F16/BF16: keys16/values16 */
    const uint16_t *keys16, *values16;
} nmlx_kv_view;

nmlx_status nmlx_rotating_kv_cache_init(nmlx_rotating_kv_cache *c, nmlx_backend *be,
                                        int64_t kv_heads, int64_t head_dim, int64_t max_size,
                                        int64_t keep, int64_t max_tokens, int64_t max_context);
void nmlx_rotating_kv_cache_free(nmlx_rotating_kv_cache *c, nmlx_backend *be);
/* Context check for n more tokens (the buffers never grow). */
nmlx_status nmlx_rotating_kv_cache_reserve(const nmlx_rotating_kv_cache *c, int64_t n);
/* update_and_fetch: stores k, v [T, kv_heads, head_dim] (T <= max_tokens). */
void nmlx_rotating_kv_cache_update(nmlx_rotating_kv_cache *c, nmlx_backend *be, const float *k,
                                   const float *v, int64_t T, nmlx_kv_view *view);
/* mlx-lm trim(): moves offset and index back by n (clamped); exact while
 * fewer than max_size positions were overwritten since. n >= offset
 * empties the cache. Returns how many were dropped. */
int64_t nmlx_rotating_kv_cache_trim(nmlx_rotating_kv_cache *c, int64_t n);

#endif
