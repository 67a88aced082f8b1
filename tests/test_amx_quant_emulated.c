/* The AMX-BF16 quantized prefill (src/compute/cpu/quant_amx.c) with its
 * tile operations emulated in C (tests/amx_emulate.h), so its dequantized
 * panels, bf16 splits of x and W, blocking and tails (T not a multiple of
 * 16/32 or over one 512-token x block, D not a multiple of 32, N not a
 * multiple of the 256-column block, unaligned row ranges split as 1-3
 * threads split them) are checked on any CPU with AVX512_BF16; the real
 * tiles run in test_quant_kernels with NMLX_AMX_QUANT=1 on an AMX CPU
 * (bench/device_amx.sh). Weights: affine 2/3/4/6/8-bit, groups 32/64/128,
 * f32/f16/bf16 scales, and MXFP4.
 *
 * Reference: the dequantized W (nmlx_quant_dequant_row) times the f32 x in
 * double. Bound per output, with a = sum |x w| and u = 2^-8 (bf16's unit
 * roundoff, 8 significant bits):
 * - 3 terms (x = xh + xl, W = wh + wl, x W ~ xh wh + xh wl + xl wh): each
 *   split leaves at most u^2 |x| (resp. |w|), the dropped xl wl is at most
 *   u^2 |x w|: 3 u^2 a (+ O(u^3));
 * - 2 terms (x = xh + xl, W rounded: xh wh + xl wh): (u + 2 u^2) a;
 * - 1 term (x and W rounded to bf16): (2 u + u^2) a;
 * plus the f32 sums (bf16 products are exact in f32): for n = terms x N
 * products the accumulated f32 rounding is about 2^-24 sqrt(n) a on random
 * signs; allowed 16x that. Rows outside the range must stay untouched.
 * Built three more times with a deliberately broken packing
 * (NMLX_AMX_QUANT_BREAK: 1 swaps each k-pair's halves, 2 drops W's low
 * part), registered as tests that must fail (tests/amx.cmake): the bound is
 * tight enough to see either. And once with the real tiles
 * (NMLX_AMX_QUANT_REAL: test_amx_quant_real, skipped where AMX is not
 * usable or NMLX_AMX=0; prints "AMX quantized prefill (real tiles): RAN"). */
#ifndef NMLX_AMX_QUANT_REAL /* tests/amx.cmake builds it with real tiles too */
#define NMLX_AMX_EMULATE 1
#endif
#define nmlx_amx_quant_ok emu_amx_quant_ok
#define nmlx_amx_quant_matmat emu_amx_quant_matmat
#include "compute/cpu/quant_amx.c"

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
    float *deq; /* [D, N] */
} qmat;

static void make_q(qmat *m, const qcfg *c, int64_t D, int64_t N) {
    float *src = malloc((size_t)(D * N) * sizeof(float));
    m->w = test_quant_weight(c->mode, c->bits, c->gs, c->sdt, D, N, src);
    m->deq = src;
    for (int64_t d = 0; d < D; d++)
        nmlx_quant_dequant_row(&m->w, d, 0, N, m->deq + d * N);
}

static void free_q(qmat *m) {
    free(m->w.w.data), free(m->w.scales.data), free(m->w.biases.data), free(m->deq);
}

/* every output within the bound, rows outside [lo, hi) untouched */
static void check(const qcfg *c, int64_t T, int64_t D, int64_t N, int terms, int nth, bool ua) {
    qmat m;
    make_q(&m, c, D, N);
    float *x = malloc((size_t)(T * N) * 4), *y = malloc((size_t)(T * D) * 4);
    for (int64_t i = 0; i < T * N; i++) /* every 13th column an outlier channel */
        x[i] = test_randf(-1, 1) * (i % N % 13 == 5 ? 20.0f : 1.0f);
    for (int64_t i = 0; i < T * D; i++)
        y[i] = 1234.5f;
    const int64_t lo = ua ? D / 5 : 0, hi = ua ? D - D / 7 : D;
    bool ran = true;
    for (int ith = 0; ith < nth; ith++) {
        int64_t d0, d1;
        cpu_split(hi - lo, ith, nth, ua ? 1 : 16, &d0, &d1);
        if (d0 < d1) ran &= emu_amx_quant_matmat(&m.w, x, y, T, lo + d0, lo + d1, terms);
    }
    const double u = 1.0 / 256, rnd = terms == 3   ? 3 * u * u
                                      : terms == 2 ? u + 2 * u * u
                                                   : 2 * u + u * u;
    const double acc = 16 * sqrt((double)(terms * N)) / 16777216.0;
    double worst = 0;
    bool untouched = true;
    for (int64_t t = 0; t < T; t++)
        for (int64_t d = 0; d < D; d++) {
            if (d < lo || d >= hi) {
                untouched &= y[t * D + d] == 1234.5f;
                continue;
            }
            double s = 0, a = 0;
            for (int64_t n = 0; n < N; n++) {
                const double p = (double)m.deq[d * N + n] * x[t * N + n];
                s += p, a += fabs(p);
            }
            const double r = fabs((double)y[t * D + d] - s) / ((rnd + acc) * a + 1e-30);
            if (!(r <= worst)) worst = r;
        }
    if (getenv("NMLX_TEST_VERBOSE"))
        printf("%s %d-bit g%d %d term(s) T=%lld D=%lld N=%lld: error %.3g of the bound\n",
               nmlx_quant_mode_name(c->mode), c->bits, c->gs, terms, (long long)T, (long long)D,
               (long long)N, worst);
    EXPECT(ran && worst <= 1 && untouched,
           "amx quant (%s) %s %d-bit g%d scales %s, %d term(s), T=%lld D=%lld N=%lld "
           "nth=%d%s: %s, error %.3g of the bound, outside rows %s",
           AMX_KIND, nmlx_quant_mode_name(c->mode), c->bits, c->gs, nmlx_dtype_name(c->sdt), terms,
           (long long)T, (long long)D, (long long)N, nth, ua ? " unaligned" : "",
           ran ? "ran" : "REFUSED", worst, untouched ? "untouched" : "WRITTEN");
    free(x), free(y);
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
    EXPECT(!emu_amx_quant_matmat(&m.w, x, y, 2, 0, 8, 4), "terms 4 refused");
    EXPECT(!emu_amx_quant_matmat(&m.w, x, y, 2, 0, 9, 3), "rows past D refused");
    EXPECT(!emu_amx_quant_matmat(&m.w, x, y, 0, 0, 8, 3), "T = 0 refused");
    nmlx_weight w = m.w;
    w.mode = NMLX_QUANT_NONE;
    EXPECT(!emu_amx_quant_ok(&w) && !emu_amx_quant_matmat(&w, x, y, 2, 0, 8, 3), "dense refused");
    w = m.w, w.bits = 7;
    EXPECT(!emu_amx_quant_ok(&w), "7-bit refused");
    w = m.w, w.group_size = 16;
    EXPECT(!emu_amx_quant_ok(&w), "group 16 refused");
    bool same = true;
    for (int i = 0; i < 16; i++)
        same &= y[i] == 7;
    EXPECT(same, "refused calls left y untouched");
    free_q(&m);
}

int main(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512bf16") || !__builtin_cpu_supports("avx512bw")) {
        printf("note: no AVX512_BF16 on this CPU, emulated AMX quantized test skipped\n");
        return test_summary();
    }
#ifdef NMLX_AMX_QUANT_REAL
    if (!nmlx_amx_ok() || nmlx_amx_env() == 0) {
        printf("AMX quantized prefill (real tiles): SKIPPED (%s)\n",
               nmlx_amx_env() == 0 ? "NMLX_AMX=0" : nmlx_amx_status());
        return test_summary();
    }
    printf("AMX quantized prefill (real tiles): RAN\n");
#endif
    test_seed(4242);
    refusals();
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
            for (int terms = 3; terms >= 1; terms--)
                check(&cfgs[c], shapes[s][0], shapes[s][1], N, terms, 1 + i % 3, (i / 3) % 2);
        }
    return test_summary();
}
