/* The Gemma 3n text model (HF Gemma3nForCausalLM, and the language model of
 * Gemma3nForConditionalGeneration; audio/vision towers are ignored):
 *   streams = AltUp(embed(ids) * sqrt(hidden))      K streams, magnitude-matched
 *   per-layer inputs = (embed_per_layer(ids) * sqrt(P)
 *                       + norm(per_layer_model_projection(x0) / sqrt(hidden))) / sqrt(2)
 *   for each layer: streams = layer(streams, per-layer input)   (emitted by hf2c)
 *   x = mean(stream 0, unembed_k(stream k) magnitude-matched)
 *   logits = softcap(lm_head(norm(x)))
 * Attention: q/k norm, v norm without a scale, scale 1, RoPE per layer type,
 * sliding/full layers by layer_types, and the last num_kv_shared_layers
 * reading the KV of the last earlier layer of their type. MLP: per-layer
 * intermediate sizes, Gaussian top-k activation sparsity on gate.
 *
 * The model skeleton (load, caches, embeddings, the final mix) lives here;
 * the decoder layer body is emitted by tools/hf2c into the family's
 * generated file and calls the blocks below. */
#ifndef NMLX_GEMMA3N_MODEL_H
#define NMLX_GEMMA3N_MODEL_H

#include "altup.h"
#include "attention.h"
#include "family.h"
#include "laurel.h"
#include "layer_cache.h"
#include "mlp.h"
#include "ported/rope.h"

struct nmlx_g3n_model;
struct nmlx_g3n_state;

typedef struct nmlx_g3n_def {
    /* feature switches (what the emitted layer uses) */
    bool laurel;           /* Laurel low-rank residual per layer */
    bool per_layer_inputs; /* embed_tokens_per_layer + per-layer gates */
    bool kv_sharing;       /* last num_kv_shared_layers reuse earlier KV */
    bool activation_sparsity; /* Gaussian top-k on the MLP gate (activation_sparsity_pattern) */
    bool v_norm;           /* RMSNorm without scale on v */
    /* transformers' defaults (Gemma3nTextConfig) */
    double rms_norm_eps, rope_theta, rope_local_theta, final_logit_softcapping, altup_coef_clip;
    int64_t max_position_embeddings, head_dim, sliding_window;
    int64_t full_layer_every; /* layer_types absent: every n-th layer is full */
    int64_t altup_num_inputs, altup_active_idx, laurel_rank;
    int64_t hidden_size_per_layer_input, vocab_size_per_layer_input, num_kv_shared_layers;
    bool altup_correct_scale, tie_word_embeddings;
    const char *hidden_act, *act_key;
    /* the decoder layer, emitted by hf2c: streams -> state pred (next streams) */
    void (*layer_forward)(nmlx_backend *be, const struct nmlx_g3n_model *m,
                          struct nmlx_g3n_state *s, int64_t layer, int64_t T);
} nmlx_g3n_def;

typedef struct nmlx_g3n_layer {
    nmlx_rmsnorm input_norm, post_attn_norm, pre_ffn_norm, post_ffn_norm;
    nmlx_linear q, k, v, o;
    nmlx_rmsnorm q_norm, k_norm, v_norm; /* v_norm: no weight */
    const nmlx_rope *rope;
    int64_t window;    /* 0 = full attention */
    int64_t kv_source; /* -1: own cache; else the layer whose KV this one reads */
    nmlx_mlp mlp;
    float sparsity_mult; /* std multiplier of the Gaussian top-k; used if sparse */
    bool sparse;
    nmlx_altup altup;
    nmlx_laurel laurel;
    nmlx_linear pl_gate, pl_proj; /* per_layer_input_gate [P, H], per_layer_projection [H, P] */
    nmlx_rmsnorm pl_norm;         /* post_per_layer_input_norm */
} nmlx_g3n_layer;

typedef struct nmlx_g3n_model {
    const nmlx_g3n_def *def;
    int64_t hidden, n_layers, heads, kv_heads, head_dim, vocab, max_inter;
    int64_t K, active; /* AltUp streams */
    int64_t pl_dim, pl_vocab, laurel_rank;
    nmlx_act act;
    nmlx_weight embed, embed_pl;
    float embed_scale, embed_pl_scale;
    nmlx_linear pl_model_proj;
    nmlx_rmsnorm pl_proj_norm;
    nmlx_linear *altup_proj, *altup_unembed; /* K - 1 each */
    nmlx_linear lm_head;
    nmlx_rmsnorm norm;
    float softcap; /* 0 = off */
    nmlx_rope rope, local_rope;
    nmlx_g3n_layer *layers;
} nmlx_g3n_model;

/* Work buffers; the emitted layer reads and writes these. */
typedef struct nmlx_g3n_state {
    nmlx_layer_cache *caches; /* per layer; only layers with kv_source < 0 own one */
    nmlx_kv_view *views;      /* per layer: the KV its attention read this chunk */
    int64_t n_layers, chunk, pos; /* pos: position of the chunk's first token */
    int64_t stride;     /* floats between AltUp streams: chunk * hidden */
    float *streams;     /* [K, chunk, hidden] layer input */
    float *pred;        /* [K, chunk, hidden] predictions, corrected into the layer output */
    float *pli;         /* [chunk, n_layers, P] per-layer inputs */
    float *pl_emb;      /* [chunk, n_layers, P] their embedding part */
    float *xn, *h, *tmp, *aux; /* [chunk, hidden] */
    float *low;         /* [chunk, laurel_rank] */
    float *gate, *up;   /* [chunk, max intermediate] */
    float *router;      /* [chunk, K] */
    float *plg;         /* [chunk, P] */
    float *logits;      /* [NMLX_LOGIT_ROWS, vocab] */
    int32_t *pl_ids;    /* [chunk] ids clamped to the per-layer vocabulary */
    nmlx_attention_buffers attn; /* q, k, v, ctx for chunk tokens; scratch */
} nmlx_g3n_state;

/* ---- blocks the emitted layer calls -------------------------------------- */

/* out [T, hidden] = o_proj(attention(xn)); updates the layer's cache (or
 * reads its source layer's KV). */
void nmlx_g3n_attention(nmlx_backend *be, const nmlx_g3n_model *m, nmlx_g3n_state *s,
                        int64_t layer, const float *xn, float *out, int64_t T);
/* out [T, hidden] = down(act(sparsify(gate(x))) * up(x)). */
void nmlx_g3n_mlp(nmlx_backend *be, const nmlx_g3n_model *m, nmlx_g3n_state *s, int64_t layer,
                  const float *x, float *out, int64_t T);
/* out [T, hidden] = norm(per_layer_projection(act(per_layer_input_gate(first)) * pli[:, layer]))
 * with first = the corrected active stream, scaled by correct_output_scale
 * if altup_correct_scale. */
void nmlx_g3n_per_layer_input(nmlx_backend *be, const nmlx_g3n_model *m, nmlx_g3n_state *s,
                              int64_t layer, const float *first, float *out, int64_t T);

/* Every weight of a built model handed to the backend (gemma3n_prepare.c):
 * on the CPU nothing changes; on a device backend the model reads the
 * device copies. */
nmlx_status nmlx_g3n_prepare(nmlx_g3n_model *m, nmlx_backend *be);

/* ---- nmlx_family functions ------------------------------------------------- */

nmlx_status nmlx_g3n_build(const void *def, const nmlx_load_ctx *ctx, void **arch,
                           nmlx_arch_info *info);
void nmlx_g3n_destroy(void *arch, nmlx_backend *be);
nmlx_status nmlx_g3n_state_create(const void *arch, nmlx_backend *be, int64_t max_context,
                                  void **state);
void nmlx_g3n_state_free(void *state, nmlx_backend *be);
int64_t nmlx_g3n_state_position(const void *state);
void nmlx_g3n_state_trim(void *state, int64_t n);
nmlx_status nmlx_g3n_forward(const void *arch, void *state, nmlx_backend *be,
                             const int32_t *ids, int64_t T, float *last_logits,
                             float *all_logits, atomic_bool *cancel);

/* The standard normal quantile of p in (0, 1): sqrt(2) * erfinv(2p - 1). */
double nmlx_normal_quantile(double p);

#endif
