/* Llama 4 attention (see llama4_model.h). */
#include "llama4_model.h"

#include <math.h>
#include <stdio.h>

nmlx_status nmlx_l4_attention_load(nmlx_l4_attention *a, const nmlx_weights *ws, const char *prefix,
                                   bool bias) {
    char name[512];
    nmlx_status st;
    int64_t qdim = a->heads * a->head_dim, kvdim = a->kv_heads * a->head_dim;
    nmlx_linear *l[4] = {&a->q, &a->k, &a->v, &a->o};
    const char *names[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
    int64_t out[4] = {qdim, kvdim, kvdim, a->hidden},
            in[4] = {a->hidden, a->hidden, a->hidden, qdim};
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "%s.%s", prefix, names[i]);
        if ((st = nmlx_linear_load(l[i], ws, name, out[i], in[i], bias))) return st;
    }
    return NMLX_OK;
}

/* Angles in double, as the CPU backend's rope kernel computes them. */
void nmlx_rope_interleaved(float *x, int64_t T, int64_t H, int64_t HD, int64_t pos0,
                           const float *freqs) {
    for (int64_t t = 0; t < T; t++) {
        double p = (double)(pos0 + t);
        for (int64_t j = 0; j < HD / 2; j++) {
            double ang = p * (double)freqs[j];
            float c = (float)cos(ang), s = (float)sin(ang);
            for (int64_t h = 0; h < H; h++) {
                float *xp = x + (t * H + h) * HD + 2 * j;
                float x0 = xp[0], x1 = xp[1];
                xp[0] = x0 * c - x1 * s;
                xp[1] = x1 * c + x0 * s;
            }
        }
    }
}

/* Temperature tuning of NoPE layers: q[t] *= 1 + attn_scale * log1p(floor((pos + 1) /
 * floor_scale)). */
static void tune_queries(nmlx_backend *be, const nmlx_l4_attention *a, float *q, int64_t pos,
                         int64_t T) {
    int64_t row = a->heads * a->head_dim;
    for (int64_t t = 0; t < T; t++) {
        double f = 1.0 + a->attn_scale * log1p(floor((double)(pos + t + 1) / a->floor_scale));
        if (f != 1.0) be->ops->scale(be, q + t * row, (float)f, row);
    }
}

static int64_t cache_offset(const nmlx_l4_cache *c) {
    return c->chunked ? c->ck.offset : nmlx_layer_cache_offset(&c->full);
}

/* RoPE (+ L2 norm) on RoPE layers, temperature on NoPE layers, in place on
 * q [T, H, HD] and k [T, KVH, HD] of the tokens at positions pos.. */
static void prep_qk(nmlx_backend *be, const nmlx_l4_attention *a, float *q, float *k, int64_t pos,
                    int64_t T) {
    int64_t H = a->heads, KVH = a->kv_heads, HD = a->head_dim;
    if (a->rope) {
        const float *freqs = nmlx_rope_freqs(a->rope, pos, T);
        if (a->interleaved && be->ops->rope_interleaved) { /* device backends */
            be->ops->rope_interleaved(be, q, T, H, HD, pos, freqs);
            be->ops->rope_interleaved(be, k, T, KVH, HD, pos, freqs);
        } else if (a->interleaved) { /* host memory */
            nmlx_rope_interleaved(q, T, H, HD, pos, freqs);
            nmlx_rope_interleaved(k, T, KVH, HD, pos, freqs);
        } else {
            be->ops->rope(be, q, T, H, HD, a->rope->dims, pos, freqs, a->rope->mscale);
            be->ops->rope(be, k, T, KVH, HD, a->rope->dims, pos, freqs, a->rope->mscale);
        }
        if (a->qk_norm) { /* weightless: x / sqrt(mean(x^2) + eps) per head */
            be->ops->rmsnorm(be, q, NULL, 0.0f, a->norm_eps, q, T * H, HD);
            be->ops->rmsnorm(be, k, NULL, 0.0f, a->norm_eps, k, T * KVH, HD);
        }
    } else if (a->tune) {
        tune_queries(be, a, q, pos, T);
    }
}

static void attend(nmlx_backend *be, const nmlx_l4_attention *a, const nmlx_kv_view *kv,
                   const float *q, float *ctx, float *scratch, int64_t T) {
    nmlx_attn_args args = {
        .q = q,
        .k = kv->keys,
        .v = kv->values,
        .out = ctx,
        .T = T,
        .H = a->heads,
        .KVH = a->kv_heads,
        .HD = a->head_dim,
        .cap = kv->cap,
        .q_pos = kv->q_row,
        .n_kv = kv->n_kv,
        .scale = 1.0f / sqrtf((float)a->head_dim),
        .window = kv->window,
        .softcap = 0.0f,
        .sinks = NULL,
        .scratch = scratch,
        .kv_dtype = kv->dtype,
        .k16 = kv->keys16,
        .v16 = kv->values16,
    };
    be->ops->attention(be, &args);
}

/* Appends k, v of T tokens to the cache and attends: ctx [T, H, HD]. */
static void attend_cache(nmlx_backend *be, const nmlx_l4_attention *a, nmlx_l4_cache *c,
                         const float *q, const float *k, const float *v, float *ctx, float *scratch,
                         int64_t T) {
    nmlx_kv_view kv;
    if (!c->chunked) {
        nmlx_layer_cache_update(&c->full, be, k, v, T, &kv);
        attend(be, a, &kv, q, ctx, scratch, T);
        return;
    }
    /* one piece per attention chunk: each sees its chunk's keys only */
    int64_t qrow = a->heads * a->head_dim, kvrow = a->kv_heads * a->head_dim;
    for (int64_t t0 = 0; t0 < T;) {
        int64_t n = nmlx_chunked_kv_cache_room(&c->ck);
        if (n > T - t0) n = T - t0;
        nmlx_chunked_kv_cache_update(&c->ck, be, k + t0 * kvrow, v + t0 * kvrow, n, &kv);
        attend(be, a, &kv, q + t0 * qrow, ctx + t0 * qrow, scratch, n);
        t0 += n;
    }
}

void nmlx_l4_attention_forward(nmlx_backend *be, const nmlx_l4_attention *a, nmlx_l4_cache *c,
                               const nmlx_l4_buffers *b, const float *x, float *out, int64_t T) {
    {
        const nmlx_linear *ls[3] = {&a->q, &a->k, &a->v};
        float *ys[3] = {b->q, b->k, b->v};
        nmlx_linear_forward_multi(be, 3, ls, x, ys, T);
    }
    prep_qk(be, a, b->q, b->k, cache_offset(c), T);
    attend_cache(be, a, c, b->q, b->k, b->v, b->ctx, b->scratch, T);
    nmlx_linear_forward(be, &a->o, b->ctx, out, T);
}

void nmlx_l4_attention_forward_rows(nmlx_backend *be, const nmlx_l4_attention *a,
                                    nmlx_l4_cache *const *caches, float *const *scratch,
                                    const nmlx_l4_buffers *b, const float *x, float *out,
                                    int64_t B) {
    int64_t qrow = a->heads * a->head_dim, kvrow = a->kv_heads * a->head_dim;
    {
        const nmlx_linear *ls[3] = {&a->q, &a->k, &a->v};
        float *ys[3] = {b->q, b->k, b->v};
        nmlx_linear_forward_multi(be, 3, ls, x, ys, B);
    }
    for (int64_t r = 0; r < B; r++) {
        float *q = b->q + r * qrow, *k = b->k + r * kvrow;
        prep_qk(be, a, q, k, cache_offset(caches[r]), 1);
        attend_cache(be, a, caches[r], q, k, b->v + r * kvrow, b->ctx + r * qrow, scratch[r], 1);
    }
    nmlx_linear_forward(be, &a->o, b->ctx, out, B);
}
