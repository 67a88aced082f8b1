/* The CPU backend's fused ops (backend.h rope_kv, gate_up_act; add_rmsnorm
 * shares rmsnorm's row task in cpu_ops.c): the kernels of the unfused
 * sequence (add, rmsnorm_row, the rope loop, memcpy; matmul_multi and
 * act_mul) called row by row or in turn, so the results equal that sequence
 * bit for bit. They exist
 * so the fused path of the model code runs (and is tested) on every
 * backend; on the CPU they save a pass over a few cache-resident rows. */
#include "compute/cpu/cpu_internal.h"

#include <string.h>

enum { PAR_ELEMS = 1 << 15 }; /* as cpu_ops.c: less work runs on the caller thread */

/* ---- rope_kv ---- */

typedef struct {
    const cpu_kernels *k;
    const nmlx_rope_kv_args *a;
} rope_kv_job;

/* Token t: q's heads normed and rotated in place; k's the same (in place:
 * contiguous, measured faster than rotating the cache rows, which lie
 * cap * HD apart), then copied to their cache rows with v's. */
static void rope_kv_token(const cpu_kernels *k, const nmlx_rope_kv_args *a, int64_t t) {
    int64_t HD = a->HD, KVH = a->KVH, half = a->rot / 2;
    bool rope = a->rot >= 2 && a->freqs;
    double p = (double)(a->pos0 + t);
    float *q = a->q + t * a->H * HD, *ks = a->k + t * KVH * HD;
    if (a->qk_norm) {
        for (int64_t h = 0; h < a->H; h++)
            k->rmsnorm_row(q + h * HD, a->q_norm, a->q_norm_offset, a->q_norm_eps, q + h * HD, HD);
        for (int64_t h = 0; h < KVH; h++)
            k->rmsnorm_row(ks + h * HD, a->k_norm, a->k_norm_offset, a->k_norm_eps, ks + h * HD,
                           HD);
    }
    if (rope) {
        nmlx_cpu_rope_heads(q, a->H, HD, half, p, a->freqs, a->mscale);
        nmlx_cpu_rope_heads(ks, KVH, HD, half, p, a->freqs, a->mscale);
    }
    size_t row = (size_t)HD * sizeof(float);
    int64_t stride = a->cap * HD;
    float *kc = a->k_cache + (a->row0 + t) * HD, *vc = a->v_cache + (a->row0 + t) * HD;
    for (int64_t h = 0; h < KVH; h++) {
        memcpy(kc + h * stride, ks + h * HD, row);
        memcpy(vc + h * stride, a->v + (t * KVH + h) * HD, row);
    }
}

static void rope_kv_task(void *ctx, int ith, int nth) {
    const rope_kv_job *j = ctx;
    int64_t t0, t1;
    cpu_split(j->a->T, ith, nth, 1, &t0, &t1);
    for (int64_t t = t0; t < t1; t++)
        rope_kv_token(j->k, j->a, t);
}

void nmlx_cpu_rope_kv(nmlx_backend *be, const nmlx_rope_kv_args *a) {
    if (a->T <= 0) return;
    rope_kv_job j = {cpu_kernels_of(be), a};
    int64_t work = a->T * (a->H + 2 * a->KVH) * a->HD;
    int nth = a->T > 1 && work >= PAR_ELEMS ? be->n_threads : 1;
    nmlx_pool_run_n(be->pool, rope_kv_task, &j, nth);
}

/* ---- gate_up_act: the two ops it stands for (the mat-vecs dominate) ---- */

void nmlx_cpu_gate_up_act(nmlx_backend *be, nmlx_act act, const nmlx_weight *g,
                          const nmlx_weight *u, const nmlx_tensor *bg, const nmlx_tensor *bu,
                          const float *x, float *gate, float *up, int64_t T) {
    const nmlx_weight *ws[2] = {g, u};
    const nmlx_tensor *bs[2] = {bg, bu};
    float *ys[2] = {gate, up};
    nmlx_cpu_matmul_multi(be, 2, ws, bs, x, ys, T);
    nmlx_cpu_act_mul(be, act, gate, up, gate, T * g->rows);
}
