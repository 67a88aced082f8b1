/* Pre-norm decoder layer (see decoder_layer.h). */
#include "decoder_layer.h"

#include <stdio.h>

static nmlx_status load_norm(nmlx_rmsnorm *n, const nmlx_weights *ws, const char *prefix,
                             const char *what, int64_t dim, const nmlx_decoder_opts *o) {
    char name[512];
    snprintf(name, sizeof name, "%s.%s", prefix, what);
    return nmlx_rmsnorm_load(n, ws, name, dim, o->norm_eps, o->norm_offset);
}

/* The backend's copies of a dense layer's weights (layers.h *_prepare).
 * Fused projections first, so their row views share one copy. */
static nmlx_status prepare_dense_layer(nmlx_decoder_layer *l, nmlx_backend *be) {
    nmlx_status st = NMLX_OK;
    nmlx_attention *a = &l->attn;
    nmlx_rmsnorm *norms[] = {&l->input_norm,    &l->post_attn_norm, &l->pre_ffn_norm,
                             &l->post_ffn_norm, &a->q_norm,         &a->k_norm};
    nmlx_linear *lins[] = {&a->qkv,         &a->q,        &a->k,      &a->v,       &a->o,
                           &l->mlp.gate_up, &l->mlp.gate, &l->mlp.up, &l->mlp.down};
    for (size_t i = 0; st == NMLX_OK && i < sizeof norms / sizeof norms[0]; i++)
        st = nmlx_rmsnorm_prepare(be, norms[i]);
    for (size_t i = 0; st == NMLX_OK && i < sizeof lins / sizeof lins[0]; i++)
        if (lins[i]->w.w.data) st = nmlx_linear_prepare(be, lins[i]);
    return st;
}

nmlx_status nmlx_decoder_layer_load(nmlx_decoder_layer *l, const nmlx_weights *ws,
                                    const char *prefix, const nmlx_attention_shape *as,
                                    const nmlx_rope *rope, const nmlx_decoder_opts *o) {
    char name[512];
    nmlx_status st;
    int64_t D = as->hidden;
    l->sandwich = o->sandwich;
    if ((st = load_norm(&l->input_norm, ws, prefix, "input_layernorm", D, o))) return st;
    if ((st = load_norm(&l->post_attn_norm, ws, prefix, "post_attention_layernorm", D, o)))
        return st;
    if (o->sandwich) {
        if ((st = load_norm(&l->pre_ffn_norm, ws, prefix, "pre_feedforward_layernorm", D, o)))
            return st;
        if ((st = load_norm(&l->post_ffn_norm, ws, prefix, "post_feedforward_layernorm", D, o)))
            return st;
    }
    snprintf(name, sizeof name, "%s.self_attn", prefix);
    if ((st = nmlx_attention_load(&l->attn, ws, name, as, rope))) return st;
    snprintf(name, sizeof name, "%s.mlp", prefix);
    if (o->moe) { /* the experts and router are prepared by nmlx_moe_load */
        l->moe = nmlx_calloc(1, sizeof *l->moe);
        if (!l->moe) return nmlx_fail(NMLX_ERR_NOMEM, "out of memory loading '%s'", name);
        if ((st = nmlx_moe_load(l->moe, ws, o->be, name, o->moe))) {
            nmlx_free(l->moe);
            l->moe = NULL;
            return st;
        }
    } else if ((st = nmlx_mlp_load(&l->mlp, ws, name, D, o->intermediate, o->mlp_bias,
                                   o->fused_gate_up, o->act))) {
        return st;
    }
    /* norms and attention (and the dense MLP; a MoE layer's has no data) */
    return o->be ? prepare_dense_layer(l, o->be) : NMLX_OK;
}

void nmlx_decoder_layer_free(nmlx_decoder_layer *l, nmlx_backend *be) {
    if (!l->moe) return;
    nmlx_moe_free(l->moe, be);
    nmlx_free(l->moe);
    l->moe = NULL;
}

/* One sequence (cache, T tokens) or, when caches != NULL, B = T rows of
 * one token per sequence (batched decode, never `in` = NMLX_CHAIN_PENDING);
 * in, next and defer as in nmlx_decoder_layer_forward_chain. Each residual
 * add and the norm after it run as the first step of the projections that
 * read the norm (nmlx_pending_norm_run: one op with them where the backend
 * fuses them, else the add_rmsnorm or add + rmsnorm of before). */
static bool layer(nmlx_backend *be, const nmlx_decoder_layer *l, nmlx_layer_cache *cache,
                  nmlx_layer_cache *const *caches, float *const *scratch,
                  const nmlx_decoder_buffers *buf, float *x, int64_t T, nmlx_chain_in in,
                  const nmlx_rmsnorm *next, bool defer) {
    int64_t D = l->attn.s.hidden;
    if (in == NMLX_CHAIN_X) nmlx_rmsnorm_forward(be, &l->input_norm, x, buf->xn, T, D);
    const nmlx_pending_norm in_pending = {x, in == NMLX_CHAIN_ADDED ? NULL : buf->tmp,
                                          &l->input_norm, buf->xn, D};
    /* one token of one sequence, no norm on the branch outputs: the o and
     * down projections may add into x themselves (matmul_residual); added:
     * x holds the sum, buf->tmp was not written */
    float *resid = !caches && T == 1 && !l->sandwich ? x : NULL;
    bool added = false;
    if (caches)
        nmlx_attention_forward_rows(be, &l->attn, caches, scratch, &buf->attn, buf->xn, buf->tmp,
                                    T);
    else
        added = nmlx_attention_forward_pending(
            be, &l->attn, cache, &buf->attn,
            in == NMLX_CHAIN_PENDING || in == NMLX_CHAIN_ADDED ? &in_pending : NULL, buf->xn,
            buf->tmp, resid, T);
    if (l->sandwich) nmlx_rmsnorm_forward(be, &l->post_attn_norm, buf->tmp, buf->tmp, T, D);
    const nmlx_rmsnorm *ffn_in = l->sandwich ? &l->pre_ffn_norm : &l->post_attn_norm;
    if (l->moe) {
        nmlx_residual_norm(be, x, added ? NULL : buf->tmp, ffn_in, buf->xn, T, D);
        nmlx_moe_forward(be, l->moe, buf->moe, buf->xn, buf->tmp, T);
        added = false;
    } else {
        const nmlx_pending_norm ffn = {x, added ? NULL : buf->tmp, ffn_in, buf->xn, D};
        added = nmlx_mlp_forward_pending(be, &l->mlp, &ffn, buf->xn, buf->gate, buf->up, buf->tmp,
                                         resid, T);
    }
    if (l->sandwich) nmlx_rmsnorm_forward(be, &l->post_ffn_norm, buf->tmp, buf->tmp, T, D);
    if (!defer) nmlx_residual_norm(be, x, added ? NULL : buf->tmp, next, buf->xn, T, D);
    return added;
}

void nmlx_decoder_layer_forward(nmlx_backend *be, const nmlx_decoder_layer *l,
                                nmlx_layer_cache *cache, const nmlx_decoder_buffers *buf, float *x,
                                int64_t T) {
    layer(be, l, cache, NULL, NULL, buf, x, T, NMLX_CHAIN_X, NULL, false);
}

bool nmlx_decoder_layer_forward_chain(nmlx_backend *be, const nmlx_decoder_layer *l,
                                      nmlx_layer_cache *cache, const nmlx_decoder_buffers *buf,
                                      float *x, int64_t T, nmlx_chain_in in,
                                      const nmlx_rmsnorm *next, bool defer) {
    return layer(be, l, cache, NULL, NULL, buf, x, T, in, next, defer && next);
}

void nmlx_decoder_layer_forward_rows(nmlx_backend *be, const nmlx_decoder_layer *l,
                                     nmlx_layer_cache *const *caches, float *const *scratch,
                                     const nmlx_decoder_buffers *buf, float *x, int64_t B,
                                     bool in_normed, const nmlx_rmsnorm *next) {
    layer(be, l, NULL, caches, scratch, buf, x, B, in_normed ? NMLX_CHAIN_NORMED : NMLX_CHAIN_X,
          next, false);
}
