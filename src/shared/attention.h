/* Standard multi-head attention with GQA: q/k/v/o projections (optional
 * biases; q/k/v may be one fused qkv_proj), optional per-head RMSNorm of q
 * and k (Qwen3, Gemma 3), RoPE (or none: NoPE layers), a per-layer KV cache
 * (standard or rotating), causal (optionally sliding-window) softmax
 * attention, optional per-position query scaling (Ministral 3). */
#ifndef NMLX_ATTENTION_H
#define NMLX_ATTENTION_H

#include "layer_cache.h"
#include "layers.h"
#include "ported/rope.h"

typedef struct nmlx_attention_shape {
    int64_t hidden, heads, kv_heads, head_dim;
    bool qkv_bias, o_bias, qk_norm;
    bool fused_qkv; /* one `qkv_proj` holding q, k, v rows in that order */
    float norm_eps;
    float norm_offset; /* q/k norm weight offset (1 for Gemma's 1 + w) */
    float scale;       /* usually 1/sqrt(head_dim) */
    int64_t window;    /* 0 = full causal */
    /* llama 4 query scaling: q *= 1 + beta * ln(1 + floor(pos / period)); beta 0 = off */
    float q_scale_beta;
    int64_t q_scale_period;
} nmlx_attention_shape;

typedef struct nmlx_attention {
    nmlx_attention_shape s;
    nmlx_linear q, k, v, o;
    nmlx_linear qkv;             /* if s.fused_qkv: q, k, v are row views of it */
    nmlx_rmsnorm q_norm, k_norm; /* if s.qk_norm */
    const nmlx_rope *rope;       /* owned by the model; NULL = no RoPE */
    const float *sinks;          /* [H] learned sink logits (gpt-oss), backend memory owned
                                  * by the model; NULL = none */
} nmlx_attention;

/* Work buffers for T tokens, backend memory. */
typedef struct nmlx_attention_buffers {
    float *q;       /* [T, H, HD] */
    float *k, *v;   /* [T, KVH, HD] */
    float *ctx;     /* [T, H, HD] */
    float *scratch; /* n_threads * (heads / kv_heads) * max_context floats */
    /* Position after the last token of the current eval call (0 = this
     * chunk's end). Longrope picks its factor table per call, as
     * transformers does per forward, even when the call runs in chunks. */
    int64_t call_end;
} nmlx_attention_buffers;

/* A session's attention scratch (nmlx_attention_buffers.scratch; Llama 4's
 * too): n_threads * (heads / kv_heads) * max_context floats on the
 * backend, NULL if that allocation failed. */
float *nmlx_attention_scratch_alloc(nmlx_backend *be, int64_t heads, int64_t kv_heads,
                                    int64_t max_context);

/* Loads `<prefix>.{q,k,v,o}_proj` (or `qkv_proj`) and `<prefix>.{q,k}_norm`. */
nmlx_status nmlx_attention_load(nmlx_attention *a, const nmlx_weights *ws, const char *prefix,
                                const nmlx_attention_shape *s, const nmlx_rope *rope);
/* out[T, hidden] = attention(x[T, hidden]), appending T positions to cache
 * (which must have room: nmlx_layer_cache_reserve). */
void nmlx_attention_forward(nmlx_backend *be, const nmlx_attention *a, nmlx_layer_cache *cache,
                            const nmlx_attention_buffers *buf, const float *x, float *out,
                            int64_t T);
/* The same with pending != NULL: x is pending->xn, written first by the
 * pending residual add and norm (layers.h nmlx_pending_norm_run: fused
 * with the q/k/v projections where the backend can). resid != NULL: the
 * output projection may add into resid instead of writing out
 * (nmlx_linear_forward_residual): true when it did. */
bool nmlx_attention_forward_pending(nmlx_backend *be, const nmlx_attention *a,
                                    nmlx_layer_cache *cache, const nmlx_attention_buffers *buf,
                                    const nmlx_pending_norm *pending, const float *x, float *out,
                                    float *resid, int64_t T);

/* Batched decode: row b of x[B, hidden] is the next token of sequence b,
 * whose layer cache is caches[b] (room reserved) and attention scratch
 * scratch[b] (sized as nmlx_attention_buffers.scratch). Projections run over all
 * B rows at once (weights read once); each row's RoPE, cache append and
 * attention are that sequence's, as a one-token nmlx_attention_forward
 * (RoPE and attention as one rope_rows / attention_rows call over the rows
 * where the backend has them). */
void nmlx_attention_forward_rows(nmlx_backend *be, const nmlx_attention *a,
                                 nmlx_layer_cache *const *caches, float *const *scratch,
                                 const nmlx_attention_buffers *buf, const float *x, float *out,
                                 int64_t B);

#endif
