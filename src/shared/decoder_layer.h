/* Pre-norm decoder layer:
 *   h = x + attn(norm1(x));  out = h + mlp(norm2(h))
 * (HF names: input_layernorm, self_attn, post_attention_layernorm, mlp).
 * With sandwich norms (Gemma 2/3) each block's output is normed too:
 *   h = x + post_attn_norm(attn(input_norm(x)))
 *   out = h + post_ffn_norm(mlp(pre_ffn_norm(h)))
 * (pre_feedforward_layernorm, post_feedforward_layernorm). */
#ifndef NMLX_DECODER_LAYER_H
#define NMLX_DECODER_LAYER_H

#include "attention.h"
#include "mlp.h"
#include "moe.h"

typedef struct nmlx_decoder_layer {
    nmlx_rmsnorm input_norm, post_attn_norm;
    nmlx_rmsnorm pre_ffn_norm, post_ffn_norm; /* sandwich only */
    bool sandwich;
    nmlx_attention attn;
    nmlx_mlp mlp;
    nmlx_moe *moe; /* non-NULL: the MLP slot is a sparse mixture of experts */
} nmlx_decoder_layer;

/* What a layer's norms and MLP look like. */
typedef struct nmlx_decoder_opts {
    int64_t intermediate;
    bool mlp_bias, fused_gate_up, sandwich;
    nmlx_act act;
    float norm_eps, norm_offset; /* offset 1: Gemma's (1 + w) */
    const nmlx_moe_shape *moe;   /* non-NULL: load `<prefix>.mlp` as MoE (moe.h) */
    nmlx_backend *be;            /* prepares the weights (layers.h); MoE: owns repacked experts */
} nmlx_decoder_opts;

/* Work buffers for T tokens (backend memory). */
typedef struct nmlx_decoder_buffers {
    nmlx_attention_buffers attn;
    float *xn;             /* [T, hidden] normed input */
    float *tmp;            /* [T, hidden] block output */
    float *gate, *up;      /* [T, intermediate] */
    nmlx_moe_buffers *moe; /* MoE layers only */
} nmlx_decoder_buffers;

/* Loads `<prefix>.{input_layernorm,self_attn,post_attention_layernorm,mlp}`
 * (and the feed-forward norms if sandwich). */
nmlx_status nmlx_decoder_layer_load(nmlx_decoder_layer *l, const nmlx_weights *ws,
                                    const char *prefix, const nmlx_attention_shape *as,
                                    const nmlx_rope *rope, const nmlx_decoder_opts *o);
/* Frees what a layer owns (MoE experts); accepts a zeroed layer. */
void nmlx_decoder_layer_free(nmlx_decoder_layer *l, nmlx_backend *be);
/* x[T, hidden] is updated in place (residual stream). */
void nmlx_decoder_layer_forward(nmlx_backend *be, const nmlx_decoder_layer *l,
                                nmlx_layer_cache *cache, const nmlx_decoder_buffers *buf, float *x,
                                int64_t T);

/* What a link of a chain of layers finds when it starts. */
typedef enum nmlx_chain_in {
    NMLX_CHAIN_X = 0,   /* x alone: the link norms it */
    NMLX_CHAIN_NORMED,  /* buf->xn holds input_norm(x) (the previous link's `next`) */
    NMLX_CHAIN_PENDING, /* the previous link deferred its closing residual add
                         * (x += buf->tmp) and next = this link's input_norm:
                         * run first, fused with the q/k/v projections where
                         * the backend can (add_rmsnorm_matmul) */
    NMLX_CHAIN_ADDED,   /* as PENDING, but the previous link's down projection
                         * already added into x (matmul_residual): only its
                         * norm is pending */
} nmlx_chain_in;

/* The same, as one link of a chain of layers (returns: with defer, whether
 * x already holds the deferred sum: then the next link is called with
 * NMLX_CHAIN_ADDED instead of NMLX_CHAIN_PENDING), so each residual add and the
 * norm after it are one add_rmsnorm where the backend has it (backend.h),
 * or, for one token, one op with the projections that read the norm
 * (add_rmsnorm_matmul): `in` as above; next != NULL: the closing residual
 * add also leaves next(x) in buf->xn (the next layer's input_norm, or the
 * model's final norm); defer (with next): that add and norm are left to
 * the next link, called with NMLX_CHAIN_PENDING on the same x and buf.
 * The results equal unchained calls followed by rmsnorm(next) (bit for bit
 * on the CPU, which runs the same ops in the same order). */
bool nmlx_decoder_layer_forward_chain(nmlx_backend *be, const nmlx_decoder_layer *l,
                                      nmlx_layer_cache *cache, const nmlx_decoder_buffers *buf,
                                      float *x, int64_t T, nmlx_chain_in in,
                                      const nmlx_rmsnorm *next, bool defer);

/* Batched decode: row b of x[B, hidden] is the next token of sequence b,
 * with that sequence's layer cache caches[b] and attention scratch
 * scratch[b] (nmlx_attention_forward_rows); buf holds B rows; in_normed and
 * next as in nmlx_decoder_layer_forward_chain (false, NULL: unchained). */
void nmlx_decoder_layer_forward_rows(nmlx_backend *be, const nmlx_decoder_layer *l,
                                     nmlx_layer_cache *const *caches, float *const *scratch,
                                     const nmlx_decoder_buffers *buf, float *x, int64_t B,
                                     bool in_normed, const nmlx_rmsnorm *next);

#endif
