/* Standard multi-head attention with GQA: q/k/v/o projections (optional
 * biases), optional per-head RMSNorm of q and k (Qwen3), RoPE, a KV cache,
 * causal (optionally sliding-window) softmax attention. */
#ifndef NMLX_ATTENTION_H
#define NMLX_ATTENTION_H

#include "layers.h"
#include "ported/kv_cache.h"
#include "ported/rope.h"

typedef struct nmlx_attention_shape {
    int64_t hidden, heads, kv_heads, head_dim;
    bool qkv_bias, o_bias, qk_norm;
    float norm_eps;
    float scale;    /* usually 1/sqrt(head_dim) */
    int64_t window; /* 0 = full causal */
} nmlx_attention_shape;

typedef struct nmlx_attention {
    nmlx_attention_shape s;
    nmlx_linear q, k, v, o;
    nmlx_rmsnorm q_norm, k_norm; /* if s.qk_norm */
    const nmlx_rope *rope;       /* owned by the model; NULL = no RoPE */
} nmlx_attention;

/* Work buffers for T tokens, backend memory. */
typedef struct nmlx_attention_buffers {
    float *q;       /* [T, H, HD] */
    float *k, *v;   /* [T, KVH, HD] */
    float *ctx;     /* [T, H, HD] */
    float *scratch; /* n_threads * max_context floats */
} nmlx_attention_buffers;

/* Loads `<prefix>.{q,k,v,o}_proj` and `<prefix>.{q,k}_norm`. */
nmlx_status nmlx_attention_load(nmlx_attention *a, const nmlx_weights *ws, const char *prefix,
                                const nmlx_attention_shape *s, const nmlx_rope *rope);
/* out[T, hidden] = attention(x[T, hidden]), appending T positions to cache
 * (which must have room: nmlx_kv_cache_reserve). */
void nmlx_attention_forward(nmlx_backend *be, const nmlx_attention *a, nmlx_kv_cache *cache,
                            const nmlx_attention_buffers *buf, const float *x, float *out,
                            int64_t T);

#endif
