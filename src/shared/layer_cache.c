/* Per-layer cache kind (see layer_cache.h). */
#include "layer_cache.h"

#include <string.h>

nmlx_status nmlx_layer_cache_init(nmlx_layer_cache *c, nmlx_backend *be, int64_t kv_heads,
                                  int64_t head_dim, int64_t window, int64_t max_tokens,
                                  int64_t max_context) {
    memset(c, 0, sizeof *c);
    c->window = window;
    c->rotating = window > 0 && window < max_context;
    if (c->rotating)
        return nmlx_rotating_kv_cache_init(&c->rot, be, kv_heads, head_dim, window, 0, max_tokens,
                                           max_context);
    nmlx_kv_cache_init(&c->kv, kv_heads, head_dim, max_context);
    return NMLX_OK;
}

void nmlx_layer_cache_free(nmlx_layer_cache *c, nmlx_backend *be) {
    if (c->rotating) nmlx_rotating_kv_cache_free(&c->rot, be);
    else nmlx_kv_cache_free(&c->kv, be);
}

int64_t nmlx_layer_cache_offset(const nmlx_layer_cache *c) {
    return c->rotating ? c->rot.offset : c->kv.offset;
}

nmlx_status nmlx_layer_cache_reserve(nmlx_layer_cache *c, nmlx_backend *be, int64_t n) {
    return c->rotating ? nmlx_rotating_kv_cache_reserve(&c->rot, n)
                       : nmlx_kv_cache_reserve(&c->kv, be, n);
}

void nmlx_layer_cache_update(nmlx_layer_cache *c, nmlx_backend *be, const float *k,
                             const float *v, int64_t T, nmlx_kv_view *view) {
    if (c->rotating) {
        nmlx_rotating_kv_cache_update(&c->rot, be, k, v, T, view);
        return;
    }
    int64_t pos = c->kv.offset;
    nmlx_kv_cache_append(&c->kv, be, k, v, T);
    *view = (nmlx_kv_view){.keys = c->kv.keys, .values = c->kv.values, .cap = c->kv.capacity,
                           .n_kv = c->kv.offset, .q_row = pos, .window = c->window};
}

int64_t nmlx_layer_cache_trim(nmlx_layer_cache *c, int64_t n) {
    return c->rotating ? nmlx_rotating_kv_cache_trim(&c->rot, n) : nmlx_kv_cache_trim(&c->kv, n);
}
