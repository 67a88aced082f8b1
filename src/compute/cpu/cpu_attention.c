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
    const int64_t base = kvh * a->cap * HD;
    const bool half = a->kv_dtype != NMLX_DT_F32;
    const void *K = half ? (const void *)(a->k16 + base) : (const void *)(a->k + base);
    const void *V = half ? (const void *)(a->v16 + base) : (const void *)(a->v + base);
    const size_t es = half ? sizeof(uint16_t) : sizeof(float);
    int64_t qi = a->q_pos + t;
    int64_t hi = qi < a->n_kv - 1 ? qi : a->n_kv - 1; /* inclusive */
    int64_t lo = a->window > 0 ? qi - a->window + 1 : 0;
    if (lo < 0) lo = 0;
    if (lo > hi) { /* nothing visible: zero output */
        memset(out, 0, (size_t)HD * sizeof(float));
        return;
    }
    int64_t n = hi - lo + 1;
    const char *K0 = (const char *)K + (size_t)(lo * HD) * es;
    const char *V0 = (const char *)V + (size_t)(lo * HD) * es;
    k->attn_scores(a->kv_dtype, q, K0, n, HD, a->scale, sc);
    if (a->softcap > 0) {
        float cap = a->softcap, inv = 1.0f / cap;
        for (int64_t j = 0; j < n; j++)
            sc[j] = tanhf(sc[j] * inv) * cap;
    }
    k->softmax_row(sc, n, a->sinks ? a->sinks[h] : -INFINITY);
    k->attn_mix(a->kv_dtype, sc, V0, n, HD, out);
}

static void attn_task(void *ctx, int ith, int nth) {
    const attn_job *j = ctx;
    const nmlx_attn_args *a = j->a;
    int64_t i0, i1;
    cpu_split(a->T * a->H, ith, nth, 1, &i0, &i1);
    float *sc = a->scratch + (int64_t)ith * a->n_kv;
    for (int64_t i = i0; i < i1; i++)
        attn_one(j->k, a, i / a->H, i % a->H, sc);
}

void nmlx_cpu_attention(nmlx_backend *be, const nmlx_attn_args *a) {
    if (a->T <= 0 || a->H <= 0 || a->HD <= 0) return;
    attn_job j = {cpu_kernels_of(be), a};
    int64_t work = a->T * a->H * a->n_kv * a->HD * 2;
    int nth = (a->T * a->H > 1 && work >= (1 << 14)) ? be->n_threads : 1;
    nmlx_pool_run_n(be->pool, attn_task, &j, nth);
}
