/* The KV cache of one attention layer, of the kind the layer needs: the
 * standard growing cache (full attention, or a sliding window applied by
 * mask when the window covers the whole context), or the rotating cache
 * (sliding window shorter than the context). */
#ifndef NMLX_LAYER_CACHE_H
#define NMLX_LAYER_CACHE_H

#include "ported/kv_cache.h"
#include "ported/rotating_kv_cache.h"

typedef struct nmlx_layer_cache {
    bool rotating;
    int64_t window; /* the layer's window (0 = full): the mask of the standard cache */
    nmlx_kv_cache kv;
    nmlx_rotating_kv_cache rot;
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

#endif
