/* The fused quantized mat-mat (cuda_qmm_fused.cu, NMLX_CUDA_QMM=fused:
 * codes decoded inside one tensor-core kernel, x rounded to f16 after a
 * per-token power of two, group scale and bias in f32) against the portable
 * CPU reference: affine 4/8-bit x group 32/64/128 x F32/F16/BF16 scales,
 * T = 65 / 100 / 512 / 1000 (token tails of both tiles), D = 131 / 1001 /
 * 4099 (row tails), small N (one to seven 64-input tiles: fewer than the
 * pipeline's stages too) and N = 4096 / 14336, bias or not, both tiles
 * (128 x 128, 64 x 64) and the automatic choice, row views at an offset
 * with x at an unaligned address, x over 1e-3..1e3 with all-tiny and 100x
 * rows (test_wide_x). Error per row of y against that row's max|ref|:
 * bound 2e-3 (x's f16 rounding is ~2^-11 a term; a CPU simulation of the
 * same math measured <= ~4.5e-4 on these shapes); the worst is printed
 * beside gemm1's (x and W rounded to f16) on the same cases, and must not
 * exceed it (by 10%: only x is rounded here).
 * Decisive checks besides the bound: a launch counter shows the kernel ran
 * (not the fallback); both tiles give the same result bit for bit (same
 * per-element order of operations) and so does a second run; formats it
 * does not take (3-bit, MXFP4, N not a multiple of 64) must decline and
 * still be right (gemm1); precision "f32" must not take it (exact form,
 * 1e-4); matmul_multi over weights of mixed formats sharing one x (the x
 * prep is reused only for the same form). Exits 77 (skipped) without a GPU.
 * NMLX_TEST_QMM_QUICK=1: one case a format, both tiles (for compute-sanitizer). */
#include "compute/backend.h"
#include "compute/cpu/cpu_internal.h" /* nmlx_backend_cpu_create_isa */
#include "compute/cuda/cuda_backend.h"
#include "compute/quant.h"
#include "harness.h"
#include "model_util.h" /* test_diff_over_max */
#include "qweight.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { MODE_GEMM1 = 1 | 2 | 16, MODE_FUSED = 1 | 2 | 16 | 32 };

static nmlx_backend *cpu, *gpu;
static double worst_fused, worst_gemm1, worst_fused_cmp; /* _cmp: the cases gemm1 ran */
static const char *worst_case = "";
static char worst_buf[200];

/* worst over rows t of max_d |y - ref| / max_d |ref| (NaN: infinity) */
static double row_err(const float *got, const float *ref, int64_t T, int64_t D) {
    double e = 0;
    for (int64_t t = 0; t < T; t++) {
        double et = test_diff_over_max(got + t * D, ref + t * D, (size_t)D);
        if (et > e || et != et) e = et != et ? INFINITY : et;
    }
    return e;
}

static void check_ok(const char *what) {
    nmlx_status st = nmlx_backend_cuda_check(gpu);
    EXPECT(st == NMLX_OK, "%s: %s", what, nmlx_last_error());
}

/* y = x W^T (+ b) on the GPU in `mode` with `tile`; host copy in out
 * (poisoned first: every element must be written) */
static void run(int mode, int tile, const nmlx_weight *gw, const nmlx_tensor *pb, const float *dx,
                float *dy, float *out, int64_t T) {
    const size_t n = (size_t)(T * gw->rows);
    for (size_t i = 0; i < n; i++)
        out[i] = NAN;
    gpu->ops->upload(gpu, dy, out, n * sizeof(float));
    nmlx_cuda_set_qmm_gemm(mode);
    nmlx_cuda_set_qmm_fused_tile(tile);
    gpu->ops->matmul(gpu, gw, pb, dx, dy, T);
    nmlx_cuda_set_qmm_gemm(0);
    nmlx_cuda_set_qmm_fused_tile(0);
    check_ok("matmul");
    gpu->ops->download(gpu, out, dy, n * sizeof(float));
}

static const char *sname(nmlx_quant_mode mode, nmlx_dtype sdt) {
    return mode == NMLX_QUANT_MXFP4 ? "U8" : nmlx_dtype_name(sdt);
}

/* One weight: fused (tile as given) within 2e-3 and launched iff `takes`;
 * the other tile bit for bit equal; gemm1 on the same case for comparison;
 * a row view at offset 3 with x one float off alignment. */
static void test_case(nmlx_quant_mode mode, int bits, int gs, nmlx_dtype sdt, int64_t T, int64_t D,
                      int64_t N, bool bias, int tile, bool takes) {
    nmlx_weight w = test_qweight(mode, bits, gs, sdt, D, N, test_keep);
    float *x = test_wide_x(T, N, 7, 3, 11, 5), *bv = test_rand_floats((size_t)D, -1, 1);
    nmlx_tensor b = {.dtype = NMLX_DT_BF16, .ndim = 1, .shape = {D}, .name = "b"};
    uint16_t *bh = test_keep(malloc((size_t)D * 2));
    for (int64_t i = 0; i < D; i++)
        bh[i] = nmlx_f32_to_bf16(bv[i]);
    b.data = bh;
    float *yref = malloc((size_t)(T * D) * sizeof(float)), *y1 = malloc((size_t)(T * D) * 4),
          *y2 = malloc((size_t)(T * D) * 4);
    cpu->ops->matmul(cpu, &w, bias ? &b : NULL, x, yref, T);
    nmlx_weight gw = test_qweight_device(gpu, &w);
    const nmlx_tensor *pb = NULL;
    EXPECT(gpu->ops->prepare_tensor(gpu, &b, &pb) == NMLX_OK, "prepare bias");
    float *dx = gpu->ops->alloc(gpu, (size_t)(T * N + 1) * sizeof(float));
    float *dy = gpu->ops->alloc(gpu, (size_t)(T * D) * sizeof(float));
    gpu->ops->upload(gpu, dx, x, (size_t)(T * N) * sizeof(float));
    char what[150];
    snprintf(what, sizeof what, "%s %d-bit g%d %s T=%lld D=%lld N=%lld bias=%d tile=%d",
             nmlx_quant_mode_name(mode), bits, gs, sname(mode, sdt), (long long)T, (long long)D,
             (long long)N, bias, tile);
    const unsigned long long l0 = nmlx_cuda_qmm_fused_launches();
    run(MODE_FUSED, tile, &gw, bias ? pb : NULL, dx, dy, y1, T);
    const unsigned long long l1 = nmlx_cuda_qmm_fused_launches();
    EXPECT(takes ? l1 == l0 + 1 : l1 == l0, "%s: fused launches %llu, expected %d", what, l1 - l0,
           takes);
    double e = row_err(y1, yref, T, D);
    EXPECT(e <= 2e-3, "%s: fused per-row error %.2e > 2e-3", what, e);
    if (takes && (e > worst_fused || e != e)) {
        worst_fused = e;
        snprintf(worst_buf, sizeof worst_buf, "%s", what);
        worst_case = worst_buf;
    }
    if (takes) {
        /* the other tile (and a second run): the same bits */
        run(MODE_FUSED, tile == 64 ? 128 : 64, &gw, bias ? pb : NULL, dx, dy, y2, T);
        EXPECT(!memcmp(y1, y2, (size_t)(T * D) * 4), "%s: tiles 64 and 128 differ", what);
        run(MODE_FUSED, tile, &gw, bias ? pb : NULL, dx, dy, y2, T);
        EXPECT(!memcmp(y1, y2, (size_t)(T * D) * 4), "%s: a second run differs", what);
        double eg = 0;
        run(MODE_GEMM1, 0, &gw, bias ? pb : NULL, dx, dy, y2, T);
        eg = row_err(y2, yref, T, D);
        if (eg > worst_gemm1 || eg != eg) worst_gemm1 = eg;
        if (e > worst_fused_cmp || e != e) worst_fused_cmp = e;
    }
    /* a row view at offset 3 (16-byte aligned codes: N % 64 == 0), x at a 4-byte offset */
    if (D > 5) {
        nmlx_weight v = test_qweight_rows(&w, 3, D - 5);
        nmlx_weight gv = test_qweight_device(gpu, &v);
        cpu->ops->matmul(cpu, &v, NULL, x, yref, T);
        gpu->ops->upload(gpu, dx + 1, x, (size_t)(T * N) * sizeof(float));
        const unsigned long long l2 = nmlx_cuda_qmm_fused_launches();
        run(MODE_FUSED, tile, &gv, NULL, dx + 1, dy, y1, T);
        EXPECT(nmlx_cuda_qmm_fused_launches() == l2 + (takes ? 1 : 0), "%s view: launches", what);
        e = row_err(y1, yref, T, D - 5);
        EXPECT(e <= 2e-3, "%s view: fused per-row error %.2e > 2e-3", what, e);
        if (takes && (e > worst_fused || e != e)) {
            worst_fused = e;
            snprintf(worst_buf, sizeof worst_buf, "%s (view)", what);
            worst_case = worst_buf;
        }
    }
    gpu->ops->free(gpu, dx);
    gpu->ops->free(gpu, dy);
    free(x), free(bv), free(yref), free(y1), free(y2);
}

/* precision "f32": the exact form, never the fused kernel */
static void test_f32_precision(void) {
    const int64_t T = 100, D = 203, N = 512;
    nmlx_weight w = test_qweight(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, D, N, test_keep);
    float *x = test_wide_x(T, N, 7, 3, 11, 5);
    float *yref = malloc((size_t)(T * D) * 4), *y = malloc((size_t)(T * D) * 4);
    cpu->ops->matmul(cpu, &w, NULL, x, yref, T);
    nmlx_weight gw = test_qweight_device(gpu, &w);
    float *dx = gpu->ops->alloc(gpu, (size_t)(T * N) * 4),
          *dy = gpu->ops->alloc(gpu, (size_t)(T * D) * 4);
    gpu->ops->upload(gpu, dx, x, (size_t)(T * N) * 4);
    nmlx_cuda_set_f32_activations(gpu, 1);
    const unsigned long long l0 = nmlx_cuda_qmm_fused_launches();
    run(MODE_FUSED, 0, &gw, NULL, dx, dy, y, T);
    nmlx_cuda_set_f32_activations(gpu, 0);
    EXPECT(nmlx_cuda_qmm_fused_launches() == l0, "precision f32 took the fused kernel");
    const double e = row_err(y, yref, T, D);
    EXPECT(e <= 1e-4, "precision f32 under NMLX_CUDA_QMM=fused: %.2e > 1e-4", e);
    printf("precision f32 under fused: %.2e (exact form, bound 1e-4)\n", e);
    gpu->ops->free(gpu, dx), gpu->ops->free(gpu, dy);
    free(x), free(yref), free(y);
}

/* matmul_multi over one x: mixed formats (the x prep is shared only by the
 * same form; a declined 3-bit weight in between runs gemm1 in the same
 * scratch) and gate_up_act */
static void test_multi(int64_t T, int64_t N) {
    enum { NW = 5 };
    const int bits[NW] = {4, 8, 3, 4, 4}, gss[NW] = {64, 64, 64, 32, 64};
    const int64_t rows[NW] = {203, 64, 130, 77, 203};
    nmlx_weight w[NW], gw[NW];
    const nmlx_weight *gws[NW];
    float *ref[NW], *dys[NW];
    float *x = test_wide_x(T, N, 7, 3, 11, 5);
    float *dx = gpu->ops->alloc(gpu, (size_t)(T * N) * 4);
    gpu->ops->upload(gpu, dx, x, (size_t)(T * N) * 4);
    int takes = 0;
    for (int i = 0; i < NW; i++) {
        w[i] =
            test_qweight(NMLX_QUANT_AFFINE, bits[i], gss[i], NMLX_DT_BF16, rows[i], N, test_keep);
        gw[i] = test_qweight_device(gpu, &w[i]);
        gws[i] = &gw[i];
        ref[i] = malloc((size_t)(T * rows[i]) * 4);
        cpu->ops->matmul(cpu, &w[i], NULL, x, ref[i], T);
        dys[i] = gpu->ops->alloc(gpu, (size_t)(T * rows[i]) * 4);
        takes += bits[i] != 3;
    }
    const unsigned long long l0 = nmlx_cuda_qmm_fused_launches();
    nmlx_cuda_set_qmm_gemm(MODE_FUSED);
    gpu->ops->matmul_multi(gpu, NW, gws, NULL, dx, dys, T);
    nmlx_cuda_set_qmm_gemm(0);
    check_ok("matmul_multi");
    EXPECT(nmlx_cuda_qmm_fused_launches() == l0 + (unsigned long long)takes,
           "matmul_multi: fused launches %llu, expected %d", nmlx_cuda_qmm_fused_launches() - l0,
           takes);
    for (int i = 0; i < NW; i++) {
        float *y = malloc((size_t)(T * rows[i]) * 4);
        gpu->ops->download(gpu, y, dys[i], (size_t)(T * rows[i]) * 4);
        const double e = row_err(y, ref[i], T, rows[i]);
        EXPECT(e <= 2e-3, "matmul_multi T=%lld N=%lld weight %d (%d-bit g%d): %.2e", (long long)T,
               (long long)N, i, bits[i], gss[i], e);
        if (e > worst_fused) worst_fused = e, worst_case = "matmul_multi";
        free(y);
    }
    /* gate_up_act: the two fused mat-mats (x prepared once) and act_mul */
    float *rg = malloc((size_t)(T * rows[0]) * 4), *ru = malloc((size_t)(T * rows[0]) * 4);
    cpu->ops->gate_up_act(cpu, NMLX_ACT_SILU, &w[0], &w[4], NULL, NULL, x, rg, ru, T);
    nmlx_cuda_set_qmm_gemm(MODE_FUSED);
    gpu->ops->gate_up_act(gpu, NMLX_ACT_SILU, &gw[0], &gw[4], NULL, NULL, dx, dys[0], dys[4], T);
    nmlx_cuda_set_qmm_gemm(0);
    check_ok("gate_up_act");
    float *y = malloc((size_t)(T * rows[0]) * 4);
    gpu->ops->download(gpu, y, dys[0], (size_t)(T * rows[0]) * 4);
    const double e = row_err(y, rg, T, rows[0]);
    EXPECT(e <= 4e-3, "gate_up_act T=%lld: %.2e", (long long)T, e);
    free(y), free(rg), free(ru);
    for (int i = 0; i < NW; i++) {
        gpu->ops->free(gpu, dys[i]);
        free(ref[i]);
    }
    gpu->ops->free(gpu, dx);
    free(x);
}

int main(void) {
    if (nmlx_backend_cuda_create(0, &gpu) != NMLX_OK) {
        printf("SKIP: no CUDA device: %s\n", nmlx_last_error());
        return 77;
    }
    EXPECT(nmlx_backend_cpu_create_isa(2, "portable", &cpu) == NMLX_OK, "cpu backend");
    nmlx_cuda_set_qrows_mma(0); /* every T here through the mat-mat */
    test_seed(20261206);
    const int bitsv[2] = {4, 8}, gss[3] = {32, 64, 128}, tiles[3] = {0, 64, 128};
    const int64_t Ts[4] = {65, 100, 512, 1000};
    /* NMLX_TEST_QMM_QUICK=1: one case a format (both tiles), for compute-sanitizer runs */
    const char *qe = getenv("NMLX_TEST_QMM_QUICK");
    if (qe && atoi(qe) == 1) {
        for (int bi = 0; bi < 2; bi++)
            for (int gi = 0; gi < 3; gi++)
                test_case(NMLX_QUANT_AFFINE, bitsv[bi], gss[gi], NMLX_DT_BF16, 100, 131,
                          gss[gi] == 128 ? 384 : 320, true, 128, true);
        test_case(NMLX_QUANT_AFFINE, 3, 64, NMLX_DT_BF16, 100, 131, 256, true, 0, false);
        test_multi(100, 640);
        printf("fused (quick): worst per-row rel err %.2e (bound 2e-3) at %s\n", worst_fused,
               worst_case);
        nmlx_backend_free(gpu);
        nmlx_backend_free(cpu);
        test_free_kept();
        return test_summary();
    }
    int n = 0;
    for (int bi = 0; bi < 2; bi++)
        for (int gi = 0; gi < 3; gi++)
            for (int si = 0; si < 3; si++) {
                const nmlx_dtype sdt = si == 0 ? NMLX_DT_F32 : si == 1 ? NMLX_DT_F16 : NMLX_DT_BF16;
                for (int ti = 0; ti < 4; ti++, n++) {
                    const int64_t T = Ts[ti];
                    /* N: 1..7 tiles (g128: 2..6), D: 131 or 1001 (131 at T = 1000) */
                    const int64_t N = gss[gi] == 128 ? 128 * (1 + (bi + si + ti) % 3)
                                                     : 64 * (1 + (bi + gi + si + ti) % 7);
                    const int64_t D = T >= 1000 || (n % 2) ? 131 : 1001;
                    test_case(NMLX_QUANT_AFFINE, bitsv[bi], gss[gi], sdt, T, D, N, n % 3 != 0,
                              tiles[n % 3], true);
                }
            }
    /* real widths (Llama-3.1-8B's N), many blocks, the automatic tile */
    test_case(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, 100, 4099, 4096, true, 0, true);
    test_case(NMLX_QUANT_AFFINE, 8, 64, NMLX_DT_BF16, 65, 1001, 14336, false, 0, true);
    test_case(NMLX_QUANT_AFFINE, 4, 128, NMLX_DT_F16, 512, 131, 14336, true, 128, true);
    test_case(NMLX_QUANT_AFFINE, 4, 32, NMLX_DT_F32, 1000, 4099, 256, false, 0, true);
    /* declined: other widths, MXFP4, N not a multiple of 64 (gemm1 runs) */
    test_case(NMLX_QUANT_AFFINE, 3, 64, NMLX_DT_BF16, 100, 131, 256, true, 0, false);
    test_case(NMLX_QUANT_AFFINE, 2, 32, NMLX_DT_F16, 65, 131, 128, false, 0, false);
    test_case(NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_U8, 100, 131, 256, true, 0, false);
    test_case(NMLX_QUANT_AFFINE, 4, 32, NMLX_DT_BF16, 100, 131, 96, true, 0, false);
    test_case(NMLX_QUANT_AFFINE, 8, 32, NMLX_DT_F32, 65, 131, 32 * 5, false, 0, false);
    test_f32_precision();
    test_multi(100, 640);
    test_multi(512, 4096);
    printf("fused: worst per-row rel err %.2e (bound 2e-3) at %s\n", worst_fused, worst_case);
    printf("on the cases gemm1 also ran: fused worst %.2e, gemm1 worst %.2e\n", worst_fused_cmp,
           worst_gemm1);
    /* only x rounded (as gemm1 rounds it) and W exact: no worse than gemm1,
     * which also rounds W to f16 (equal where W is exact in f16) */
    EXPECT(worst_fused_cmp <= 1.1 * worst_gemm1 + 1e-5,
           "fused worst %.2e should not exceed gemm1's %.2e on the same cases", worst_fused_cmp,
           worst_gemm1);
    printf("fused launches: %llu\n", nmlx_cuda_qmm_fused_launches());
    nmlx_backend_free(gpu);
    nmlx_backend_free(cpu);
    test_free_kept();
    return test_summary();
}
