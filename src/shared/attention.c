/* Standard GQA attention (see attention.h). */
#include "attention.h"

#include <math.h>
#include <stdio.h>

static nmlx_status load_fused_qkv(nmlx_attention *a, const nmlx_weights *ws, const char *prefix,
                                  int64_t qdim, int64_t kvdim) {
    char name[512];
    nmlx_status st;
    snprintf(name, sizeof name, "%s.qkv_proj", prefix);
    if ((st = nmlx_linear_load(&a->qkv, ws, name, qdim + 2 * kvdim, a->s.hidden, a->s.qkv_bias)))
        return st;
    if ((st = nmlx_linear_rows(&a->qkv, 0, qdim, name, &a->q))) return st;
    if ((st = nmlx_linear_rows(&a->qkv, qdim, kvdim, name, &a->k))) return st;
    return nmlx_linear_rows(&a->qkv, qdim + kvdim, kvdim, name, &a->v);
}

nmlx_status nmlx_attention_load(nmlx_attention *a, const nmlx_weights *ws, const char *prefix,
                                const nmlx_attention_shape *s, const nmlx_rope *rope) {
    char name[512];
    nmlx_status st;
    a->s = *s;
    a->rope = rope;
    a->sinks = NULL;
    int64_t qdim = s->heads * s->head_dim, kvdim = s->kv_heads * s->head_dim;
    if (s->fused_qkv) {
        if ((st = load_fused_qkv(a, ws, prefix, qdim, kvdim))) return st;
    } else {
        snprintf(name, sizeof name, "%s.q_proj", prefix);
        if ((st = nmlx_linear_load(&a->q, ws, name, qdim, s->hidden, s->qkv_bias))) return st;
        snprintf(name, sizeof name, "%s.k_proj", prefix);
        if ((st = nmlx_linear_load(&a->k, ws, name, kvdim, s->hidden, s->qkv_bias))) return st;
        snprintf(name, sizeof name, "%s.v_proj", prefix);
        if ((st = nmlx_linear_load(&a->v, ws, name, kvdim, s->hidden, s->qkv_bias))) return st;
    }
    snprintf(name, sizeof name, "%s.o_proj", prefix);
    if ((st = nmlx_linear_load(&a->o, ws, name, s->hidden, qdim, s->o_bias))) return st;
    if (s->qk_norm) {
        snprintf(name, sizeof name, "%s.q_norm", prefix);
        if ((st =
                 nmlx_rmsnorm_load(&a->q_norm, ws, name, s->head_dim, s->norm_eps, s->norm_offset)))
            return st;
        snprintf(name, sizeof name, "%s.k_norm", prefix);
        if ((st =
                 nmlx_rmsnorm_load(&a->k_norm, ws, name, s->head_dim, s->norm_eps, s->norm_offset)))
            return st;
    }
    return NMLX_OK;
}

/* Ministral 3 / Llama 4: queries past the original context are scaled up. */
static void scale_queries(nmlx_backend *be, const nmlx_attention_shape *s, float *q, int64_t pos,
                          int64_t T) {
    int64_t row = s->heads * s->head_dim;
    for (int64_t t = 0; t < T; t++) {
        double f =
            1.0 + s->q_scale_beta * log(1.0 + floor((double)(pos + t) / (double)s->q_scale_period));
        if (f != 1.0) be->ops->scale(be, q + t * row, (float)f, row);
    }
}

/* RoPE, query scaling, the cache append and softmax attention for T tokens
 * of one sequence at its cache's offset: q/k/v [T, heads, HD] projected (and
 * normed), ctx [T, H, HD] written. */
static void attend(nmlx_backend *be, const nmlx_attention *a, nmlx_layer_cache *cache, float *q,
                   float *k, const float *v, float *ctx, int64_t T, int64_t call_end,
                   float *scratch) {
    const nmlx_attention_shape *s = &a->s;
    int64_t H = s->heads, KVH = s->kv_heads, HD = s->head_dim;
    int64_t pos = nmlx_layer_cache_offset(cache);
    if (a->rope) {
        int64_t end = call_end > pos + T ? call_end : pos + T;
        const float *freqs = nmlx_rope_freqs(a->rope, pos, end - pos);
        be->ops->rope(be, q, T, H, HD, a->rope->dims, pos, freqs, a->rope->mscale);
        be->ops->rope(be, k, T, KVH, HD, a->rope->dims, pos, freqs, a->rope->mscale);
    }
    if (s->q_scale_beta != 0.0f) scale_queries(be, s, q, pos, T);

    nmlx_kv_view kv;
    nmlx_layer_cache_update(cache, be, k, v, T, &kv);
    nmlx_attn_args args = {
        .q = q,
        .k = kv.keys,
        .v = kv.values,
        .out = ctx,
        .T = T,
        .H = H,
        .KVH = KVH,
        .HD = HD,
        .cap = kv.cap,
        .q_pos = kv.q_row,
        .n_kv = kv.n_kv,
        .scale = s->scale,
        .window = kv.window,
        .softcap = 0.0f,
        .sinks = a->sinks,
        .scratch = scratch,
        .kv_dtype = kv.dtype,
        .k16 = kv.keys16,
        .v16 = kv.values16,
    };
    be->ops->attention(be, &args);
}

/* q, k, v = projections of x[T, hidden] (q/k RMSNormed per head if asked). */
static void project(nmlx_backend *be, const nmlx_attention *a, const nmlx_attention_buffers *buf,
                    const float *x, int64_t T) {
    const nmlx_attention_shape *s = &a->s;
    const nmlx_linear *ls[3] = {&a->q, &a->k, &a->v};
    float *ys[3] = {buf->q, buf->k, buf->v};
    nmlx_linear_forward_multi(be, 3, ls, x, ys, T);
    if (s->qk_norm) {
        nmlx_rmsnorm_forward(be, &a->q_norm, buf->q, buf->q, T * s->heads, s->head_dim);
        nmlx_rmsnorm_forward(be, &a->k_norm, buf->k, buf->k, T * s->kv_heads, s->head_dim);
    }
}

void nmlx_attention_forward(nmlx_backend *be, const nmlx_attention *a, nmlx_layer_cache *cache,
                            const nmlx_attention_buffers *buf, const float *x, float *out,
                            int64_t T) {
    project(be, a, buf, x, T);
    attend(be, a, cache, buf->q, buf->k, buf->v, buf->ctx, T, buf->call_end, buf->scratch);
    nmlx_linear_forward(be, &a->o, buf->ctx, out, T);
}

void nmlx_attention_forward_rows(nmlx_backend *be, const nmlx_attention *a,
                                 nmlx_layer_cache *const *caches, float *const *scratch,
                                 const nmlx_attention_buffers *buf, const float *x, float *out,
                                 int64_t B) {
    const nmlx_attention_shape *s = &a->s;
    int64_t qdim = s->heads * s->head_dim, kvdim = s->kv_heads * s->head_dim;
    project(be, a, buf, x, B);
    for (int64_t b = 0; b < B; b++) /* call_end 0: a one-token call's end, pos + 1 */
        attend(be, a, caches[b], buf->q + b * qdim, buf->k + b * kvdim, buf->v + b * kvdim,
               buf->ctx + b * qdim, 1, 0, scratch[b]);
    nmlx_linear_forward(be, &a->o, buf->ctx, out, B);
}
