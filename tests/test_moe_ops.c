/* The mixture-of-experts op of the CPU backend (clipped SwiGLU of gpt-oss)
 * against a naive double-precision reference: every kernel set this CPU
 * runs, 1 and 2 threads, odd sizes, values well past the clip limit,
 * in place and out of place. */
#include "common.h"
#include "compute/backend.h"
#include "compute/cpu/cpu_internal.h"
#include "harness.h"

#include <math.h>
#include <stdlib.h>

static double ref_swiglu(double g, double u, double alpha, double limit) {
    g = fmin(g, limit);
    u = fmax(-limit, fmin(u, limit));
    return g / (1.0 + exp(-alpha * g)) * (u + 1.0);
}

static void check_swiglu(nmlx_backend *be, int64_t n, bool in_place) {
    const float alpha = 1.702f, limit = 7.0f;
    float *g = be->ops->alloc(be, (size_t)n * sizeof(float));
    float *u = be->ops->alloc(be, (size_t)n * sizeof(float));
    float *o = be->ops->alloc(be, (size_t)n * sizeof(float));
    double *ref = malloc((size_t)n * sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        g[i] = test_randf(-12.0f, 12.0f);
        u[i] = test_randf(-12.0f, 12.0f);
        ref[i] = ref_swiglu(g[i], u[i], alpha, limit);
    }
    float *out = in_place ? g : o;
    be->ops->swiglu_clipped(be, g, u, out, n, alpha, limit);
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs(out[i] - ref[i]) / (1.0 + fabs(ref[i]));
        if (e > worst) worst = e;
    }
    EXPECT(worst < 1e-6, "swiglu_clipped n=%lld in_place=%d threads=%d: rel err %g", (long long)n,
           in_place, be->n_threads, worst);
    be->ops->free(be, g);
    be->ops->free(be, u);
    be->ops->free(be, o);
    free(ref);
}

int main(void) {
    test_seed(4242);
    const char *isas[] = {"portable", "avx2", "avx512"};
    const int64_t sizes[] = {1, 7, 64, 1023, 40000};
    for (size_t a = 0; a < 3; a++)
        for (int nt = 1; nt <= 2; nt++) {
            nmlx_backend *be = NULL;
            if (nmlx_backend_cpu_create_isa(nt, isas[a], &be) != NMLX_OK) continue;
            for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
                check_swiglu(be, sizes[s], false);
                check_swiglu(be, sizes[s], true);
            }
            nmlx_backend_free(be);
        }
    return test_summary();
}
