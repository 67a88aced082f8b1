/* Sparse mixture-of-experts MLP block: a router picks top_k of E experts per
 * token, the experts run as a SwitchGLU (ported/switch_layers.h) and their
 * outputs are summed with the routing weights:
 *   out[t] = sum_j score[t, j] * expert_{idx[t, j]}(x[t]).
 * Routing (host side, on the downloaded router logits):
 *   SOFTMAX_TOPK: p = softmax(logits); idx = top_k(p); score = p[idx],
 *                 divided by their sum if norm_topk (Qwen3-MoE, Mixtral...);
 *   TOPK_SOFTMAX: idx = top_k(logits); score = softmax(logits[idx]) (gpt-oss);
 *   TOPK_SIGMOID: idx = top_k(logits); score = sigmoid(logits[idx]) (Llama 4,
 *                 whose experts take the scores on their input: llama4_moe.c).
 * Ties in top_k go to the lower expert index. A backend with the
 * moe_experts op (backend.h; CUDA) runs the experts and the weighted sum
 * as that one op after the host's routing. */
#ifndef NMLX_MOE_H
#define NMLX_MOE_H

#include "layers.h"
#include "moe_sanitize.h"

typedef enum nmlx_moe_routing {
    NMLX_MOE_SOFTMAX_TOPK = 1,
    NMLX_MOE_TOPK_SOFTMAX = 2,
    NMLX_MOE_TOPK_SIGMOID = 3
} nmlx_moe_routing;

/* What one MoE block looks like (from the family's features and config). */
typedef struct nmlx_moe_shape {
    int64_t hidden, expert_hidden; /* D, expert intermediate size */
    int64_t n_experts, top_k;
    nmlx_moe_routing routing;
    bool norm_topk;            /* SOFTMAX_TOPK: renormalise the k scores */
    bool router_bias;
    bool expert_bias;
    nmlx_switch_act act;
    float alpha, limit;        /* SWIGLU_CLIPPED */
    const char *router_name;   /* module under the mlp prefix: "gate", "router" */
    const char *stacked_name;  /* mlx-lm stacked experts module: "switch_mlp", "experts" */
    bool gate_up_halves;       /* fused experts.gate_up_proj: gate columns then up columns
                                * (Llama 4), not interleaved (gpt-oss) */
} nmlx_moe_shape;

typedef struct nmlx_moe {
    nmlx_moe_shape s;
    nmlx_linear router;      /* [E, D] (+ bias) */
    nmlx_switch_glu experts;
    void *owned;             /* repacked expert weights (moe_sanitize.h) or NULL */
} nmlx_moe;

/* Work buffers for up to T tokens. */
typedef struct nmlx_moe_buffers {
    int64_t max_tokens, n_experts, top_k;
    float *logits;     /* [T, E] router output (backend) */
    float *host;       /* [T, E] router output (host) */
    int32_t *idx;      /* [T, k] chosen experts (host) */
    float *scores;     /* [T, k] their weights (host) */
    float *y;          /* [T * k, D] expert outputs in pair order (backend) */
    nmlx_switch_buffers sw;
} nmlx_moe_buffers;

/* Loads `<prefix>.<router_name>` and the experts under `<prefix>`. */
nmlx_status nmlx_moe_load(nmlx_moe *m, const nmlx_weights *ws, nmlx_backend *be,
                          const char *prefix, const nmlx_moe_shape *s);
void nmlx_moe_free(nmlx_moe *m, nmlx_backend *be);

nmlx_status nmlx_moe_buffers_alloc(nmlx_moe_buffers *b, nmlx_backend *be, int64_t max_tokens,
                                   const nmlx_moe_shape *s);
void nmlx_moe_buffers_free(nmlx_moe_buffers *b, nmlx_backend *be);

/* The routing of T tokens: logits [T, E] (host) -> idx, scores [T, k]. */
void nmlx_moe_route(const nmlx_moe_shape *s, const float *logits, int64_t T, int32_t *idx,
                    float *scores);

/* out[T, D] = moe(x[T, D]); T <= b->max_tokens. out must not alias x. */
void nmlx_moe_forward(nmlx_backend *be, const nmlx_moe *m, nmlx_moe_buffers *b, const float *x,
                      float *out, int64_t T);

#endif
