/* The few-rows tensor-core quantized mat-mat (cuda_qrows_mma.cu: batched
 * decode steps of 2..64 sessions; v1 and v2 (cuda_qrows2.h) in several
 * forms: the default, the other m16 tile count, 1/2/4/8 row groups a
 * block, no split, forced splits, which must give the same bits twice;
 * v3 (cuda_qrows3.h: x staged by the kernel itself) in each v2 form, which
 * must give v2's bits, without falling back to v2)
 * against the portable CPU reference: MLX
 * affine 2/3/4/5/6/8-bit x group 32/64/128 x F32/F16/BF16 scales and
 * MXFP4, T = 2, 3, 7, 8, 9, 16, 17, 31, 32, 33, 63, 64 (every token-tile
 * count, full and partial), odd D (not a multiple of the 16-row block),
 * N from one chunk a warp to fewer chunks than warps, bias or not, row
 * views at odd offsets, x at an unaligned address. x has a wide dynamic
 * range (|x| = 10^u, u in [-3, 3], every 5th row tiny, every 7th 100x
 * larger); the error is taken per row of y against that row's max|ref| and
 * must be <= 1e-4 (expected ~1e-6: x as bf16 hi + lo). The other kernels
 * (limit 0: the f32 rows kernel up to 8 rows, the mat-mat above) must meet
 * the bound too and differ from it in bits on most cases (a different
 * summation: the kernel ran); a limit below T must decline (bit-equal to
 * limit 0), and so must precision "f32" (the exact f32 rows kernel, bit-equal to the
 * kernel with the limit at 0). Exits 77 (ctest: skipped) without a GPU. */
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

static nmlx_backend *cpu, *gpu;
static double worst;
static int ran_differs, compared, v3_same, v3_runs;

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

/* y on the GPU with the kernel's limit at `limit` (0: the f32 rows kernel
 * for T <= 8, the mat-mat above), downloaded into host */
static void run(int limit, const nmlx_weight *gw, const nmlx_tensor *pb, const float *dx, float *dy,
                int64_t T, float *host) {
    nmlx_cuda_set_qrows_mma(limit);
    const size_t n = (size_t)(T * gw->rows);
    for (size_t i = 0; i < n; i++)
        host[i] = NAN; /* poison: every element must be written */
    gpu->ops->upload(gpu, dy, host, n * sizeof(float));
    gpu->ops->matmul(gpu, gw, pb, dx, dy, T);
    check_ok("matmul");
    gpu->ops->download(gpu, host, dy, n * sizeof(float));
}

static void test_rows(nmlx_quant_mode mode, int bits, int gs, nmlx_dtype sdt, int64_t T, int64_t D,
                      int64_t N, bool bias, bool view) {
    nmlx_weight w = test_qweight(mode, bits, gs, sdt, D, N, test_keep);
    float *x = test_wide_x(T, N, 5, 3, 7, 5), *bv = test_rand_floats((size_t)D, -1, 1);
    nmlx_tensor b = {.dtype = NMLX_DT_F32, .ndim = 1, .shape = {D}, .data = test_keep(bv)};
    nmlx_weight v = view && D > 5 ? test_qweight_rows(&w, 3, D - 5) : w;
    const int64_t Dv = v.rows;
    float *yref = malloc((size_t)(T * Dv) * sizeof(float)), *got = malloc((size_t)(T * Dv) * 4),
          *y0 = malloc((size_t)(T * Dv) * 4), *y3 = malloc((size_t)(T * Dv) * 4);
    cpu->ops->matmul(cpu, &v, bias && !view ? &b : NULL, x, yref, T);
    nmlx_weight gw = test_qweight_device(gpu, &v);
    const nmlx_tensor *pb = NULL;
    if (bias && !view) EXPECT(gpu->ops->prepare_tensor(gpu, &b, &pb) == NMLX_OK, "prepare bias");
    float *dx = gpu->ops->alloc(gpu, (size_t)(T * N + 1) * sizeof(float));
    float *dy = gpu->ops->alloc(gpu, (size_t)(T * Dv) * sizeof(float));
    const int off = view ? 1 : 0; /* x at a 4-byte offset with the views */
    gpu->ops->upload(gpu, dx + off, x, (size_t)(T * N) * sizeof(float));
    const char *sn = sdt == NMLX_DT_F32 ? "f32" : sdt == NMLX_DT_F16 ? "f16" : "bf16";
    /* every kernel form: v1; v2 with the other m16 tile count, each row
     * group count, no split, forced splits (deterministic: run twice, the
     * same bits); the last run, the default v2, leaves its result in got */
    const struct {
        int ver, mt, wr, bps, split;
        const char *name;
    } cfgs[7] = {{1, 0, 0, 2, 0, "v1"},
                 {2,
                  T > 32  ? 2
                  : T > 8 ? 4
                          : 2,
                  1, 2, 0, "v2 mt-alt wr1"},
                 {2, 0, 8, 8, 0, "v2 wr8 bps8"},
                 {2, 0, 2, 0, 0, "v2 wr2 no-split"},
                 {2, 0, 4, 0, 3, "v2 wr4 split3"},
                 {2, 0, 1, 0, 5, "v2 wr1 split5"},
                 {2, 0, 0, 2, 0, "v2"}};
    double e = 0;
    for (int ci = 0; ci < 7; ci++) {
        nmlx_cuda_set_qrows_kernel(cfgs[ci].ver, cfgs[ci].mt, cfgs[ci].wr, cfgs[ci].bps,
                                   cfgs[ci].split);
        const unsigned long long l0 = nmlx_cuda_qrows2_launches();
        run(64, &gw, pb, dx + off, dy, T, got);
        EXPECT(nmlx_cuda_qrows2_launches() - l0 == (cfgs[ci].ver == 2 ? 1u : 0u),
               "%s: v2 launches %llu", cfgs[ci].name, nmlx_cuda_qrows2_launches() - l0);
        const double ec = row_err(got, yref, T, Dv);
        EXPECT(ec <= 1e-4,
               "qrows %s %s %d-bit g%d %s T=%lld D=%lld N=%lld bias=%d view=%d: %.2e > 1e-4",
               cfgs[ci].name, nmlx_quant_mode_name(mode), bits, gs, sn, (long long)T, (long long)Dv,
               (long long)N, bias, view, ec);
        if (ec > e || ec != ec) e = ec;
        if (cfgs[ci].split) {
            run(64, &gw, pb, dx + off, dy, T, y0);
            EXPECT(!memcmp(got, y0, (size_t)(T * Dv) * 4), "%s: not deterministic T=%lld",
                   cfgs[ci].name, (long long)T);
        }
        if (cfgs[ci].ver != 2) continue;
        /* v3 in the same form: v2's bits (x staged in the kernel with
         * qx_split's arithmetic, the same chunk order and reductions), one
         * v3 launch and no v2 (it did not decline) */
        nmlx_cuda_set_qrows_kernel(3, cfgs[ci].mt, cfgs[ci].wr, cfgs[ci].bps, cfgs[ci].split);
        const unsigned long long m2 = nmlx_cuda_qrows2_launches(), m3 = nmlx_cuda_qrows3_launches();
        run(64, &gw, pb, dx + off, dy, T, y3);
        EXPECT(nmlx_cuda_qrows3_launches() - m3 == 1u && nmlx_cuda_qrows2_launches() == m2,
               "%s as v3: v3 launches %llu, v2 %llu", cfgs[ci].name,
               nmlx_cuda_qrows3_launches() - m3, nmlx_cuda_qrows2_launches() - m2);
        EXPECT(!memcmp(got, y3, (size_t)(T * Dv) * 4),
               "qrows %s as v3 %s %d-bit g%d %s T=%lld D=%lld N=%lld bias=%d view=%d: not v2's "
               "bits (%.2e from the reference)",
               cfgs[ci].name, nmlx_quant_mode_name(mode), bits, gs, sn, (long long)T, (long long)Dv,
               (long long)N, bias, view, row_err(y3, yref, T, Dv));
        v3_same += !memcmp(got, y3, (size_t)(T * Dv) * 4);
        v3_runs++;
    }
    if (e > worst || e != e) worst = e;
    nmlx_cuda_set_qrows_kernel(2, 0, 0, 2, 0); /* the limit checks below with the default v2 */
    /* the other kernels (f32 rows kernel up to 8, the mat-mat above) agree
     * to the bound too, and differ in bits somewhere: the kernel ran */
    run(0, &gw, pb, dx + off, dy, T, y0);
    double e0 = row_err(y0, yref, T, Dv);
    EXPECT(e0 <= 1e-4, "limit 0 %d-bit T=%lld: %.2e", bits, (long long)T, e0);
    compared++;
    if (memcmp(got, y0, (size_t)(T * Dv) * 4)) ran_differs++;
    EXPECT(memcmp(got, y0, (size_t)(T * Dv) * 4), "the kernel did not run: %d-bit g%d T=%lld", bits,
           gs, (long long)T);
    /* the limit is inclusive: limit T takes the kernel (the same bits) */
    run((int)T, &gw, pb, dx + off, dy, T, y0);
    EXPECT(!memcmp(got, y0, (size_t)(T * Dv) * 4), "limit %lld must take T=%lld", (long long)T,
           (long long)T);
    run(0, &gw, pb, dx + off, dy, T, y0);
    /* a limit below T declines: the same bits as limit 0 */
    run((int)T - 1, &gw, pb, dx + off, dy, T, got);
    EXPECT(!memcmp(got, y0, (size_t)(T * Dv) * 4), "limit %lld must decline T=%lld",
           (long long)T - 1, (long long)T);
    gpu->ops->free(gpu, dx);
    gpu->ops->free(gpu, dy);
    free(x), free(yref), free(got), free(y0), free(y3);
}

int main(void) {
    if (nmlx_backend_cuda_create(0, &gpu) != NMLX_OK) {
        printf("SKIP: no CUDA device: %s\n", nmlx_last_error());
        return 77;
    }
    EXPECT(nmlx_backend_cpu_create_isa(2, "portable", &cpu) == NMLX_OK, "cpu backend");
    /* limit 0 sends T > 8 to the cuBLAS mat-mat: its exact form, so the
     * 1e-4 bound below holds (the default rounds x and W to f16) */
    nmlx_cuda_set_qmm_gemm(1);
    test_seed(20261206);
    const int bits[6] = {2, 3, 4, 5, 6, 8}, gss[3] = {32, 64, 128};
    const int64_t Ts[12] = {2, 3, 7, 8, 9, 16, 17, 31, 32, 33, 63, 64};
    /* NMLX_TEST_QROWS_QUICK: a sixth of the format cases (compute-sanitizer runs) */
    const bool quick = getenv("NMLX_TEST_QROWS_QUICK") != NULL;
    int case_i = 0;
    for (int bi = 0; bi < 6; bi++)
        for (int gi = 0; gi < 3; gi++)
            for (int si = 0; si < 3; si++) {
                const nmlx_dtype sdt = si == 0 ? NMLX_DT_F32 : si == 1 ? NMLX_DT_F16 : NMLX_DT_BF16;
                /* 3..11 chunks of 32 a row: fewer than the 8 warps, and more */
                const int64_t N = (int64_t)gss[gi] * (1 + (bi + si) % 3), D = 37 + 22 * bi + 5 * gi;
                for (int k = 0; k < 3; k++) {
                    if (quick && (case_i + k) % 6) continue;
                    const int64_t T = Ts[(case_i * 5 + k * 4) % 12];
                    test_rows(NMLX_QUANT_AFFINE, bits[bi], gss[gi], sdt, T, D, N,
                              (case_i + k) % 2 == 0, (case_i + k) % 3 == 1);
                }
                case_i++;
            }
    for (int ti = 0; ti < 12; ti++) {
        if (quick && ti % 4) continue;
        test_rows(NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_U8, Ts[ti], 57, 32 * 9, ti % 2 == 0,
                  ti % 3 == 1);
        test_rows(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, Ts[ti], 45, 1024, ti % 2 == 1, false);
    }
    /* real widths: an 8B q projection's row length, long rows */
    test_rows(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, 8, 4099, 4096, true, false);
    test_rows(NMLX_QUANT_AFFINE, 8, 64, NMLX_DT_BF16, 32, 1001, 14336, false, false);
    test_rows(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, 64, 515, 4096, false, true);
    if (!quick) { /* split-K with a bias over many row blocks; MXFP4 rows of gpt-oss width */
        test_rows(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_F16, 16, 4113, 14336, true, false);
        test_rows(NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_U8, 32, 300, 2880, true, false);
    }
    /* precision "f32" declines: equal to limit 0 bit for bit */
    {
        nmlx_weight w = test_qweight(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, 77, 512, test_keep);
        nmlx_weight gw = test_qweight_device(gpu, &w);
        const int64_t T = 5;
        float *x = test_wide_x(T, 512, 5, 3, 7, 5), *a = malloc(T * 77 * 4),
              *c = malloc(T * 77 * 4);
        float *dx = gpu->ops->alloc(gpu, T * 512 * 4), *dy = gpu->ops->alloc(gpu, T * 77 * 4);
        gpu->ops->upload(gpu, dx, x, T * 512 * 4);
        run(0, &gw, NULL, dx, dy, T, a);
        nmlx_cuda_set_f32_activations(gpu, 1);
        run(64, &gw, NULL, dx, dy, T, c);
        nmlx_cuda_set_f32_activations(gpu, 0);
        EXPECT(!memcmp(a, c, T * 77 * 4), "precision f32 must take the f32 rows kernel");
        gpu->ops->free(gpu, dx), gpu->ops->free(gpu, dy);
        free(x), free(a), free(c);
    }
    EXPECT(ran_differs > compared / 2, "the kernel seems not to run: %d of %d results differ",
           ran_differs, compared);
    nmlx_cuda_set_qrows_kernel(-1, 0, 0, 0, 0);
    printf("qrows: worst %.2e over %d cases (%d differ in bits from the other kernels); v3 = v2 "
           "bit for bit in %d of %d forms\n",
           worst, compared, ran_differs, v3_same, v3_runs);
    test_free_kept();
    nmlx_backend_free(cpu);
    nmlx_backend_free(gpu);
    return test_summary();
}
