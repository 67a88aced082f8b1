/* Internals of the Llama 4 model shared by llama4_model.c (build, state,
 * forward) and llama4_batch.c (batched decode). Not for other files. */
#ifndef NMLX_LLAMA4_MODEL_IMPL_H
#define NMLX_LLAMA4_MODEL_IMPL_H

#include "llama4_model.h"

enum {
    PIECE = 256,    /* tokens per prefill piece: bounds activation memory */
    MAX_LIST = 4096 /* longest per-layer list read from config (num_hidden_layers bound) */
};

typedef struct l4_layer {
    nmlx_rmsnorm input_norm, post_attn_norm;
    nmlx_l4_attention attn;
    bool is_moe;
    nmlx_l4_moe moe;
    nmlx_mlp mlp;
} l4_layer;

typedef struct l4_model {
    int64_t hidden, n_layers, heads, kv_heads, head_dim, vocab;
    int64_t inter, inter_mlp, chunk;
    nmlx_weight embed;
    nmlx_linear lm_head; /* aliases embed when tied */
    nmlx_rmsnorm norm;
    nmlx_rope rope;
    l4_layer *layers;
    bool has_moe;
    nmlx_moe_shape moe;
} l4_model;

/* Work buffers of R rows: a session's piece, or a batch's one row per
 * session. */
typedef struct l4_buffers {
    float *x, *xn, *tmp; /* [R, hidden]: residual, normed, block output */
    float *gate, *up;    /* [R, widest MLP] */
    float *logits;       /* [NMLX_LOGIT_ROWS, vocab]: the LM head's backend rows */
    nmlx_l4_buffers ab;  /* R rows; scratch: a session's own (batches borrow it) */
    nmlx_l4_moe_buffers mb;
    bool has_mb;
} l4_buffers;

typedef struct l4_state {
    nmlx_l4_cache *caches;
    int64_t n_layers, piece;
    l4_buffers w;
} l4_state;

/* w's buffers for `rows` rows but ab.scratch: false if one failed (the
 * caller reports it; l4_buffers_free frees what was allocated). Then the
 * MoE buffers, where the model has MoE layers. */
bool l4_buffers_alloc(const l4_model *m, nmlx_backend *be, int64_t rows, l4_buffers *w);
nmlx_status l4_moe_buffers_alloc(const l4_model *m, nmlx_backend *be, int64_t rows, l4_buffers *w);
void l4_buffers_free(l4_buffers *w, nmlx_backend *be);

/* The second half of layer l over w's first T rows (the attention's output
 * already added to x): x += ffn(post_attn_norm(x)), the FFN dense or MoE. */
void l4_ffn_residual(nmlx_backend *be, const l4_model *m, const l4_layer *l, l4_buffers *w,
                     int64_t T);

static inline int64_t nmlx_l4_cache_offset(const nmlx_l4_cache *c) {
    return c->chunked ? c->ck.offset : nmlx_layer_cache_offset(&c->full);
}

static inline nmlx_status nmlx_l4_cache_reserve(nmlx_l4_cache *c, nmlx_backend *be, int64_t n) {
    return c->chunked ? nmlx_chunked_kv_cache_reserve(&c->ck, n)
                      : nmlx_layer_cache_reserve(&c->full, be, n);
}

static inline void nmlx_l4_cache_trim(nmlx_l4_cache *c, int64_t n) {
    if (c->chunked)
        nmlx_chunked_kv_cache_trim(&c->ck, n);
    else
        nmlx_layer_cache_trim(&c->full, n);
}

#endif
