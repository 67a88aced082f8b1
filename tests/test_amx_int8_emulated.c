/* The AMX-INT8 quantized prefill (src/compute/cpu/quant_int8_amx.c) with its
 * tile operations emulated in C (tests/amx_emulate.h: TDPBSUD, TDPBUUD and
 * the half-K tile shapes of group 32), so its x rounding and byte split,
 * code panels, per-group scale and bias, blocking and tails (T not a
 * multiple of 16 or over one 512-token x block, D not a multiple of 16 / 32,
 * N a multiple of 32 but not of the 256-column block, unaligned row ranges
 * split as 1-3 threads split them) are checked on any CPU with AVX-512 BW;
 * built again with the real tiles (NMLX_AMX8_REAL: test_amx_int8_real,
 * skipped where AMX-INT8 is not usable or NMLX_AMX=0; prints "AMX-INT8
 * quantized prefill (real tiles): RAN"). Weights: affine 2/3/4/6/8-bit,
 * groups 32/64/128, f32/f16/bf16 scales (a third of them negated) and MXFP4.
 * x: random signs over five decades of magnitude, every 13th column an
 * outlier channel, some groups all zero.
 *
 * Three references per output:
 * 1. the same int16 x (nmlx_qint16_quantize_row, the int16 prefill's
 *    rounding) times the exact codes, scales and biases in double:
 *    sum_g s dx (q . v) + b dx sum(v); allowed 2^-20 of sum_g (|s dx q . v|
 *    + |b dx sum v|) (the kernel's f32 roundings are ~2^-24 each). A dropped
 *    low byte, a lost code bit or another group's scale is off by far more
 *    (the tests built with NMLX_AMX8_BREAK=1/2/3 must fail; tests/amx.cmake);
 * 2. where the CPU has AVX512_VNNI: the int16 VNNI prefill
 *    (nmlx_avx512vnni_quant_matmat16), bit for bit;
 * 3. the dequantized W times the f32 x in double, within the int16
 *    rounding bound sum_n |w_n| dx_g(n) / 2 (plus the f32 term of 1.).
 * Rows outside the range must stay untouched. */
#ifndef NMLX_AMX8_REAL /* tests/amx.cmake builds it with real tiles too */
#define NMLX_AMX_EMULATE 1
#endif
#define nmlx_amx8_quant_ok emu_amx8_quant_ok
#define nmlx_amx8_quant_matmat emu_amx8_quant_matmat
#include "compute/cpu/quant_int8_amx.c"

#include "common.h"
#include "compute/quant.h"
#include "harness.h"
#include "quant_util.h"

#include <math.h>
#include <stdio.h>

#ifdef NMLX_AMX_EMULATE
#define AMX_KIND "emulated"
#else
#define AMX_KIND "real tiles"
#endif

typedef struct {
    nmlx_quant_mode mode;
    int bits, gs;
    nmlx_dtype sdt;
} qcfg;

typedef struct {
    nmlx_weight w;
    float *deq;   /* [D, N] */
    float *s, *b; /* [D, G] as the kernel applies them (MXFP4: s / 2, -12 s / 2) */
    uint8_t *q;   /* [D, N] codes */
} qmat;

static void make_q(qmat *m, const qcfg *c, int64_t D, int64_t N) {
    float *src = malloc((size_t)(D * N) * sizeof(float));
    m->w = test_quant_weight(c->mode, c->bits, c->gs, c->sdt, D, N, src);
    const int64_t G = N / c->gs;
    /* a third of the scales negated (sign bit), biases keep theirs */
    if (c->mode == NMLX_QUANT_AFFINE)
        for (int64_t i = 0; i < D * G; i += 3) {
            if (nmlx_dtype_size(c->sdt) == 4)
                ((uint32_t *)m->w.scales.data)[i] ^= 0x80000000u;
            else
                ((uint16_t *)m->w.scales.data)[i] ^= 0x8000u;
        }
    m->deq = src;
    m->s = malloc((size_t)(D * G) * 4), m->b = malloc((size_t)(D * G) * 4);
    m->q = malloc((size_t)(D * N));
    for (int64_t d = 0; d < D; d++) {
        nmlx_quant_dequant_row(&m->w, d, 0, N, m->deq + d * N);
        unpack_codes(&m->w, d, 0, N, m->q + d * N);
        load_f32s(m->w.scales.dtype, m->w.scales.data, (size_t)(d * G), G, m->s + d * G);
        if (c->mode == NMLX_QUANT_MXFP4)
            for (int64_t g = 0; g < G; g++)
                m->s[d * G + g] *= 0.5f, m->b[d * G + g] = -12.0f * m->s[d * G + g];
        else
            load_f32s(m->w.biases.dtype, m->w.biases.data, (size_t)(d * G), G, m->b + d * G);
    }
}

static void free_q(qmat *m) {
    free(m->w.w.data), free(m->w.scales.data), free(m->w.biases.data), free(m->deq);
    free(m->s), free(m->b), free(m->q);
}

/* every output within the bounds, rows outside [lo, hi) untouched */
static void check(const qcfg *c, int64_t T, int64_t D, int64_t N, int nth, bool ua) {
    qmat m;
    make_q(&m, c, D, N);
    const int gs = c->gs;
    const int64_t G = N / gs;
    float *x = malloc((size_t)(T * N) * 4), *y = malloc((size_t)(T * D) * 4);
    float *y16 = malloc((size_t)(T * D) * 4);
    for (int64_t i = 0; i < T * N; i++) { /* five decades, outlier channels */
        const float mag = powf(10.0f, test_randf(-3, 2));
        x[i] = test_randf(-1, 1) * mag * (i % N % 13 == 5 ? 20.0f : 1.0f);
        if ((i / N) % 5 == 2 && i % N / gs == 1) x[i] = 0.0f; /* an all-zero group */
    }
    for (int64_t i = 0; i < T * D; i++)
        y[i] = y16[i] = 1234.5f;
    const int64_t lo = ua ? D / 5 : 0, hi = ua ? D - D / 7 : D;
    bool ran = true, ran16 = true;
    const bool vnni = nmlx_qint8_cpu_ok();
    for (int ith = 0; ith < nth; ith++) {
        int64_t d0, d1;
        cpu_split(hi - lo, ith, nth, ua ? 1 : 16, &d0, &d1);
        if (d0 >= d1) continue;
        ran &= emu_amx8_quant_matmat(&m.w, x, y, T, lo + d0, lo + d1);
        if (vnni) ran16 &= nmlx_avx512vnni_quant_matmat16(&m.w, x, y16, T, lo + d0, lo + d1);
    }
    /* x rounded as the int16 prefill rounds it */
    int16_t *v = malloc((size_t)N * 2);
    float *dx = malloc((size_t)G * 4), *xs = malloc((size_t)G * 4);
    double worst = 0, worst3 = 0;
    bool untouched = true, same = true;
    for (int64_t t = 0; t < T; t++) {
        nmlx_qint16_quantize_row(x + t * N, N, gs, v, dx, xs);
        for (int64_t d = 0; d < D; d++) {
            const float out = y[t * D + d];
            if (d < lo || d >= hi) {
                untouched &= out == 1234.5f && y16[t * D + d] == 1234.5f;
                continue;
            }
            if (vnni && memcmp(&out, &y16[t * D + d], 4)) same = false;
            double r1 = 0, a1 = 0, r3 = 0, e3 = 0;
            for (int64_t g = 0; g < G; g++) {
                int64_t qv = 0, sv = 0;
                for (int64_t k = g * gs; k < (g + 1) * gs; k++)
                    qv += (int64_t)v[k] * m.q[d * N + k], sv += v[k];
                const double ts = (double)m.s[d * G + g] * dx[g] * (double)qv,
                             tb = (double)m.b[d * G + g] * dx[g] * (double)sv;
                r1 += ts + tb, a1 += fabs(ts) + fabs(tb);
                for (int64_t k = g * gs; k < (g + 1) * gs; k++) {
                    r3 += (double)m.deq[d * N + k] * x[t * N + k];
                    e3 += fabs((double)m.deq[d * N + k]) * dx[g] * 0.5;
                }
            }
            const double q1 = fabs(out - r1) / (a1 / 1048576.0 + 1e-30);
            const double q3 = fabs(out - r3) / (e3 * 1.01 + a1 / 1048576.0 + 1e-30);
            if (!(q1 <= worst)) worst = q1;
            if (!(q3 <= worst3)) worst3 = q3;
        }
    }
    if (getenv("NMLX_TEST_VERBOSE"))
        printf("%s %d-bit g%d T=%lld D=%lld N=%lld: error %.3g of the int16-x bound, %.3g of "
               "the f32-x bound%s\n",
               nmlx_quant_mode_name(c->mode), c->bits, gs, (long long)T, (long long)D, (long long)N,
               worst, worst3, vnni ? (same ? ", = int16 VNNI" : ", != int16 VNNI") : "");
    EXPECT(ran && ran16 && worst <= 1 && worst3 <= 1 && untouched && same,
           "amx int8 quant (%s) %s %d-bit g%d scales %s, T=%lld D=%lld N=%lld nth=%d%s: %s, "
           "error %.3g of the int16-x bound, %.3g of the f32-x bound, %s, outside rows %s",
           AMX_KIND, nmlx_quant_mode_name(c->mode), c->bits, gs, nmlx_dtype_name(c->sdt),
           (long long)T, (long long)D, (long long)N, nth, ua ? " unaligned" : "",
           ran ? "ran" : "REFUSED", worst, worst3,
           !vnni  ? "no VNNI to compare"
           : same ? "the int16 VNNI prefill's bits"
                  : "NOT the int16 VNNI prefill's bits",
           untouched ? "untouched" : "WRITTEN");
    free(v), free(dx), free(xs);
    free(x), free(y), free(y16);
    free_q(&m);
}

/* Non-finite x (an inf in one group, a NaN in another): the int16
 * prefill's rounding saturates those to -32768 (finite garbage, no NaN);
 * the kernel must give its bits there too (where the CPU has VNNI). */
static void nonfinite(void) {
    if (!nmlx_qint8_cpu_ok()) return;
    const qcfg c = {NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16};
    const int64_t T = 20, D = 40, N = 256;
    qmat m;
    make_q(&m, &c, D, N);
    float *x = malloc((size_t)(T * N) * 4), *y = malloc((size_t)(T * D) * 4),
          *y16 = malloc((size_t)(T * D) * 4);
    for (int64_t i = 0; i < T * N; i++)
        x[i] = test_randf(-1, 1);
    x[3 * N + 70] = INFINITY, x[7 * N + 200] = -INFINITY, x[11 * N + 5] = NAN;
    const bool ran = emu_amx8_quant_matmat(&m.w, x, y, T, 0, D) &&
                     nmlx_avx512vnni_quant_matmat16(&m.w, x, y16, T, 0, D);
    EXPECT(ran && !memcmp(y, y16, (size_t)(T * D) * 4),
           "amx int8 quant (%s): non-finite x gives the int16 prefill's bits", AMX_KIND);
    free(x), free(y), free(y16);
    free_q(&m);
}

/* weights and calls the kernel must refuse, y untouched */
static void refusals(void) {
    const qcfg c = {NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16};
    qmat m;
    make_q(&m, &c, 8, 128);
    float x[2 * 128] = {0}, y[2 * 8];
    for (int i = 0; i < 16; i++)
        y[i] = 7;
    EXPECT(!emu_amx8_quant_matmat(&m.w, x, y, 2, 0, 9), "rows past D refused");
    EXPECT(!emu_amx8_quant_matmat(&m.w, x, y, 0, 0, 8), "T = 0 refused");
    EXPECT(!emu_amx8_quant_matmat(&m.w, x, y, 2, 5, 5), "empty row range refused");
    nmlx_weight w = m.w;
    w.mode = NMLX_QUANT_NONE;
    EXPECT(!emu_amx8_quant_ok(&w) && !emu_amx8_quant_matmat(&w, x, y, 2, 0, 8), "dense refused");
    w = m.w, w.bits = 7;
    EXPECT(!emu_amx8_quant_ok(&w), "7-bit refused");
    w = m.w, w.group_size = 16;
    EXPECT(!emu_amx8_quant_ok(&w), "group 16 refused");
    w = m.w, w.mode = NMLX_QUANT_MXFP4, w.group_size = 64;
    EXPECT(!emu_amx8_quant_ok(&w), "MXFP4 group 64 refused");
    bool same = true;
    for (int i = 0; i < 16; i++)
        same &= y[i] == 7;
    EXPECT(same, "refused calls left y untouched");
    free_q(&m);
}

int main(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512dq") ||
        !__builtin_cpu_supports("avx512bf16")) {
        printf("note: no AVX-512 BW/BF16 on this CPU, AMX-INT8 quantized test skipped\n");
        return test_summary();
    }
#ifdef NMLX_AMX8_REAL
    if (!nmlx_amx_int8_ok() || nmlx_amx_env() == 0) {
        printf("AMX-INT8 quantized prefill (real tiles): SKIPPED (%s)\n",
               nmlx_amx_env() == 0 ? "NMLX_AMX=0"
               : nmlx_amx_ok()     ? "cpuid: no AMX-INT8"
                                   : nmlx_amx_status());
        return test_summary();
    }
    printf("AMX-INT8 quantized prefill (real tiles): RAN\n");
#endif
    if (!nmlx_qint8_cpu_ok()) printf("note: no AVX512_VNNI, the bit-for-bit comparison skipped\n");
    test_seed(8484);
    refusals();
    nonfinite();
    const qcfg cfgs[] = {
        {NMLX_QUANT_AFFINE, 4, 32, NMLX_DT_BF16},  {NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_F16},
        {NMLX_QUANT_AFFINE, 4, 64, NMLX_DT_BF16},  {NMLX_QUANT_AFFINE, 4, 128, NMLX_DT_F32},
        {NMLX_QUANT_AFFINE, 8, 32, NMLX_DT_F16},   {NMLX_QUANT_AFFINE, 8, 64, NMLX_DT_BF16},
        {NMLX_QUANT_AFFINE, 8, 64, NMLX_DT_F32},   {NMLX_QUANT_AFFINE, 8, 128, NMLX_DT_BF16},
        {NMLX_QUANT_AFFINE, 3, 32, NMLX_DT_BF16},  {NMLX_QUANT_AFFINE, 2, 64, NMLX_DT_F16},
        {NMLX_QUANT_AFFINE, 6, 128, NMLX_DT_BF16}, {NMLX_QUANT_MXFP4, 4, 32, NMLX_DT_U8}};
    /* T, D, N (rounded up to the group size) */
    const int64_t shapes[][3] = {{1, 1, 32},    {5, 17, 64},    {24, 33, 96},
                                 {37, 45, 288}, {33, 100, 320}, {70, 67, 544},
                                 {257, 40, 64}, {530, 20, 128}, {48, 64, 1024}};
    const size_t ncfg = sizeof cfgs / sizeof cfgs[0], nsh = sizeof shapes / sizeof shapes[0];
    int i = 0;
    for (size_t c = 0; c < ncfg; c++)
        for (size_t s = 0; s < nsh; s++, i++) {
            const int gs = cfgs[c].gs;
            const int64_t N = (shapes[s][2] + gs - 1) / gs * gs;
            check(&cfgs[c], shapes[s][0], shapes[s][1], N, 1 + i % 3, (i / 3) % 2);
        }
    return test_summary();
}
