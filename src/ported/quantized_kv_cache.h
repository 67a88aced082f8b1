/* Quantized KV cache of one attention layer (kv_bits).
 * Port of mlx-lm mlx_lm/models/cache.py `QuantizedKVCache` (and
 * `KVCache.to_quantized`) at
 * ml-explore/mlx-lm@d78bf58e217c904ec282ed8da9b947491f78c022:
 *  - keys and values are stored MLX-affine quantized per position and head
 *    (docs/quantization.md): codes [KVH, capacity, HD*bits/32] (U32) and
 *    scales/biases [KVH, capacity, HD/group_size] in the activation dtype
 *    (f32 here: nmlx computes in f32);
 *  - update: when offset + T exceeds the capacity, unused rows are dropped
 *    (if offset is not a multiple of 256) and ceil(T/256)*256 rows are added;
 *    new rows are quantized as they arrive;
 *  - trim() only moves the offset;
 *  - to_quantized() quantizes a full-precision cache's buffer as it is.
 * mlx-lm attends with quantized matmuls on the codes; nmlx dequantizes the
 * visible rows (nmlx_quantized_kv_cache_dequant) for its float attention,
 * which gives the same values (scale * q + bias) up to summation order.
 * The buffers are host memory (the CPU backend's memory is host memory). */
#ifndef NMLX_PORTED_QUANTIZED_KV_CACHE_H
#define NMLX_PORTED_QUANTIZED_KV_CACHE_H

#include "common.h"
#include "ported/kv_cache.h"

/* mlx-lm generate_step's kv_bits / kv_group_size / quantized_kv_start. */
typedef struct nmlx_kv_quant_params {
    int bits;       /* 0 = off; 2, 3, 4, 5, 6 or 8 */
    int group_size; /* 32, 64 or 128 as mlx-lm; nmlx also takes 8 and 16
                       (tiny head dims); must divide head_dim, and
                       head_dim * bits must be a multiple of 32 */
    int64_t start;  /* convert once the cache holds this many tokens */
} nmlx_kv_quant_params;

typedef struct nmlx_quantized_kv_cache {
    uint32_t *k_codes, *v_codes; /* [KVH, capacity, words] */
    float *k_scales, *k_biases;  /* [KVH, capacity, groups] */
    float *v_scales, *v_biases;
    int64_t kv_heads, head_dim;
    int bits, group_size;
    int64_t words, groups; /* per row: head_dim*bits/32, head_dim/group_size */
    int64_t capacity, offset, max_capacity;
} nmlx_quantized_kv_cache;

/* Checks bits / group size against head_dim (message names the field). */
nmlx_status nmlx_kv_quant_check(const nmlx_kv_quant_params *p, int64_t head_dim);
/* An empty cache (nothing allocated). p must pass nmlx_kv_quant_check. */
void nmlx_quantized_kv_cache_init(nmlx_quantized_kv_cache *c, int64_t kv_heads, int64_t head_dim,
                                  const nmlx_kv_quant_params *p, int64_t max_capacity);
void nmlx_quantized_kv_cache_free(nmlx_quantized_kv_cache *c);
/* update_and_fetch's growth for n more positions (context overflow checked). */
nmlx_status nmlx_quantized_kv_cache_reserve(nmlx_quantized_kv_cache *c, int64_t n);
/* Quantizes k, v [T, KVH, HD] into positions offset..offset+T-1 and advances
 * offset. reserve() must have made room. */
void nmlx_quantized_kv_cache_append(nmlx_quantized_kv_cache *c, const float *k, const float *v,
                                    int64_t T);
/* Writes positions [0, offset) of every head, dequantized, into k, v laid
 * out [KVH, cap, HD] (cap >= offset). */
void nmlx_quantized_kv_cache_dequant(const nmlx_quantized_kv_cache *c, float *k, float *v,
                                     int64_t cap);
/* Drops the last n positions (clamped to offset); returns how many. */
int64_t nmlx_quantized_kv_cache_trim(nmlx_quantized_kv_cache *c, int64_t n);
/* KVCache.to_quantized: a cache `c` (init'ed, empty) holding kv's offset
 * and its whole buffer (capacity rows) quantized. kv is left untouched. */
nmlx_status nmlx_quantized_kv_cache_from(nmlx_quantized_kv_cache *c, const nmlx_kv_cache *kv);
/* Bytes held per position (keys + values, all heads). */
size_t nmlx_quantized_kv_bytes_per_token(const nmlx_quantized_kv_cache *c);

#endif
