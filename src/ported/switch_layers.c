/* SwitchLinear / SwitchGLU with gather-sort (see switch_layers.h). */
#include "switch_layers.h"

#include <string.h>

nmlx_status nmlx_switch_linear_init(nmlx_switch_linear *l, int64_t n_experts, int64_t in,
                                    int64_t out, bool bias) {
    memset(l, 0, sizeof *l);
    l->n_experts = n_experts;
    l->in = in;
    l->out = out;
    l->w = nmlx_calloc((size_t)n_experts, sizeof *l->w);
    if (bias) l->bias = nmlx_calloc((size_t)n_experts, sizeof *l->bias);
    if (!l->w || (bias && !l->bias)) {
        nmlx_switch_linear_free(l);
        return nmlx_fail(NMLX_ERR_NOMEM, "out of memory for %lld experts", (long long)n_experts);
    }
    return NMLX_OK;
}

void nmlx_switch_linear_free(nmlx_switch_linear *l) {
    nmlx_free(l->w);
    nmlx_free(l->bias);
    l->w = NULL;
    l->bias = NULL;
}

void nmlx_switch_linear_forward(nmlx_backend *be, const nmlx_switch_linear *l, int64_t e,
                                const float *x, float *y, int64_t n) {
    be->ops->matmul(be, &l->w[e], l->bias ? &l->bias[e] : NULL, x, y, n);
}

nmlx_status nmlx_switch_buffers_alloc(nmlx_switch_buffers *b, nmlx_backend *be,
                                      int64_t max_pairs, int64_t n_experts, int64_t in,
                                      int64_t hidden) {
    size_t P = (size_t)max_pairs, f = sizeof(float);
    memset(b, 0, sizeof *b);
    b->max_pairs = max_pairs;
    b->n_experts = n_experts;
    b->xs = be->ops->alloc(be, P * (size_t)in * f);
    b->ys = be->ops->alloc(be, P * (size_t)in * f);
    b->gate = be->ops->alloc(be, P * (size_t)hidden * f);
    b->up = be->ops->alloc(be, P * (size_t)hidden * f);
    b->order = nmlx_calloc(P, sizeof *b->order);
    b->start = nmlx_calloc((size_t)n_experts + 1, sizeof *b->start);
    if (!b->xs || !b->ys || !b->gate || !b->up || !b->order || !b->start) {
        nmlx_switch_buffers_free(b, be);
        return nmlx_fail(NMLX_ERR_NOMEM, "out of memory for expert buffers (%lld pairs)",
                         (long long)max_pairs);
    }
    return NMLX_OK;
}

void nmlx_switch_buffers_free(nmlx_switch_buffers *b, nmlx_backend *be) {
    void *bufs[] = {b->xs, b->ys, b->gate, b->up};
    nmlx_backend_free_bufs(be, bufs, sizeof bufs / sizeof bufs[0]);
    nmlx_free(b->order);
    nmlx_free(b->start);
    memset(b, 0, sizeof *b);
}

/* Counting sort of pair indices by expert (a stable argsort of indices). */
void nmlx_switch_gather_sort(nmlx_switch_buffers *b, const int32_t *indices, int64_t P) {
    int64_t E = b->n_experts;
    memset(b->start, 0, (size_t)(E + 1) * sizeof *b->start);
    for (int64_t p = 0; p < P; p++) b->start[indices[p] + 1]++;
    for (int64_t e = 0; e < E; e++) b->start[e + 1] += b->start[e];
    /* fill using start[e] as a cursor, then shift the cursors back */
    for (int64_t p = 0; p < P; p++) b->order[b->start[indices[p]]++] = (int32_t)p;
    for (int64_t e = E; e > 0; e--) b->start[e] = b->start[e - 1];
    b->start[0] = 0;
}

void nmlx_switch_glu_forward(nmlx_backend *be, const nmlx_switch_glu *g, const float *x,
                             const int32_t *indices, int64_t T, int64_t k,
                             nmlx_switch_buffers *b, float *y) {
    int64_t P = T * k, D = g->in, I = g->hidden;
    size_t row = (size_t)D * sizeof(float);
    nmlx_switch_gather_sort(b, indices, P);
    /* gather: xs[s] = x[order[s] / k] */
    for (int64_t s = 0; s < P; s++) be->ops->copy(be, b->xs + s * D, x + (b->order[s] / k) * D, row);
    for (int64_t e = 0; e < g->gate.n_experts; e++) {
        int64_t s0 = b->start[e], n = b->start[e + 1] - s0;
        if (n == 0) continue;
        float *gt = b->gate + s0 * I, *up = b->up + s0 * I;
        nmlx_switch_linear_forward(be, &g->gate, e, b->xs + s0 * D, gt, n);
        nmlx_switch_linear_forward(be, &g->up, e, b->xs + s0 * D, up, n);
        if (g->act == NMLX_SWITCH_SWIGLU_CLIPPED)
            be->ops->swiglu_clipped(be, gt, up, gt, n * I, g->alpha, g->limit);
        else
            be->ops->act_mul(be, NMLX_ACT_SILU, gt, up, gt, n * I);
        nmlx_switch_linear_forward(be, &g->down, e, gt, b->ys + s0 * D, n);
    }
    /* _scatter_unsort: y[order[s]] = ys[s] */
    for (int64_t s = 0; s < P; s++) be->ops->copy(be, y + (int64_t)b->order[s] * D, b->ys + s * D, row);
}
