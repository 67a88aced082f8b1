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

float *nmlx_attention_scratch_alloc(nmlx_backend *be, int64_t heads, int64_t kv_heads,
                                    int64_t max_context) {
    return be->ops->alloc(be, (size_t)be->n_threads * (size_t)(heads / kv_heads) *
                                  (size_t)max_context * sizeof(float));
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

/* rope_kv's arguments for T tokens of one sequence at pos: the q/k norms
 * (if the shape has them), RoPE and the append into the cache's next rows */
static nmlx_rope_kv_args rope_kv_args_of(const nmlx_attention *a, const nmlx_layer_cache *cache,
                                         float *q, float *k, const float *v, int64_t T, int64_t pos,
                                         const float *freqs) {
    const nmlx_attention_shape *s = &a->s;
    nmlx_rope_kv_args r = {
        .q = q,
        .k = k,
        .v = v,
        .T = T,
        .H = s->heads,
        .KVH = s->kv_heads,
        .HD = s->head_dim,
        .qk_norm = s->qk_norm,
        .q_norm = a->q_norm.w,
        .k_norm = a->k_norm.w,
        .q_norm_offset = a->q_norm.offset,
        .q_norm_eps = a->q_norm.eps,
        .k_norm_offset = a->k_norm.offset,
        .k_norm_eps = a->k_norm.eps,
        .rot = a->rope ? a->rope->dims : 0,
        .pos0 = pos,
        .freqs = freqs,
        .mscale = a->rope ? a->rope->mscale : 1.0f,
    };
    nmlx_layer_cache_rows(cache, &r.k_cache, &r.v_cache, &r.cap, &r.row0);
    return r;
}

/* The RoPE table for T tokens at pos of a call that ends at call_end */
static const float *layer_freqs(const nmlx_attention *a, int64_t pos, int64_t T, int64_t call_end) {
    if (!a->rope) return NULL;
    int64_t end = call_end > pos + T ? call_end : pos + T;
    return nmlx_rope_freqs(a->rope, pos, end - pos);
}

/* RoPE, query scaling, the cache append and softmax attention for T tokens
 * of one sequence at its cache's offset: q/k/v [T, heads, HD] projected (and
 * normed unless `fused`: then rope_kv norms, rotates and appends; `roped`:
 * the projection did that already), ctx [T, H, HD] written. */
static void attend(nmlx_backend *be, const nmlx_attention *a, nmlx_layer_cache *cache, float *q,
                   float *k, const float *v, float *ctx, int64_t T, int64_t call_end,
                   float *scratch, bool fused, bool roped) {
    const nmlx_attention_shape *s = &a->s;
    int64_t H = s->heads, KVH = s->kv_heads, HD = s->head_dim;
    int64_t pos = nmlx_layer_cache_offset(cache);
    const float *freqs = layer_freqs(a, pos, T, call_end);
    nmlx_kv_view kv;
    if (fused) {
        if (!roped) {
            nmlx_rope_kv_args r = rope_kv_args_of(a, cache, q, k, v, T, pos, freqs);
            be->ops->rope_kv(be, &r);
        }
        if (s->q_scale_beta != 0.0f) scale_queries(be, s, q, pos, T);
        nmlx_layer_cache_commit(cache, T, &kv);
    } else {
        if (a->rope) {
            be->ops->rope(be, q, T, H, HD, a->rope->dims, pos, freqs, a->rope->mscale);
            be->ops->rope(be, k, T, KVH, HD, a->rope->dims, pos, freqs, a->rope->mscale);
        }
        if (s->q_scale_beta != 0.0f) scale_queries(be, s, q, pos, T);
        nmlx_layer_cache_update(cache, be, k, v, T, &kv);
    }
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

/* q, k, v = projections of x[T, hidden] (q/k RMSNormed per head if asked,
 * unless rope_kv will), after the pending residual norm that writes x. */
static void project(nmlx_backend *be, const nmlx_attention *a, const nmlx_attention_buffers *buf,
                    const nmlx_pending_norm *pending, const float *x, int64_t T, bool norm) {
    const nmlx_attention_shape *s = &a->s;
    const nmlx_linear *ls[3] = {&a->q, &a->k, &a->v};
    float *ys[3] = {buf->q, buf->k, buf->v};
    if (!nmlx_pending_norm_run(be, pending, -1, 3, ls, ys, T))
        nmlx_linear_forward_multi(be, 3, ls, x, ys, T);
    if (s->qk_norm && norm) {
        nmlx_rmsnorm_forward(be, &a->q_norm, buf->q, buf->q, T * s->heads, s->head_dim);
        nmlx_rmsnorm_forward(be, &a->k_norm, buf->k, buf->k, T * s->kv_heads, s->head_dim);
    }
}

/* Whether this call's norms, RoPE and append go through rope_kv. */
static bool takes_rope_kv(const nmlx_backend *be, const nmlx_layer_cache *cache) {
    float *k, *v;
    int64_t cap, row0;
    return be->ops->rope_kv && nmlx_layer_cache_rows(cache, &k, &v, &cap, &row0);
}

/* One decode token with a pending norm: the norm, the q/k/v projections,
 * RoPE and the cache append as one backend call (nmlx_pending_norm_rope_kv);
 * false: nothing done */
static bool project_rope_kv(nmlx_backend *be, const nmlx_attention *a,
                            const nmlx_layer_cache *cache, const nmlx_attention_buffers *buf,
                            const nmlx_pending_norm *pending, int64_t T) {
    if (T != 1 || !pending || a->s.qk_norm || !be->ops->add_rmsnorm_matmul) return false;
    int64_t pos = nmlx_layer_cache_offset(cache);
    nmlx_rope_kv_args r = rope_kv_args_of(a, cache, buf->q, buf->k, buf->v, T, pos,
                                          layer_freqs(a, pos, T, buf->call_end));
    const nmlx_linear *ls[3] = {&a->q, &a->k, &a->v};
    float *ys[3] = {buf->q, buf->k, buf->v};
    return nmlx_pending_norm_rope_kv(be, pending, ls, ys, &r);
}

bool nmlx_attention_forward_pending(nmlx_backend *be, const nmlx_attention *a,
                                    nmlx_layer_cache *cache, const nmlx_attention_buffers *buf,
                                    const nmlx_pending_norm *pending, const float *x, float *out,
                                    float *resid, int64_t T) {
    bool fused = takes_rope_kv(be, cache);
    bool roped = fused && project_rope_kv(be, a, cache, buf, pending, T);
    if (!roped) project(be, a, buf, pending, x, T, !fused);
    attend(be, a, cache, buf->q, buf->k, buf->v, buf->ctx, T, buf->call_end, buf->scratch, fused,
           roped);
    return nmlx_linear_forward_residual(be, &a->o, buf->ctx, out, resid, T);
}

void nmlx_attention_forward(nmlx_backend *be, const nmlx_attention *a, nmlx_layer_cache *cache,
                            const nmlx_attention_buffers *buf, const float *x, float *out,
                            int64_t T) {
    nmlx_attention_forward_pending(be, a, cache, buf, NULL, x, out, NULL, T);
}

/* Batched decode on a backend with rope_rows / attention_rows (CUDA): the
 * per-row steps of `attend` (T = 1, call_end 0) for up to ROWS_GROUP rows
 * at a time, RoPE and attention as one call each over the group; every row
 * gets what its own `attend` would give (the ops' contract, backend.h). */
enum { ROWS_GROUP = 64 };

/* The group's q/k norms, RoPE and cache appends through rope_kv_rows (one
 * launch), or rope_kv row by row where it declines or the rows' RoPE
 * tables differ; then each cache committed into views. */
static void fused_rows(nmlx_backend *be, const nmlx_attention *a, nmlx_layer_cache *const *caches,
                       float *q, float *k, const float *v, const int64_t *pos, int64_t n,
                       nmlx_kv_view *views) {
    const nmlx_attention_shape *s = &a->s;
    int64_t qdim = s->heads * s->head_dim, kvdim = s->kv_heads * s->head_dim;
    const float *freqs = a->rope ? nmlx_rope_freqs(a->rope, pos[0], 1) : NULL;
    bool same = true;
    for (int64_t r = 1; r < n && a->rope; r++)
        same = same && nmlx_rope_freqs(a->rope, pos[r], 1) == freqs;
    nmlx_kv_row_dst dst[ROWS_GROUP];
    for (int64_t r = 0; r < n; r++) {
        nmlx_layer_cache_rows(caches[r], &dst[r].k_cache, &dst[r].v_cache, &dst[r].cap,
                              &dst[r].row0);
        dst[r].pos = pos[r];
    }
    nmlx_rope_kv_args ra = {
        .q = q,
        .k = k,
        .v = v,
        .T = 1,
        .H = s->heads,
        .KVH = s->kv_heads,
        .HD = s->head_dim,
        .qk_norm = s->qk_norm,
        .q_norm = a->q_norm.w,
        .k_norm = a->k_norm.w,
        .q_norm_offset = a->q_norm.offset,
        .q_norm_eps = a->q_norm.eps,
        .k_norm_offset = a->k_norm.offset,
        .k_norm_eps = a->k_norm.eps,
        .rot = a->rope ? a->rope->dims : 0,
        .freqs = freqs,
        .mscale = a->rope ? a->rope->mscale : 1.0f,
    };
    if (!(same && be->ops->rope_kv_rows && be->ops->rope_kv_rows(be, &ra, dst, n)))
        for (int64_t r = 0; r < n; r++) {
            nmlx_rope_kv_args one =
                rope_kv_args_of(a, caches[r], q + r * qdim, k + r * kvdim, v + r * kvdim, 1, pos[r],
                                layer_freqs(a, pos[r], 1, 0));
            be->ops->rope_kv(be, &one);
        }
    for (int64_t r = 0; r < n; r++) {
        if (s->q_scale_beta != 0.0f) scale_queries(be, s, q + r * qdim, pos[r], 1);
        nmlx_layer_cache_commit(caches[r], 1, &views[r]);
    }
}

static void attend_group(nmlx_backend *be, const nmlx_attention *a, nmlx_layer_cache *const *caches,
                         float *const *scratch, float *q, float *k, const float *v, float *ctx,
                         int64_t n, bool fused) {
    const nmlx_attention_shape *s = &a->s;
    int64_t H = s->heads, KVH = s->kv_heads, HD = s->head_dim;
    int64_t qdim = H * HD, kvdim = KVH * HD;
    int64_t pos[ROWS_GROUP] = {0};
    nmlx_attn_row rows[ROWS_GROUP];
    nmlx_kv_view views[ROWS_GROUP];
    for (int64_t r = 0; r < n; r++)
        pos[r] = nmlx_layer_cache_offset(caches[r]);
    if (fused) {
        fused_rows(be, a, caches, q, k, v, pos, n, views);
    } else if (a->rope) { /* one table for the group (long RoPE may switch per row) */
        const float *freqs = nmlx_rope_freqs(a->rope, pos[0], 1);
        bool same = true;
        for (int64_t r = 1; r < n; r++)
            same = same && nmlx_rope_freqs(a->rope, pos[r], 1) == freqs;
        if (same) {
            be->ops->rope_rows(be, q, n, H, HD, a->rope->dims, pos, freqs, a->rope->mscale);
            be->ops->rope_rows(be, k, n, KVH, HD, a->rope->dims, pos, freqs, a->rope->mscale);
        } else {
            for (int64_t r = 0; r < n; r++) {
                const float *f = nmlx_rope_freqs(a->rope, pos[r], 1);
                be->ops->rope(be, q + r * qdim, 1, H, HD, a->rope->dims, pos[r], f,
                              a->rope->mscale);
                be->ops->rope(be, k + r * kvdim, 1, KVH, HD, a->rope->dims, pos[r], f,
                              a->rope->mscale);
            }
        }
    }
    bool f32 = true;
    for (int64_t r = 0; r < n; r++) {
        if (!fused) {
            if (s->q_scale_beta != 0.0f) scale_queries(be, s, q + r * qdim, pos[r], 1);
            nmlx_layer_cache_update(caches[r], be, k + r * kvdim, v + r * kvdim, 1, &views[r]);
        }
        const nmlx_kv_view *kv = &views[r];
        rows[r] = (nmlx_attn_row){.k = kv->keys,
                                  .v = kv->values,
                                  .cap = kv->cap,
                                  .q_pos = kv->q_row,
                                  .n_kv = kv->n_kv,
                                  .window = kv->window};
        f32 = f32 && kv->dtype == NMLX_DT_F32;
    }
    nmlx_attn_args args = {
        .q = q,
        .out = ctx,
        .T = 1,
        .H = H,
        .KVH = KVH,
        .HD = HD,
        .scale = s->scale,
        .softcap = 0.0f,
        .sinks = a->sinks,
    };
    if (f32) {
        be->ops->attention_rows(be, &args, rows, n);
        return;
    }
    for (int64_t r = 0; r < n; r++) { /* a half-precision cache: one call per row */
        const nmlx_kv_view *kv = &views[r];
        nmlx_attn_args one = args;
        one.q = q + r * qdim;
        one.out = ctx + r * qdim;
        one.k = kv->keys, one.v = kv->values, one.cap = kv->cap, one.q_pos = kv->q_row;
        one.n_kv = kv->n_kv, one.window = kv->window, one.scratch = scratch[r];
        one.kv_dtype = kv->dtype, one.k16 = kv->keys16, one.v16 = kv->values16;
        be->ops->attention(be, &one);
    }
}

void nmlx_attention_forward_rows(nmlx_backend *be, const nmlx_attention *a,
                                 nmlx_layer_cache *const *caches, float *const *scratch,
                                 const nmlx_attention_buffers *buf, const float *x, float *out,
                                 int64_t B) {
    const nmlx_attention_shape *s = &a->s;
    int64_t qdim = s->heads * s->head_dim, kvdim = s->kv_heads * s->head_dim;
    const bool rows_ops = be->ops->rope_rows && be->ops->attention_rows;
    /* norms, RoPE and appends fused (rope_kv_rows, else rope_kv a row) where
     * every cache takes rows in place */
    bool fused = rows_ops && be->ops->rope_kv;
    for (int64_t b = 0; b < B && fused; b++)
        fused = takes_rope_kv(be, caches[b]);
    project(be, a, buf, NULL, x, B, !fused);
    if (rows_ops) {
        for (int64_t b = 0; b < B; b += ROWS_GROUP)
            attend_group(be, a, caches + b, scratch + b, buf->q + b * qdim, buf->k + b * kvdim,
                         buf->v + b * kvdim, buf->ctx + b * qdim,
                         B - b < ROWS_GROUP ? B - b : ROWS_GROUP, fused);
    } else {
        for (int64_t b = 0; b < B; b++) /* call_end 0: a one-token call's end, pos + 1 */
            attend(be, a, caches[b], buf->q + b * qdim, buf->k + b * kvdim, buf->v + b * kvdim,
                   buf->ctx + b * qdim, 1, 0, scratch[b], false, false);
    }
    nmlx_linear_forward(be, &a->o, buf->ctx, out, B);
}
