/* The standard model's architecture and session state, shared by its
 * forward pass (standard_model.c) and its batched decode (standard_batch.c).
 * Private to those two files. */
#ifndef NMLX_STANDARD_MODEL_IMPL_H
#define NMLX_STANDARD_MODEL_IMPL_H

#include "decoder_layer.h"
#include "standard_model.h"

enum {
    CHUNK = 256 /* tokens per prefill chunk: bounds activation memory */
};

typedef struct std_model {
    int64_t hidden, intermediate, n_layers, heads, kv_heads, head_dim, vocab;
    nmlx_weight embed;
    float embed_scale;   /* 1, or sqrt(hidden) (Gemma) */
    float final_softcap; /* 0 = off */
    nmlx_linear lm_head; /* aliases embed when tied */
    nmlx_rmsnorm norm;
    nmlx_rope rope;
    nmlx_rope local_rope; /* sliding layers' RoPE if the family has one */
    nmlx_decoder_layer *layers;
    int64_t *windows;   /* per layer: 0 = full attention */
    bool has_moe;       /* some layer's MLP is a mixture of experts */
    nmlx_moe_shape moe; /* their shape */
    float *sinks;       /* [n_layers, heads] attention sinks (backend), or NULL */
} std_model;

typedef struct std_state {
    nmlx_layer_cache *caches; /* one per layer */
    int64_t n_layers, chunk;
    float *x;      /* [chunk, hidden] residual stream */
    float *logits; /* [NMLX_LOGIT_ROWS, vocab] */
    nmlx_decoder_buffers buf;
} std_state;

#endif
