/* Sparse MoE block (see moe.h). */
#include "moe.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

nmlx_status nmlx_moe_load(nmlx_moe *m, const nmlx_weights *ws, nmlx_backend *be, const char *prefix,
                          const nmlx_moe_shape *s) {
    char name[512];
    nmlx_status st;
    memset(m, 0, sizeof *m);
    m->s = *s;
    snprintf(name, sizeof name, "%s.%s", prefix, s->router_name);
    if ((st = nmlx_linear_load(&m->router, ws, name, s->n_experts, s->hidden, s->router_bias)))
        return st;
    if ((st = nmlx_linear_prepare(be, &m->router))) return st;
    nmlx_moe_experts_spec spec = {
        .prefix = prefix,
        .stacked = s->stacked_name,
        .n_experts = s->n_experts,
        .in = s->hidden,
        .hidden = s->expert_hidden,
        .bias = s->expert_bias,
        .gate_up_halves = s->gate_up_halves,
    };
    if ((st = nmlx_moe_experts_load(&m->experts, &m->owned, ws, be, &spec))) return st;
    m->experts.act = s->act;
    m->experts.alpha = s->alpha;
    m->experts.limit = s->limit;
    return NMLX_OK;
}

void nmlx_moe_free(nmlx_moe *m, nmlx_backend *be) {
    if (!m) return;
    nmlx_moe_experts_free(&m->experts, m->owned, be);
    m->owned = NULL;
}

nmlx_status nmlx_moe_buffers_alloc(nmlx_moe_buffers *b, nmlx_backend *be, int64_t max_tokens,
                                   const nmlx_moe_shape *s) {
    size_t T = (size_t)max_tokens, E = (size_t)s->n_experts, k = (size_t)s->top_k;
    memset(b, 0, sizeof *b);
    b->max_tokens = max_tokens;
    b->n_experts = s->n_experts;
    b->top_k = s->top_k;
    b->logits = be->ops->alloc(be, T * E * sizeof(float));
    b->y = be->ops->alloc(be, T * k * (size_t)s->hidden * sizeof(float));
    b->host = nmlx_calloc(T * E, sizeof *b->host);
    b->idx = nmlx_calloc(T * k, sizeof *b->idx);
    b->scores = nmlx_calloc(T * k, sizeof *b->scores);
    if (!b->logits || !b->y || !b->host || !b->idx || !b->scores) {
        nmlx_moe_buffers_free(b, be);
        return nmlx_fail(NMLX_ERR_NOMEM, "out of memory for MoE buffers (%lld tokens)",
                         (long long)max_tokens);
    }
    nmlx_status st = nmlx_switch_buffers_alloc(&b->sw, be, (int64_t)(T * k), s->n_experts,
                                               s->hidden, s->expert_hidden);
    if (st) nmlx_moe_buffers_free(b, be);
    return st;
}

void nmlx_moe_buffers_free(nmlx_moe_buffers *b, nmlx_backend *be) {
    if (b->logits) be->ops->free(be, b->logits);
    if (b->y) be->ops->free(be, b->y);
    nmlx_free(b->host);
    nmlx_free(b->idx);
    nmlx_free(b->scores);
    nmlx_switch_buffers_free(&b->sw, be);
    memset(b, 0, sizeof *b);
}

/* The k largest of v[0..n) (ties: lower index first), by insertion into a
 * sorted list of k; k is small (2..8). */
static void top_k(const float *v, int64_t n, int64_t k, int32_t *idx) {
    int64_t have = 0;
    for (int64_t i = 0; i < n; i++) {
        if (have == k && !(v[i] > v[idx[k - 1]])) continue;
        int64_t j = have < k ? have++ : k - 1;
        while (j > 0 && v[i] > v[idx[j - 1]]) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = (int32_t)i;
    }
}

void nmlx_moe_route(const nmlx_moe_shape *s, const float *logits, int64_t T, int32_t *idx,
                    float *scores) {
    int64_t E = s->n_experts, k = s->top_k;
    for (int64_t t = 0; t < T; t++) {
        const float *l = logits + t * E;
        int32_t *ix = idx + t * k;
        float *sc = scores + t * k;
        top_k(l, E, k, ix); /* softmax is monotonic: same choice as top_k(softmax(l)) */
        double mx = l[ix[0]], sum = 0;
        if (s->routing == NMLX_MOE_TOPK_SIGMOID) {
            for (int64_t j = 0; j < k; j++)
                sc[j] = (float)(1.0 / (1.0 + exp(-(double)l[ix[j]])));
        } else if (s->routing == NMLX_MOE_SOFTMAX_TOPK) {
            /* the softmax's sum over every expert only where it is the
             * denominator: E exps a token, on the host while the GPU waits */
            double denom = 0;
            if (s->norm_topk)
                for (int64_t j = 0; j < k; j++)
                    denom += exp((double)l[ix[j]] - mx);
            else
                for (int64_t e = 0; e < E; e++)
                    denom += exp((double)l[e] - mx);
            for (int64_t j = 0; j < k; j++)
                sc[j] = (float)(exp((double)l[ix[j]] - mx) / denom);
        } else {
            for (int64_t j = 0; j < k; j++)
                sum += exp((double)l[ix[j]] - mx);
            for (int64_t j = 0; j < k; j++)
                sc[j] = (float)(exp((double)l[ix[j]] - mx) / sum);
        }
    }
}

_Static_assert(NMLX_MOE_SOFTMAX_TOPK == 1 && NMLX_MOE_TOPK_SOFTMAX == 2,
               "backend.h moe_routed's routing values");

void nmlx_moe_forward(nmlx_backend *be, const nmlx_moe *m, nmlx_moe_buffers *b, const float *x,
                      float *out, int64_t T) {
    const nmlx_moe_shape *s = &m->s;
    int64_t E = s->n_experts, k = s->top_k, D = s->hidden;
    nmlx_linear_forward(be, &m->router, x, b->logits, T);
    if (be->ops->moe_routed && s->routing != NMLX_MOE_TOPK_SIGMOID && /* routed on the device */
        be->ops->moe_routed(be, &m->experts, x, b->logits, (int)s->routing, s->norm_topk, T, k,
                            &b->sw, out))
        return;
    be->ops->download(be, b->host, b->logits, (size_t)(T * E) * sizeof(float));
    nmlx_moe_route(s, b->host, T, b->idx, b->scores);
    if (be->ops->moe_experts && /* the lines below as one backend op (backend.h) */
        be->ops->moe_experts(be, &m->experts, x, b->idx, b->scores, T, k, &b->sw, out))
        return;
    nmlx_switch_glu_forward(be, &m->experts, x, b->idx, T, k, &b->sw, b->y);
    /* out[t] = sum_j scores[t, j] * y[t * k + j] */
    for (int64_t t = 0; t < T; t++) {
        float *o = out + t * D;
        for (int64_t j = 0; j < k; j++) {
            float *yr = b->y + (t * k + j) * D;
            be->ops->scale(be, yr, b->scores[t * k + j], D);
            if (j == 0)
                be->ops->copy(be, o, yr, (size_t)D * sizeof(float));
            else
                be->ops->add(be, o, yr, o, D);
        }
    }
}
