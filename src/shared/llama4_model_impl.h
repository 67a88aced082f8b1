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

typedef struct l4_state {
    nmlx_l4_cache *caches;
    int64_t n_layers, piece;
    float *x, *logits, *xn, *tmp, *gate, *up;
    nmlx_l4_buffers ab;
    nmlx_l4_moe_buffers mb;
    bool has_mb;
} l4_state;

static inline int64_t nmlx_l4_cache_offset(const nmlx_l4_cache *c) {
    return c->chunked ? c->ck.offset : nmlx_layer_cache_offset(&c->full);
}

static inline nmlx_status nmlx_l4_cache_reserve(nmlx_l4_cache *c, nmlx_backend *be, int64_t n) {
    return c->chunked ? nmlx_chunked_kv_cache_reserve(&c->ck, n)
                      : nmlx_layer_cache_reserve(&c->full, be, n);
}

#endif
