/* The standard decoder-only transformer that simple families bind to
 * (Llama, Qwen2, Qwen3, Mistral, Ministral, Phi-3, SmolLM3, Gemma 3):
 * token embedding, N pre-norm decoder layers (GQA attention + gated MLP),
 * final RMSNorm, tied or untied LM head. Per layer: full or sliding-window
 * attention (by config layer_types or a sliding_window_pattern), RoPE or
 * none (NoPE layers), global or local RoPE base.
 * A family's generated file fills an nmlx_std_def with its features and
 * transformers' config defaults and points its nmlx_family at the
 * nmlx_std_* functions below. */
#ifndef NMLX_STANDARD_MODEL_H
#define NMLX_STANDARD_MODEL_H

#include "family.h"
#include "moe.h"

/* A feature that is always off, always on, or read from a config key. */
typedef enum nmlx_feature {
    NMLX_FEATURE_OFF = 0,
    NMLX_FEATURE_ON = 1,
    NMLX_FEATURE_FROM_CONFIG = 2
} nmlx_feature;

/* The sparse MoE MLP of a family (moe.h), NULL in nmlx_std_def when dense. */
typedef struct nmlx_std_moe {
    nmlx_moe_routing routing;
    nmlx_feature norm_topk; /* SOFTMAX_TOPK renormalisation (config: norm_topk_prob) */
    bool router_bias, expert_bias;
    bool clipped_swiglu; /* gpt-oss activation; limit = config swiglu_limit */
    double swiglu_limit_default;
    /* MoE only on layers picked by config decoder_sparse_step / mlp_only_layers
     * (the others get a dense MLP of intermediate_size); false = every layer */
    bool sparse_layers;
    const char *expert_size_key; /* config key of the experts' intermediate size */
    const char *router_name;     /* `mlp.<router_name>` */
    const char *stacked_name;    /* mlx-lm stacked experts `mlp.<stacked_name>.*_proj` */
} nmlx_std_moe;

typedef struct nmlx_std_def {
    /* architecture features */
    nmlx_feature qkv_bias; /* q/k/v projections have a bias (config: attention_bias) */
    nmlx_feature o_bias;   /* o_proj has a bias (config: attention_bias) */
    nmlx_feature mlp_bias; /* gate/up/down have a bias (config: mlp_bias) */
    bool qk_norm;          /* per-head RMSNorm of q and k before RoPE */
    /* sliding window: OFF; ON = config sliding_window applies when non-null;
     * FROM_CONFIG = only when config use_sliding_window is true */
    nmlx_feature sliding_window;
    bool fused_qkv;      /* one self_attn.qkv_proj instead of q/k/v_proj (Phi-3) */
    bool fused_gate_up;  /* one mlp.gate_up_proj instead of gate/up_proj (Phi-3) */
    bool gemma_norms;    /* RMSNorm weights as (1 + w) */
    bool sandwich_norms; /* pre/post feed-forward norms and a post-attention norm (Gemma) */
    bool embed_scale;    /* embeddings multiplied by sqrt(hidden_size) (Gemma) */
    /* layers without RoPE: FROM_CONFIG = config no_rope_layers (1 = RoPE),
     * else one NoPE layer every no_rope_layer_interval (SmolLM3) */
    nmlx_feature no_rope_layers;
    bool layer_types; /* per-layer sliding/full attention from config layer_types */
    /* sliding window pattern when layer_types is absent: every pattern-th
     * layer is full (config sliding_window_pattern); 0 = all layers alike */
    int64_t sliding_window_pattern;
    bool local_rope;            /* sliding layers have their own RoPE base (Gemma 3) */
    bool query_pre_attn_scalar; /* attention scale 1/sqrt(config query_pre_attn_scalar) */
    bool final_logit_softcap;   /* logits = cap * tanh(logits / cap) if configured */
    bool llama4_query_scale;    /* rope_parameters.llama_4_scaling_beta scales queries */
    bool attn_sinks;            /* learned per-head attention sinks `self_attn.sinks` */
    const nmlx_std_moe *moe;    /* sparse MoE MLP (NULL = dense) */
    /* transformers' defaults for keys a config.json may omit */
    double rms_norm_eps;
    double rope_theta;
    bool tie_word_embeddings;
    int64_t max_position_embeddings;
    int64_t head_dim; /* 0 = hidden_size / num_attention_heads */
    const char *hidden_act;
    const char *act_key;            /* config key of the activation ("hidden_act") */
    int64_t sliding_window_default; /* window when the key is absent (0 = none) */
    double rope_local_theta;        /* local_rope: default base */
    double query_pre_attn_scalar_default;
    int64_t no_rope_layer_interval; /* default interval */
} nmlx_std_def;

nmlx_status nmlx_std_build(const void *def, const nmlx_load_ctx *ctx, void **arch,
                           nmlx_arch_info *info);
void nmlx_std_destroy(void *arch, nmlx_backend *be);
nmlx_status nmlx_std_state_create(const void *arch, nmlx_backend *be, int64_t max_context,
                                  void **state);
void nmlx_std_state_free(void *state, nmlx_backend *be);
int64_t nmlx_std_state_position(const void *state);
void nmlx_std_state_trim(void *state, int64_t n);
struct nmlx_layer_cache *nmlx_std_state_caches(void *state, int64_t *n_layers);
nmlx_status nmlx_std_forward(const void *arch, void *state, nmlx_backend *be, const int32_t *ids,
                             int64_t T, float *last_logits, float *all_logits, atomic_bool *cancel);
/* Batched decode (family.h forward_batch; standard_batch.c). */
nmlx_status nmlx_std_batch_create(const void *arch, nmlx_backend *be, int64_t max_batch,
                                  void **batch);
void nmlx_std_batch_free(void *batch, nmlx_backend *be);
nmlx_status nmlx_std_forward_batch(const void *arch, void *batch, void *const *states,
                                   nmlx_backend *be, const int32_t *ids, int64_t B,
                                   float *const *logits);

/* Maps a config hidden_act string to an activation; NMLX_ERR_UNSUPPORTED
 * naming the value otherwise. */
nmlx_status nmlx_parse_activation(const char *name, nmlx_act *out);
/* A feature's value: fixed by the family (OFF / ON), or config `key`
 * (bool, `def` when absent) for FROM_CONFIG. */
nmlx_status nmlx_cfg_feature(const nmlx_cfg *cfg, nmlx_feature f, const char *key, bool def,
                             bool *out);

#endif
