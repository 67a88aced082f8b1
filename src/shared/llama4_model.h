/* The Llama 4 text model (HF Llama4ForCausalLM, and the language model of
 * Llama4ForConditionalGeneration; the vision tower is ignored):
 *   x = embed(ids)
 *   each layer:  x += attn(norm1(x));  x += ffn(norm2(x))
 *   logits = lm_head(norm(x))
 * Attention (llama4_attention.c), per layer kind:
 *   RoPE layers (no_rope_layers[i] = 1): RoPE on q and k (interleaved pairs
 *     (2j, 2j+1) when def->rope_interleaved), then a weightless L2 (RMS) norm
 *     of each q/k head if use_qk_norm; attention within attention_chunk_size
 *     chunks, KV cache holding the live chunk and the one before
 *     (chunked_kv_cache.h);
 *   NoPE layers: no RoPE, full causal attention, queries scaled by
 *     1 + attn_scale * log1p(floor((pos + 1) / floor_scale)) if
 *     attn_temperature_tuning.
 * Feed-forward (llama4_moe.c), module `<ffn_module>`: on MoE layers
 * (moe_layers, else every interleave_moe_layer_step-th) top-k routing with
 * a sigmoid on the chosen router logits, each routed expert fed its input
 * times its score, plus a shared expert for every token; elsewhere a dense
 * SwiGLU MLP of width intermediate_size_mlp.
 * Follows transformers' modeling_llama4.py; where mlx-lm's llama4.py differs,
 * transformers wins: the L2 qk-norm epsilon is rms_norm_eps (mlx-lm 1e-6),
 * NoPE and MoE layers come from the config (mlx-lm: every 4th layer NoPE,
 * interleave step only), and llama4_text checkpoints load as well as llama4.
 * Runs on the CPU backend (routing and RoPE read host memory).
 * Rollback: a chunked layer keeps its live chunk and the one before, so
 * trims and the rollback of a cancelled call are exact back to the start of
 * the chunk before; further back (a cancelled prompt eval that crossed two
 * chunk boundaries, a long trim) the session refuses further evals with a
 * message until it is reset or trimmed to a chunk boundary
 * (chunked_kv_cache.h). Single-token calls (decode) check for cancellation
 * only before they start.
 * A family's generated file fills an nmlx_l4_def and binds nmlx_l4_*. */
#ifndef NMLX_LLAMA4_MODEL_H
#define NMLX_LLAMA4_MODEL_H

#include "chunked_kv_cache.h"
#include "family.h"
#include "layer_cache.h"
#include "mlp.h"
#include "moe.h"
#include "ported/rope.h"
#include "standard_model.h" /* nmlx_feature */

typedef struct nmlx_l4_def {
    /* features */
    bool rope_interleaved;                  /* RoPE pairs (2j, 2j+1), not (j, j + HD/2) */
    nmlx_feature qk_l2_norm;                /* config use_qk_norm (RoPE layers only) */
    nmlx_feature attn_temperature_tuning;   /* config attn_temperature_tuning (NoPE layers) */
    nmlx_feature no_rope_layers;            /* config no_rope_layers / no_rope_layer_interval */
    bool chunked_attention;                 /* RoPE layers attend within attention_chunk_size */
    nmlx_feature attention_bias;            /* config attention_bias: q/k/v/o biases */
    bool moe_shared_expert;                 /* `<ffn>.shared_expert` added for every token */
    nmlx_feature moe_layers;                /* config moe_layers / interleave_moe_layer_step */
    const char *ffn_module;                 /* "feed_forward" */
    const char *router_name, *stacked_name; /* `<ffn>.router`, mlx-lm `<ffn>.experts.*_proj` */
    const char *expert_size_key;            /* experts and shared expert width */
    const char *dense_size_key;             /* dense layers' MLP width */
    /* transformers' defaults (Llama4TextConfig) */
    double rms_norm_eps, rope_theta, floor_scale, attn_scale;
    bool tie_word_embeddings;
    int64_t max_position_embeddings, head_dim, no_rope_layer_interval, attention_chunk_size;
    int64_t interleave_moe_layer_step;
    int64_t intermediate_size_mlp; /* dense width default (0 = intermediate_size) */
    const char *hidden_act;
} nmlx_l4_def;

nmlx_status nmlx_l4_build(const void *def, const nmlx_load_ctx *ctx, void **arch,
                          nmlx_arch_info *info);
void nmlx_l4_destroy(void *arch, nmlx_backend *be);
nmlx_status nmlx_l4_state_create(const void *arch, nmlx_backend *be, int64_t max_context,
                                 void **state);
void nmlx_l4_state_free(void *state, nmlx_backend *be);
int64_t nmlx_l4_state_position(const void *state);
void nmlx_l4_state_trim(void *state, int64_t n);
nmlx_status nmlx_l4_forward(const void *arch, void *state, nmlx_backend *be, const int32_t *ids,
                            int64_t T, float *last_logits, float *all_logits, atomic_bool *cancel);
/* Batched decode (family.h forward_batch; llama4_batch.c). */
nmlx_status nmlx_l4_batch_create(const void *arch, nmlx_backend *be, int64_t max_batch,
                                 void **batch);
void nmlx_l4_batch_free(void *batch, nmlx_backend *be);
nmlx_status nmlx_l4_forward_batch(const void *arch, void *batch, void *const *states,
                                  nmlx_backend *be, const int32_t *ids, int64_t B,
                                  float *const *logits);

/* ---- blocks (llama4_attention.c, llama4_moe.c) ---- */

typedef struct nmlx_l4_attention {
    int64_t hidden, heads, kv_heads, head_dim;
    nmlx_linear q, k, v, o;
    const nmlx_rope *rope; /* NULL: NoPE layer */
    bool interleaved;      /* RoPE pairing */
    bool qk_norm;          /* L2 norm of q, k heads after RoPE */
    float norm_eps;
    bool tune; /* temperature tuning (NoPE layers) */
    double floor_scale, attn_scale;
    bool chunked; /* cache is chunked (RoPE layers) */
} nmlx_l4_attention;

/* One layer's cache: chunked (RoPE layers) or the standard growing one. */
typedef struct nmlx_l4_cache {
    bool chunked;
    nmlx_chunked_kv_cache ck;
    nmlx_layer_cache full;
} nmlx_l4_cache;

typedef struct nmlx_l4_buffers {
    float *q, *k, *v, *ctx; /* [T, H*HD], [T, KVH*HD] x2, [T, H*HD] */
    float *scratch;         /* n_threads * max_context floats */
} nmlx_l4_buffers;

nmlx_status nmlx_l4_attention_load(nmlx_l4_attention *a, const nmlx_weights *ws, const char *prefix,
                                   bool bias);
/* out[T, hidden] = attention(x[T, hidden]) at the cache's next T positions. */
void nmlx_l4_attention_forward(nmlx_backend *be, const nmlx_l4_attention *a, nmlx_l4_cache *c,
                               const nmlx_l4_buffers *b, const float *x, float *out, int64_t T);

/* Batched decode: B rows of x, row r one token of the session whose cache is
 * caches[r] (attention scratch scratch[r]); b holds B rows. */
void nmlx_l4_attention_forward_rows(nmlx_backend *be, const nmlx_l4_attention *a,
                                    nmlx_l4_cache *const *caches, float *const *scratch,
                                    const nmlx_l4_buffers *b, const float *x, float *out,
                                    int64_t B);

/* In place on x[T, H, HD]: pairs (2j, 2j+1) rotated by (pos0 + t) * freqs[j]
 * (host memory). */
void nmlx_rope_interleaved(float *x, int64_t T, int64_t H, int64_t HD, int64_t pos0,
                           const float *freqs);

typedef struct nmlx_l4_moe {
    nmlx_moe moe;    /* router + routed experts (routing NMLX_MOE_TOPK_SIGMOID) */
    nmlx_mlp shared; /* shared expert, or zeroed if none */
    bool has_shared;
} nmlx_l4_moe;

typedef struct nmlx_l4_moe_buffers {
    nmlx_moe_buffers mb;
    float *xs;         /* [T * k, D] routed inputs, scaled by their scores */
    int32_t *pair_idx; /* [T * k] */
} nmlx_l4_moe_buffers;

nmlx_status nmlx_l4_moe_load(nmlx_l4_moe *m, const nmlx_weights *ws, nmlx_backend *be,
                             const char *prefix, const nmlx_moe_shape *s, bool shared,
                             nmlx_act act);
void nmlx_l4_moe_free(nmlx_l4_moe *m, nmlx_backend *be);
nmlx_status nmlx_l4_moe_buffers_alloc(nmlx_l4_moe_buffers *b, nmlx_backend *be, int64_t T,
                                      const nmlx_moe_shape *s);
void nmlx_l4_moe_buffers_free(nmlx_l4_moe_buffers *b, nmlx_backend *be);
/* out[T, D] = shared(x) + sum_j expert_{idx[t, j]}(x[t] * score[t, j]);
 * gate/up [T, shared width] scratch. out must not alias x. */
void nmlx_l4_moe_forward(nmlx_backend *be, const nmlx_l4_moe *m, nmlx_l4_moe_buffers *b,
                         const float *x, float *gate, float *up, float *out, int64_t T);

#endif
