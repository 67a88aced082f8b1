/* Few-token form of the AVX2 quantized mat-vec on planar x (quant_avx2.c,
 * matvec_planar: affine 4/8-bit g32/64/128, MXFP4 g32): W (D, N) packed @
 * x (T, N) -> y (T, D), rows [d0, d1), 1 <= T < NMLX_CPU_FEW_TOKENS. Each
 * 8- or 16-code chunk of a row is unpacked to f32 once and fed to every
 * token of a tile.
 *
 * Bit for bit: each token's row equals matvec_planar's on that token
 * (tests/test_quant_kernels.c): the same column chunks of CK, x in the
 * same planar order and per-group sums, per group one accumulator over the
 * chunks (4 bits: low nibbles then high nibbles per 16 elements) folded by
 * the group scale into an accumulator that starts at the bias term (8-wide
 * FMAs, then the scalar rest added in lane 0); rows in blocks of 4 from d0
 * reduced with hsum4x8, the last d1 - d0 mod 4 alone with hsum8.
 * Compiled with -mavx2 -mfma -mf16c; only called after a cpuid check. */
#include "compute/cpu/cpu_internal.h"
#include "compute/cpu/simd_avx2.h"
#include "compute/quant.h"

#include <string.h>

enum {
    CK = 4096, /* quant_avx2.c's column chunk */
    RB = 4,    /* its row block */
    TMAX = NMLX_CPU_FEW_TOKENS,
    TT = 5,             /* tokens per tile: 2 TT accumulators of 16 ymm */
    XP_FLOATS = 8 * CK, /* x copies on the stack: 128 KiB */
    KC = 512,           /* columns per block: the tokens' x stays in L1 */
    PF_ROWS = 8
};

AVX2_INLINE __m256 fp4_8(__m256i c, __m256 mag) { /* c: codes 0..15 per lane */
    __m256 m = _mm256_permutevar8x32_ps(mag, c);
    __m256i sign = _mm256_and_si256(_mm256_slli_epi32(c, 28), _mm256_set1_epi32((int)0x80000000u));
    return _mm256_xor_ps(m, _mm256_castsi256_ps(sign));
}

/* acc[t] += sum_g sc[g] * (q[g, :] . x_t[g, :]) over one row's ng groups,
 * M tokens (xs[t]: token t's x, planar for 4 bits). */
AVX2_INLINE void row_tok(int M, int BITS, int GS, bool FP4, const uint8_t *q, int64_t pf,
                         const float *const *xsp, const float *sc, int64_t ng, __m256 mag,
                         __m256 *accp) {
    __m256 acc[TT];
    const float *xs[TT];
#pragma GCC unroll 5
    for (int t = 0; t < M; t++)
        acc[t] = accp[t], xs[t] = xsp[t];
    for (int64_t g = 0; g < ng; g++) {
        __m256 ga[TT];
        _mm_prefetch((const char *)q + g * GS * BITS / 8 + pf, NMLX_PF_STREAM);
#pragma GCC unroll 5
        for (int t = 0; t < M; t++)
            ga[t] = _mm256_setzero_ps();
        if (BITS == 4) {
#pragma GCC unroll 8
            for (int j = 0; j < GS / 16; j++) {
                const int64_t c = g * (GS / 16) + j; /* 16-element chunk */
                __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8 * c)));
                __m256i lo = _mm256_and_si256(v, _mm256_set1_epi32(15)),
                        hi = _mm256_srli_epi32(v, 4);
                const __m256 fl = FP4 ? fp4_8(lo, mag) : _mm256_cvtepi32_ps(lo);
                const __m256 fh = FP4 ? fp4_8(hi, mag) : _mm256_cvtepi32_ps(hi);
#pragma GCC unroll 5
                for (int t = 0; t < M; t++) {
                    ga[t] = _mm256_fmadd_ps(fl, _mm256_loadu_ps(xs[t] + 16 * c), ga[t]);
                    ga[t] = _mm256_fmadd_ps(fh, _mm256_loadu_ps(xs[t] + 16 * c + 8), ga[t]);
                }
            }
        } else {
#pragma GCC unroll 16
            for (int j = 0; j < GS / 8; j++) {
                const int64_t c = g * (GS / 8) + j; /* 8-element chunk */
                const __m256 wv = _mm256_cvtepi32_ps(
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8 * c))));
#pragma GCC unroll 5
                for (int t = 0; t < M; t++)
                    ga[t] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xs[t] + 8 * c), ga[t]);
            }
        }
        const __m256 sv = _mm256_set1_ps(sc[g]);
#pragma GCC unroll 5
        for (int t = 0; t < M; t++)
            acc[t] = _mm256_fmadd_ps(sv, ga[t], acc[t]);
    }
#pragma GCC unroll 5
    for (int t = 0; t < M; t++)
        accp[t] = acc[t];
}

typedef void (*row_fn)(const uint8_t *, int64_t, const float *const *, const float *, int64_t,
                       __m256, __m256 *);
#define ROW_FN(NAME, M, BITS, GS, FP4)                                                             \
    static void NAME##_##M(const uint8_t *q, int64_t pf, const float *const *xs, const float *sc,  \
                           int64_t ng, __m256 mag, __m256 *acc) {                                  \
        row_tok(M, BITS, GS, FP4, q, pf, xs, sc, ng, mag, acc);                                    \
    }
/* clang-format off */
#define ROW_FNS(NAME, BITS, GS, FP4)                                                               \
    ROW_FN(NAME, 1, BITS, GS, FP4) ROW_FN(NAME, 2, BITS, GS, FP4) ROW_FN(NAME, 3, BITS, GS, FP4)   \
    ROW_FN(NAME, 4, BITS, GS, FP4) ROW_FN(NAME, 5, BITS, GS, FP4)
ROW_FNS(q4_32, 4, 32, false) ROW_FNS(q4_64, 4, 64, false) ROW_FNS(q4_128, 4, 128, false)
ROW_FNS(q8_32, 8, 32, false) ROW_FNS(q8_64, 8, 64, false) ROW_FNS(q8_128, 8, 128, false)
ROW_FNS(fp4, 4, 32, true)
#define ROW_TAB(NAME) {NAME##_1, NAME##_2, NAME##_3, NAME##_4, NAME##_5}
/* [0: 4-bit, 1: 8-bit, 2: mxfp4][gs index][tokens - 1] */
static const row_fn row_fns[3][3][TT] = {
    {ROW_TAB(q4_32), ROW_TAB(q4_64), ROW_TAB(q4_128)},
    {ROW_TAB(q8_32), ROW_TAB(q8_64), ROW_TAB(q8_128)},
    {ROW_TAB(fp4), ROW_TAB(fp4), ROW_TAB(fp4)},
};
/* clang-format on */

/* f32 of n scale/bias elements from i0 (F32/F16/BF16, U8 E8M0), as
 * quant_avx2.c reads them. */
static void load_f32s2(nmlx_dtype dt, const void *p, size_t i0, int64_t n, float *dst) {
    int64_t i = 0;
    if (dt == NMLX_DT_BF16)
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, load8_bf16((const uint16_t *)p + i0 + i));
    else if (dt == NMLX_DT_F16)
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, load8_f16((const uint16_t *)p + i0 + i));
    for (; i < n; i++)
        dst[i] = dt == NMLX_DT_U8 ? nmlx_e8m0_value(((const uint8_t *)p)[i0 + i])
                                  : nmlx_load_f32(dt, p, i0 + (size_t)i);
}

/* the four horizontal sums of a, b, c, d */
AVX2_INLINE __m128 hsum4x8(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

bool nmlx_avx2_quant_matmul_few(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                int64_t d0, int64_t d1) {
    const bool affine = w->mode == NMLX_QUANT_AFFINE;
    const int bits = w->bits, gs = w->group_size;
    const bool planar = w->mode == NMLX_QUANT_MXFP4 ? bits == 4 && gs == 32
                                                    : affine && (bits == 4 || bits == 8) &&
                                                          (gs == 32 || gs == 64 || gs == 128);
    if (!planar || T < 1 || T >= TMAX) return false;
    const int64_t N = w->cols, D = w->rows, G = N / gs,
                  row_bytes = nmlx_quant_row_words(N, bits) * 4;
    const uint8_t *packed = (const uint8_t *)w->w.data;
    float xp[XP_FLOATS] __attribute__((aligned(32)));
    float xsum[TMAX][CK / 32], sc[RB * (CK / 32)], bi[RB * (CK / 32)];
    __m256 accv[TMAX][RB];
    const __m256 mag = _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f);
    const row_fn *fns = row_fns[affine ? bits == 8 : 2][gs == 32 ? 0 : gs == 64 ? 1 : 2];
    const int64_t pf = PF_ROWS * row_bytes;
    const size_t ses = nmlx_dtype_size(w->scales.dtype);
    const __m256i ev = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);

    for (int64_t t = 0; t < T; t++)
        for (int64_t d = d0; d < d1; d++)
            y[t * D + d] = 0.0f;
    for (int64_t c0 = 0; c0 < N; c0 += CK) {
        const int64_t nc = N - c0 < CK ? N - c0 : CK, ng = nc / gs;
        /* x copied (planar for 4 bits) into rows one 64-byte line past a
         * multiple of 4 KiB apart (no shared L1 sets) */
        const int64_t xstride = nc + 16;
        const int64_t tg = XP_FLOATS / xstride < T ? XP_FLOATS / xstride : T;
        for (int64_t t0 = 0; t0 < T; t0 += tg) {
            const int64_t m = T - t0 < tg ? T - t0 : tg;
            const float *xs[TMAX];
            for (int64_t t = 0; t < m; t++) {
                const float *xt = x + (t0 + t) * N + c0;
                float *dst = xp + t * xstride;
                if (bits == 4)
                    for (int64_t i = 0; i < nc; i += 16) { /* 8 even, then 8 odd */
                        __m256 a = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xt + i), ev);
                        __m256 b = _mm256_permutevar8x32_ps(_mm256_loadu_ps(xt + i + 8), ev);
                        _mm256_storeu_ps(dst + i, _mm256_permute2f128_ps(a, b, 0x20));
                        _mm256_storeu_ps(dst + i + 8, _mm256_permute2f128_ps(a, b, 0x31));
                    }
                else
                    memcpy(dst, xt, (size_t)nc * sizeof(float));
                xs[t] = dst;
                if (affine)
                    for (int64_t g = 0; g < ng; g++) {
                        __m256 a = _mm256_setzero_ps();
                        for (int j = 0; j < gs; j += 8)
                            a = _mm256_add_ps(a, _mm256_loadu_ps(xt + g * gs + j));
                        xsum[t][g] = hsum8(a);
                    }
            }
            for (int64_t d = d0; d < d1;) {
                const int R = d1 - d >= RB ? RB : 1;
                for (int64_t o = 0; o < R * G * (int64_t)ses; o += 64) {
                    size_t at = (size_t)((d + PF_ROWS) * G) * ses + (size_t)o;
                    _mm_prefetch((const char *)w->scales.data + at, NMLX_PF_STREAM);
                    if (affine) _mm_prefetch((const char *)w->biases.data + at, NMLX_PF_STREAM);
                }
                for (int r = 0; r < R; r++) {
                    size_t gi = (size_t)((d + r) * G + c0 / gs);
                    load_f32s2(w->scales.dtype, w->scales.data, gi, ng, sc + r * ng);
                    if (affine) load_f32s2(w->biases.dtype, w->biases.data, gi, ng, bi + r * ng);
                }
                for (int r = 0; r < R; r++)
                    for (int64_t t = 0; t < m; t++) {
                        __m256 a = _mm256_setzero_ps();
                        if (affine) { /* the bias half, as matvec_planar */
                            int64_t g = 0;
                            for (; g + 8 <= ng; g += 8)
                                a = _mm256_fmadd_ps(_mm256_loadu_ps(bi + r * ng + g),
                                                    _mm256_loadu_ps(xsum[t] + g), a);
                            float s = 0.0f;
                            for (; g < ng; g++)
                                s += bi[r * ng + g] * xsum[t][g];
                            a = _mm256_add_ps(a, _mm256_setr_ps(s, 0, 0, 0, 0, 0, 0, 0));
                        }
                        accv[t][r] = a;
                    }
                /* column blocks of KC; accumulators carry over in accv */
                for (int64_t g0 = 0; g0 < ng; g0 += KC / gs) {
                    const int64_t gn = ng - g0 < KC / gs ? ng - g0 : KC / gs;
                    for (int r = 0; r < R; r++) {
                        const uint8_t *q = packed + (d + r) * row_bytes + (c0 + g0 * gs) * bits / 8;
                        for (int64_t t1 = 0; t1 < m;) {
                            const int64_t tiles = (m - t1 + TT - 1) / TT,
                                          mt = (m - t1 + tiles - 1) / tiles;
                            __m256 acc[TT];
                            const float *xo[TT];
                            for (int64_t t = 0; t < mt; t++)
                                acc[t] = accv[t1 + t][r], xo[t] = xs[t1 + t] + g0 * gs;
                            fns[mt - 1](q, pf, xo, sc + r * ng + g0, gn, mag, acc);
                            for (int64_t t = 0; t < mt; t++)
                                accv[t1 + t][r] = acc[t];
                            t1 += mt;
                        }
                    }
                }
                for (int64_t t = 0; t < m; t++) {
                    float *yt = y + (t0 + t) * D;
                    if (R == RB)
                        _mm_storeu_ps(yt + d, _mm_add_ps(hsum4x8(accv[t][0], accv[t][1], accv[t][2],
                                                                 accv[t][3]),
                                                         _mm_loadu_ps(yt + d)));
                    else
                        yt[d] += hsum8(accv[t][0]);
                }
                d += R;
            }
        }
    }
    return true;
}
