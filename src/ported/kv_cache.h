/* Standard KV cache of one attention layer.
 * Port of mlx-lm mlx_lm/models/cache.py `KVCache` at
 * ml-explore/mlx-lm@d78bf58e217c904ec282ed8da9b947491f78c022: keys/values in
 * layout [KVH, capacity, HD], capacity grown in steps of 256 positions
 * (never shrunk), `offset` = tokens held, trim() only moves the offset. */
#ifndef NMLX_PORTED_KV_CACHE_H
#define NMLX_PORTED_KV_CACHE_H

#include "common.h"
#include "compute/backend.h"

enum { NMLX_KV_STEP = 256 };

typedef struct nmlx_kv_cache {
    float *keys, *values; /* [kv_heads, capacity, head_dim], backend buffers */
    /* Half-precision storage instead (dtype F16 or BF16, set before the first
     * reserve; host backends only): keys16/values16 in the same layout. As
     * mlx-lm, whose cache holds keys in the model's dtype. */
    nmlx_dtype dtype;
    uint16_t *keys16, *values16;
    int64_t kv_heads, head_dim;
    int64_t capacity;     /* positions allocated */
    int64_t offset;       /* positions holding tokens */
    int64_t max_capacity; /* hard cap (the session's context) */
} nmlx_kv_cache;

void nmlx_kv_cache_init(nmlx_kv_cache *c, int64_t kv_heads, int64_t head_dim,
                        int64_t max_capacity);
void nmlx_kv_cache_free(nmlx_kv_cache *c, nmlx_backend *be);
/* Makes room for n more positions (update_and_fetch's growth step). */
nmlx_status nmlx_kv_cache_reserve(nmlx_kv_cache *c, nmlx_backend *be, int64_t n);
/* Writes k, v [T, kv_heads, head_dim] at positions offset..offset+T-1 and
 * advances offset. reserve() must have made room. */
void nmlx_kv_cache_append(nmlx_kv_cache *c, nmlx_backend *be, const float *k,
                          const float *v, int64_t T);
/* Drops the last n positions (clamped to offset); returns how many. */
int64_t nmlx_kv_cache_trim(nmlx_kv_cache *c, int64_t n);

#endif
