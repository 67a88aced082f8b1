/* Quantized weights: the packing against an independent reading of MLX's
 * byte layout, the quantizer's error bound, and every quantized matmul path
 * (portable, avx2, avx512; 1 and 2 threads; decode and prefill) against
 * dequantize-then-f64 on random data for every bits x group size, odd shapes,
 * sized to cross the SIMD kernels' row blocks, panels, token tiles and column
 * chunks (quant_avx2.c, quant_avx512.c). */
#include "compute/backend.h"
#include "compute/cpu/cpu_internal.h"
#include "compute/cpu/matmul_amx.h"
#include "compute/cpu/quant_kernels.h"
#include "compute/quant.h"
#include "harness.h"
#include "quant_util.h"

#include <string.h>

static const char *isas[] = {"portable", "avx2", "avx512"};

/* Relative error bounds (of sum |w x|): f32 kernels, and kernels that round
 * x and the dequantized weights to bf16 (2^-9 each: 2^-8 per product). */
#define TOL_F32 2e-6
#define TOL_BF16 (1.0 / 256 + 1e-5)
#define TOL_INT16 5e-4
#define TOL_AMX3 1e-4

static bool have_avx512(void) {
    nmlx_backend *be = NULL;
    if (nmlx_backend_cpu_create_isa(1, "avx512", &be) != NMLX_OK) return false;
    nmlx_backend_free(be);
    return true;
}

static bool have_avx512bf16(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return have_avx512() && __builtin_cpu_supports("avx512bf16");
#else
    return false;
#endif
}

/* The avx512 set's bound for T tokens: its bf16 kernels where picked. */
static double avx512_tol(const nmlx_weight *w, int64_t T) {
#if defined(__x86_64__)
    /* NMLX_QUANT_INT8=prefill (opt-in): x in int8, tests/test_quant_int8.c
     * checks its exact bound; here 1/64 of sum |w x| (random x: <= 7.9e-3) */
    if (T >= NMLX_CPU_FEW_CHUNKED && !w->f32_input && nmlx_qint8_get_mode().prefill &&
        nmlx_avx512vnni_quant_ok(w))
        return 1.0 / 64;
    nmlx_qbf16_pick p = nmlx_qbf16_get_pick();
    /* AMX-INT8 where picked (tried first, as cpu_ops.c does): the int16
     * prefill's arithmetic and bits, whether or not the pick kept the int16
     * VNNI kernel itself (under load its timing can lose to f32) */
    if (p.prefill_amx8 && T >= p.prefill_amx8_min_t && !w->f32_input && nmlx_amx_int8_ok() &&
        nmlx_amx8_quant_ok(w))
        return TOL_INT16;
    /* AMX tiles where picked (NMLX_AMX_QUANT=1 forces them on an AMX CPU):
     * x and W as bf16 hi + lo (3 terms, 3 x 2^-16 per product plus f32
     * sums; tests/test_amx_quant_emulated.c checks the exact bound), or
     * W (NMLX_AMX_QUANT=2) or W and x (=bf16) rounded to bf16 */
    if (p.prefill_amx && T >= p.prefill_amx_min_t && !w->f32_input && nmlx_amx_ok() &&
        nmlx_amx_quant_ok(w))
        return p.prefill_amx == 3 ? TOL_AMX3 : TOL_BF16;
    /* the default precision's int16 x (AVX512_VNNI): step max|x| / 32767 per
     * group, relative error about max|x| / mean|x| / 65534 (test_quant_int8.c
     * checks its exact bound) */
    if (T >= NMLX_CPU_FEW_CHUNKED && !w->f32_input && p.prefill_int16 &&
        nmlx_avx512vnni_quant_ok(w))
        return TOL_INT16;
    /* the int16 x decode (VNNI; T < NMLX_CPU_FEW_CHUNKED: one-token and
     * few-token forms): step max|x_g| / 32639, the same bound */
    if (T < NMLX_CPU_FEW_CHUNKED && nmlx_qdec16_takes(&p, w)) return TOL_INT16;
    if (!have_avx512bf16()) return TOL_F32;
    if (T >= NMLX_CPU_FEW_CHUNKED ? p.prefill && !w->f32_input && w->cols % 32 == 0 &&
                                        (w->mode == NMLX_QUANT_MXFP4 || p.prefill_affine)
                                  : p.matvec && nmlx_avx512bf16_matvec_ok(w))
        return TOL_BF16;
#else
    (void)w, (void)T;
#endif
    return TOL_F32;
}

/* The avx2 set's bound: its int16 prefill (the default precision) for
 * T >= 24 (NMLX_QUANT_INT16=0 turns it off) */
static double avx2_tol(const nmlx_weight *w, int64_t T) {
#if defined(__x86_64__)
    const char *e = getenv("NMLX_QUANT_INT16");
    if (T >= NMLX_CPU_FEW_CHUNKED && !w->f32_input && !(e && !strcmp(e, "0")) &&
        nmlx_avx2_quant_int16_ok(w))
        return TOL_INT16;
#else
    (void)w, (void)T;
#endif
    return TOL_F32;
}

/* worst |y - ref| / (mag + 1e-3) over T x D, NaN-safe */
static double worst_err(const float *y, const double *ref, const double *mag, int64_t n) {
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs(y[i] - ref[i]) / (mag[i] + 1e-3);
        if (!(e <= worst)) worst = e;
    }
    return worst;
}

/* A quantized [D, N] weight made from random data; frees with free_q. */
typedef struct {
    nmlx_weight w;
    float *src;
} qmat;

static void make_q(qmat *m, nmlx_quant_mode mode, int bits, int gs, int64_t D, int64_t N,
                   nmlx_dtype sdt) {
    m->src = malloc((size_t)(D * N) * sizeof(float));
    m->w = test_quant_weight(mode, bits, gs, sdt, D, N, m->src);
}

static void free_q(qmat *m) {
    free(m->w.w.data);
    free(m->w.scales.data);
    free(m->w.biases.data);
    free(m->src);
}

/* MLX's 3-bit byte layout, written out the way mlx's extract_bits reads it
 * (8 codes in 3 bytes), to check our bit-stream reader independently. */
static void test_packing_layout(void) {
    uint8_t b[3] = {0xA5, 0x3C, 0xE7};
    unsigned want[8] = {b[0] & 0x7u,        (b[0] >> 3) & 0x7u, ((b[0] >> 6) | (b[1] << 2)) & 0x7u,
                        (b[1] >> 1) & 0x7u, (b[1] >> 4) & 0x7u, ((b[1] >> 7) | (b[2] << 1)) & 0x7u,
                        (b[2] >> 2) & 0x7u, (b[2] >> 5) & 0x7u};
    for (int k = 0; k < 8; k++)
        EXPECT(nmlx_quant_code(b, k, 3) == want[k], "3-bit code %d: %u vs %u", k,
               nmlx_quant_code(b, k, 3), want[k]);
    /* 6 bits: 4 codes in 3 bytes, low bits first */
    uint32_t v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16;
    for (int k = 0; k < 4; k++)
        EXPECT(nmlx_quant_code(b, k, 6) == ((v >> (6 * k)) & 63u), "6-bit code %d", k);
    /* 4 bits: element j of a U32 at shift 4j */
    uint32_t word = 0x87654321u;
    for (int k = 0; k < 8; k++)
        EXPECT(nmlx_quant_code((const uint8_t *)&word, k, 4) == (unsigned)((k + 1) & 15),
               "4-bit code %d", k);
}

/* Round trip: within one step (range / (2^bits - 1)) of w. Not half a step:
 * MLX snaps the larger-magnitude end to an exact code (bias = edge, scale =
 * edge / round(edge / scale)), which stretches or shrinks the step and can
 * clamp the other end; MXFP4 rounds the exponent to nearest, which can clamp
 * the group maximum from up to 6 * sqrt(2) to 6 units. */
static void test_roundtrip(nmlx_quant_mode mode, int bits, int gs, nmlx_dtype sdt) {
    qmat m;
    const int64_t D = 3, N = gs * 3;
    make_q(&m, mode, bits, gs, D, N, sdt);
    float *row = malloc((size_t)N * sizeof(float));
    double worst = 0;
    for (int64_t d = 0; d < D; d++) {
        nmlx_quant_dequant_row(&m.w, d, 0, N, row);
        for (int64_t g = 0; g < N / gs; g++) {
            float lo = INFINITY, hi = -INFINITY;
            for (int j = 0; j < gs; j++) {
                float v = m.src[d * N + g * gs + j];
                lo = v < lo ? v : lo, hi = v > hi ? v : hi;
            }
            double step = mode == NMLX_QUANT_MXFP4 ? fmax(fabs(lo), fabs(hi)) / 3.0
                                                   : (hi - lo) / ((1 << bits) - 1);
            for (int j = 0; j < gs; j++) {
                double e = fabs(row[g * gs + j] - m.src[d * N + g * gs + j]) / step;
                worst = e > worst ? e : worst;
            }
        }
    }
    /* plus the scale/bias stored in bf16/f16 (relative 2^-8 / 2^-11 of up to
     * 2^bits steps) */
    double lim =
        1.0 + 1e-3 + (sdt == NMLX_DT_F32 ? 0 : (sdt == NMLX_DT_BF16 ? 8e-3 : 1e-3) * (1 << bits));
    EXPECT(worst <= lim, "%s bits %d g%d %s: round-trip error %.3f steps > %.3f",
           nmlx_quant_mode_name(mode), bits, gs, nmlx_dtype_name(sdt), worst, lim);
    free(row);
    free_q(&m);
}

static void test_matmul(nmlx_quant_mode mode, int bits, int gs, nmlx_dtype sdt, int64_t D,
                        int64_t N, int64_t T) {
    qmat m;
    make_q(&m, mode, bits, gs, D, N, sdt);
    float *x = malloc((size_t)(T * N) * sizeof(float)), *y = malloc((size_t)(T * D) * 4);
    float *row = malloc((size_t)N * sizeof(float));
    double *ref = malloc((size_t)(T * D) * sizeof(double)), *mag = malloc((size_t)(T * D) * 8);
    for (int64_t i = 0; i < T * N; i++)
        x[i] = test_randf(-1, 1);
    for (int64_t d = 0; d < D; d++) {
        nmlx_quant_dequant_row(&m.w, d, 0, N, row);
        for (int64_t t = 0; t < T; t++) {
            double s = 0, a = 0;
            for (int64_t k = 0; k < N; k++) {
                s += (double)row[k] * x[t * N + k];
                a += fabs((double)row[k] * x[t * N + k]);
            }
            ref[t * D + d] = s, mag[t * D + d] = a;
        }
    }
    float bias_vals[512]; /* D <= 512 */
    for (int64_t d = 0; d < D; d++)
        bias_vals[d] = test_randf(-1, 1);
    nmlx_tensor bias = {.dtype = NMLX_DT_F32, .ndim = 1, .shape = {D}, .data = bias_vals};
    /* f32_input (the LM head's flag): the avx512 set's prefill stays f32 */
    for (int v = 0; v < (int)(sizeof isas / sizeof isas[0]) + 1; v++) {
        const size_t i = v < 3 ? (size_t)v : 2;
        m.w.f32_input = v == 3;
        if (m.w.f32_input && T < NMLX_CPU_FEW_CHUNKED) break;
        for (int nth = 1; nth <= 2; nth++) {
            nmlx_backend *be = NULL;
            if (nmlx_backend_cpu_create_isa(nth, isas[i], &be) != NMLX_OK) continue;
            bool with_bias = (D + T) % 2 == 0;
            for (int64_t j = 0; j < T * D; j++)
                y[j] = NAN;
            be->ops->matmul(be, &m.w, with_bias ? &bias : NULL, x, y, T);
            double worst = 0;
            for (int64_t t = 0; t < T; t++)
                for (int64_t d = 0; d < D; d++) {
                    double want = ref[t * D + d] + (with_bias ? bias_vals[d] : 0);
                    double e = fabs(y[t * D + d] - want) / (mag[t * D + d] + 1e-3);
                    if (!(e <= worst)) worst = e; /* NaN-safe */
                }
            double tol = !strcmp(isas[i], "avx512") ? avx512_tol(&m.w, T)
                         : !strcmp(isas[i], "avx2") ? avx2_tol(&m.w, T)
                                                    : TOL_F32;
            EXPECT(worst < tol,
                   "%s %s bits %d g%d %s D%lld N%lld T%lld threads %d f32_input %d: rel err %g",
                   isas[i], nmlx_quant_mode_name(mode), bits, gs, nmlx_dtype_name(sdt),
                   (long long)D, (long long)N, (long long)T, nth, m.w.f32_input, worst);
            nmlx_backend_free(be);
        }
    }
    m.w.f32_input = false;
#if defined(__x86_64__)
    /* the avx512 set's f32 and bf16 kernels by name, whatever the pick, on
     * row ranges that start inside the matrix */
    const int64_t r0 = D > 5 ? 3 : 0;
    for (int v = 0; v < 4 && have_avx512(); v++) {
        bool bf = v >= 2, vec = v % 2 == 1;
        if (bf && !have_avx512bf16()) break;
        if (vec && T != 1) continue;
        if (bf && vec && !nmlx_avx512bf16_matvec_ok(&m.w)) continue;
        if (bf && !vec && N % 32) continue;
        for (int64_t j = 0; j < T * D; j++)
            y[j] = NAN;
        if (vec)
            (bf ? nmlx_avx512bf16_quant_matvec : nmlx_avx512f32_quant_matvec)(&m.w, x, y, r0, D);
        else
            (bf ? nmlx_avx512bf16_quant_matmat : nmlx_avx512f32_quant_matmat)(&m.w, x, y, T, r0, D);
        double worst = 0;
        for (int64_t t = 0; t < T; t++) {
            double e = worst_err(y + t * D + r0, ref + t * D + r0, mag + t * D + r0, D - r0);
            if (!(e <= worst)) worst = e;
        }
        EXPECT(worst < (bf ? TOL_BF16 : TOL_F32),
               "avx512 %s %s %s bits %d g%d %s D%lld N%lld T%lld rows %lld..: rel err %g",
               bf ? "bf16" : "f32", vec ? "matvec" : "matmat", nmlx_quant_mode_name(mode), bits, gs,
               nmlx_dtype_name(sdt), (long long)D, (long long)N, (long long)T, (long long)r0,
               worst);
    }
#endif
    free(x), free(y), free(row), free(ref), free(mag);
    free_q(&m);
}

/* A matmul of fewer than 16 tokens (a batched decode step) gives every row
 * exactly what a one-token call gives (cpu_ops.c), on every kernel set, with
 * 1 and 2 threads (row ranges split at 16-row steps). */
static void test_few_token_rows(nmlx_quant_mode mode, int bits, int gs, int64_t N, int64_t T) {
    const int64_t D = 150;
    qmat m;
    make_q(&m, mode, bits, gs, D, N, NMLX_DT_BF16);
    float *x = malloc((size_t)(T * N) * sizeof(float)), *y = malloc((size_t)(T * D) * 4);
    float *y1 = malloc((size_t)D * sizeof(float));
    for (int64_t i = 0; i < T * N; i++)
        x[i] = test_randf(-1, 1);
    for (size_t i = 0; i < sizeof isas / sizeof isas[0]; i++)
        for (int nth = 1; nth <= 2; nth++) {
            nmlx_backend *be = NULL;
            if (nmlx_backend_cpu_create_isa(nth, isas[i], &be) != NMLX_OK) continue;
            be->ops->matmul(be, &m.w, NULL, x, y, T);
            int64_t bad = -1;
            for (int64_t t = 0; t < T && bad < 0; t++) {
                be->ops->matmul(be, &m.w, NULL, x + t * N, y1, 1);
                if (memcmp(y1, y + t * D, (size_t)D * sizeof(float))) bad = t;
            }
            EXPECT(bad < 0,
                   "%s %s bits %d g%d T%lld threads %d: row %lld differs from a "
                   "one-token call",
                   isas[i], nmlx_quant_mode_name(mode), bits, gs, (long long)T, nth,
                   (long long)bad);
            nmlx_backend_free(be);
        }
    free(x), free(y), free(y1);
    free_q(&m);
}

#if defined(__x86_64__)
/* The few-token quantized kernels by name (the avx512 set's, whatever the
 * pick, and the avx2 set's) against their one-token kernels token by token,
 * bit for bit: every group size and
 * scale dtype, T = 1..15, row ranges that start inside the matrix and leave
 * row tails (d1 - d0 not a multiple of 4), N over the f32 kernel's column
 * chunk and over the bf16 kernel's stack buffer for all 15 tokens. */
static void test_few_token_kernels(void) {
    nmlx_backend *probe = NULL;
    if (nmlx_backend_cpu_create_isa(1, "avx2", &probe) != NMLX_OK) return;
    nmlx_backend_free(probe);
    const struct {
        nmlx_quant_mode mode;
        int bits, gs;
        int64_t D, N;
    } cs[] = {
        {NMLX_QUANT_AFFINE, 4, 32, 23, 32 * 5},    {NMLX_QUANT_AFFINE, 4, 64, 38, 64 * 7},
        {NMLX_QUANT_AFFINE, 4, 128, 21, 128 * 3},  {NMLX_QUANT_AFFINE, 8, 32, 23, 32 * 9},
        {NMLX_QUANT_AFFINE, 8, 64, 26, 64 * 5},    {NMLX_QUANT_AFFINE, 8, 128, 19, 128 * 3},
        {NMLX_QUANT_AFFINE, 4, 64, 9, 64 * 70},    {NMLX_QUANT_AFFINE, 8, 32, 7, 32 * 131},
        {NMLX_QUANT_AFFINE, 4, 128, 6, 128 * 100}, {NMLX_QUANT_MXFP4, 4, 32, 22, 32 * 7},
        {NMLX_QUANT_MXFP4, 4, 32, 5, 32 * 140},
    };
    const nmlx_dtype sdts[] = {NMLX_DT_BF16, NMLX_DT_F16, NMLX_DT_F32};
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        const int64_t D = cs[c].D, N = cs[c].N;
        qmat m;
        make_q(&m, cs[c].mode, cs[c].bits, cs[c].gs, D, N, sdts[c % 3]);
        float *x = malloc((size_t)(15 * N) * sizeof(float)), *y = malloc((size_t)(15 * D) * 4);
        float *y1 = malloc((size_t)D * sizeof(float));
        for (int64_t i = 0; i < 15 * N; i++)
            x[i] = test_randf(-1, 1);
        const int64_t ranges[][2] = {{0, D}, {3, D}, {1, D - 2}};
        /* 0: f32, 1: bf16 (avx512 set), 2: avx2, 3: int16 x (VNNI) */
        for (int bf = 0; bf < 4; bf++) {
            if (bf == 0 && !have_avx512()) continue;
            if (bf == 1 && (!have_avx512bf16() || !nmlx_avx512bf16_matvec_ok(&m.w))) continue;
            if (bf == 3 &&
                (!have_avx512() || !nmlx_qint8_cpu_ok() || !nmlx_avx512vnni_matvec16_ok(&m.w)))
                continue;
            for (int64_t T = 1; T < NMLX_CPU_FEW_TOKENS; T += (N > 4096 ? 7 : 1))
                for (int ri = 0; ri < 3; ri++) {
                    const int64_t d0 = ranges[ri][0], d1 = ranges[ri][1];
                    for (int64_t j = 0; j < T * D; j++)
                        y[j] = NAN;
                    bool ok = bf == 3   ? nmlx_avx512vnni_quant_matmul_few16(&m.w, x, y, T, d0, d1)
                              : bf == 2 ? nmlx_avx2_quant_matmul_few(&m.w, x, y, T, d0, d1)
                              : bf == 1 ? nmlx_avx512bf16_quant_matmul_few(&m.w, x, y, T, d0, d1)
                                        : nmlx_avx512f32_quant_matmul_few(&m.w, x, y, T, d0, d1);
                    int64_t bad = ok ? -1 : T;
                    for (int64_t t = 0; t < T && bad < 0; t++) {
                        for (int64_t d = 0; d < D; d++)
                            y1[d] = NAN;
                        if (bf == 3)
                            nmlx_avx512vnni_quant_matvec16(&m.w, x + t * N, y1, d0, d1);
                        else if (bf == 2)
                            nmlx_avx2_quant_matvec(&m.w, x + t * N, y1, d0, d1);
                        else if (bf == 1)
                            nmlx_avx512bf16_quant_matvec(&m.w, x + t * N, y1, d0, d1);
                        else
                            nmlx_avx512f32_quant_matvec(&m.w, x + t * N, y1, d0, d1);
                        if (memcmp(y1 + d0, y + t * D + d0, (size_t)(d1 - d0) * sizeof(float)))
                            bad = t;
                    }
                    EXPECT(bad < 0,
                           "few-token %s %s bits %d g%d %s D%lld N%lld T%lld rows %lld..%lld: "
                           "token %lld differs from the one-token kernel",
                           bf == 3   ? "avx512 int16 vnni"
                           : bf == 2 ? "avx2"
                           : bf      ? "avx512 bf16"
                                     : "avx512 f32",
                           nmlx_quant_mode_name(cs[c].mode), cs[c].bits, cs[c].gs,
                           nmlx_dtype_name(sdts[c % 3]), (long long)D, (long long)N, (long long)T,
                           (long long)d0, (long long)d1, (long long)bad);
                }
        }
        free(x), free(y), free(y1);
        free_q(&m);
    }
}
#endif

/* MXFP4 scales over the E8M0 range (0 decodes as 2^-127, a subnormal) through
 * every kernel set, against the reference dequantization. */
static void test_e8m0_range(void) {
    qmat m;
    make_q(&m, NMLX_QUANT_MXFP4, 4, 32, 8, 32 * 24, NMLX_DT_BF16);
    uint8_t *sc = m.w.scales.data;
    for (int i = 0; i < 8 * 24; i++)
        sc[i] = (uint8_t)(i % 3 == 0 ? (i * 37) % 141 : 120 + i % 9);
    sc[0] = 0;
    float x[32 * 24], row[32 * 24];
    for (int k = 0; k < 32 * 24; k++)
        x[k] = test_randf(-1, 1);
    for (size_t i = 0; i < sizeof isas / sizeof isas[0]; i++) {
        nmlx_backend *be = NULL;
        if (nmlx_backend_cpu_create_isa(1, isas[i], &be) != NMLX_OK) continue;
        float y[8];
        be->ops->matmul(be, &m.w, NULL, x, y, 1);
        for (int d = 0; d < 8; d++) {
            nmlx_quant_dequant_row(&m.w, d, 0, 32 * 24, row);
            double s = 0, a = 0;
            for (int k = 0; k < 32 * 24; k++)
                s += (double)row[k] * x[k], a += fabs((double)row[k] * x[k]);
            double tol = strcmp(isas[i], "avx512") ? TOL_F32 : avx512_tol(&m.w, 1);
            EXPECT(fabs(y[d] - s) <= tol * a + 1e-37, "%s e8m0 row %d: %g vs %g", isas[i], d, y[d],
                   s);
        }
        nmlx_backend_free(be);
    }
    free_q(&m);
}

static void test_embed(void) {
    qmat m;
    make_q(&m, NMLX_QUANT_AFFINE, 4, 32, 11, 96, NMLX_DT_BF16);
    nmlx_backend *be = NULL;
    EXPECT(nmlx_backend_cpu_create(1, &be) == NMLX_OK, "backend");
    int32_t ids[3] = {7, 0, 10};
    float out[3 * 96], row[96];
    be->ops->embed(be, &m.w, ids, 3, 1.0f, out);
    for (int t = 0; t < 3; t++) {
        nmlx_quant_dequant_row(&m.w, ids[t], 0, 96, row);
        EXPECT(memcmp(row, out + t * 96, sizeof row) == 0, "quantized embed row %d", ids[t]);
    }
    nmlx_backend_free(be);
    free_q(&m);
}

/* matmul_multi (several weights on one x in one pool pass) gives each
 * weight's y exactly what its own matmul call gives, on every kernel set,
 * 1 and 2 threads, decode / few-token / prefill token counts, with a bias
 * on one of them and a dense bf16 weight among the quantized ones. */
static void test_matmul_multi(void) {
    const int64_t N = 64 * 6, Ds[3] = {70, 33, 130};
    qmat q[2];
    make_q(&q[0], NMLX_QUANT_AFFINE, 4, 64, Ds[0], N, NMLX_DT_BF16);
    make_q(&q[1], NMLX_QUANT_AFFINE, 8, 32, Ds[1], N, NMLX_DT_F16);
    uint16_t *wb = malloc((size_t)(Ds[2] * N) * 2);
    for (int64_t i = 0; i < Ds[2] * N; i++)
        wb[i] = nmlx_f32_to_bf16(test_randf(-1, 1));
    nmlx_weight dense = {.w = {.dtype = NMLX_DT_BF16, .ndim = 2, .shape = {Ds[2], N}, .data = wb},
                         .rows = Ds[2],
                         .cols = N};
    float bias_vals[70];
    for (int i = 0; i < 70; i++)
        bias_vals[i] = test_randf(-1, 1);
    nmlx_tensor bias = {.dtype = NMLX_DT_F32, .ndim = 1, .shape = {70}, .data = bias_vals};
    const nmlx_weight *ws[3] = {&q[0].w, &q[1].w, &dense};
    const nmlx_tensor *bs[3] = {&bias, NULL, NULL};
    const int64_t Ts[4] = {1, 7, 20, 31}, TMAX = 31;
    float *x = malloc((size_t)(TMAX * N) * 4);
    for (int64_t i = 0; i < TMAX * N; i++)
        x[i] = test_randf(-1, 1);
    float *ya[3], *yb[3];
    for (int i = 0; i < 3; i++)
        ya[i] = malloc((size_t)(TMAX * Ds[i]) * 4), yb[i] = malloc((size_t)(TMAX * Ds[i]) * 4);
    for (size_t k = 0; k < sizeof isas / sizeof isas[0]; k++)
        for (int nth = 1; nth <= 2; nth++) {
            nmlx_backend *be = NULL;
            if (nmlx_backend_cpu_create_isa(nth, isas[k], &be) != NMLX_OK) continue;
            for (int ti = 0; ti < 4; ti++) {
                const int64_t T = Ts[ti];
                for (int i = 0; i < 3; i++) {
                    be->ops->matmul(be, ws[i], bs[i], x, ya[i], T);
                    for (int64_t j = 0; j < T * Ds[i]; j++)
                        yb[i][j] = NAN;
                }
                be->ops->matmul_multi(be, 3, ws, bs, x, yb, T);
                for (int i = 0; i < 3; i++)
                    EXPECT(!memcmp(ya[i], yb[i], (size_t)(T * Ds[i]) * 4),
                           "matmul_multi %s threads %d T %lld weight %d: not the lone call's bits",
                           isas[k], nth, (long long)T, i);
            }
            nmlx_backend_free(be);
        }
    for (int i = 0; i < 3; i++)
        free(ya[i]), free(yb[i]);
    free(x), free(wb);
    free_q(&q[0]), free_q(&q[1]);
}

int main(void) {
    test_seed(5);
    test_matmul_multi();
    test_packing_layout();
    const int bits[] = {2, 3, 4, 5, 6, 8}, gss[] = {32, 64, 128};
    const nmlx_dtype sdts[] = {NMLX_DT_BF16, NMLX_DT_F16, NMLX_DT_F32};
    int c = 0;
    for (int b = 0; b < 6; b++)
        for (int g = 0; g < 3; g++, c++) {
            nmlx_dtype sdt = sdts[c % 3];
            test_roundtrip(NMLX_QUANT_AFFINE, bits[b], gss[g], sdt);
            /* odd row counts; N = gs * odd (several CK/KB blocks for big ones) */
            test_matmul(NMLX_QUANT_AFFINE, bits[b], gss[g], sdt, 37, gss[g] * 5, 1);
            test_matmul(NMLX_QUANT_AFFINE, bits[b], gss[g], sdt, 19, gss[g] * 3, 5);
            test_matmul(NMLX_QUANT_AFFINE, bits[b], gss[g], sdt, 35, gss[g] * 3, 17);
        }
    test_matmul(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, 21, 64 * 77, 1); /* N > CK */
    test_matmul(NMLX_QUANT_AFFINE, 8, 32, NMLX_DT_F16, 13, 32 * 35, 6);
    /* the SIMD paths' blocking: 4-row mat-vec blocks with a remainder, the
     * few-token path (T < 16: per-token mat-vec over row blocks), the
     * prefill's 32-row x 256-column panels (partial last panel, several
     * column blocks) and 12-token tiles (full and partial), for every scale
     * dtype on the planar widths (4, 8 bits) */
    for (int b = 4; b <= 8; b += 4)
        for (int g = 0; g < 3; g++)
            for (int si = 0; si < 3; si++) {
                test_matmul(NMLX_QUANT_AFFINE, b, gss[g], sdts[si], 70, gss[g] * 7, 1);
                test_matmul(NMLX_QUANT_AFFINE, b, gss[g], sdts[si], 45, gss[g] * 5, 13);
                test_matmul(NMLX_QUANT_AFFINE, b, gss[g], sdts[si], 45, gss[g] * 5, 31);
            }
    test_matmul(NMLX_QUANT_AFFINE, 8, 32, NMLX_DT_BF16, 9, 32 * 131, 1);  /* N > CK, 8 bits */
    test_matmul(NMLX_QUANT_AFFINE, 4, 128, NMLX_DT_F16, 33, 128 * 35, 3); /* N > CK, few tokens */
    test_matmul(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, 130, 64 * 9, 16); /* rows > 2 blocks */
    /* the AVX512_BF16 4-bit decode kernel's 16-group blocks: several, with a
     * partial last block (and a last 128-column chunk of 64 columns) */
    test_matmul(NMLX_QUANT_AFFINE, 4, 128, NMLX_DT_F32, 13, 128 * 37, 1);
    test_matmul(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_F16, 9, 64 * 33, 1);
    test_matmul(NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16, 11, 64 * 17, 7);
    test_roundtrip(NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_BF16);
    test_matmul(NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_BF16, 23, 32 * 9, 1);
    test_matmul(NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_BF16, 17, 32 * 5, 4);
    test_matmul(NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_BF16, 41, 32 * 11, 25);
    test_matmul(NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_BF16, 6, 32 * 130, 1); /* N > CK */
    for (int b = 0; b < 6; b++)
        test_few_token_rows(NMLX_QUANT_AFFINE, bits[b], 64, 512, 9);
    for (int b = 4; b <= 8; b += 4)
        for (int g = 0; g < 3; g++) {
            test_few_token_rows(NMLX_QUANT_AFFINE, b, gss[g], gss[g] * 5, 2);
            test_few_token_rows(NMLX_QUANT_AFFINE, b, gss[g], gss[g] * 9, 15);
        }
    test_few_token_rows(NMLX_QUANT_AFFINE, 4, 64, 64 * 67, 5); /* N > the f32 column chunk */
    test_few_token_rows(NMLX_QUANT_MXFP4, 4, 32, 512, 9);
    test_few_token_rows(NMLX_QUANT_MXFP4, 4, 32, 32 * 7, 14);
    /* two few-token passes (NMLX_CPU_FEW_TOKENS <= T < NMLX_CPU_FEW_CHUNKED) */
    test_few_token_rows(NMLX_QUANT_AFFINE, 4, 64, 512, NMLX_CPU_FEW_TOKENS);
    test_few_token_rows(NMLX_QUANT_AFFINE, 8, 32, 32 * 9, NMLX_CPU_FEW_CHUNKED - 1);
    test_few_token_rows(NMLX_QUANT_MXFP4, 4, 32, 32 * 5, NMLX_CPU_FEW_TOKENS + 3);
#if defined(__x86_64__)
    test_few_token_kernels();
#endif
    test_e8m0_range();
    test_embed();
    return test_summary();
}
