/* Scaled dot-product attention over a [KVH, cap, HD] cache (contract in
 * backend.h). Work items are (query t, KV head, its query heads) split over
 * the pool, so a KV head's rows are read once for all the query heads that
 * share them (GQA); each thread keeps its heads' scores in scratch. */
#include "compute/cpu/cpu_internal.h"

#include <math.h>
#include <string.h>

/* Query t, KV head kvh, its query heads [h0, h0 + g): sc holds g * n_kv. */
static void attn_group(const cpu_kernels *k, const nmlx_attn_args *a, int64_t t, int64_t kvh,
                       int64_t h0, int64_t g, float *sc) {
    const int64_t HD = a->HD;
    const float *q = a->q + (t * a->H + h0) * HD;
    float *out = a->out + (t * a->H + h0) * HD;
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
        memset(out, 0, (size_t)(g * HD) * sizeof(float));
        return;
    }
    int64_t n = hi - lo + 1;
    const char *K0 = (const char *)K + (size_t)(lo * HD) * es;
    const char *V0 = (const char *)V + (size_t)(lo * HD) * es;
    k->attn_scores(a->kv_dtype, q, g, K0, n, HD, a->scale, sc);
    for (int64_t i = 0; i < g; i++) {
        float *row = sc + i * n;
        if (a->softcap > 0) {
            float cap = a->softcap, inv = 1.0f / cap;
            for (int64_t j = 0; j < n; j++)
                row[j] = tanhf(row[j] * inv) * cap;
        }
        k->softmax_row(row, n, a->sinks ? a->sinks[h0 + i] : -INFINITY);
    }
    k->attn_mix(a->kv_dtype, sc, g, V0, n, HD, out);
}

/* Work items: (query t, KV head, chunk of its query heads). A group is split
 * into chunks only when there are too few groups to keep every thread busy
 * (decode with few KV heads); otherwise each item reads its KV head's rows
 * once for the whole group. */
typedef struct {
    int64_t group, chunk, chunks; /* heads per KV head, per item; items per group */
} attn_split;

static attn_split split_for(const nmlx_attn_args *a, int nth) {
    attn_split s = {.group = a->KVH > 0 && a->H % a->KVH == 0 ? a->H / a->KVH : 1};
    if (s.group < 1) s.group = 1;
    int64_t groups = a->T * (a->H / s.group);
    s.chunks = groups >= 2 * nth ? 1 : (2 * nth + groups - 1) / groups;
    if (s.chunks > s.group) s.chunks = s.group;
    s.chunk = (s.group + s.chunks - 1) / s.chunks;
    return s;
}

typedef struct {
    const cpu_kernels *k;
    const nmlx_attn_args *a;
    attn_split sp;
} attn_job_t;

static void attn_task(void *ctx, int ith, int nth) {
    const attn_job_t *j = ctx;
    const nmlx_attn_args *a = j->a;
    const attn_split sp = j->sp;
    const int64_t kv_groups = a->H / sp.group;
    int64_t i0, i1;
    cpu_split(a->T * kv_groups * sp.chunks, ith, nth, 1, &i0, &i1);
    float *sc = a->scratch + (int64_t)ith * sp.chunk * a->n_kv;
    for (int64_t i = i0; i < i1; i++) {
        int64_t c = i % sp.chunks, gi = (i / sp.chunks) % kv_groups, t = i / sp.chunks / kv_groups;
        int64_t h0 = gi * sp.group + c * sp.chunk;
        int64_t g = sp.group - c * sp.chunk < sp.chunk ? sp.group - c * sp.chunk : sp.chunk;
        if (g > 0) attn_group(j->k, a, t, gi, h0, g, sc);
    }
}

void nmlx_cpu_attention(nmlx_backend *be, const nmlx_attn_args *a) {
    if (a->T <= 0 || a->H <= 0 || a->HD <= 0) return;
    int64_t work = a->T * a->H * a->n_kv * a->HD * 2;
    int nth = (a->T * a->H > 1 && work >= (1 << 14)) ? be->n_threads : 1;
    attn_job_t j = {cpu_kernels_of(be), a, split_for(a, nth)};
    nmlx_pool_run_n(be->pool, attn_task, &j, nth);
}
