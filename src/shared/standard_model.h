/* The standard decoder-only transformer that simple families bind to
 * (Llama, Qwen2, Qwen3, Mistral): token embedding, N pre-norm decoder
 * layers (GQA attention + gated MLP), final RMSNorm, tied or untied LM head.
 * A family's generated file fills an nmlx_std_def with its features and
 * transformers' config defaults and points its nmlx_family at the
 * nmlx_std_* functions below. */
#ifndef NMLX_STANDARD_MODEL_H
#define NMLX_STANDARD_MODEL_H

#include "family.h"

/* A feature that is always off, always on, or read from a config key. */
typedef enum nmlx_feature {
    NMLX_FEATURE_OFF = 0,
    NMLX_FEATURE_ON = 1,
    NMLX_FEATURE_FROM_CONFIG = 2
} nmlx_feature;

typedef struct nmlx_std_def {
    /* architecture features */
    nmlx_feature qkv_bias; /* q/k/v projections have a bias (config: attention_bias) */
    nmlx_feature o_bias;   /* o_proj has a bias (config: attention_bias) */
    nmlx_feature mlp_bias; /* gate/up/down have a bias (config: mlp_bias) */
    bool qk_norm;          /* per-head RMSNorm of q and k before RoPE */
    /* sliding window: OFF; ON = config sliding_window applies when non-null;
     * FROM_CONFIG = only when config use_sliding_window is true */
    nmlx_feature sliding_window;
    /* transformers' defaults for keys a config.json may omit */
    double rms_norm_eps;
    double rope_theta;
    bool tie_word_embeddings;
    int64_t max_position_embeddings;
    int64_t head_dim; /* 0 = hidden_size / num_attention_heads */
    const char *hidden_act;
} nmlx_std_def;

nmlx_status nmlx_std_build(const void *def, const nmlx_load_ctx *ctx, void **arch,
                           nmlx_arch_info *info);
void nmlx_std_destroy(void *arch, nmlx_backend *be);
nmlx_status nmlx_std_state_create(const void *arch, nmlx_backend *be, int64_t max_context,
                                  void **state);
void nmlx_std_state_free(void *state, nmlx_backend *be);
int64_t nmlx_std_state_position(const void *state);
void nmlx_std_state_trim(void *state, int64_t n);
nmlx_status nmlx_std_forward(const void *arch, void *state, nmlx_backend *be,
                             const int32_t *ids, int64_t T, float *last_logits,
                             float *all_logits, atomic_bool *cancel);

/* Maps a config hidden_act string to an activation; NMLX_ERR_UNSUPPORTED
 * naming the value otherwise. */
nmlx_status nmlx_parse_activation(const char *name, nmlx_act *out);

#endif
