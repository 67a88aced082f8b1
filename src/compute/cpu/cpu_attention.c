/* Scaled dot-product attention over a [KVH, cap, HD] cache (contract in
 * backend.h). Work items are (query t, head h) pairs split over the pool;
 * each thread keeps its scores in scratch + ith * n_kv. */
#include "compute/cpu/cpu_internal.h"

#include <math.h>
#include <string.h>

typedef struct {
    const cpu_kernels *k;
    const nmlx_attn_args *a;
} attn_job;

static void attn_one(const cpu_kernels *k, const nmlx_attn_args *a, int64_t t, int64_t h,
                     float *sc) {
    const int64_t HD = a->HD, group = a->H / a->KVH;
    const int64_t kvh = h / (group > 0 ? group : 1);
    const float *q = a->q + (t * a->H + h) * HD;
    float *out = a->out + (t * a->H + h) * HD;
    const float *kb = a->k + kvh * a->cap * HD, *vb = a->v + kvh * a->cap * HD;
    int64_t qi = a->q_pos + t;
    int64_t hi = qi < a->n_kv - 1 ? qi : a->n_kv - 1; /* inclusive */
    int64_t lo = a->window > 0 ? qi - a->window + 1 : 0;
    if (lo < 0) lo = 0;
    memset(out, 0, (size_t)HD * sizeof(float));
    if (lo > hi) return; /* nothing visible: zero output */
    int64_t n = hi - lo + 1;
    for (int64_t j = 0; j < n; j++) sc[j] = k->dot(q, kb + (lo + j) * HD, HD) * a->scale;
    if (a->softcap > 0) {
        float cap = a->softcap, inv = 1.0f / cap;
        for (int64_t j = 0; j < n; j++) sc[j] = tanhf(sc[j] * inv) * cap;
    }
    k->softmax_row(sc, n, a->sinks ? a->sinks[h] : -INFINITY);
    for (int64_t j = 0; j < n; j++) k->axpy(sc[j], vb + (lo + j) * HD, out, HD);
}

static void attn_task(void *ctx, int ith, int nth) {
    const attn_job *j = ctx;
    const nmlx_attn_args *a = j->a;
    int64_t i0, i1;
    cpu_split(a->T * a->H, ith, nth, 1, &i0, &i1);
    float *sc = a->scratch + (int64_t)ith * a->n_kv;
    for (int64_t i = i0; i < i1; i++) attn_one(j->k, a, i / a->H, i % a->H, sc);
}

void nmlx_cpu_attention(nmlx_backend *be, const nmlx_attn_args *a) {
    if (a->T <= 0 || a->H <= 0 || a->HD <= 0) return;
    attn_job j = {cpu_kernels_of(be), a};
    int64_t work = a->T * a->H * a->n_kv * a->HD * 2;
    int nth = (a->T * a->H > 1 && work >= (1 << 14)) ? be->n_threads : 1;
    nmlx_pool_run_n(be->pool, attn_task, &j, nth);
}
