/* Llama 4 mixture-of-experts block (see llama4_model.h): the routed experts
 * take their input scaled by the router score, which is not the same as
 * scaling their output (the expert MLP is not linear), so every (token,
 * slot) pair becomes its own row: xs[t * k + j] = x[t] * score[t, j], run
 * through the SwitchGLU as one expert per row. */
#include "llama4_model.h"

#include <stdio.h>
#include <string.h>

nmlx_status nmlx_l4_moe_load(nmlx_l4_moe *m, const nmlx_weights *ws, nmlx_backend *be,
                             const char *prefix, const nmlx_moe_shape *s, bool shared,
                             nmlx_act act) {
    char name[512];
    nmlx_status st;
    memset(m, 0, sizeof *m);
    if ((st = nmlx_moe_load(&m->moe, ws, be, prefix, s))) return st;
    m->has_shared = shared;
    if (!shared) return NMLX_OK;
    snprintf(name, sizeof name, "%s.shared_expert", prefix);
    if ((st = nmlx_mlp_load(&m->shared, ws, name, s->hidden, s->expert_hidden, false, false, act)))
        return st;
    nmlx_linear *l[3] = {&m->shared.gate, &m->shared.up, &m->shared.down};
    for (int i = 0; i < 3; i++)
        if ((st = nmlx_linear_prepare(be, l[i]))) return st;
    return NMLX_OK;
}

void nmlx_l4_moe_free(nmlx_l4_moe *m, nmlx_backend *be) {
    if (m) nmlx_moe_free(&m->moe, be);
}

nmlx_status nmlx_l4_moe_buffers_alloc(nmlx_l4_moe_buffers *b, nmlx_backend *be, int64_t T,
                                      const nmlx_moe_shape *s) {
    memset(b, 0, sizeof *b);
    nmlx_status st = nmlx_moe_buffers_alloc(&b->mb, be, T, s);
    if (st) return st;
    size_t P = (size_t)(T * s->top_k);
    b->xs = be->ops->alloc(be, P * (size_t)s->hidden * sizeof(float));
    b->pair_idx = nmlx_calloc(P, sizeof *b->pair_idx);
    if (!b->xs || !b->pair_idx) {
        nmlx_l4_moe_buffers_free(b, be);
        return nmlx_fail(NMLX_ERR_NOMEM, "out of memory for MoE buffers (%lld tokens)",
                         (long long)T);
    }
    return NMLX_OK;
}

void nmlx_l4_moe_buffers_free(nmlx_l4_moe_buffers *b, nmlx_backend *be) {
    nmlx_moe_buffers_free(&b->mb, be);
    if (b->xs) be->ops->free(be, b->xs);
    nmlx_free(b->pair_idx);
    b->xs = NULL;
    b->pair_idx = NULL;
}

void nmlx_l4_moe_forward(nmlx_backend *be, const nmlx_l4_moe *m, nmlx_l4_moe_buffers *b,
                         const float *x, float *gate, float *up, float *out, int64_t T) {
    const nmlx_moe_shape *s = &m->moe.s;
    int64_t E = s->n_experts, k = s->top_k, D = s->hidden;
    nmlx_moe_buffers *mb = &b->mb;
    nmlx_linear_forward(be, &m->moe.router, x, mb->logits, T);
    be->ops->download(be, mb->host, mb->logits, (size_t)(T * E) * sizeof(float));
    nmlx_moe_route(s, mb->host, T, mb->idx, mb->scores);
    /* xs[t * k + j] = x[t] * score[t, j]; one expert per row */
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < k; j++) {
            float *r = b->xs + (t * k + j) * D;
            be->ops->copy(be, r, x + t * D, (size_t)D * sizeof(float));
            be->ops->scale(be, r, mb->scores[t * k + j], D);
            b->pair_idx[t * k + j] = mb->idx[t * k + j];
        }
    nmlx_switch_glu_forward(be, &m->moe.experts, b->xs, b->pair_idx, T * k, 1, &mb->sw, mb->y);
    if (m->has_shared) nmlx_mlp_forward(be, &m->shared, x, gate, up, out, T);
    /* without a shared expert the sum starts at the first slot's output
     * (backend ops only: out may be device memory) */
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < k; j++) {
            const float *y = mb->y + (t * k + j) * D;
            if (j == 0 && !m->has_shared)
                be->ops->copy(be, out + t * D, y, (size_t)D * sizeof(float));
            else
                be->ops->add(be, out + t * D, y, out + t * D, D);
        }
}
