/* CPU ops of the mixture-of-experts families: the clipped SwiGLU of
 * gpt-oss (see backend.h). Portable C, split over the pool for large n. */
#include "compute/cpu/cpu_internal.h"

#include <math.h>

enum { PAR_SWIGLU = 1 << 14 }; /* below this many elements: caller thread only */

typedef struct {
    const float *gate, *up;
    float *out;
    int64_t n;
    float alpha, limit;
} swiglu_job;

/* out = g * sigmoid(alpha * g) * (u + 1), g = min(gate, limit),
 * u = clamp(up, -limit, limit). */
static void swiglu_clipped_span(const float *gate, const float *up, float *out, int64_t n,
                                float alpha, float limit) {
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i] < limit ? gate[i] : limit;
        float u = up[i] < -limit ? -limit : (up[i] > limit ? limit : up[i]);
        out[i] = g / (1.0f + expf(-alpha * g)) * (u + 1.0f);
    }
}

static void swiglu_task(void *ctx, int ith, int nth) {
    const swiglu_job *j = ctx;
    int64_t i0, i1;
    cpu_split(j->n, ith, nth, 64, &i0, &i1);
    if (i0 < i1)
        swiglu_clipped_span(j->gate + i0, j->up + i0, j->out + i0, i1 - i0, j->alpha, j->limit);
}

void nmlx_cpu_swiglu_clipped(nmlx_backend *be, const float *gate, const float *up, float *out,
                             int64_t n, float alpha, float limit) {
    if (n <= 0) return;
    swiglu_job j = {gate, up, out, n, alpha, limit};
    nmlx_pool_run_n(be->pool, swiglu_task, &j, n < PAR_SWIGLU ? 1 : be->n_threads);
}
