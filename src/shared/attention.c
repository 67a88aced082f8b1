/* Standard GQA attention (see attention.h). */
#include "attention.h"

#include <stdio.h>

nmlx_status nmlx_attention_load(nmlx_attention *a, const nmlx_weights *ws, const char *prefix,
                                const nmlx_attention_shape *s, const nmlx_rope *rope) {
    char name[512];
    nmlx_status st;
    a->s = *s;
    a->rope = rope;
    int64_t qdim = s->heads * s->head_dim, kvdim = s->kv_heads * s->head_dim;
    snprintf(name, sizeof name, "%s.q_proj", prefix);
    if ((st = nmlx_linear_load(&a->q, ws, name, qdim, s->hidden, s->qkv_bias))) return st;
    snprintf(name, sizeof name, "%s.k_proj", prefix);
    if ((st = nmlx_linear_load(&a->k, ws, name, kvdim, s->hidden, s->qkv_bias))) return st;
    snprintf(name, sizeof name, "%s.v_proj", prefix);
    if ((st = nmlx_linear_load(&a->v, ws, name, kvdim, s->hidden, s->qkv_bias))) return st;
    snprintf(name, sizeof name, "%s.o_proj", prefix);
    if ((st = nmlx_linear_load(&a->o, ws, name, s->hidden, qdim, s->o_bias))) return st;
    if (s->qk_norm) {
        snprintf(name, sizeof name, "%s.q_norm", prefix);
        if ((st = nmlx_rmsnorm_load(&a->q_norm, ws, name, s->head_dim, s->norm_eps, 0.0f)))
            return st;
        snprintf(name, sizeof name, "%s.k_norm", prefix);
        if ((st = nmlx_rmsnorm_load(&a->k_norm, ws, name, s->head_dim, s->norm_eps, 0.0f)))
            return st;
    }
    return NMLX_OK;
}

void nmlx_attention_forward(nmlx_backend *be, const nmlx_attention *a, nmlx_kv_cache *cache,
                            const nmlx_attention_buffers *buf, const float *x, float *out,
                            int64_t T) {
    const nmlx_attention_shape *s = &a->s;
    int64_t H = s->heads, KVH = s->kv_heads, HD = s->head_dim;
    int64_t pos = cache->offset;

    nmlx_linear_forward(be, &a->q, x, buf->q, T);
    nmlx_linear_forward(be, &a->k, x, buf->k, T);
    nmlx_linear_forward(be, &a->v, x, buf->v, T);
    if (s->qk_norm) {
        nmlx_rmsnorm_forward(be, &a->q_norm, buf->q, buf->q, T * H, HD);
        nmlx_rmsnorm_forward(be, &a->k_norm, buf->k, buf->k, T * KVH, HD);
    }
    if (a->rope) {
        be->ops->rope(be, buf->q, T, H, HD, a->rope->dims, pos, a->rope->freqs, a->rope->mscale);
        be->ops->rope(be, buf->k, T, KVH, HD, a->rope->dims, pos, a->rope->freqs,
                      a->rope->mscale);
    }
    nmlx_kv_cache_append(cache, be, buf->k, buf->v, T);

    nmlx_attn_args args = {
        .q = buf->q, .k = cache->keys, .v = cache->values, .out = buf->ctx,
        .T = T, .H = H, .KVH = KVH, .HD = HD, .cap = cache->capacity,
        .q_pos = pos, .n_kv = cache->offset, .scale = s->scale,
        .window = s->window, .softcap = 0.0f, .sinks = NULL, .scratch = buf->scratch,
    };
    be->ops->attention(be, &args);
    nmlx_linear_forward(be, &a->o, buf->ctx, out, T);
}
