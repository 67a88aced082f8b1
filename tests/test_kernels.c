/* CPU backend kernels against naive double-precision references: every op,
 * every kernel set this CPU runs (portable, avx2), 1 and 2 threads, odd
 * sizes, all weight dtypes. Also the scalar dtype conversions. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"
#include "compute/backend.h"
#include "compute/cpu/cpu_internal.h"
#include "compute/cpu/matmul_amx.h"
#include "compute/cpu/quant_kernels.h"
#include "harness.h"
#include "amx_bf16_check.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- helpers */

static float *rand_vec(int64_t n, float lo, float hi) {
    return test_rand_floats(n > 0 ? (size_t)n : 0, lo, hi);
}

/* A float-dtype buffer of n random values, plus the exact values it holds
 * (after rounding to dt) as doubles for the reference. */
static void *rand_typed(nmlx_dtype dt, int64_t n, float lo, float hi, double *exact) {
    size_t es = nmlx_dtype_size(dt);
    void *buf = malloc((size_t)(n > 0 ? n : 1) * es);
    for (int64_t i = 0; i < n; i++) {
        float f = test_randf(lo, hi);
        if (dt == NMLX_DT_F32) ((float *)buf)[i] = f;
        if (dt == NMLX_DT_F16) ((uint16_t *)buf)[i] = nmlx_f32_to_f16(f);
        if (dt == NMLX_DT_BF16) ((uint16_t *)buf)[i] = nmlx_f32_to_bf16(f);
        exact[i] = nmlx_load_f32(dt, buf, (size_t)i);
    }
    return buf;
}

static double max_abs_d(const double *r, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        m = fmax(m, fabs(r[i]));
    return m;
}

/* max |got - ref| / max |ref| (0 when both are all zero) */
static double rel_err(const float *got, const double *ref, int64_t n) {
    double m = max_abs_d(ref, n), e = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (!(d <= e)) e = d; /* NaN propagates */
    }
    return m > 0 ? e / m : e;
}

static const nmlx_dtype float_dtypes[] = {NMLX_DT_F32, NMLX_DT_F16, NMLX_DT_BF16};

typedef struct {
    nmlx_backend *be;
    const char *isa;
    int nth;
} bk;

static int n_backends;
static bk backends[12];

static void make_backends(void) {
    const char *isas[] = {"portable", "avx2", "avx512", "avx512bf16"};
    for (int i = 0; i < 4; i++) {
        for (int nth = 1; nth <= 2; nth++) {
            nmlx_backend *be = NULL;
            nmlx_status st = nmlx_backend_cpu_create_isa(nth, isas[i], &be);
            if (st == NMLX_ERR_UNSUPPORTED) {
                printf("note: kernel set %s not available on this CPU, skipped\n", isas[i]);
                break;
            }
            EXPECT(st == NMLX_OK, "create %s/%d: %s", isas[i], nth, nmlx_last_error());
            if (st != NMLX_OK) continue;
            EXPECT(!strcmp(nmlx_backend_cpu_isa(be), isas[i]), "isa %s", nmlx_backend_cpu_isa(be));
            EXPECT(be->n_threads == nth && nmlx_pool_size(be->pool) == nth, "threads");
            backends[n_backends++] = (bk){be, isas[i], nth};
        }
    }
}

/* Tolerances: matmul/attention accumulate in f32; the SIMD activations use
 * polynomial exp/erf (max error <= 1e-5 of the largest output). */
static double tol_for(const bk *b, double portable, double simd) {
    return strcmp(b->isa, "portable") ? simd : portable;
}

/* ------------------------------------------------------------ conversions */

static double f16_value(uint16_t h) {
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}

static void test_conversions(void) {
    /* f16 -> f32: all 65536 codes */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        double ref = f16_value((uint16_t)h);
        float got = nmlx_f16_to_f32((uint16_t)h);
        if (isnan(ref) ? !isnan(got) : (double)got != ref || !!signbit(got) != !!(h & 0x8000))
            bad++;
        /* round trip of every non-NaN code */
        if (!isnan(ref) && nmlx_f32_to_f16(got) != h) bad++;
    }
    EXPECT(bad == 0, "f16 exhaustive: %d mismatches", bad);
    EXPECT((nmlx_f32_to_f16(NAN) & 0x7c00) == 0x7c00 && (nmlx_f32_to_f16(NAN) & 0x3ff), "f16 nan");
    EXPECT(nmlx_f32_to_f16(65520.0f) == 0x7c00, "f16 overflow to inf");
    EXPECT(nmlx_f32_to_f16(65519.0f) == 0x7bff, "f16 max");
    EXPECT(nmlx_f32_to_f16(-1e10f) == 0xfc00, "f16 -inf");
    EXPECT(nmlx_f32_to_f16((float)ldexp(1, -25)) == 0, "f16 tie to even zero");
    EXPECT(nmlx_f32_to_f16((float)ldexp(3, -25)) == 2, "f16 subnormal tie to even");
    EXPECT(nmlx_f32_to_f16((float)ldexp(1, -26)) == 0, "f16 underflow");
    /* random f32 -> f16: the result is the nearest code, ties to even */
    bad = 0;
    for (int i = 0; i < 200000; i++) {
        float f = test_randf(-1, 1) * (float)ldexp(1, (int)(test_rand_u64() % 44) - 28);
        uint16_t h = nmlx_f32_to_f16(f);
        double v = f16_value(h), d = fabs(v - f);
        uint16_t mag = h & 0x7fff;
        double up = f16_value((uint16_t)((h & 0x8000) | (mag + 1)));
        double dn = mag ? f16_value((uint16_t)((h & 0x8000) | (mag - 1))) : -v;
        if (mag < 0x7c00 && (d > fabs(up - f) || d > fabs(dn - f))) bad++;
        if ((d == fabs(up - f) || d == fabs(dn - f)) && (h & 1) && d > 0) bad++;
    }
    EXPECT(bad == 0, "f32->f16 rounding: %d bad", bad);

    /* bf16 */
    bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = nmlx_bf16_to_f32((uint16_t)h);
        uint32_t u;
        memcpy(&u, &f, 4);
        if (u != h << 16) bad++;
        if (!isnan(f) && nmlx_f32_to_bf16(f) != h) bad++;
    }
    EXPECT(bad == 0, "bf16 exhaustive: %d", bad);
    float tie_even = 1.0f + (float)ldexp(1, -8); /* halfway 1 and 1+2^-7: to 1 */
    float tie_odd = 1.0f + (float)ldexp(3, -8);  /* halfway, rounds up to even */
    float above = 1.0f + (float)ldexp(1, -8) + (float)ldexp(1, -20);
    EXPECT(nmlx_f32_to_bf16(tie_even) == 0x3f80, "bf16 tie even %04x", nmlx_f32_to_bf16(tie_even));
    EXPECT(nmlx_f32_to_bf16(tie_odd) == 0x3f82, "bf16 tie odd %04x", nmlx_f32_to_bf16(tie_odd));
    EXPECT(nmlx_f32_to_bf16(above) == 0x3f81, "bf16 above half");
    EXPECT(nmlx_f32_to_bf16(3.4e38f) == 0x7f80, "bf16 overflow to inf");
    uint16_t bn = nmlx_f32_to_bf16(NAN);
    EXPECT((bn & 0x7f80) == 0x7f80 && (bn & 0x7f), "bf16 nan stays nan");
    uint32_t snan = 0x7f800001u; /* low bits only: must not become inf */
    float fs;
    memcpy(&fs, &snan, 4);
    EXPECT(isnan(nmlx_bf16_to_f32(nmlx_f32_to_bf16(fs))), "bf16 low-payload nan");

    /* sizes, names, to_f32/load_f32 */
    EXPECT(nmlx_dtype_size(NMLX_DT_BF16) == 2 && nmlx_dtype_size(NMLX_DT_I64) == 8 &&
               nmlx_dtype_size(NMLX_DT_U8) == 1 && nmlx_dtype_size(NMLX_DT_F32) == 4,
           "dtype sizes");
    EXPECT(!strcmp(nmlx_dtype_name(NMLX_DT_BF16), "BF16") &&
               !strcmp(nmlx_dtype_name(NMLX_DT_F16), "F16") &&
               !strcmp(nmlx_dtype_name(NMLX_DT_I32), "I32"),
           "dtype names");
    nmlx_tensor t = {.dtype = NMLX_DT_BF16, .ndim = 3, .shape = {2, 3, 5}};
    EXPECT(nmlx_tensor_numel(&t) == 30 && nmlx_tensor_nbytes(&t) == 60, "numel/nbytes");
    for (int d = 0; d < 3; d++) {
        double ex[37];
        void *buf = rand_typed(float_dtypes[d], 37, -3, 3, ex);
        float out[37];
        nmlx_to_f32(float_dtypes[d], buf, out, 37);
        int ok = 1;
        for (int i = 0; i < 37; i++)
            ok &= out[i] == (float)ex[i];
        EXPECT(ok, "nmlx_to_f32 %s", nmlx_dtype_name(float_dtypes[d]));
        free(buf);
    }
    int32_t iv[3] = {-5, 7, 123456};
    EXPECT(nmlx_load_f32(NMLX_DT_I32, iv, 2) == 123456.0f, "load i32");
}

/* ----------------------------------------------------------------- matmul */

static void check_matmul(const bk *b, nmlx_dtype wdt, int64_t D, int64_t N, int64_t T,
                         int bias_kind) {
    double *wex = malloc((size_t)(D * N) * sizeof(double));
    void *wbuf = rand_typed(wdt, D * N, -1, 1, wex);
    float *x = rand_vec(T * N, -1, 1);
    double bex[512];
    void *bbuf = NULL;
    nmlx_tensor bias = {0};
    if (bias_kind) {
        nmlx_dtype bdt = float_dtypes[(bias_kind - 1) % 3];
        bbuf = rand_typed(bdt, D, -2, 2, bex);
        bias = (nmlx_tensor){.dtype = bdt, .ndim = 1, .shape = {D}, .data = bbuf};
    }
    nmlx_weight w = {.w = {.dtype = wdt, .ndim = 2, .shape = {D, N}, .data = wbuf},
                     .mode = NMLX_QUANT_NONE,
                     .rows = D,
                     .cols = N};
    float *y = malloc((size_t)(T * D) * sizeof(float));
    for (int64_t i = 0; i < T * D; i++)
        y[i] = NAN; /* must be fully overwritten */
    double *ref = malloc((size_t)(T * D) * sizeof(double));
    /* the avx512bf16 decode mat-vec and prefill (N % 32 == 0) round x to
     * bf16 for bf16 weights (the precision contract of bf16 checkpoints):
     * the reference does too */
    bool bf16_x = !strcmp(b->isa, "avx512bf16") && wdt == NMLX_DT_BF16 &&
                  (T < NMLX_CPU_FEW_CHUNKED ? N <= NMLX_BF16_MATVEC_MAX_N
                                            : N % 32 == 0 && (nmlx_qbf16_get_pick().dense_bf16 ||
                                                              nmlx_qbf16_get_pick().dense_amx));
    for (int64_t t = 0; t < T; t++)
        for (int64_t d = 0; d < D; d++) {
            double s = bias_kind ? bex[d] : 0;
            for (int64_t n = 0; n < N; n++) {
                float xv = x[t * N + n];
                if (bf16_x) xv = nmlx_bf16_to_f32(nmlx_f32_to_bf16(xv));
                s += wex[d * N + n] * xv;
            }
            ref[t * D + d] = s;
        }
    b->be->ops->matmul(b->be, &w, bias_kind ? &bias : NULL, x, y, T);
    double e = rel_err(y, ref, T * D);
    EXPECT(e < 2e-5 * (1 + N / 1024.0), "matmul %s/%d %s D=%lld N=%lld T=%lld bias=%d: err %.3g",
           b->isa, b->nth, nmlx_dtype_name(wdt), (long long)D, (long long)N, (long long)T,
           bias_kind, e);
    free(wex), free(wbuf), free(x), free(bbuf), free(y), free(ref);
}

/* Decode shapes for the mat-vec fast paths (64-column steps, tails, rows
 * not a multiple of the row group, N over the bf16 mat-vec's bound), on
 * their own random stream so the other tests' data stay as they were. */
static void test_matvec_shapes(const bk *b) {
    uint64_t saved = test_rng_;
    test_seed(777 + (uint64_t)b->nth);
    const int64_t Ds[] = {1, 5, 7, 9, 67};
    const int64_t Ns[] = {31, 33, 63, 65, 129, 4133};
    for (int di = 0; di < 3; di++) {
        for (size_t i = 0; i < 5; i++)
            for (size_t j = 0; j < 6; j++)
                check_matmul(b, float_dtypes[di], Ds[i], Ns[j], 1, 0);
        check_matmul(b, float_dtypes[di], 9, 40000, 1, 3);
    }
    test_rng_ = saved;
}

static void test_matmul(const bk *b) {
    const int64_t Ds[] = {1, 3, 17, 33, 100};
    const int64_t Ns[] = {1, 7, 17, 257, 300};
    const int64_t Ts[] = {1, 2, 5, 17};
    for (int di = 0; di < 3; di++)
        for (size_t i = 0; i < 5; i++)
            for (size_t j = 0; j < 5; j++)
                for (size_t k = 0; k < 4; k++)
                    check_matmul(b, float_dtypes[di], Ds[i], Ns[j], Ts[k], (int)((i + j + k) % 4));
    /* bigger shapes that cross the block sizes and the threading threshold */
    for (int di = 0; di < 3; di++) {
        check_matmul(b, float_dtypes[di], 257, 1030, 1, 1);
        check_matmul(b, float_dtypes[di], 300, 520, 37, 2);
        check_matmul(b, float_dtypes[di], 129, 64, 67, 0);
        /* the avx512bf16 dense prefill: 4 x 32-row panels with a row tail,
         * 256-column panels with a 32-column tail, 96-token x blocks and
         * 12-token tiles with tails */
        check_matmul(b, float_dtypes[di], 161, 544, 130, 1);
        check_matmul(b, float_dtypes[di], 40, 96, 24, 3);
    }
}

/* Fewer than NMLX_CPU_FEW_CHUNKED tokens (a batched decode step): every row
 * of y equals a one-token call on that row, bit for bit, so a sequence in a
 * batch decodes exactly as it would alone. Shapes cross the 64-row blocks,
 * the thread split, and the bf16 mat-vec's column bound. */
static void test_few_token_rows(const bk *b) {
    uint64_t saved = test_rng_; /* own stream: the other tests' data stay as they were */
    test_seed(4242 + (uint64_t)b->nth);
    const int64_t shapes[][2] = {{200, 300}, {131, 1030}, {70, 5000}};
    const int64_t Ts[] = {
        2, 4, 7, 12, NMLX_CPU_FEW_TOKENS - 1, NMLX_CPU_FEW_TOKENS, NMLX_CPU_FEW_CHUNKED - 1};
    for (int di = 0; di < 3; di++)
        for (size_t si = 0; si < 3; si++)
            for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
                int64_t D = shapes[si][0], N = shapes[si][1], T = Ts[ti];
                double *wex = malloc((size_t)(D * N) * sizeof(double));
                void *wbuf = rand_typed(float_dtypes[di], D * N, -1, 1, wex);
                float *x = rand_vec(T * N, -1, 1);
                float *y = malloc((size_t)(T * D) * sizeof(float));
                float *y1 = malloc((size_t)D * sizeof(float));
                nmlx_weight w = {
                    .w = {.dtype = float_dtypes[di], .ndim = 2, .shape = {D, N}, .data = wbuf},
                    .mode = NMLX_QUANT_NONE,
                    .rows = D,
                    .cols = N};
                b->be->ops->matmul(b->be, &w, NULL, x, y, T);
                int64_t bad = -1;
                for (int64_t t = 0; t < T && bad < 0; t++) {
                    b->be->ops->matmul(b->be, &w, NULL, x + t * N, y1, 1);
                    if (memcmp(y1, y + t * D, (size_t)D * sizeof(float))) bad = t;
                }
                EXPECT(bad < 0,
                       "matmul %s/%d %s D=%lld N=%lld T=%lld: row %lld differs from a "
                       "one-token call",
                       b->isa, b->nth, nmlx_dtype_name(float_dtypes[di]), (long long)D,
                       (long long)N, (long long)T, (long long)bad);
                free(wex), free(wbuf), free(x), free(y), free(y1);
            }
    test_rng_ = saved;
}

#if NMLX_CPU_HAVE_AVX2
/* The few-token mat-vecs by name against their one-token kernels, token by
 * token, bit for bit: the AVX2 one (f32, f16, bf16; kind 0..2; bf16/f16 up
 * to 8 tokens) and the AVX512_BF16 one (bf16, every variant of the
 * one-token kernel: they give the same bits; kind 3). T = 1..15, N tails
 * (not a multiple of 64, 16 or 8), N at column-block edges, row ranges
 * that start inside the matrix and end in a row tail, N past the stack
 * buffers for all 15 tokens. */
static void test_few_token_kernels(int kind) {
    uint64_t saved = test_rng_;
    test_seed(9191 + (uint64_t)kind);
    const int64_t shapes[][2] = {{9, 31},    {21, 33}, {17, 64},  {23, 95},
                                 {30, 1030}, {7, 577}, {6, 1087}, {5, 5000}};
    const nmlx_dtype dt = kind == 3 ? NMLX_DT_BF16 : float_dtypes[kind];
    for (size_t si = 0; si < 8; si++) {
        const int64_t D = shapes[si][0], N = shapes[si][1];
        double *wex = malloc((size_t)(D * N) * sizeof(double));
        void *W = rand_typed(dt, D * N, -1, 1, wex);
        nmlx_weight w = {.w = {.dtype = dt, .ndim = 2, .shape = {D, N}, .data = W},
                         .mode = NMLX_QUANT_NONE,
                         .rows = D,
                         .cols = N};
        float *x = rand_vec(15 * N, -1, 1), *y = malloc((size_t)(15 * D) * sizeof(float));
        float *y1 = malloc((size_t)D * sizeof(float));
        const int64_t ranges[][2] = {{0, D}, {3, D}, {1, D - 2}};
        for (int64_t T = 1; T < NMLX_CPU_FEW_TOKENS; T++)
            for (int ri = 0; ri < 3; ri++) {
                const int64_t d0 = ranges[ri][0], d1 = ranges[ri][1];
                for (int64_t j = 0; j < T * D; j++)
                    y[j] = NAN;
                bool ok = kind == 3 ? nmlx_avx512bf16_matvec_few(W, N, D, x, y, T, d0, d1)
                                    : nmlx_avx2_matmul_few(&w, x, y, T, d0, d1);
                /* the AVX2 one declines bf16/f16 past 8 tokens (no faster) */
                if (!ok && (kind == 1 || kind == 2) && T > 8) continue;
                int64_t bad = ok ? -1 : T;
                for (int64_t t = 0; t < T && bad < 0; t++) {
                    for (int64_t d = 0; d < D; d++)
                        y1[d] = NAN;
                    if (kind == 3)
                        nmlx_avx512bf16_matvec((int)(t % nmlx_avx512bf16_matvec_variants()), W, N,
                                               x + t * N, y1, d0, d1);
                    else
                        nmlx_avx2_matmul_rows(&w, x + t * N, y1, 1, d0, d1);
                    if (memcmp(y1 + d0, y + t * D + d0, (size_t)(d1 - d0) * sizeof(float))) bad = t;
                }
                EXPECT(bad < 0,
                       "few-token %s %s D=%lld N=%lld T=%lld rows %lld..%lld: token %lld "
                       "differs from the one-token kernel",
                       kind == 3 ? "avx512bf16" : "avx2", nmlx_dtype_name(dt), (long long)D,
                       (long long)N, (long long)T, (long long)d0, (long long)d1, (long long)bad);
            }
        free(wex), free(W), free(x), free(y), free(y1);
    }
    test_rng_ = saved;
}
#endif

/* ------------------------------------------------------------------ embed */

static void test_embed(const bk *b) {
    for (int di = 0; di < 3; di++) {
        const int64_t V = 37, D = 19, T = 6;
        double ex[37 * 19];
        void *tab = rand_typed(float_dtypes[di], V * D, -1, 1, ex);
        nmlx_weight w = {.w = {.dtype = float_dtypes[di], .ndim = 2, .shape = {V, D}, .data = tab},
                         .rows = V,
                         .cols = D};
        int32_t ids[6] = {0, 36, 5, 5, -1, 37};
        float out[6 * 19];
        b->be->ops->embed(b->be, &w, ids, T, 1.5f, out);
        int ok = 1;
        for (int64_t t = 0; t < T; t++)
            for (int64_t d = 0; d < D; d++) {
                double r = (ids[t] >= 0 && ids[t] < V) ? ex[ids[t] * D + d] * 1.5 : 0.0;
                ok &= fabs(out[t * D + d] - r) <= 1e-6 * fabs(r);
            }
        EXPECT(ok, "embed %s %s", b->isa, nmlx_dtype_name(float_dtypes[di]));
        free(tab);
    }
}

/* ---------------------------------------------------------------- rmsnorm */

static void test_rmsnorm(const bk *b) {
    const int64_t Rs[] = {1, 3, 40}, Ds[] = {1, 7, 33, 257, 1024};
    for (int wk = 0; wk < 4; wk++) /* 0: no weight, else dtype wk-1 */
        for (size_t ri = 0; ri < 3; ri++)
            for (size_t di = 0; di < 5; di++) {
                int64_t R = Rs[ri], D = Ds[di];
                float off = (ri + di) % 2 ? 1.0f : 0.0f;
                double *wex = malloc((size_t)D * sizeof(double));
                void *wbuf = wk ? rand_typed(float_dtypes[wk - 1], D, -1, 1, wex) : NULL;
                nmlx_tensor wt = {.dtype = wk ? float_dtypes[wk - 1] : NMLX_DT_F32,
                                  .ndim = 1,
                                  .shape = {D},
                                  .data = wbuf};
                float *x = rand_vec(R * D, -3, 3);
                double *ref = malloc((size_t)(R * D) * sizeof(double));
                for (int64_t r = 0; r < R; r++) {
                    double ss = 0;
                    for (int64_t i = 0; i < D; i++)
                        ss += (double)x[r * D + i] * x[r * D + i];
                    double inv = 1 / sqrt(ss / D + 1e-5);
                    for (int64_t i = 0; i < D; i++)
                        ref[r * D + i] = x[r * D + i] * inv * (wk ? wex[i] + off : 1.0);
                }
                /* in place (y aliases x) on odd cases, separate output otherwise */
                float *y = (D % 2) ? x : malloc((size_t)(R * D) * sizeof(float));
                b->be->ops->rmsnorm(b->be, x, wk ? &wt : NULL, off, 1e-5f, y, R, D);
                double e = rel_err(y, ref, R * D);
                EXPECT(e < 1e-5, "rmsnorm %s/%d w=%d R=%lld D=%lld: %.3g", b->isa, b->nth, wk,
                       (long long)R, (long long)D, e);
                if (y != x) free(y);
                free(x), free(ref), free(wex), free(wbuf);
            }
}

/* ------------------------------------------------------------------- rope */

static void test_rope(const bk *b) {
    struct {
        int64_t T, H, HD, rot, pos0;
        float mscale;
    } cs[] = {{1, 1, 2, 2, 0, 1.0f},        {3, 4, 64, 64, 7, 1.0f},
              {5, 2, 96, 32, 131072, 1.0f}, {17, 3, 128, 128, 100000, 1.25f},
              {64, 8, 64, 64, 1, 1.0f},     {2, 2, 10, 6, 3, 0.5f}};
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        int64_t T = cs[c].T, H = cs[c].H, HD = cs[c].HD, rot = cs[c].rot, half = rot / 2;
        float *fr = malloc((size_t)half * sizeof(float));
        for (int64_t i = 0; i < half; i++)
            fr[i] = (float)pow(10000.0, -2.0 * i / rot);
        float *x = rand_vec(T * H * HD, -2, 2);
        double *ref = malloc((size_t)(T * H * HD) * sizeof(double));
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++) {
                const float *xh = x + (t * H + h) * HD;
                double *rh = ref + (t * H + h) * HD;
                for (int64_t i = 0; i < HD; i++)
                    rh[i] = xh[i];
                for (int64_t i = 0; i < half; i++) {
                    double a = (double)(cs[c].pos0 + t) * fr[i];
                    rh[i] = (xh[i] * cos(a) - xh[i + half] * sin(a)) * cs[c].mscale;
                    rh[i + half] = (xh[i + half] * cos(a) + xh[i] * sin(a)) * cs[c].mscale;
                }
            }
        b->be->ops->rope(b->be, x, T, H, HD, rot, cs[c].pos0, fr, cs[c].mscale);
        double e = rel_err(x, ref, T * H * HD);
        EXPECT(e < 2e-6, "rope %s/%d case %zu: %.3g", b->isa, b->nth, c, e);
        free(fr), free(x), free(ref);
    }
}

/* -------------------------------------------------------------- attention */

typedef struct {
    int64_t T, H, KVH, HD, cap, q_pos, n_kv, window;
    float softcap;
    int sinks;
} attn_case;

/* kvdt F16/BF16: the cache holds k and v rounded to it (k16/v16), and the
 * reference reads the rounded values. */
static void check_attention(const bk *b, const attn_case *c, nmlx_dtype kvdt) {
    const int64_t T = c->T, H = c->H, KVH = c->KVH, HD = c->HD, cap = c->cap;
    float *q = rand_vec(T * H * HD, -1, 1);
    float *k = rand_vec(KVH * cap * HD, -1, 1);
    float *v = rand_vec(KVH * cap * HD, -1, 1);
    uint16_t *k16 = NULL, *v16 = NULL;
    if (kvdt != NMLX_DT_F32) {
        k16 = malloc((size_t)(KVH * cap * HD) * sizeof(uint16_t));
        v16 = malloc((size_t)(KVH * cap * HD) * sizeof(uint16_t));
        bool bf = kvdt == NMLX_DT_BF16;
        for (int64_t i = 0; i < KVH * cap * HD; i++) {
            k16[i] = bf ? nmlx_f32_to_bf16(k[i]) : nmlx_f32_to_f16(k[i]);
            v16[i] = bf ? nmlx_f32_to_bf16(v[i]) : nmlx_f32_to_f16(v[i]);
            k[i] = bf ? nmlx_bf16_to_f32(k16[i]) : nmlx_f16_to_f32(k16[i]);
            v[i] = bf ? nmlx_bf16_to_f32(v16[i]) : nmlx_f16_to_f32(v16[i]);
        }
    }
    float *sinks = c->sinks ? rand_vec(H, -2, 2) : NULL;
    float *out = rand_vec(T * H * HD, -1, 1);
    float *scratch = rand_vec(b->nth * (H / KVH) * (c->n_kv > 0 ? c->n_kv : 1), -1, 1);
    float scale = 1.0f / sqrtf((float)HD) * 2.0f;
    double *ref = calloc((size_t)(T * H * HD), sizeof(double));
    double *s = malloc((size_t)(c->n_kv + 1) * sizeof(double));
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            int64_t kvh = h / (H / KVH), qi = c->q_pos + t;
            double m = sinks ? sinks[h] : -INFINITY;
            int any = 0;
            for (int64_t j = 0; j < c->n_kv; j++) {
                bool vis = j <= qi && (c->window <= 0 || j > qi - c->window);
                s[j] = -INFINITY;
                if (!vis) continue;
                double d = 0;
                for (int64_t i = 0; i < HD; i++)
                    d += (double)q[(t * H + h) * HD + i] * k[(kvh * cap + j) * HD + i];
                d *= scale;
                if (c->softcap > 0) d = tanh(d / c->softcap) * c->softcap;
                s[j] = d;
                m = fmax(m, d);
                any = 1;
            }
            if (!any) continue; /* nothing visible: zeros */
            double den = sinks ? exp(sinks[h] - m) : 0;
            for (int64_t j = 0; j < c->n_kv; j++)
                den += exp(s[j] - m);
            double *r = ref + (t * H + h) * HD;
            for (int64_t j = 0; j < c->n_kv; j++) {
                double p = exp(s[j] - m) / den;
                for (int64_t i = 0; i < HD; i++)
                    r[i] += p * v[(kvh * cap + j) * HD + i];
            }
        }
    nmlx_attn_args a = {.q = q,
                        .k = k,
                        .v = v,
                        .out = out,
                        .T = T,
                        .H = H,
                        .KVH = KVH,
                        .HD = HD,
                        .cap = cap,
                        .q_pos = c->q_pos,
                        .n_kv = c->n_kv,
                        .scale = scale,
                        .window = c->window,
                        .softcap = c->softcap,
                        .sinks = sinks,
                        .scratch = scratch,
                        .kv_dtype = kvdt,
                        .k16 = k16,
                        .v16 = v16};
    if (k16) a.k = a.v = NULL; /* must not be read */
    b->be->ops->attention(b->be, &a);
    double e = rel_err(out, ref, T * H * HD);
    EXPECT(e < 2e-5,
           "attention %s/%d %s T=%lld H=%lld KVH=%lld HD=%lld n_kv=%lld win=%lld cap=%g "
           "sinks=%d: %.3g",
           b->isa, b->nth, nmlx_dtype_name(kvdt), (long long)T, (long long)H, (long long)KVH,
           (long long)HD, (long long)c->n_kv, (long long)c->window, c->softcap, c->sinks, e);
    free(q), free(k), free(v), free(sinks), free(out), free(scratch), free(ref), free(s);
    free(k16), free(v16);
}

static void test_attention(const bk *b) {
    const attn_case cs[] = {
        /* T  H KVH  HD  cap q_pos n_kv win softcap sinks */
        {1, 1, 1, 1, 1, 0, 1, 0, 0, 0},
        {1, 8, 2, 64, 40, 20, 21, 0, 0, 0},        /* decode, GQA 4 */
        {7, 4, 4, 17, 16, 0, 7, 0, 0, 0},          /* prefill from 0, MHA */
        {5, 6, 3, 33, 64, 30, 35, 0, 0, 1},        /* chunked prefill, sinks */
        {9, 4, 1, 128, 40, 10, 19, 4, 0, 0},       /* sliding window, MQA */
        {3, 2, 2, 100, 300, 250, 253, 128, 0, 1},  /* window + sinks */
        {4, 8, 2, 16, 12, 0, 4, 0, 30.0f, 0},      /* softcap */
        {6, 4, 2, 64, 80, 50, 56, 7, 20.0f, 1},    /* everything */
        {2, 3, 3, 7, 10, 0, 2, 1, 0, 1},           /* window 1: only itself */
        {1, 16, 8, 128, 600, 512, 513, 0, 0, 0},   /* long decode, threads */
        {33, 16, 8, 64, 64, 0, 33, 0, 0, 0},       /* prefill, threads */
        {1, 4, 2, 72, 300, 290, 291, 0, 0, 0},     /* HD = 64 + 8: both mix blocks */
        {2, 2, 1, 130, 50, 40, 42, 0, 0, 1},       /* HD tail of 2 */
        {1, 8, 8, 256, 1100, 1030, 1031, 0, 0, 0}, /* long rows, odd key count */
        {3, 4, 2, 3, 9, 2, 5, 0, 0, 0},            /* HD under one vector */
        {1, 6, 2, 40, 20, 10, 11, 0, 0, 1},        /* decode, groups of 3 split 2 + 1 */
        {1, 8, 1, 64, 100, 90, 91, 0, 0, 0},       /* MQA decode: one group in chunks */
        /* prefill blocks (cpu_attention.c: up to 16 queries x the group's
         * heads through the row kernels at once; attention_avx2.c's
         * widened-key tiles for >= 6 rows, HD % 8 == 0) */
        {37, 8, 2, 80, 90, 13, 50, 0, 0, 0},    /* HD 80: 48-key chunks, block tail */
        {21, 4, 2, 256, 40, 3, 24, 0, 0, 1},    /* HD 256: 16-key chunks, sinks */
        {40, 8, 1, 64, 64, 0, 40, 9, 25.0f, 1}, /* MQA, window, softcap, sinks */
        {19, 6, 3, 128, 70, 50, 69, 0, 0, 0},   /* chunked prefill, groups of 2 */
        {6, 12, 2, 8, 30, 0, 6, 0, 0, 0},       /* HD 8, 6 queries x 6 heads */
        {17, 2, 1, 24, 20, 0, 17, 1, 0, 1},     /* window 1 in a block */
    };
    const nmlx_dtype kvdts[] = {NMLX_DT_F32, NMLX_DT_F16, NMLX_DT_BF16};
    for (int d = 0; d < 3; d++)
        for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
            check_attention(b, &cs[i], kvdts[d]);
}

/* ------------------------------------------------------------ activations */

static double act_ref(nmlx_act act, double x) {
    switch (act) {
    case NMLX_ACT_SILU: return x / (1 + exp(-x));
    case NMLX_ACT_GELU_TANH: {
        double u = sqrt(2 / 3.14159265358979323846) * (x + 0.044715 * x * x * x);
        return x / (1 + exp(-2 * u)); /* = 0.5 x (1 + tanh u), without cancellation */
    }
    case NMLX_ACT_GELU_ERF: return 0.5 * x * erfc(-x / sqrt(2.0));
    }
    return NAN;
}

static void test_activations(const bk *b) {
    const int64_t ns[] = {1, 3, 7, 17, 100, 257, 100003};
    for (int act = 0; act < 3; act++)
        for (size_t ni = 0; ni < 7; ni++) {
            int64_t n = ns[ni];
            float *g = rand_vec(n, -10, 10), *u = rand_vec(n, -2, 2);
            if (n > 4) g[0] = -90.0f, g[1] = 90.0f, g[2] = 1e-6f, g[3] = -0.0f;
            double *ref = malloc((size_t)n * sizeof(double));
            double *ref2 = malloc((size_t)n * sizeof(double));
            float *x = malloc((size_t)n * sizeof(float)), *x0 = malloc((size_t)n * sizeof(float));
            memcpy(x, g, (size_t)n * sizeof(float));
            memcpy(x0, g, (size_t)n * sizeof(float));
            for (int64_t i = 0; i < n; i++) {
                ref[i] = act_ref((nmlx_act)act, g[i]) * u[i];
                ref2[i] = act_ref((nmlx_act)act, g[i]);
            }
            b->be->ops->act(b->be, (nmlx_act)act, x, n);
            b->be->ops->act_mul(b->be, (nmlx_act)act, g, u, g, n); /* out aliases gate */
            if (!strcmp(b->isa, "portable")) {
                /* element-wise relative accuracy where the function is well
                 * conditioned (|x| <= 4), and 2e-6 of the largest output overall */
                double e1 = 0, e2 = 0;
                for (int64_t i = 0; i < n; i++) {
                    if (fabs(x0[i]) > 4) continue;
                    e1 = fmax(e1, fabs(g[i] - ref[i]) / fmax(fabs(ref[i]), 1e-30));
                    e2 = fmax(e2, fabs(x[i] - ref2[i]) / fmax(fabs(ref2[i]), 1e-30));
                }
                EXPECT(e1 < 2e-6 && e2 < 2e-6, "act %d portable n=%lld: %.3g %.3g", act,
                       (long long)n, e1, e2);
                /* and 2e-6 of the largest output (at least 1, see below) */
                e1 = rel_err(g, ref, n) * max_abs_d(ref, n) / fmax(max_abs_d(ref, n), 1.0);
                e2 = rel_err(x, ref2, n) * max_abs_d(ref2, n) / fmax(max_abs_d(ref2, n), 1.0);
                EXPECT(e1 < 2e-6 && e2 < 2e-6, "act %d portable n=%lld: max %.3g %.3g", act,
                       (long long)n, e1, e2);
            } else {
                /* relative to the vector's largest output, but at least 1: a
                 * lone input deep in GELU's negative tail (output ~1e-18) is
                 * judged by its absolute error, not by its relative one */
                double m1 = fmax(max_abs_d(ref, n), 1.0), m2 = fmax(max_abs_d(ref2, n), 1.0);
                double e1 = rel_err(g, ref, n) * max_abs_d(ref, n) / m1;
                double e2 = rel_err(x, ref2, n) * max_abs_d(ref2, n) / m2;
                EXPECT(e1 < 1e-5 && e2 < 1e-5, "act %d %s n=%lld: %.3g %.3g", act, b->isa,
                       (long long)n, e1, e2);
            }
            free(g), free(u), free(ref), free(ref2), free(x), free(x0);
        }
}

/* ------------------------------------------------------ add/scale/softmax */

static void test_elementwise(const bk *b) {
    const int64_t ns[] = {1, 3, 7, 17, 33, 257, 100003};
    for (size_t ni = 0; ni < 7; ni++) {
        int64_t n = ns[ni];
        float *a = rand_vec(n, -5, 5), *c = rand_vec(n, -5, 5), *o = rand_vec(n, -1, 1);
        int ok = 1;
        b->be->ops->add(b->be, a, c, o, n);
        for (int64_t i = 0; i < n; i++)
            ok &= o[i] == a[i] + c[i];
        b->be->ops->add(b->be, a, c, a, n); /* out aliases a */
        for (int64_t i = 0; i < n; i++)
            ok &= a[i] == o[i];
        EXPECT(ok, "add %s/%d n=%lld", b->isa, b->nth, (long long)n);
        memcpy(o, c, (size_t)n * sizeof(float));
        b->be->ops->scale(b->be, c, -0.37f, n);
        ok = 1;
        for (int64_t i = 0; i < n; i++)
            ok &= c[i] == o[i] * -0.37f;
        EXPECT(ok, "scale %s/%d n=%lld", b->isa, b->nth, (long long)n);
        free(a), free(c), free(o);
    }
    const int64_t Rs[] = {1, 2, 5, 64}, Ws[] = {1, 3, 17, 1000, 4099};
    for (size_t ri = 0; ri < 4; ri++)
        for (size_t wi = 0; wi < 5; wi++) {
            int64_t R = Rs[ri], n = Ws[wi];
            float *x = rand_vec(R * n, -20, 20);
            double *ref = malloc((size_t)(R * n) * sizeof(double));
            for (int64_t r = 0; r < R; r++) {
                double m = -INFINITY, s = 0;
                for (int64_t i = 0; i < n; i++)
                    m = fmax(m, x[r * n + i]);
                for (int64_t i = 0; i < n; i++)
                    s += exp(x[r * n + i] - m);
                for (int64_t i = 0; i < n; i++)
                    ref[r * n + i] = exp(x[r * n + i] - m) / s;
            }
            b->be->ops->softmax(b->be, x, R, n);
            double e = rel_err(x, ref, R * n);
            EXPECT(e < tol_for(b, 2e-6, 1e-5), "softmax %s/%d R=%lld n=%lld: %.3g", b->isa, b->nth,
                   (long long)R, (long long)n, e);
            free(x), free(ref);
        }
}

/* ----------------------------------------------------------------- memory */

static void test_memory(const bk *b) {
    nmlx_backend *be = b->be;
    const size_t sizes[] = {1, 3, 64, 1000, 1 << 20};
    for (size_t i = 0; i < 5; i++) {
        unsigned char *p = be->ops->alloc(be, sizes[i]);
        EXPECT(p && ((uintptr_t)p % 64) == 0, "alloc %zu aligned", sizes[i]);
        if (!p) continue;
        int zero = 1;
        for (size_t j = 0; j < sizes[i]; j++)
            zero &= p[j] == 0;
        EXPECT(zero, "alloc %zu zeroed", sizes[i]);
        unsigned char *host = malloc(sizes[i]), *back = malloc(sizes[i]);
        for (size_t j = 0; j < sizes[i]; j++)
            host[j] = (unsigned char)test_rand_u64();
        be->ops->upload(be, p, host, sizes[i]);
        unsigned char *q = be->ops->alloc(be, sizes[i]);
        be->ops->copy(be, q, p, sizes[i]);
        be->ops->download(be, back, q, sizes[i]);
        be->ops->sync(be);
        EXPECT(!memcmp(host, back, sizes[i]), "upload/copy/download %zu", sizes[i]);
        be->ops->free(be, p);
        be->ops->free(be, q);
        free(host), free(back);
    }
    be->ops->free(be, NULL);
}

static void test_create_env(void) {
    nmlx_backend *be = NULL;
    setenv("NMLX_CPU", "portable", 1);
    EXPECT(nmlx_backend_cpu_create(1, &be) == NMLX_OK, "create portable");
    EXPECT(be && !strcmp(nmlx_backend_cpu_isa(be), "portable"), "NMLX_CPU=portable honoured");
    nmlx_backend_free(be);
    unsetenv("NMLX_CPU");
    be = NULL;
    EXPECT(nmlx_backend_cpu_create(0, &be) == NMLX_OK, "create default");
    if (be) {
        printf("default kernel set: %s, %d threads\n", nmlx_backend_cpu_isa(be), be->n_threads);
        EXPECT(be->n_threads >= 1, "n_threads 0 = online CPUs");
    }
    nmlx_backend_free(be);
    nmlx_backend_free(NULL);
    setenv("NMLX_CPU", "avx2", 1);
    be = NULL;
    EXPECT(nmlx_backend_cpu_create(1, &be) == NMLX_OK, "create capped");
    EXPECT(be && strcmp(nmlx_backend_cpu_isa(be), "avx512") != 0, "NMLX_CPU=avx2 caps the set");
    nmlx_backend_free(be);
    unsetenv("NMLX_CPU");
    be = NULL;
    EXPECT(nmlx_backend_cpu_create_isa(1, "sse9", &be) == NMLX_ERR_UNSUPPORTED && !be,
           "unknown isa refused");
    EXPECT(strstr(nmlx_last_error(), "sse9") != NULL, "message names the isa");
    EXPECT(nmlx_backend_cpu_create(-1, &be) == NMLX_ERR_INVALID_ARG, "negative threads refused");
    /* every allocation failure is reported, nothing leaks */
    for (long n = 1; n <= 6; n++) {
        nmlx_test_fail_alloc_after(n);
        be = NULL;
        nmlx_status st = nmlx_backend_cpu_create(2, &be);
        nmlx_test_fail_alloc_after(0);
        EXPECT(st == NMLX_OK ? be != NULL : be == NULL, "alloc failure %ld handled", n);
        nmlx_backend_free(be);
    }
}

/* ------------------------------------------------- AMX dense bf16 prefill */

/* nmlx_amx_bf16_matmat by name on odd shapes (tails of the 16/32-token,
 * 32-row and 32/512-column blocks), its rows split as 1..3 threads split
 * them (and unaligned ranges), against x rounded to bf16 times the exact
 * bf16 W in double; rows outside the range untouched. Then through
 * avx512bf16 backends with 1..3 threads. Runs on a CPU with AMX unless
 * NMLX_AMX=0 (skipped otherwise). */
static void check_amx(int64_t T, int64_t D, int64_t N, int nth, bool unaligned) {
    double *wex = malloc((size_t)(D * N) * sizeof(double));
    void *wbuf = rand_typed(NMLX_DT_BF16, D * N, -1, 1, wex);
    float *x = rand_vec(T * N, -1, 1);
    amx_bf16_check(nmlx_amx_bf16_matmat, "amx matmat", wbuf, x, T, D, N, nth, unaligned);
    free(wex), free(wbuf), free(x);
}

static void test_amx_dense(void) {
    if (!nmlx_amx_wanted()) {
        printf("AMX dense bf16 prefill: SKIPPED (NMLX_AMX=0)\n");
        return;
    }
    if (!nmlx_amx_ok() || !nmlx_qbf16_get_pick().dense_amx) {
        printf("AMX dense bf16 prefill: SKIPPED (%s)\n",
               nmlx_amx_ok() ? "the pick did not take it" : nmlx_amx_status());
        return;
    }
    uint64_t saved = test_rng_;
    test_seed(4242);
    const int64_t shapes[][3] = {/* T, D, N */
                                 {1, 1, 1},      {5, 17, 31},   {24, 33, 64},  {37, 45, 83},
                                 {33, 100, 300}, {70, 67, 545}, {257, 40, 97}, {300, 130, 1030},
                                 {48, 64, 1024}, {530, 20, 40}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int nth = 1; nth <= 3; nth++)
            for (int ua = 0; ua < 2; ua++)
                check_amx(shapes[i][0], shapes[i][1], shapes[i][2], nth, ua);
    /* through the backend (cpu_ops.c's dispatch: T >= 24, N % 32 == 0) */
    for (int nth = 1; nth <= 3; nth++) {
        nmlx_backend *be = NULL;
        if (nmlx_backend_cpu_create_isa(nth, "avx512bf16", &be) != NMLX_OK) continue;
        bk b = {be, "avx512bf16", nth};
        check_matmul(&b, NMLX_DT_BF16, 67, 96, 37, 1);
        check_matmul(&b, NMLX_DT_BF16, 300, 544, 61, 2);
        check_matmul(&b, NMLX_DT_BF16, 129, 1056, 24, 0);
        nmlx_backend_free(be);
    }
    test_rng_ = saved;
    printf("AMX dense bf16 prefill: RAN (direct kernel x %zu shapes x 1-3 threads, backend "
           "1-3 threads)\n",
           sizeof shapes / sizeof shapes[0]);
}

int main(void) {
    test_seed(12345);
    test_conversions();
    test_create_env();
    make_backends();
    for (int i = 0; i < n_backends; i++) {
        const bk *b = &backends[i];
        test_memory(b);
        test_matmul(b);
        test_embed(b);
        test_rmsnorm(b);
        test_rope(b);
        test_attention(b);
        test_activations(b);
        test_elementwise(b);
        test_matvec_shapes(b);
        test_few_token_rows(b);
#if NMLX_CPU_HAVE_AVX2
        if (b->nth == 1 && !strcmp(b->isa, "avx2"))
            for (int kind = 0; kind < 3; kind++)
                test_few_token_kernels(kind);
        if (b->nth == 1 && !strcmp(b->isa, "avx512bf16")) test_few_token_kernels(3);
#endif
    }
    test_amx_dense();
    for (int i = 0; i < n_backends; i++)
        nmlx_backend_free(backends[i].be);
    return test_summary();
}
