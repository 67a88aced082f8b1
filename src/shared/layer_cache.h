/* The KV cache of one attention layer, of the kind the layer needs: the
 * standard growing cache (full attention, or a sliding window applied by
 * mask when the window covers the whole context), or the rotating cache
 * (sliding window shorter than the context).
 *
 * Quantized KV (session kv_bits, nmlx_layer_cache_set_quant): a standard
 * cache is converted to the quantized cache (ported/quantized_kv_cache.h)
 * by reserve() once it holds `start` tokens, i.e. between model calls, as
 * mlx-lm's maybe_quantize_kv_cache does after each call (start 0: from the
 * first token; mlx-lm runs its first call in full precision). Attention then
 * reads the visible rows dequantized into a scratch shared by the session's
 * layers. Rotating caches stay full precision (mlx-lm: "RotatingKVCache
 * Quantization NYI"). The quantized cache lives in host memory: on a device
 * backend each call's new rows are downloaded, quantized on the host, and
 * the dequantized rows uploaded to the scratch (host staging in
 * nmlx_kv_dequant; correct, not fast). */
#ifndef NMLX_LAYER_CACHE_H
#define NMLX_LAYER_CACHE_H

#include "ported/kv_cache.h"
#include "ported/quantized_kv_cache.h"
#include "ported/rotating_kv_cache.h"

/* Dequantized keys/values of one layer at a time, [KVH, cap, HD] each
 * (backend memory, one per session, grown with the caches' capacity). */
typedef struct nmlx_kv_dequant {
    float *k, *v;
    size_t floats; /* allocated per buffer */
    /* device backends only (host memory): the dequantized rows before
     * upload ([floats] each), and one call's downloaded keys then values */
    float *host_k, *host_v, *host_in;
    size_t in_floats;
} nmlx_kv_dequant;

typedef struct nmlx_layer_cache {
    bool rotating;
    int64_t window; /* the layer's window (0 = full): the mask of the standard cache */
    nmlx_kv_cache kv;
    nmlx_rotating_kv_cache rot;
    nmlx_kv_quant_params qp;   /* qp.bits 0 = full precision */
    bool quantized;            /* converted: q holds the tokens, kv is freed */
    nmlx_quantized_kv_cache q;
    nmlx_kv_dequant *deq;      /* the session's scratch (not owned) */
} nmlx_layer_cache;

/* window > 0 and shorter than max_context selects the rotating cache
 * (buffers allocated now for calls of up to max_tokens tokens). */
nmlx_status nmlx_layer_cache_init(nmlx_layer_cache *c, nmlx_backend *be, int64_t kv_heads,
                                  int64_t head_dim, int64_t window, int64_t max_tokens,
                                  int64_t max_context);
void nmlx_layer_cache_free(nmlx_layer_cache *c, nmlx_backend *be);
int64_t nmlx_layer_cache_offset(const nmlx_layer_cache *c);
nmlx_status nmlx_layer_cache_reserve(nmlx_layer_cache *c, nmlx_backend *be, int64_t n);
void nmlx_layer_cache_update(nmlx_layer_cache *c, nmlx_backend *be, const float *k,
                             const float *v, int64_t T, nmlx_kv_view *view);
int64_t nmlx_layer_cache_trim(nmlx_layer_cache *c, int64_t n);

/* The split form of update() for a fused op that writes the new rows itself
 * (backend.h rope_kv). rows(): where the next tokens' rows go (*k, *v
 * [KVH, *cap, HD], token t at row *row0 + t) when the cache stores them
 * there as they come: a standard f32 cache, not (yet) quantized; false for
 * the other kinds (rotating, quantized, half precision: use update()).
 * commit(): after the op wrote T rows, advances the cache and fills view
 * as update() would have. */
bool nmlx_layer_cache_rows(const nmlx_layer_cache *c, float **k, float **v, int64_t *cap,
                           int64_t *row0);
void nmlx_layer_cache_commit(nmlx_layer_cache *c, int64_t T, nmlx_kv_view *view);

/* Asks for quantized KV (p->bits > 0) before the first reserve; `deq` must
 * outlive the cache. A rotating cache ignores it. Fails if p does not fit
 * the layer's head_dim. */
nmlx_status nmlx_layer_cache_set_quant(nmlx_layer_cache *c, const nmlx_kv_quant_params *p,
                                       nmlx_kv_dequant *deq);
/* Stores keys/values of a standard cache in F16 or BF16 (F32 is the
 * default), before the first reserve. Rotating and quantized caches stay as
 * they are. Host backends only (the caller checks). */
void nmlx_layer_cache_set_dtype(nmlx_layer_cache *c, nmlx_dtype dt);
/* Bytes the cache holds for keys and values now (capacity, not offset). */
size_t nmlx_layer_cache_bytes(const nmlx_layer_cache *c);
void nmlx_kv_dequant_free(nmlx_kv_dequant *d, nmlx_backend *be);

#endif
