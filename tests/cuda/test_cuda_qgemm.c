/* The cuBLAS quantized mat-mat (the default for T > 8, cuda_qgemm.cu:
 * W dequantized per row chunk to f16 hi + lo, x scaled per token by a power
 * of two and split into f16 hi + lo) against the portable CPU reference:
 * MLX affine 2/3/4/5/6/8-bit x group 32/64/128 x F32/F16/BF16 scales and
 * MXFP4, T = 9, 33, 100, 512, odd D, chunks of 64 / 100 rows (D not a
 * multiple) and the automatic size (two chunks at D = 8200), bias or not,
 * row views at odd offsets and x at an unaligned address; matmul_multi and
 * gate_up_act at T > 8 (their fallback to the mat-mat). x has a wide
 * dynamic range: |x| = 10^u, u uniform in [-3, 3], every 7th row all tiny
 * (|x| <= 1e-5: f16 subnormals unless rescaled), every 11th row 100x
 * larger (up to 1e5: beyond f16's 65504 unless rescaled). The error is
 * taken per row of y against that row's max|ref| (so tiny rows count), and
 * must be <= 1e-4, the qmm_kernel test's bound (expected ~1e-6).
 * Must-fail checks, so the bound can see what it guards: x not rescaled
 * (test bit 4) must exceed it, and W without its lo half (gemm16, ~2^-12)
 * must be measurably worse (> 2e-5). A weight found exact in f16 (lo all
 * zero) skips its second GEMM from the second call on: the second call and
 * one that never skips must equal the first bit for bit; the count of
 * such weights is printed. Prints the worst errors. Exits 77
 * (ctest: skipped) when no GPU is usable. */
#include "compute/backend.h"
#include "compute/cpu/cpu_internal.h" /* nmlx_backend_cpu_create_isa */
#include "compute/cuda/cuda_backend.h"
#include "compute/quant.h"
#include "harness.h"
#include "model_util.h" /* test_diff_over_max */
#include "qweight.h"

#include <math.h>
#include <string.h>

static nmlx_backend *cpu, *gpu;

static double worst_gemm, worst_gemm16, worst_gemm1, least_noscale = INFINITY;

/* worst over rows t of max_d |y - ref| / max_d |ref| (NaN: infinity);
 * downloads y from the device */
static double row_err(const float *dy, const float *ref, int64_t T, int64_t D) {
    float *got = malloc((size_t)(T * D) * sizeof(float));
    for (int64_t i = 0; i < T * D; i++)
        got[i] = NAN; /* poison: every element must be written */
    gpu->ops->download(gpu, got, dy, (size_t)(T * D) * sizeof(float));
    double e = 0;
    for (int64_t t = 0; t < T; t++) {
        double et = test_diff_over_max(got + t * D, ref + t * D, (size_t)D);
        if (et > e || et != et) e = et != et ? INFINITY : et;
    }
    free(got);
    return e;
}

static void check_ok(const char *what) {
    nmlx_status st = nmlx_backend_cuda_check(gpu);
    EXPECT(st == NMLX_OK, "%s: %s", what, nmlx_last_error());
}

/* y = x W^T (+ b) through the gemm path in `mode` (nmlx_cuda_set_qmm_gemm),
 * chunks of `rows`; returns the per-row error against yref */
static double run_mode(int mode, int64_t rows, const nmlx_weight *gw, const nmlx_tensor *pb,
                       const float *dx, float *dy, const float *yref, int64_t T) {
    nmlx_cuda_set_qmm_gemm(mode);
    nmlx_cuda_set_qmm_rows(rows);
    gpu->ops->matmul(gpu, gw, pb, dx, dy, T);
    nmlx_cuda_set_qmm_gemm(0);
    nmlx_cuda_set_qmm_rows(0);
    check_ok("qgemm");
    return row_err(dy, yref, T, gw->rows);
}

static void test_qgemm(nmlx_quant_mode mode, int bits, int gs, nmlx_dtype sdt, int64_t T, int64_t D,
                       int64_t N, bool bias, int64_t rows, bool variants) {
    nmlx_weight w = test_qweight(mode, bits, gs, sdt, D, N, test_keep);
    float *x = test_wide_x(T, N, 7, 3, 11, 5), *bv = test_rand_floats((size_t)D, -1, 1);
    nmlx_tensor b = {.dtype = NMLX_DT_BF16, .ndim = 1, .shape = {D}, .name = "b"};
    uint16_t *bh = test_keep(malloc((size_t)D * 2));
    for (int64_t i = 0; i < D; i++)
        bh[i] = nmlx_f32_to_bf16(bv[i]);
    b.data = bh;
    float *yref = malloc((size_t)(T * D) * sizeof(float));
    cpu->ops->matmul(cpu, &w, bias ? &b : NULL, x, yref, T);
    nmlx_weight gw = test_qweight_device(gpu, &w);
    const nmlx_tensor *pb = NULL;
    EXPECT(gpu->ops->prepare_tensor(gpu, &b, &pb) == NMLX_OK, "prepare bias");
    float *dx = gpu->ops->alloc(gpu, (size_t)(T * N + 1) * sizeof(float));
    float *dy = gpu->ops->alloc(gpu, (size_t)(T * D) * sizeof(float));
    gpu->ops->upload(gpu, dx, x, (size_t)(T * N) * sizeof(float));
    const char *sn = mode == NMLX_QUANT_MXFP4 ? "U8" : nmlx_dtype_name(sdt);
    double e = run_mode(1, rows, &gw, bias ? pb : NULL, dx, dy, yref, T);
    EXPECT(e <= 1e-4, "qgemm %s %d-bit g%d %s T=%lld D=%lld N=%lld bias=%d rows=%lld: %.2e > 1e-4",
           nmlx_quant_mode_name(mode), bits, gs, sn, (long long)T, (long long)D, (long long)N, bias,
           (long long)rows, e);
    if (e > worst_gemm || e != e) worst_gemm = e;
    { /* the first call recorded whether W's lo half is all zero; a second
       * call (which then skips that GEMM) and one that never skips give the
       * same result bit for bit */
        float *y1 = malloc((size_t)(T * D) * sizeof(float)),
              *y2 = malloc((size_t)(T * D) * sizeof(float));
        gpu->ops->download(gpu, y1, dy, (size_t)(T * D) * sizeof(float));
        for (int m = 1; m <= 9; m += 8) {
            run_mode(m, rows, &gw, bias ? pb : NULL, dx, dy, yref, T);
            gpu->ops->download(gpu, y2, dy, (size_t)(T * D) * sizeof(float));
            EXPECT(!memcmp(y1, y2, (size_t)(T * D) * sizeof(float)),
                   "qgemm mode %d differs from the first call (%d-bit g%d %s T=%lld)", m, bits, gs,
                   sn, (long long)T);
        }
        free(y1), free(y2);
    }
    if (variants) {
        /* gemm16 (W hi only): measurably coarser than the bound's resolution */
        double e16 = run_mode(3, rows, &gw, bias ? pb : NULL, dx, dy, yref, T);
        if (e16 > worst_gemm16 || e16 != e16) worst_gemm16 = e16;
        /* gemm1 (W and x hi only, one GEMM): ~2^-11 per operand */
        double e1 = run_mode(1 | 2 | 16, rows, &gw, bias ? pb : NULL, dx, dy, yref, T);
        if (e1 > worst_gemm1 || e1 != e1) worst_gemm1 = e1;
        /* must fail: x not rescaled per token (tiny rows in f16 subnormals,
         * 100x rows past f16's range) */
        double ens = run_mode(1 | 4, rows, &gw, bias ? pb : NULL, dx, dy, yref, T);
        if (ens < least_noscale) least_noscale = ens;
        EXPECT(ens > 1e-4,
               "qgemm without the x rescale should exceed 1e-4: %.2e (%d-bit g%d T=%lld)", ens,
               bits, gs, (long long)T);
    }
    /* a row view at an odd offset (unaligned 3/5-bit rows), x at a 4-byte offset */
    if (D > 5) {
        nmlx_weight v = test_qweight_rows(&w, 3, D - 5);
        nmlx_weight gv = test_qweight_device(gpu, &v);
        cpu->ops->matmul(cpu, &v, NULL, x, yref, T);
        gpu->ops->upload(gpu, dx + 1, x, (size_t)(T * N) * sizeof(float));
        e = run_mode(1, rows, &gv, NULL, dx + 1, dy, yref, T);
        EXPECT(e <= 1e-4, "qgemm view %s %d-bit g%d %s T=%lld rows=%lld: %.2e",
               nmlx_quant_mode_name(mode), bits, gs, sn, (long long)T, (long long)rows, e);
        if (e > worst_gemm || e != e) worst_gemm = e;
    }
    gpu->ops->free(gpu, dx);
    gpu->ops->free(gpu, dy);
    free(x), free(bv), free(yref);
}

/* matmul_multi and gate_up_act at T > 8: their fallback to the mat-mat */
static void test_multi(int64_t T, int64_t N) {
    const int64_t I = 203;
    nmlx_weight g = test_qweight(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, I, N, test_keep),
                u = test_qweight(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, I, N, test_keep);
    float *x = test_rand_floats((size_t)(T * N), -2, 2);
    float *rg = malloc((size_t)(T * I) * 4), *ru = malloc((size_t)(T * I) * 4);
    cpu->ops->gate_up_act(cpu, NMLX_ACT_SILU, &g, &u, NULL, NULL, x, rg, ru, T);
    nmlx_weight gg = test_qweight_device(gpu, &g), gu = test_qweight_device(gpu, &u);
    float *dx = gpu->ops->alloc(gpu, (size_t)(T * N) * 4);
    float *dg = gpu->ops->alloc(gpu, (size_t)(T * I) * 4),
          *du = gpu->ops->alloc(gpu, (size_t)(T * I) * 4);
    gpu->ops->upload(gpu, dx, x, (size_t)(T * N) * 4);
    nmlx_cuda_set_qmm_gemm(1);
    nmlx_cuda_set_qmm_rows(64);
    gpu->ops->gate_up_act(gpu, NMLX_ACT_SILU, &gg, &gu, NULL, NULL, dx, dg, du, T);
    check_ok("gate_up_act");
    double e = row_err(dg, rg, T, I);
    EXPECT(e <= 1e-4, "qgemm gate_up_act T=%lld: %.2e", (long long)T, e);
    if (e > worst_gemm) worst_gemm = e;
    /* matmul_multi: gate and up as plain projections */
    const nmlx_weight *ws[2] = {&g, &u}, *gws[2] = {&gg, &gu};
    float *ys[2] = {rg, ru}, *dys[2] = {dg, du};
    cpu->ops->matmul(cpu, ws[0], NULL, x, ys[0], T);
    cpu->ops->matmul(cpu, ws[1], NULL, x, ys[1], T);
    gpu->ops->matmul_multi(gpu, 2, gws, NULL, dx, dys, T);
    check_ok("matmul_multi");
    for (int i = 0; i < 2; i++) {
        e = row_err(dys[i], ys[i], T, I);
        EXPECT(e <= 1e-4, "qgemm matmul_multi T=%lld weight %d: %.2e", (long long)T, i, e);
        if (e > worst_gemm) worst_gemm = e;
    }
    nmlx_cuda_set_qmm_gemm(0);
    nmlx_cuda_set_qmm_rows(0);
    gpu->ops->free(gpu, dx), gpu->ops->free(gpu, dg), gpu->ops->free(gpu, du);
    free(x), free(rg), free(ru);
}

int main(void) {
    if (nmlx_backend_cuda_create(0, &gpu) != NMLX_OK) {
        printf("SKIP: no CUDA device: %s\n", nmlx_last_error());
        return 77;
    }
    EXPECT(nmlx_backend_cpu_create_isa(2, "portable", &cpu) == NMLX_OK, "cpu backend");
    /* the cuBLAS path at every T here: the few-rows kernel (default up to 64
     * rows) off; test_cuda_qrows tests it */
    nmlx_cuda_set_qrows_mma(0);
    test_seed(20261205);
    const int bits[6] = {2, 3, 4, 5, 6, 8}, gss[3] = {32, 64, 128};
    const int64_t Ts[4] = {9, 33, 100, 512}, rows[3] = {0, 64, 100};
    for (int bi = 0; bi < 6; bi++)
        for (int gi = 0; gi < 3; gi++)
            for (int si = 0; si < 3; si++) {
                const nmlx_dtype sdt = si == 0 ? NMLX_DT_F32 : si == 1 ? NMLX_DT_F16 : NMLX_DT_BF16;
                const int64_t N = (int64_t)gss[gi] * (3 + (bi + si) % 3), D = 131 + 22 * bi;
                for (int ti = 0; ti < 4; ti++)
                    test_qgemm(NMLX_QUANT_AFFINE, bits[bi], gss[gi], sdt, Ts[ti], D, N,
                               (ti + si) % 2 == 0, rows[(bi + gi + si + ti) % 3], ti == 1);
            }
    for (int ti = 0; ti < 4; ti++) {
        test_qgemm(NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_U8, Ts[ti], 257, 32 * 9, ti % 2 == 0,
                   rows[ti % 3], ti == 1);
        test_qgemm(NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_U8, Ts[ti], 45, 1024, false, 0, false);
    }
    /* real widths: the automatic chunk (two chunks at D = 8200), long rows */
    test_qgemm(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, 9, 8200, 512, true, 0, false);
    test_qgemm(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, 100, 4099, 4096, false, 0, true);
    test_qgemm(NMLX_QUANT_AFFINE, 8, 64, NMLX_DT_BF16, 33, 1001, 14336, true, 0, false);
    test_multi(33, 640);
    test_multi(9, 4096);
    printf("qgemm: worst per-row rel err %.2e (bound 1e-4)\n", worst_gemm);
    printf("qgemm gemm16 (W hi only): worst %.2e\n", worst_gemm16);
    printf("qgemm gemm1 (W and x hi only): worst %.2e (bound 2e-3)\n", worst_gemm1);
    printf("qgemm without the x rescale: least %.2e (must exceed 1e-4)\n", least_noscale);
    long exact = 0, inexact = 0;
    nmlx_cuda_qgemm_seen(gpu, &exact, &inexact);
    printf("qgemm weights with an all-zero f16 lo half (second GEMM skipped): %ld of %ld\n", exact,
           exact + inexact);
    EXPECT(exact + inexact > 0, "the gemm path recorded no weight");
    /* must fail: W rounded to f16 alone is visible at the test's resolution */
    EXPECT(worst_gemm16 > 2e-5 && worst_gemm16 > 2 * worst_gemm,
           "gemm16 should be measurably worse than gemm: %.2e vs %.2e", worst_gemm16, worst_gemm);
    /* gemm1 rounds both operands to f16 (after exact power-of-two scales):
     * well inside the 2e-2 of max|logit| the quantized fixtures allow, and
     * coarser than gemm (it must not be silently running gemm) */
    EXPECT(worst_gemm1 <= 2e-3 && worst_gemm1 > worst_gemm,
           "gemm1 worst %.2e: not within (gemm %.2e, 2e-3]", worst_gemm1, worst_gemm);
    nmlx_backend_free(gpu);
    nmlx_backend_free(cpu);
    test_free_kept();
    return test_summary();
}
