/* The integer-activation quantized prefills (quant_int8_avx512.c,
 * AVX512_VNNI): int16 x (the default precision) and int8 x (opt-in
 * precision "int8"), on random data, every weight format it
 * takes (affine 4/8-bit x group 32/64/128 x bf16/f16/f32 scales, MXFP4) and
 * both x blocks (the group, 32 columns), on shapes that cross its 32-row
 * panels (row tails), 256-column panels (several, with tails) and 6-token
 * tiles (T tails):
 *  - x's quantizers against a scalar one doing the same f32 operations
 *    (bit-identical codes, steps and sums);
 *  - the kernels against f64 of the dequantized weights times the same
 *    rounded x (tight: 1e-5 of sum (|w| + 2|b|) |x8 dx|, f32 rounding of the
 *    per-block terms);
 *  - against f64 of the dequantized weights times the float x (loose, the
 *    stated bound: sum |w| dx / 2 per output, the rounding of x, plus
 *    the tight term);
 *  - through the avx512 kernel set's matmul with each backend precision
 *    (default: int16 where picked, NMLX_QUANT_INT16=1 here; "int8"; "f32"),
 *    1 and 2 threads (bit-identical rows), T >= 24 on the chosen kernel,
 *    T < 24 and a weight flagged f32_input (the LM head) not.
 * Skipped (passes) on CPUs without AVX512_VNNI. */
#define _POSIX_C_SOURCE 200809L
#include "compute/backend.h"
#include "compute/cpu/cpu_internal.h"
#include "compute/cpu/quant_kernels.h"
#include "compute/quant.h"
#include "harness.h"
#include "quant_util.h"

#include <stdbool.h>
#include <string.h>

#define TOL_TIGHT 1e-5
#define TOL_F32 2e-6

static double worst_loose; /* largest |y - exact| / sum |w x| seen, for the log */

#if defined(__x86_64__)

static bool g_vnni; /* the AVX512_VNNI kernels run here; else only the AVX2 int16 one */

static bool have_avx2(void) {
    nmlx_backend *be = NULL;
    if (nmlx_backend_cpu_create_isa(1, "avx2", &be) != NMLX_OK) return false;
    nmlx_backend_free(be);
    return true;
}

static bool have_vnni(void) {
    nmlx_backend *be = NULL;
    if (nmlx_backend_cpu_create_isa(1, "avx512", &be) != NMLX_OK) return false;
    nmlx_backend_free(be);
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
}

/* x rounded to integers in [-qmax, qmax] per xb block the scalar way: the
 * same f32 operations as the kernels (qmax 127: int8, 32767: int16) */
static void quantize_ref(const float *x, int64_t n, int xb, float qmax, int32_t *q, float *dx,
                         float *xs) {
    for (int64_t b = 0; b < n / xb; b++) {
        float amax = 0;
        for (int j = 0; j < xb; j++)
            amax = fabsf(x[b * xb + j]) > amax ? fabsf(x[b * xb + j]) : amax;
        float id = amax > 0 ? qmax / amax : 0.0f;
        int32_t sum = 0;
        for (int j = 0; j < xb; j++) {
            float v = x[b * xb + j] * id;
            int32_t r = (int32_t)nearbyintf(v);
            q[b * xb + j] = r;
            sum += r;
        }
        dx[b] = amax / qmax;
        xs[b] = dx[b] * (float)sum;
    }
}

typedef struct {
    nmlx_weight w;
    float *deq; /* [D, N] dequantized */
    float *bia; /* [D, N/gs]: the group's bias (MXFP4: -6 s) */
} qmat;

static void make_q(qmat *m, nmlx_quant_mode mode, int bits, int gs, int64_t D, int64_t N,
                   nmlx_dtype sdt) {
    const int64_t G = N / gs;
    float *src = malloc((size_t)(D * N) * sizeof(float));
    m->w = test_quant_weight(mode, bits, gs, sdt, D, N, src);
    void *sc = m->w.scales.data, *bi = m->w.biases.data;
    m->deq = src; /* reused */
    m->bia = malloc((size_t)(D * G) * sizeof(float));
    for (int64_t d = 0; d < D; d++) {
        nmlx_quant_dequant_row(&m->w, d, 0, N, m->deq + d * N);
        for (int64_t g = 0; g < G; g++)
            m->bia[d * G + g] = mode == NMLX_QUANT_MXFP4
                                    ? -6.0f * nmlx_e8m0_value(((uint8_t *)sc)[d * G + g])
                                    : nmlx_load_f32(sdt, bi, (size_t)(d * G + g));
    }
}

static void free_q(qmat *m) {
    free(m->w.w.data), free(m->w.scales.data), free(m->w.biases.data);
    free(m->deq), free(m->bia);
}

static void test_quantizer(void) {
    enum { N = 32 * 12 };
    float x[N];
    int8_t q8[N];
    int16_t q16[N];
    int32_t qr[N];
    float dx[N / 32], xs[N / 32], dxr[N / 32], xsr[N / 32];
    /* wide 1: int8, 2: int16 (AVX-512), 3: int16 (AVX2) */
    for (int wide = g_vnni ? 1 : 3; wide <= 3; wide++)
        for (int xb = 32; xb <= 128; xb *= 2) {
            const float qmax = wide == 1 ? 127.0f : 32767.0f;
            for (int k = 0; k < N; k++)
                x[k] = test_randf(-3, 3) * (k % 29 == 0 ? 40.0f : 1.0f);
            for (int k = 64; k < 64 + xb && k < N; k++)
                x[k] = 0.0f;           /* an all-zero block: step 0, codes 0 */
            x[5] = 0.5f * 3.0f / qmax; /* ties */
            if (wide == 1)
                nmlx_qint8_quantize_row(x, N, xb, q8, dx, xs);
            else if (wide == 2)
                nmlx_qint16_quantize_row(x, N, xb, q16, dx, xs);
            else
                nmlx_avx2_qint16_quantize_row(x, N, xb, q16, dx, xs);
            quantize_ref(x, N, xb, qmax, qr, dxr, xsr);
            int bad = 0;
            for (int k = 0; k < N; k++)
                bad += (wide == 1 ? q8[k] : q16[k]) != qr[k];
            EXPECT(!bad, "quantizer %d xb %d: %d codes differ", wide, xb, bad);
            EXPECT(!memcmp(dx, dxr, (size_t)(N / xb) * sizeof(float)) &&
                       !memcmp(xs, xsr, (size_t)(N / xb) * sizeof(float)),
                   "quantizer %d xb %d: steps or sums differ", wide, xb);
        }
}

/* references for T x [r0, D): tight (int8 x), loose (float x) and their magnitudes */
typedef struct {
    double *tight, *tmag, *exact, *bound, *emag;
} refs;

static void make_refs(const qmat *m, const float *x, int64_t T, int xb, float qmax, refs *r) {
    const int64_t D = m->w.rows, N = m->w.cols, G = N / m->w.group_size, B = N / xb;
    const size_t n = (size_t)(T * D);
    r->tight = malloc(n * 8), r->tmag = malloc(n * 8), r->exact = malloc(n * 8);
    r->bound = malloc(n * 8), r->emag = malloc(n * 8);
    int32_t *q = malloc((size_t)N * 4);
    float *dx = malloc((size_t)B * 4), *xs = malloc((size_t)B * 4);
    for (int64_t t = 0; t < T; t++) {
        quantize_ref(x + t * N, N, xb, qmax, q, dx, xs);
        for (int64_t d = 0; d < D; d++) {
            const float *w = m->deq + d * N;
            double s = 0, a = 0, e = 0, bd = 0, ea = 0;
            for (int64_t k = 0; k < N; k++) {
                double xq = (double)q[k] * dx[k / xb];
                double b = fabs(m->bia[d * G + k / m->w.group_size]);
                s += w[k] * xq, a += (fabs(w[k]) + 2 * b) * fabs(xq);
                e += (double)w[k] * x[t * N + k], ea += fabs((double)w[k] * x[t * N + k]);
                bd += fabs(w[k]) * dx[k / xb] * 0.5;
            }
            size_t i = (size_t)(t * D + d);
            r->tight[i] = s, r->tmag[i] = a, r->exact[i] = e, r->bound[i] = bd, r->emag[i] = ea;
        }
    }
    free(q), free(dx), free(xs);
}

static void free_refs(refs *r) {
    free(r->tight), free(r->tmag), free(r->exact), free(r->bound), free(r->emag);
}

/* y (T x [r0, D)) against both references; returns failures */
static int check(const char *what, const qmat *m, const refs *r, const float *y, int64_t T,
                 int64_t r0) {
    const int64_t D = m->w.rows;
    double wt = 0, wl = 0;
    int bad = 0;
    for (int64_t t = 0; t < T; t++)
        for (int64_t d = r0; d < D; d++) {
            size_t i = (size_t)(t * D + d);
            double et = fabs(y[i] - r->tight[i]) / (r->tmag[i] + 1e-30);
            double lim = r->bound[i] * 1.0001 + TOL_TIGHT * r->tmag[i] + 1e-30;
            double el = fabs(y[i] - r->exact[i]) / lim;
            if (!(et <= wt)) wt = et;
            if (!(el <= wl)) wl = el;
            double rel = fabs(y[i] - r->exact[i]) / (r->emag[i] + 1e-30);
            if (rel > worst_loose) worst_loose = rel;
        }
    EXPECT(wt <= TOL_TIGHT, "%s: rounded-x reference rel err %g > %g", what, wt, TOL_TIGHT);
    EXPECT(wl <= 1.0, "%s: float-x reference err %g of the rounding bound", what, wl);
    bad += !(wt <= TOL_TIGHT) + !(wl <= 1.0);
    return bad;
}

static void test_kernel(nmlx_quant_mode mode, int bits, int gs, nmlx_dtype sdt, int64_t D,
                        int64_t N, int64_t T) {
    qmat m;
    make_q(&m, mode, bits, gs, D, N, sdt);
    float *x = malloc((size_t)(T * N) * 4), *y = malloc((size_t)(T * D) * 4);
    for (int64_t i = 0; i < T * N; i++)
        x[i] = test_randf(-1, 1) * (i % 37 == 0 ? 8.0f : 1.0f); /* a few outliers */
    /* int8 with the group's and with 32-column x blocks, then int16: VNNI,
     * AVX2 */
    for (int v = g_vnni ? 0 : 3; v < 4; v++) {
        const int xbr = v == 1 ? 32 : 0, wide = v >= 2 ? 2 : 1;
        const int xb = nmlx_qint8_xblock(&m.w, xbr);
        if (v == 1 && xb == gs) continue;
        refs r;
        make_refs(&m, x, T, xb, wide == 1 ? 127.0f : 32767.0f, &r);
        const int64_t r0 = D > 5 ? 3 : 0;
        for (int64_t j = 0; j < T * D; j++)
            y[j] = NAN;
        bool ok = v < 2    ? nmlx_avx512vnni_quant_matmat_xb(&m.w, x, y, T, r0, D, xbr)
                  : v == 2 ? nmlx_avx512vnni_quant_matmat16(&m.w, x, y, T, r0, D)
                           : nmlx_avx2_quant_matmat16(&m.w, x, y, T, r0, D);
        EXPECT(ok, "int%d kernel refused", 8 * wide);
        char what[160];
        snprintf(what, sizeof what, "int%d%s %s bits %d g%d %s xb %d D%lld N%lld T%lld rows %lld..",
                 8 * wide, v == 3 ? " avx2" : "", nmlx_quant_mode_name(mode), bits, gs,
                 nmlx_dtype_name(sdt), xb, (long long)D, (long long)N, (long long)T, (long long)r0);
        check(what, &m, &r, y, T, r0);
        free_refs(&r);
    }
    free(x), free(y);
    free_q(&m);
}

/* The VNNI decode mat-vec on int16 x (quant_dec_vnni_avx512.c): T tokens
 * one at a time over rows [r0, D) against the same references with x
 * rounded per group with qmax 32639 (tight: f32 rounding of the per-group
 * terms; loose: the rounding bound sum |w| dx / 2, dx = max|x_g| / 32639),
 * rows bit-identical whichever row range [r0, r1) a call covers (the
 * threads' and the few-token path's 64-row blocks) */
static void test_decode16(int bits, int gs, nmlx_dtype sdt, int64_t D, int64_t N, int64_t T) {
    qmat m;
    make_q(&m, NMLX_QUANT_AFFINE, bits, gs, D, N, sdt);
    EXPECT(nmlx_avx512vnni_matvec16_ok(&m.w), "int16 decode refuses bits %d g%d N%lld", bits, gs,
           (long long)N);
    float *x = malloc((size_t)(T * N) * 4), *y = malloc((size_t)(T * D) * 4),
          *y2 = malloc((size_t)D * 4);
    for (int64_t i = 0; i < T * N; i++)
        x[i] = test_randf(-1, 1) * (i % 37 == 0 ? 8.0f : 1.0f); /* a few outliers */
    refs r;
    make_refs(&m, x, T, gs, NMLX_QINT16S_MAX, &r);
    const int64_t r0 = D > 5 ? 3 : 0;
    for (int64_t j = 0; j < T * D; j++)
        y[j] = NAN;
    for (int64_t t = 0; t < T; t++)
        nmlx_avx512vnni_quant_matvec16(&m.w, x + t * N, y + t * D, r0, D);
    char what[160];
    snprintf(what, sizeof what, "int16 decode bits %d g%d %s D%lld N%lld T%lld rows %lld..", bits,
             gs, nmlx_dtype_name(sdt), (long long)D, (long long)N, (long long)T, (long long)r0);
    check(what, &m, &r, y, T, r0);
    /* split row ranges (at a multiple of 4 rows from r0, as the threads'
     * 16-row and the few-token path's 64-row blocks are): the same bits */
    const int64_t cut = r0 + (D - r0) / 8 * 4;
    for (int64_t t = 0; t < T; t++) {
        nmlx_avx512vnni_quant_matvec16(&m.w, x + t * N, y2, r0, cut);
        nmlx_avx512vnni_quant_matvec16(&m.w, x + t * N, y2, cut, D);
        EXPECT(!memcmp(y2 + r0, y + t * D + r0, (size_t)(D - r0) * 4),
               "%s: split rows differ (token %lld)", what, (long long)t);
    }
    free_refs(&r);
    free(x), free(y), free(y2);
    free_q(&m);
}

/* The avx512 set's matmul with the backend precision prec ("default":
 * int16, NMLX_QUANT_INT16=1 set by main; "int8"; "f32") */
static void test_dispatch(const char *isa, const char *prec, nmlx_quant_mode mode, int bits, int gs,
                          int64_t D, int64_t N) {
    const int64_t T = 31; /* >= NMLX_CPU_FEW_CHUNKED: the prefill kernels */
    const bool f32 = !strcmp(prec, "f32"), i8 = !strcmp(prec, "int8");
    qmat m;
    make_q(&m, mode, bits, gs, D, N, NMLX_DT_BF16);
    float *x = malloc((size_t)(T * N) * 4),
          *y[2] = {malloc((size_t)(T * D) * 4), malloc((size_t)(T * D) * 4)};
    for (int64_t i = 0; i < T * N; i++)
        x[i] = test_randf(-1, 1);
    refs r;
    make_refs(&m, x, T, i8 ? nmlx_qint8_xblock(&m.w, 0) : gs, i8 ? 127.0f : 32767.0f, &r);
    for (int nth = 1; nth <= 2; nth++) {
        nmlx_backend *be = NULL;
        EXPECT(nmlx_backend_cpu_create_isa(nth, isa, &be) == NMLX_OK, "%s backend", isa);
        EXPECT(nmlx_backend_set_precision(be, prec) == NMLX_OK, "precision %s", prec);
        be->ops->matmul(be, &m.w, NULL, x, y[nth - 1], T);
        char what[96];
        snprintf(what, sizeof what, "dispatch %s %s %s bits %d g%d threads %d", isa, prec,
                 nmlx_quant_mode_name(mode), bits, gs, nth);
        if (f32) { /* the f32 kernel: f32 rounding of the exact product */
            double worst = 0;
            for (int64_t i = 0; i < T * D; i++) {
                double e = fabs(y[nth - 1][i] - r.exact[i]) / (r.emag[i] + 1e-3);
                if (!(e <= worst)) worst = e;
            }
            EXPECT(worst < TOL_F32, "%s: rel err %g", what, worst);
        } else {
            check(what, &m, &r, y[nth - 1], T, 0);
        }
        /* fewer tokens and the LM head (f32_input): not the integer kernels */
        for (int v = 0; v < 2 && !f32; v++) {
            const int64_t Tv = v ? T : 9;
            m.w.f32_input = v == 1;
            be->ops->matmul(be, &m.w, NULL, x, y[nth - 1], Tv);
            double worst = 0;
            for (int64_t i = 0; i < Tv * D; i++) {
                double e = fabs(y[nth - 1][i] - r.exact[i]) / (r.emag[i] + 1e-3);
                if (!(e <= worst)) worst = e;
            }
            /* T = 9: the decode mat-vec per token, bf16 x where picked (2^-8),
             * int16 x where picked (2^-16 of max|x_g| per value: relative
             * 2^-16 max|x_g| / mean|x| on this x, under 1e-4) */
            const nmlx_qbf16_pick pk = nmlx_qbf16_get_pick();
            const bool avx512 = !v && strcmp(isa, "avx2");
            const double tol = avx512 && nmlx_qdec16_takes(&pk, &m.w) ? 1e-4
                               : avx512 && pk.matvec && nmlx_avx512bf16_matvec_ok(&m.w)
                                   ? 1.0 / 256 + 1e-5
                                   : TOL_F32;
            EXPECT(worst < tol, "%s: %s is not the f32/bf16 kernel (rel err %g)", what,
                   v ? "f32_input weight" : "T = 9", worst);
            m.w.f32_input = false;
        }
        be->ops->matmul(be, &m.w, NULL, x, y[nth - 1], T);
        nmlx_backend_free(be);
    }
    EXPECT(!memcmp(y[0], y[1], (size_t)(T * D) * 4),
           "dispatch %s %s %s bits %d g%d: 1 and 2 threads differ", isa, prec,
           nmlx_quant_mode_name(mode), bits, gs);
    free_refs(&r);
    free(x), free(y[0]), free(y[1]);
    free_q(&m);
}

int main(void) {
    /* before anything reads the pick (once per process): the default
     * precision takes the int16 kernel whatever the timing says */
    setenv("NMLX_QUANT_INT16", "1", 1);
    setenv("NMLX_AMX_QUANT", "0", 1); /* not the AMX prefill (test_amx_quant_emulated.c) */
    if (!have_avx2()) {
        printf("this CPU has no AVX2: integer prefill tests skipped\n");
        return test_summary();
    }
    g_vnni = have_vnni();
    if (!g_vnni) printf("this CPU has no AVX512_VNNI: the AVX2 int16 kernel only\n");
    EXPECT(!g_vnni || nmlx_qbf16_get_pick().prefill_int16, "NMLX_QUANT_INT16=1 not taken");
    test_seed(11);
    test_quantizer();
    const int gss[] = {32, 64, 128};
    const nmlx_dtype sdts[] = {NMLX_DT_BF16, NMLX_DT_F16, NMLX_DT_F32};
    const int bitss[] = {2, 3, 4, 5, 6, 8};
    for (int bi = 0; bi < 6; bi++)
        for (int g = 0; g < 3; g++)
            for (int si = 0; si < 3; si++) {
                const int b = bitss[bi];
                /* row tail (45 = 32 + 13), one or two column panels with a tail */
                test_kernel(NMLX_QUANT_AFFINE, b, gss[g], sdts[si], 45, gss[g] * 5, 13);
                test_kernel(NMLX_QUANT_AFFINE, b, gss[g], sdts[si], 70, gss[g] * 11, 6);
            }
    test_kernel(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, 33, 64 * 9, 1);
    test_kernel(NMLX_QUANT_AFFINE, 8, 128, NMLX_DT_BF16, 97, 128 * 5, 37);
    test_kernel(NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_BF16, 41, 32 * 11, 25);
    test_kernel(NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_BF16, 16, 32 * 17, 7);
    /* the int16 decode: both widths, every group size and scale dtype, row
     * tails (odd D), short last chunks (N = 32 x odd, 64 x odd), up to the
     * widest row taken */
    for (int bi = 0; bi < 2 && g_vnni; bi++)
        for (int g = 0; g < 3; g++)
            for (int si = 0; si < 3; si++) {
                const int b = bi ? 8 : 4;
                test_decode16(b, gss[g], sdts[si], 45, gss[g] * 5, 3);
                test_decode16(b, gss[g], sdts[si], 70, gss[g] * 11, 2);
                test_decode16(b, gss[g], sdts[si], 9, gss[g] * 33, 1);
            }
    if (g_vnni) {
        test_decode16(4, 64, NMLX_DT_BF16, 1, 64, 1);
        test_decode16(8, 32, NMLX_DT_F16, 2, 32, 2);
        test_decode16(4, 128, NMLX_DT_BF16, 5, 16384, 1);
        test_decode16(8, 128, NMLX_DT_F32, 5, 16384, 1);
    }
    /* the avx2 set: default = the AVX2 int16 kernel, f32 = f32; the avx512
     * set (VNNI): default = int16, int8, f32 */
    const char *precs[] = {"default", "f32", "int8"};
    for (int k = 0; k < 2; k++)
        for (int p = 0; p < (k ? 3 : 2); p++) {
            const char *isa = k ? "avx512" : "avx2";
            if (k && !g_vnni) break;
            test_dispatch(isa, precs[p], NMLX_QUANT_AFFINE, 4, 64, 75, 64 * 9);
            test_dispatch(isa, precs[p], NMLX_QUANT_AFFINE, 8, 32, 40, 32 * 13);
            test_dispatch(isa, precs[p], NMLX_QUANT_AFFINE, 3, 128, 36, 128 * 3);
            test_dispatch(isa, precs[p], NMLX_QUANT_AFFINE, 6, 64, 29, 64 * 5);
            test_dispatch(isa, precs[p], NMLX_QUANT_MXFP4, 4, 32, 50, 32 * 10);
        }
    printf("integer prefill: worst |y - W x| / sum |W x| on random data %.2e\n", worst_loose);
    return test_summary();
}

#else
int main(void) {
    printf("not x86-64: int8 prefill not built, skipped\n");
    (void)worst_loose;
    return test_summary();
}
#endif
