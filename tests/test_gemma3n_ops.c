/* The Gemma 3n ops of the CPU backend (gaussian_topk, rms_match, mul_rows,
 * altup_predict, altup_correct) against naive double-precision references
 * written from the transformers formulas: 1 and 2 threads, odd sizes, sizes
 * large enough to split over the pool, f32 and bf16 coefficient tensors. */
#include "common.h"
#include "compute/backend.h"
#include "compute/cpu/cpu_internal.h"
#include "harness.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static float *rand_buf(nmlx_backend *be, int64_t n, float lo, float hi) {
    float *x = be->ops->alloc(be, (size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) x[i] = test_randf(lo, hi);
    return x;
}

static double rel_err(double got, double want) { return fabs(got - want) / (1.0 + fabs(want)); }

/* A float tensor [rows, cols] in dtype dt holding random values; data malloc'ed. */
static nmlx_tensor rand_tensor(nmlx_dtype dt, int64_t rows, int64_t cols, float scale) {
    nmlx_tensor t = {.dtype = dt, .ndim = 2, .shape = {rows, cols}};
    size_t n = (size_t)(rows * cols);
    t.data = malloc(n * nmlx_dtype_size(dt));
    for (size_t i = 0; i < n; i++) {
        float v = test_randf(-scale, scale);
        if (dt == NMLX_DT_F32) ((float *)t.data)[i] = v;
        else ((uint16_t *)t.data)[i] = nmlx_f32_to_bf16(v);
    }
    return t;
}

static double tval(const nmlx_tensor *t, int64_t i) {
    return nmlx_load_f32(t->dtype, t->data, (size_t)i);
}

static void check_topk(nmlx_backend *be, int64_t R, int64_t n, double p) {
    float *x = rand_buf(be, R * n, -3.0f, 3.0f);
    double *want = malloc((size_t)(R * n) * sizeof(double));
    /* std multiplier: the standard normal quantile of p, sqrt(2) * erfinv(2p - 1),
     * found here by bisection on erf (independent of the model code) */
    double lo = -10, hi = 10;
    for (int it = 0; it < 200; it++) {
        double mid = 0.5 * (lo + hi);
        if (0.5 * (1 + erf(mid / sqrt(2.0))) < p) lo = mid;
        else hi = mid;
    }
    double mult = 0.5 * (lo + hi);
    for (int64_t r = 0; r < R; r++) {
        double mean = 0, var = 0;
        for (int64_t i = 0; i < n; i++) mean += x[r * n + i];
        mean /= (double)n;
        for (int64_t i = 0; i < n; i++) var += pow(x[r * n + i] - mean, 2);
        double cut = mean + sqrt(var / (double)n) * mult;
        for (int64_t i = 0; i < n; i++) want[r * n + i] = fmax(0.0, x[r * n + i] - cut);
    }
    be->ops->gaussian_topk(be, x, R, n, (float)mult);
    double worst = 0;
    int64_t zeros = 0;
    for (int64_t i = 0; i < R * n; i++) {
        worst = fmax(worst, rel_err(x[i], want[i]));
        zeros += x[i] == 0.0f;
    }
    EXPECT(worst < 1e-5, "gaussian_topk R=%lld n=%lld p=%g: rel err %g", (long long)R,
           (long long)n, p, worst);
    if (n >= 1000)
        EXPECT(zeros > (int64_t)(0.5 * (double)(R * n)), "gaussian_topk p=%g kept too many (%lld zeros)",
               p, (long long)zeros);
    be->ops->free(be, x);
    free(want);
}

static void check_rms_match(nmlx_backend *be, int64_t T, int64_t D) {
    float *ref = rand_buf(be, T * D, -2.0f, 2.0f);
    float *x = rand_buf(be, T * D, -0.5f, 0.5f);
    if (T > 1) memset(x + D, 0, (size_t)D * sizeof(float)); /* a zero row: the eps floor */
    double *want = malloc((size_t)(T * D) * sizeof(double));
    const double eps = 1e-5;
    for (int64_t t = 0; t < T; t++) {
        double a = 0, b = 0;
        for (int64_t i = 0; i < D; i++) {
            a += (double)ref[t * D + i] * ref[t * D + i];
            b += (double)x[t * D + i] * x[t * D + i];
        }
        double f = sqrt(a / (double)D) / sqrt(fmax(b / (double)D, eps));
        for (int64_t i = 0; i < D; i++) want[t * D + i] = x[t * D + i] * f;
    }
    be->ops->rms_match(be, ref, x, T, D, (float)eps);
    double worst = 0;
    for (int64_t i = 0; i < T * D; i++) worst = fmax(worst, rel_err(x[i], want[i]));
    EXPECT(worst < 1e-6, "rms_match T=%lld D=%lld: rel err %g", (long long)T, (long long)D,
           worst);
    be->ops->free(be, ref);
    be->ops->free(be, x);
    free(want);
}

static void check_mul_rows(nmlx_backend *be, int64_t R, int64_t D, nmlx_dtype dt) {
    float *x = rand_buf(be, R * D, -2.0f, 2.0f);
    nmlx_tensor w = rand_tensor(dt, 1, D, 1.5f);
    w.ndim = 1;
    w.shape[0] = D;
    double worst = 0;
    double *want = malloc((size_t)(R * D) * sizeof(double));
    for (int64_t i = 0; i < R * D; i++) want[i] = x[i] * tval(&w, i % D);
    be->ops->mul_rows(be, x, &w, R, D);
    for (int64_t i = 0; i < R * D; i++) worst = fmax(worst, rel_err(x[i], want[i]));
    EXPECT(worst < 1e-6, "mul_rows R=%lld D=%lld: rel err %g", (long long)R, (long long)D, worst);
    be->ops->free(be, x);
    free(w.data);
    free(want);
}

/* predict then correct, K streams of [T, D] stored with a stride larger
 * than T * D (as the model's chunk buffers are). */
static void check_altup(nmlx_backend *be, int64_t K, int64_t T, int64_t D, nmlx_dtype dt) {
    int64_t stride = (T + 3) * D, active = K > 1 ? 1 : 0;
    float *x = rand_buf(be, K * stride, -2.0f, 2.0f);
    float *out = be->ops->alloc(be, (size_t)(K * stride) * sizeof(float));
    float *router = rand_buf(be, T * K, -3.0f, 3.0f);
    float *router2 = rand_buf(be, T * K, -3.0f, 3.0f);
    float *act = rand_buf(be, T * D, -2.0f, 2.0f);
    nmlx_tensor pc = rand_tensor(dt, K * K, K, 1.0f);
    nmlx_tensor cc = rand_tensor(dt, K, K, 2.0f);
    const float clip = 1.2f; /* some correction coefficients exceed it */
    double *pred = malloc((size_t)(K * T * D) * sizeof(double));
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < K; i++) {
            double ci[16] = {0};
            for (int64_t j = 0; j < K; j++)
                for (int64_t k = 0; k < K; k++)
                    ci[j] += tval(&pc, (i * K + j) * K + k) * tanh(router[t * K + k]);
            for (int64_t d = 0; d < D; d++) {
                double s = x[i * stride + t * D + d];
                for (int64_t j = 0; j < K; j++) s += ci[j] * x[j * stride + t * D + d];
                pred[(i * T + t) * D + d] = s;
            }
        }
    }
    be->ops->altup_predict(be, x, stride, router, &pc, out, K, T, D);
    double worst = 0;
    for (int64_t i = 0; i < K; i++)
        for (int64_t j = 0; j < T * D; j++)
            worst = fmax(worst, rel_err(out[i * stride + j], pred[i * T * D + j]));
    EXPECT(worst < 1e-5, "altup_predict K=%lld T=%lld D=%lld: rel err %g", (long long)K,
           (long long)T, (long long)D, worst);
    /* correct on the exact predictions, so only the op's own error counts */
    for (int64_t i = 0; i < K; i++)
        for (int64_t j = 0; j < T * D; j++) out[i * stride + j] = (float)pred[i * T * D + j];
    for (int64_t i = 0; i < K * T * D; i++) pred[i] = (float)pred[i];
    be->ops->altup_correct(be, out, stride, act, router2, &cc, clip, active, K, T, D);
    worst = 0;
    for (int64_t i = 0; i < K; i++)
        for (int64_t j = 0; j < T * D; j++) {
            int64_t t = j / D;
            double c = 1.0;
            for (int64_t k = 0; k < K; k++)
                c += fmax(-clip, fmin(clip, tval(&cc, i * K + k))) * tanh(router2[t * K + k]);
            double want = pred[i * T * D + j] + c * (act[j] - pred[active * T * D + j]);
            worst = fmax(worst, rel_err(out[i * stride + j], want));
        }
    EXPECT(worst < 1e-5, "altup_correct K=%lld T=%lld D=%lld: rel err %g", (long long)K,
           (long long)T, (long long)D, worst);
    be->ops->free(be, x);
    be->ops->free(be, out);
    be->ops->free(be, router);
    be->ops->free(be, router2);
    be->ops->free(be, act);
    free(pc.data);
    free(cc.data);
    free(pred);
}

int main(void) {
    test_seed(3101);
    for (int nt = 1; nt <= 2; nt++) {
        nmlx_backend *be = NULL;
        if (nmlx_backend_cpu_create_isa(nt, "portable", &be) != NMLX_OK) continue;
        check_topk(be, 1, 7, 0.95);
        check_topk(be, 5, 1001, 0.95);
        check_topk(be, 40, 2048, 0.6);
        check_rms_match(be, 1, 5);
        check_rms_match(be, 37, 33);
        check_rms_match(be, 300, 128);
        check_mul_rows(be, 3, 17, NMLX_DT_F32);
        check_mul_rows(be, 200, 129, NMLX_DT_BF16);
        check_altup(be, 1, 2, 5, NMLX_DT_F32);
        check_altup(be, 2, 7, 33, NMLX_DT_F32);
        check_altup(be, 4, 3, 17, NMLX_DT_BF16);
        check_altup(be, 4, 130, 96, NMLX_DT_F32);
        nmlx_backend_free(be);
    }
    return test_summary();
}
