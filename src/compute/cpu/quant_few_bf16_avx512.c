/* Few-token form of the AVX512_BF16 affine 4-bit decode mat-vec
 * (quant_bf16_avx512.c, nmlx_avx512bf16_quant_matvec): W (D, N) packed @
 * x (T, N) -> y (T, D), rows [d0, d1), 1 <= T < NMLX_CPU_FEW_TOKENS. Each
 * 64-code chunk is loaded and turned into bf16 words (128 + q) once, in
 * registers, and fed to two `vdpbf16ps` per token.
 *
 * Bit for bit: each token's row equals the one-token kernel's on that
 * token (tests/test_quant_kernels.c, test_few_token_rows): x split and
 * summed by the same function (nmlx_avx512bf16_quant_split_x), per group
 * one dot-product accumulator over the group's chunks in the same order,
 * folded by the group scale into an accumulator that starts at the bias
 * term; rows in blocks of 4 from d0 reduced with hsum4x16, the last
 * d1 - d0 mod 4 alone with _mm512_reduce_add_ps. */
#pragma GCC target("avx512bf16")
#include "compute/cpu/quant_avx512.h"

#ifndef NMLX_QFEW_BF16_KC
#define NMLX_QFEW_BF16_KC 1024
#endif

enum {
    MV_NMAX = 16384,
    RB = 4,
    TMAX = NMLX_CPU_FEW_TOKENS,
    TT = 12,               /* tokens per register tile */
    XB_ELEMS = 64 * 1024,  /* bf16 x on the stack: 128 KiB */
    KC = NMLX_QFEW_BF16_KC /* columns per block (a multiple of 128) */
};

/* acc[t] += sum_g sc[g] * (x_t . (128 + q[g])) over one row's G groups of
 * CPG 64-code chunks, for M tokens (xb[t]: token t's split x). */
AVX512_INLINE void row_tok(int M, int CPG, const uint8_t *q, int64_t pf, const uint16_t *const *xbp,
                           const float *sc, int64_t G, __m512 *accp) {
    /* locals, so the accumulators stay in registers (nothing aliases them) */
    __m512 acc[TT];
    const uint16_t *xb[TT];
#pragma GCC unroll 12
    for (int t = 0; t < M; t++)
        acc[t] = accp[t], xb[t] = xbp[t];
    const __m512i lo4 = _mm512_set1_epi16(0x000F), e128 = _mm512_set1_epi16(0x4300);
    for (int64_t g = 0; g < G; g++) {
        __m512i wa[2], wb[2]; /* CPG <= 2; a constant size, not a VLA */
#pragma GCC unroll 2
        for (int j = 0; j < CPG; j++) {
            const int64_t c = g * CPG + j;
            _mm_prefetch((const char *)q + 32 * c + pf, NMLX_PF_STREAM);
            __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(q + 32 * c)));
            wa[j] = _mm512_ternarylogic_epi32(v, lo4, e128, 0xEA); /* (v & 15) | 0x4300 */
            wb[j] = _mm512_or_si512(_mm512_srli_epi16(v, 4), e128);
        }
        const __m512 sv = _mm512_set1_ps(sc[g]);
#pragma GCC unroll 12
        for (int t = 0; t < M; t++) {
            __m512 s = _mm512_setzero_ps();
#pragma GCC unroll 2
            for (int j = 0; j < CPG; j++) {
                const int64_t c = g * CPG + j;
                const __m512bh xa = (__m512bh)_mm512_loadu_si512(xb[t] + 64 * c);
                const __m512bh xo = (__m512bh)_mm512_loadu_si512(xb[t] + 64 * c + 32);
                s = _mm512_dpbf16_ps(s, xa, (__m512bh)wa[j]);
                s = _mm512_dpbf16_ps(s, xo, (__m512bh)wb[j]);
            }
            acc[t] = _mm512_fmadd_ps(sv, s, acc[t]);
        }
    }
#pragma GCC unroll 12
    for (int t = 0; t < M; t++)
        accp[t] = acc[t];
}

typedef void (*row_fn)(const uint8_t *, int64_t, const uint16_t *const *, const float *, int64_t,
                       __m512 *);
#define ROW_FN(M, CPG)                                                                             \
    static void row_##M##_##CPG(const uint8_t *q, int64_t pf, const uint16_t *const *xb,           \
                                const float *sc, int64_t G, __m512 *acc) {                         \
        row_tok(M, CPG, q, pf, xb, sc, G, acc);                                                    \
    }
/* clang-format off */
#define ROW_FNS(CPG)                                                                               \
    ROW_FN(1, CPG) ROW_FN(2, CPG) ROW_FN(3, CPG) ROW_FN(4, CPG) ROW_FN(5, CPG) ROW_FN(6, CPG)      \
    ROW_FN(7, CPG) ROW_FN(8, CPG) ROW_FN(9, CPG) ROW_FN(10, CPG) ROW_FN(11, CPG) ROW_FN(12, CPG)
ROW_FNS(1) ROW_FNS(2)
#define ROW_TAB(CPG)                                                                               \
    {row_1_##CPG, row_2_##CPG, row_3_##CPG, row_4_##CPG,  row_5_##CPG,  row_6_##CPG,               \
     row_7_##CPG, row_8_##CPG, row_9_##CPG, row_10_##CPG, row_11_##CPG, row_12_##CPG}
static const row_fn row_fns[2][TT] = {ROW_TAB(1), ROW_TAB(2)};
/* clang-format on */

bool nmlx_avx512bf16_quant_matmul_few(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                      int64_t d0, int64_t d1) {
    if (!nmlx_avx512bf16_matvec_ok(w) || T < 1 || T >= TMAX) return false;
    const int gs = w->group_size;
    const int64_t N = w->cols, D = w->rows, G = N / gs, row_bytes = N / 2;
    const uint8_t *packed = (const uint8_t *)w->w.data;
    uint16_t xb[XB_ELEMS] __attribute__((aligned(64)));
    float xs[TMAX][MV_NMAX / 64], sc[RB * MV_NMAX / 64], cb[RB * MV_NMAX / 64];
    __m512 accv[TMAX][RB];
    const size_t ses = nmlx_dtype_size(w->scales.dtype);
    const row_fn *fns = row_fns[gs == 128];
    /* tokens whose split x fits the stack buffer (all of them unless N is
     * large): each group of tokens streams the weights once */
    const int64_t xstride = N + 32; /* one line past a multiple of 4 KiB: no L1 set sharing */
    const int64_t tg = XB_ELEMS / xstride < T ? XB_ELEMS / xstride : T;
    /* short rows (<= 1 KiB): the block's rows are contiguous, read ahead
     * linearly; longer rows: 8 rows ahead (as the one-token kernel) */
    const int64_t pf = row_bytes <= 1024 ? 4096 : 8 * row_bytes;
    for (int64_t t0 = 0; t0 < T; t0 += tg) {
        const int64_t m = T - t0 < tg ? T - t0 : tg;
        const uint16_t *xt[TMAX];
        for (int64_t t = 0; t < m; t++) {
            nmlx_avx512bf16_quant_split_x(x + (t0 + t) * N, N, gs, xb + t * xstride, xs[t]);
            xt[t] = xb + t * xstride;
        }
        for (int64_t d = d0; d < d1;) {
            const int R = d1 - d >= RB ? RB : 1;
            for (int64_t o = 0; o < R * G * (int64_t)ses; o += 64) {
                size_t at = (size_t)((d + 8) * G) * ses + (size_t)o;
                _mm_prefetch((const char *)w->scales.data + at, NMLX_PF_STREAM);
                _mm_prefetch((const char *)w->biases.data + at, NMLX_PF_STREAM);
            }
            load_f32s(w->scales.dtype, w->scales.data, (size_t)(d * G), R * G, sc);
            load_f32s(w->biases.dtype, w->biases.data, (size_t)(d * G), R * G, cb);
            for (int64_t i = 0; i < R * G; i += 16) { /* bias' = b - 128 s */
                __mmask16 mk = first_n(R * G - i);
                __m512 s = _mm512_maskz_loadu_ps(mk, sc + i), b = _mm512_maskz_loadu_ps(mk, cb + i);
                _mm512_mask_storeu_ps(cb + i, mk, _mm512_fnmadd_ps(_mm512_set1_ps(128.0f), s, b));
            }
            for (int r = 0; r < R; r++)
                for (int64_t t = 0; t < m; t++)
                    accv[t][r] = dot_lanes(cb + r * G, xs[t], G);
            /* column blocks of KC: the block's x (all tokens) stays in L1
             * while the R rows pass; each (row, token) accumulator carries
             * over from block to block in accv, so the order is unchanged */
            for (int64_t g0 = 0; g0 < G; g0 += KC / gs) {
                const int64_t gn = G - g0 < KC / gs ? G - g0 : KC / gs;
                for (int r = 0; r < R; r++) {
                    const uint8_t *q = packed + (d + r) * row_bytes + g0 * gs / 2;
                    for (int64_t t1 = 0; t1 < m;) {
                        /* balanced tiles of at most TT tokens */
                        const int64_t tiles = (m - t1 + TT - 1) / TT,
                                      mt = (m - t1 + tiles - 1) / tiles;
                        __m512 acc[TT];
                        const uint16_t *xo[TT];
                        for (int64_t t = 0; t < mt; t++)
                            acc[t] = accv[t1 + t][r], xo[t] = xt[t1 + t] + g0 * gs;
                        fns[mt - 1](q, pf, xo, sc + r * G + g0, gn, acc);
                        for (int64_t t = 0; t < mt; t++)
                            accv[t1 + t][r] = acc[t];
                        t1 += mt;
                    }
                }
            }
            for (int64_t t = 0; t < m; t++) {
                float *yt = y + (t0 + t) * D;
                if (R == RB)
                    _mm_storeu_ps(yt + d, hsum4x16(accv[t][0], accv[t][1], accv[t][2], accv[t][3]));
                else
                    yt[d] = _mm512_reduce_add_ps(accv[t][0]);
            }
            d += R;
        }
    }
    return true;
}
