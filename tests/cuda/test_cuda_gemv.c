/* The dense decode mat-vec (cuda_matmul.cu gemv_kernel) through the backend
 * ops that reach it for T <= 8 rows of x: matmul (one weight), matmul_multi
 * (2 or 3 weights in one launch, q/k/v-like: different row counts) and
 * gate_up_act (gate/up pairs writing act(g) * u). f32, bf16 and f16 weights
 * of random values, widths that take the 16-byte loads (N a multiple of 8)
 * and the scalar loop (odd N, or x 4 bytes off alignment), with and
 * without biases, against a double-precision host sum over the same
 * weights (limit 1e-5 of max|ref|). Every row of a T-row call must equal
 * the same row run alone (T = 1) bit for bit: batched decode promises it
 * (backend.h). Outputs start as NaN so an unwritten element shows. Exits
 * 77 (ctest: skipped) when no GPU is usable. */
#include "compute/backend.h"
#include "compute/cuda/cuda_backend.h"
#include "dev_floats.h"
#include "harness.h"
#include "model_util.h" /* test_diff_over_max */
#include "nmlx.h"
#include "qweight.h" /* test_keep */

#include <math.h>
#include <string.h>

static nmlx_backend *gpu;
static double worst;
static long cases;

/* a random weight [D, N] in dt on the host (kept), its f32 values, and its
 * device twin */
static nmlx_weight dense_weight(nmlx_dtype dt, int64_t D, int64_t N, float **f32) {
    size_t n = (size_t)(D * N), es = nmlx_dtype_size(dt);
    float *v = test_rand_floats(n, -1, 1);
    void *h = test_keep(malloc(n * es));
    for (size_t i = 0; i < n; i++) {
        if (dt == NMLX_DT_BF16)
            ((uint16_t *)h)[i] = nmlx_f32_to_bf16(v[i]);
        else if (dt == NMLX_DT_F16)
            ((uint16_t *)h)[i] = nmlx_f32_to_f16(v[i]);
        else
            ((float *)h)[i] = v[i];
    }
    nmlx_to_f32(dt, h, v, n); /* the values the GPU reads */
    *f32 = v;
    nmlx_weight w = {.w = {.dtype = dt, .ndim = 2, .shape = {D, N}, .data = h, .name = "w"},
                     .rows = D,
                     .cols = N};
    const nmlx_tensor *p = NULL;
    EXPECT(gpu->ops->prepare_tensor(gpu, &w.w, &p) == NMLX_OK, "prepare: %s", nmlx_last_error());
    if (p) w.w = *p;
    return w;
}

static const nmlx_tensor *bias_of(int64_t D, float **f32) {
    nmlx_tensor *h = test_keep(malloc(sizeof *h));
    *h = (nmlx_tensor){.dtype = NMLX_DT_F32, .ndim = 1, .shape = {D}, .name = "b"};
    h->data = test_keep(test_rand_floats((size_t)D, -1, 1));
    *f32 = h->data;
    const nmlx_tensor *p = NULL;
    EXPECT(gpu->ops->prepare_tensor(gpu, h, &p) == NMLX_OK, "prepare bias: %s", nmlx_last_error());
    return p;
}

static double act_ref(int act, double g) {
    switch (act) {
    case NMLX_ACT_SILU: return g / (1 + exp(-g));
    case NMLX_ACT_GELU_TANH:
        return 0.5 * g * (1 + tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)));
    default: return 0.5 * g * erfc(-g / sqrt(2.0));
    }
}

/* n weights (act < 0; rows[i] each) or a gate/up pair (act >= 0, rows[0])
 * of width N, T rows of x; off: x starts one float past an aligned buffer */
static void run_case(nmlx_dtype dt, int n, const int64_t *rows, int act, int64_t N, int64_t T,
                     bool bias, bool off) {
    const int nw = act >= 0 ? 2 : n;
    nmlx_weight w[3];
    const nmlx_weight *ws[3];
    const nmlx_tensor *bs[3] = {NULL, NULL, NULL};
    float *wf[3], *bf[3] = {NULL, NULL, NULL};
    for (int i = 0; i < nw; i++) {
        const int64_t D = act >= 0 ? rows[0] : rows[i];
        w[i] = dense_weight(dt, D, N, &wf[i]);
        ws[i] = &w[i];
        if (bias) bs[i] = bias_of(D, &bf[i]);
    }
    const size_t nx = (size_t)(T * N);
    float *x = test_rand_floats(nx, -2, 2);
    float *xbuf = gpu->ops->alloc(gpu, (nx + 1) * sizeof(float)), *dx = xbuf + (off ? 1 : 0);
    gpu->ops->upload(gpu, dx, x, nx * sizeof(float));
    const int ny = act >= 0 ? 1 : n;
    float *dy[3], *dy1[3]; /* all T rows; one row at a time */
    for (int i = 0; i < ny; i++) {
        dy[i] = test_dev_nan(gpu, (size_t)(T * w[i].rows));
        dy1[i] = test_dev_nan(gpu, (size_t)(T * w[i].rows));
    }
    float *scratch = test_dev_nan(gpu, (size_t)(T * w[0].rows)); /* gate_up_act's up (unused) */
    for (int64_t t = -1; t < T; t++) { /* -1: all rows; then each row alone */
        const float *xx = t < 0 ? dx : dx + t * N;
        const int64_t TT = t < 0 ? T : 1;
        float *ys[3];
        for (int i = 0; i < ny; i++)
            ys[i] = t < 0 ? dy[i] : dy1[i] + t * w[i].rows;
        if (act >= 0)
            gpu->ops->gate_up_act(gpu, (nmlx_act)act, ws[0], ws[1], bs[0], bs[1], xx, ys[0],
                                  scratch, TT);
        else if (n == 1)
            gpu->ops->matmul(gpu, ws[0], bs[0], xx, ys[0], TT);
        else
            gpu->ops->matmul_multi(gpu, n, ws, bs, xx, ys, TT);
    }
    EXPECT(nmlx_backend_cuda_check(gpu) == NMLX_OK, "launch: %s", nmlx_last_error());
    for (int i = 0; i < ny; i++) {
        const int64_t D = w[i].rows;
        const size_t m = (size_t)(T * D);
        float *ref = malloc(m * sizeof(float));
        for (int64_t t = 0; t < T; t++)
            for (int64_t d = 0; d < D; d++) {
                double s[2] = {0, 0};
                for (int k = 0; k < (act >= 0 ? 2 : 1); k++) {
                    const int j = act >= 0 ? k : i;
                    for (int64_t c = 0; c < N; c++)
                        s[k] += (double)wf[j][d * N + c] * x[t * N + c];
                    if (bf[j]) s[k] += bf[j][d];
                }
                ref[t * D + d] = (float)(act >= 0 ? act_ref(act, s[0]) * s[1] : s[0]);
            }
        float *got = test_host_floats(gpu, dy[i], m), *alone = test_host_floats(gpu, dy1[i], m);
        const double e = test_diff_over_max(got, ref, m);
        EXPECT(e <= 1e-5, "%s n=%d act=%d D=%lld N=%lld T=%lld bias=%d off=%d weight %d: %.2e",
               nmlx_dtype_name(dt), n, act, (long long)D, (long long)N, (long long)T, bias, off, i,
               e);
        EXPECT(memcmp(got, alone, m * sizeof(float)) == 0,
               "%s n=%d act=%d N=%lld T=%lld weight %d: rows of the batch differ from rows alone",
               nmlx_dtype_name(dt), n, act, (long long)N, (long long)T, i);
        worst = fmax(worst, e);
        free(ref), free(got), free(alone);
        gpu->ops->free(gpu, dy[i]), gpu->ops->free(gpu, dy1[i]);
    }
    gpu->ops->free(gpu, scratch);
    gpu->ops->free(gpu, xbuf);
    for (int i = 0; i < nw; i++)
        free(wf[i]);
    free(x);
    cases++;
}

int main(void) {
    if (nmlx_backend_cuda_create(0, &gpu) != NMLX_OK) {
        printf("SKIP: no CUDA device: %s\n", nmlx_last_error());
        return 77;
    }
    test_seed(20261206);
    const nmlx_dtype dts[3] = {NMLX_DT_BF16, NMLX_DT_F16, NMLX_DT_F32};
    const int64_t qkv[3] = {96, 32, 32}, odd[3] = {37, 5, 130}, one[1] = {300};
    const int64_t pair[1] = {77}, wide[1] = {64};
    for (int di = 0; di < 3; di++) {
        const nmlx_dtype dt = dts[di];
        for (int64_t T = 1; T <= 8; T += (T < 3 ? 1 : 5)) { /* 1, 2, 3, 8 */
            run_case(dt, 1, one, -1, 2048, T, T == 2, false);
            run_case(dt, 3, qkv, -1, 256, T, di == 0, false);
            run_case(dt, 3, odd, -1, 100, T, true, false); /* N % 8 != 0: scalar loop */
            run_case(dt, 2, odd, -1, 64, T, false, true);  /* x off alignment: scalar */
            run_case(dt, 2, pair, NMLX_ACT_SILU, 512, T, T == 3, false);
            run_case(dt, 2, pair, NMLX_ACT_GELU_TANH, 40, T, true, T == 8);
            run_case(dt, 2, wide, NMLX_ACT_GELU_ERF, 4104, T, false, false);
        }
    }
    /* long rows: loads past the first GEMV_PRE of a lane */
    const int64_t big[3] = {512, 128, 128};
    run_case(NMLX_DT_BF16, 3, big, -1, 14336, 1, true, false);
    run_case(NMLX_DT_BF16, 2, big, NMLX_ACT_SILU, 8192, 2, false, false);
    printf("dense mat-vec: %ld cases, worst %.2e of max|ref|\n", cases, worst);
    nmlx_backend_free(gpu);
    return test_summary();
}
