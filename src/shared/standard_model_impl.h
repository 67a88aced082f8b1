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

/* Work buffers for passes of up to `rows` tokens: x [rows, hidden] (the
 * residual stream), the LM head's staging logits [NMLX_LOGIT_ROWS, vocab]
 * and the layers' buffers (MoE ones where the model has MoE layers); the
 * attention scratch is the session's (std_state). */
typedef struct std_buffers {
    float *x, *logits;
    nmlx_decoder_buffers buf;
} std_buffers;

/* The free accepts a partly allocated set (and frees buf.attn.scratch). */
nmlx_status std_buffers_alloc(const std_model *m, nmlx_backend *be, int64_t rows, std_buffers *b);
void std_buffers_free(std_buffers *b, nmlx_backend *be);

typedef struct std_state {
    nmlx_layer_cache *caches; /* one per layer */
    int64_t n_layers, chunk;
    std_buffers w; /* chunk rows; w.buf.attn.scratch: n_threads * group * max_context */
} std_state;

#endif
