/* Pre-norm decoder layer (see decoder_layer.h). */
#include "decoder_layer.h"

#include <stdio.h>

nmlx_status nmlx_decoder_layer_load(nmlx_decoder_layer *l, const nmlx_weights *ws,
                                    const char *prefix, const nmlx_attention_shape *as,
                                    const nmlx_rope *rope, int64_t intermediate, bool mlp_bias,
                                    nmlx_act act, float norm_eps) {
    char name[512];
    nmlx_status st;
    snprintf(name, sizeof name, "%s.input_layernorm", prefix);
    if ((st = nmlx_rmsnorm_load(&l->input_norm, ws, name, as->hidden, norm_eps, 0.0f))) return st;
    snprintf(name, sizeof name, "%s.post_attention_layernorm", prefix);
    if ((st = nmlx_rmsnorm_load(&l->post_attn_norm, ws, name, as->hidden, norm_eps, 0.0f)))
        return st;
    snprintf(name, sizeof name, "%s.self_attn", prefix);
    if ((st = nmlx_attention_load(&l->attn, ws, name, as, rope))) return st;
    snprintf(name, sizeof name, "%s.mlp", prefix);
    return nmlx_mlp_load(&l->mlp, ws, name, as->hidden, intermediate, mlp_bias, act);
}

void nmlx_decoder_layer_forward(nmlx_backend *be, const nmlx_decoder_layer *l,
                                nmlx_kv_cache *cache, const nmlx_decoder_buffers *buf, float *x,
                                int64_t T) {
    int64_t D = l->attn.s.hidden;
    nmlx_rmsnorm_forward(be, &l->input_norm, x, buf->xn, T, D);
    nmlx_attention_forward(be, &l->attn, cache, &buf->attn, buf->xn, buf->tmp, T);
    be->ops->add(be, x, buf->tmp, x, T * D);
    nmlx_rmsnorm_forward(be, &l->post_attn_norm, x, buf->xn, T, D);
    nmlx_mlp_forward(be, &l->mlp, buf->xn, buf->gate, buf->up, buf->tmp, T);
    be->ops->add(be, x, buf->tmp, x, T * D);
}
