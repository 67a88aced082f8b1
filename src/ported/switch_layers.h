/* Mixture-of-experts layers.
 * Port of mlx-lm mlx_lm/models/switch_layers.py `SwitchLinear`, `SwitchGLU`,
 * `_gather_sort` and `_scatter_unsort` at
 * ml-explore/mlx-lm@d78bf58e217c904ec282ed8da9b947491f78c022.
 *
 * A SwitchLinear holds E experts' [out, in] weights (+ [out] biases); a
 * SwitchGLU runs, for each (token t, slot j) pair with expert
 * e = indices[t, j]:  y[t, j] = down_e(act(gate_e(x[t]), up_e(x[t]))).
 * Like mlx-lm's gather-sort path, pairs are first grouped by expert, so
 * each expert runs one matmul over all of its tokens (prefill) instead of
 * one per token; results are scattered back to pair order. mlx-lm sorts
 * only when indices.size >= 64; here the grouping is always done (the
 * result is the same, and a single token needs one matmul per expert
 * either way). Where weights come from (views of the checkpoint or a
 * repack): src/shared/moe_sanitize.h. */
#ifndef NMLX_PORTED_SWITCH_LAYERS_H
#define NMLX_PORTED_SWITCH_LAYERS_H

#include "common.h"
#include "compute/backend.h"

typedef struct nmlx_switch_linear {
    int64_t n_experts, in, out;
    nmlx_weight *w;    /* [E]: expert e's [out, in] weight (dense or quantized) */
    nmlx_tensor *bias; /* [E]: expert e's [out] bias, or NULL for none */
} nmlx_switch_linear;

/* The activation between gate/up and down. */
typedef enum nmlx_switch_act {
    NMLX_SWITCH_SWIGLU = 0,     /* silu(gate) * up (mlx-lm activations.swiglu) */
    NMLX_SWITCH_SWIGLU_CLIPPED  /* gpt-oss: backend op swiglu_clipped(alpha, limit) */
} nmlx_switch_act;

typedef struct nmlx_switch_glu {
    nmlx_switch_linear gate, up, down; /* gate/up [E, hidden, in], down [E, in, hidden] */
    nmlx_switch_act act;
    float alpha, limit;                /* SWIGLU_CLIPPED only */
    int64_t in, hidden;
} nmlx_switch_glu;

/* Work buffers for up to P = tokens * top_k pairs. */
typedef struct nmlx_switch_buffers {
    int64_t max_pairs, n_experts;
    float *xs;        /* [P, in] inputs gathered in expert order (backend) */
    float *gate, *up; /* [P, hidden] (backend) */
    float *ys;        /* [P, in] outputs in expert order (backend) */
    int32_t *order;   /* [P] host: pair index at each sorted position */
    int64_t *start;   /* [E + 1] host: expert e's pairs are sorted positions start[e]..start[e+1] */
} nmlx_switch_buffers;

/* Allocates the arrays of E experts (weights zeroed); the caller fills them. */
nmlx_status nmlx_switch_linear_init(nmlx_switch_linear *l, int64_t n_experts, int64_t in,
                                    int64_t out, bool bias);
void nmlx_switch_linear_free(nmlx_switch_linear *l);

/* y[n, out] = x[n, in] @ W_e^T (+ b_e): n rows that all go to expert e. */
void nmlx_switch_linear_forward(nmlx_backend *be, const nmlx_switch_linear *l, int64_t e,
                                const float *x, float *y, int64_t n);

nmlx_status nmlx_switch_buffers_alloc(nmlx_switch_buffers *b, nmlx_backend *be,
                                      int64_t max_pairs, int64_t n_experts, int64_t in,
                                      int64_t hidden);
void nmlx_switch_buffers_free(nmlx_switch_buffers *b, nmlx_backend *be);

/* _gather_sort: groups the P = T * k pairs of indices[T, k] (host, each in
 * [0, E)) by expert, stably: fills b->order and b->start. */
void nmlx_switch_gather_sort(nmlx_switch_buffers *b, const int32_t *indices, int64_t P);

/* SwitchGLU: y[T * k, in] (pair order: row t * k + j) for x[T, in] and
 * indices[T, k] (host memory, validated by the caller: 0 <= e < E,
 * T * k <= b->max_pairs). */
void nmlx_switch_glu_forward(nmlx_backend *be, const nmlx_switch_glu *g, const float *x,
                             const int32_t *indices, int64_t T, int64_t k,
                             nmlx_switch_buffers *b, float *y);

#endif
