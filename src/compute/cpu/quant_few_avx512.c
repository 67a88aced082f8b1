/* Few-token mat-vec of the avx512 set's f32 quantized kernel (MLX affine
 * 4/8-bit, MXFP4; fast_weight() shapes): W (D, N) packed @ x (T, N) ->
 * y (T, D), rows [d0, d1), 1 < T < NMLX_CPU_FEW_TOKENS (a batched decode
 * step). Each group of a row is loaded and unpacked to f32 once, into
 * registers, and applied to every token, so the unpack (the bound of the
 * one-token kernel on few cores) is paid once per step instead of once per
 * token.
 *
 * Bit for bit: every token's row equals nmlx_avx512f32_quant_matvec on
 * that token (tests/test_quant_kernels.c, test_few_token_rows). Per token
 * and row, the lanes accumulate in the same order: the column chunks of
 * NMLX_QMV_CK, x in the same planar order (4 bits), per group a partial
 * sum (8 bits) or two, ga (even elements) and gb (odd) added (4 bits),
 * folded with one FMA by the group scale into an accumulator that starts at the bias
 * term dot_lanes(b, xsum); rows in blocks of 4 from d0 reduced with
 * hsum4x16, the last d1 - d0 mod 4 rows alone with _mm512_reduce_add_ps.
 * Only the loop nest differs: row, group, then token. */
#include "compute/cpu/quant_avx512.h"

#ifndef NMLX_QFEW_KC
#define NMLX_QFEW_KC 512
#endif

enum {
    CK = NMLX_QMV_CK,
    GMAX = CK / 32,
    RB = 4,                     /* the one-token kernel's row block */
    TMAX = NMLX_CPU_FEW_TOKENS, /* tokens per call, at most (exclusive) */
    TT = 8,                     /* tokens per register tile */
    XP_FLOATS = 8 * CK,         /* planar x on the stack: 128 KiB */
    KC = NMLX_QFEW_KC           /* columns per block (a multiple of every group size) */
};
#ifndef NMLX_QMATVEC_PF_ROWS
#define NMLX_QMATVEC_PF_ROWS 8
#endif

/* acc[t] += sum_g sc[g] * (q[g, :] . x_t[g, :]) over one row's ng groups
 * for M tokens: q the row's packed codes, xs[t] token t's x chunk (planar
 * for 4 bits), pf the distance to prefetch ahead of q. */
AVX512_INLINE void row_tok(int M, int BITS, int GS, const uint8_t *q, int64_t pf,
                           const float *const *xsp, const float *sc, int64_t ng, __m512 lut,
                           __m512 *accp) {
    /* locals, so the accumulators stay in registers (nothing aliases them) */
    __m512 acc[TT];
    const float *xs[TT];
#pragma GCC unroll 8
    for (int t = 0; t < M; t++)
        acc[t] = accp[t], xs[t] = xsp[t];
    for (int64_t g = 0; g < ng; g++) {
        __m512 wv[8]; /* GS / 16 <= 8; a constant size, not a VLA */
        const uint8_t *qg = q + g * (GS * BITS / 8);
        _mm_prefetch((const char *)qg + pf, NMLX_PF_STREAM);
        if (BITS == 4) {
#pragma GCC unroll 4
            for (int j = 0; j < GS / 32; j++) {
                __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(qg + 16 * j)));
#ifdef NMLX_Q4_CVT
                wv[2 * j] = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(15)));
                wv[2 * j + 1] = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
#else
                wv[2 * j] = _mm512_permutexvar_ps(v, lut);
                wv[2 * j + 1] = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut);
#endif
            }
        } else {
#pragma GCC unroll 8
            for (int j = 0; j < GS / 16; j++)
                wv[j] = _mm512_cvtepi32_ps(
                    _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(qg + 16 * j))));
        }
        const __m512 sv = _mm512_set1_ps(sc[g]);
#pragma GCC unroll 8
        for (int t = 0; t < M; t++) {
            const float *xg = xs[t] + g * GS;
            __m512 ga = _mm512_setzero_ps(), gb = ga;
            if (BITS == 4) {
#pragma GCC unroll 4
                for (int j = 0; j < GS / 32; j++) {
                    ga = _mm512_fmadd_ps(wv[2 * j], _mm512_loadu_ps(xg + 32 * j), ga);
                    gb = _mm512_fmadd_ps(wv[2 * j + 1], _mm512_loadu_ps(xg + 32 * j + 16), gb);
                }
            } else {
#pragma GCC unroll 8
                for (int j = 0; j < GS / 16; j++)
                    ga = _mm512_fmadd_ps(wv[j], _mm512_loadu_ps(xg + 16 * j), ga);
            }
            acc[t] = _mm512_fmadd_ps(sv, BITS == 4 ? _mm512_add_ps(ga, gb) : ga, acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < M; t++)
        accp[t] = acc[t];
}

typedef void (*row_fn)(const uint8_t *, int64_t, const float *const *, const float *, int64_t,
                       __m512, __m512 *);
#define ROW_FN(M, BITS, GS)                                                                        \
    static void row_##M##_##BITS##_##GS(const uint8_t *q, int64_t pf, const float *const *xs,      \
                                        const float *sc, int64_t ng, __m512 lut, __m512 *acc) {    \
        row_tok(M, BITS, GS, q, pf, xs, sc, ng, lut, acc);                                         \
    }
/* clang-format off */
#define ROW_FNS(BITS, GS)                                                                          \
    ROW_FN(1, BITS, GS) ROW_FN(2, BITS, GS) ROW_FN(3, BITS, GS) ROW_FN(4, BITS, GS)                \
    ROW_FN(5, BITS, GS) ROW_FN(6, BITS, GS) ROW_FN(7, BITS, GS) ROW_FN(8, BITS, GS)
ROW_FNS(4, 32) ROW_FNS(4, 64) ROW_FNS(4, 128)
ROW_FNS(8, 32) ROW_FNS(8, 64) ROW_FNS(8, 128)
#define ROW_TAB(BITS, GS)                                                                          \
    {row_1_##BITS##_##GS, row_2_##BITS##_##GS, row_3_##BITS##_##GS, row_4_##BITS##_##GS,           \
     row_5_##BITS##_##GS, row_6_##BITS##_##GS, row_7_##BITS##_##GS, row_8_##BITS##_##GS}
/* [bits == 8][gs index][tokens - 1] */
static const row_fn row_fns[2][3][TT] = {
    {ROW_TAB(4, 32), ROW_TAB(4, 64), ROW_TAB(4, 128)},
    {ROW_TAB(8, 32), ROW_TAB(8, 64), ROW_TAB(8, 128)},
};
/* clang-format on */

bool nmlx_avx512f32_quant_matmul_few(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                     int64_t d0, int64_t d1) {
    if (!fast_weight(w) || T < 1 || T >= TMAX) return false;
    const int bits = w->bits, gs = w->group_size;
    const bool affine = w->mode == NMLX_QUANT_AFFINE;
    const int64_t N = w->cols, D = w->rows, G = N / gs,
                  row_bytes = nmlx_quant_row_words(N, bits) * 4;
    const uint8_t *packed = (const uint8_t *)w->w.data;
    float xp[XP_FLOATS] __attribute__((aligned(64)));
    float xsum[TMAX][GMAX], sc[RB * GMAX], bi[RB * GMAX];
    __m512 accv[TMAX][RB];
    float lut_f[16];
    for (unsigned c = 0; c < 16; c++)
        lut_f[c] = affine ? (float)c : nmlx_fp4_value(c);
    const __m512 lut = _mm512_loadu_ps(lut_f);
    const row_fn *fns = row_fns[bits == 8][gs == 32 ? 0 : gs == 64 ? 1 : 2];
    const size_t ses = nmlx_dtype_size(w->scales.dtype);

    for (int64_t t = 0; t < T; t++)
        for (int64_t d = d0; d < d1; d++)
            y[t * D + d] = 0.0f;
    for (int64_t c0 = 0; c0 < N; c0 += CK) {
        const int64_t nc = N - c0 < CK ? N - c0 : CK, ng = nc / gs;
        /* x copied (planar for 4 bits) into rows 64-byte aligned, one line
         * apart from a multiple of 4 KiB (so the tokens' rows do not share
         * L1 sets); tokens whose copies fit the stack buffer (all of them
         * unless N is large) stream the weights once */
        const int64_t xstride = nc + 16;
        const int64_t tg = XP_FLOATS / xstride < T ? XP_FLOATS / xstride : T;
        for (int64_t t0 = 0; t0 < T; t0 += tg) {
            const int64_t m = T - t0 < tg ? T - t0 : tg;
            const float *xs[TMAX];
            for (int64_t t = 0; t < m; t++) {
                const float *xt = x + (t0 + t) * N + c0;
                if (bits == 4)
                    planar(xt, nc, xp + t * xstride);
                else
                    memcpy(xp + t * xstride, xt, (size_t)nc * sizeof(float));
                xs[t] = xp + t * xstride;
                if (affine)
                    for (int64_t g = 0; g < ng; g++) {
                        __m512 a = _mm512_setzero_ps();
                        for (int j = 0; j < gs; j += 16)
                            a = _mm512_add_ps(a, _mm512_loadu_ps(xt + g * gs + j));
                        xsum[t][g] = _mm512_reduce_add_ps(a);
                    }
            }
            const bool lin = ng == G && row_bytes <= 1024;
            const int64_t pf = lin ? 4096 : NMLX_QMATVEC_PF_ROWS * row_bytes;
            for (int64_t d = d0; d < d1;) {
                const int R = d1 - d >= RB ? RB : 1;
                for (int64_t o = 0; o < R * G * (int64_t)ses; o += 64) {
                    size_t at = (size_t)((d + NMLX_QMATVEC_PF_ROWS) * G) * ses + (size_t)o;
                    _mm_prefetch((const char *)w->scales.data + at, NMLX_PF_STREAM);
                    if (affine) _mm_prefetch((const char *)w->biases.data + at, NMLX_PF_STREAM);
                }
                for (int r = 0; r < R; r++) {
                    size_t gi = (size_t)((d + r) * G + c0 / gs);
                    load_f32s(w->scales.dtype, w->scales.data, gi, ng, sc + r * ng);
                    if (affine) load_f32s(w->biases.dtype, w->biases.data, gi, ng, bi + r * ng);
                }
                for (int r = 0; r < R; r++)
                    for (int64_t t = 0; t < m; t++)
                        accv[t][r] =
                            affine ? dot_lanes(bi + r * ng, xsum[t], ng) : _mm512_setzero_ps();
                /* column blocks of KC: the block's x (all tokens) stays in L1
                 * while the R rows pass; each (row, token) accumulator carries
                 * over from block to block in accv, so the order is unchanged */
                for (int64_t g0 = 0; g0 < ng; g0 += KC / gs) {
                    const int64_t gn = ng - g0 < KC / gs ? ng - g0 : KC / gs;
                    for (int r = 0; r < R; r++) {
                        const uint8_t *q = packed + (d + r) * row_bytes + (c0 + g0 * gs) * bits / 8;
                        for (int64_t t1 = 0; t1 < m;) {
                            /* balanced tiles of at most TT tokens */
                            const int64_t tiles = (m - t1 + TT - 1) / TT,
                                          mt = (m - t1 + tiles - 1) / tiles;
                            __m512 acc[TT];
                            const float *xo[TT];
                            for (int64_t t = 0; t < mt; t++)
                                acc[t] = accv[t1 + t][r], xo[t] = xs[t1 + t] + g0 * gs;
                            fns[mt - 1](q, pf, xo, sc + r * ng + g0, gn, lut, acc);
                            for (int64_t t = 0; t < mt; t++)
                                accv[t1 + t][r] = acc[t];
                            t1 += mt;
                        }
                    }
                }
                for (int64_t t = 0; t < m; t++) {
                    float *yt = y + (t0 + t) * D;
                    if (R == RB) {
                        __m128 s4 =
                            _mm_add_ps(hsum4x16(accv[t][0], accv[t][1], accv[t][2], accv[t][3]),
                                       _mm_loadu_ps(yt + d));
                        _mm_storeu_ps(yt + d, s4);
                    } else {
                        yt[d] += _mm512_reduce_add_ps(accv[t][0]);
                    }
                }
                d += R;
            }
        }
    }
    return true;
}

/* The avx512 set's few-token quantized matmul: the kernel the one-token
 * path (nmlx_avx512_quant_matmul_rows, T == 1) would pick, in its
 * few-token form; false where that is an AVX2 fallback. */
bool nmlx_avx512_quant_matmul_few(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                  int64_t d0, int64_t d1) {
    const nmlx_qbf16_pick pick = nmlx_qbf16_get_pick();
    if (nmlx_qdec16_takes(&pick, w))
        return nmlx_avx512vnni_quant_matmul_few16(w, x, y, T, d0, d1);
    if (pick.matvec && nmlx_avx512bf16_matvec_ok(w))
        return nmlx_avx512bf16_quant_matmul_few(w, x, y, T, d0, d1);
    return nmlx_avx512f32_quant_matmul_few(w, x, y, T, d0, d1);
}

/* The avx512 set's cpu_kernels.matmul_few: quantized weights here; dense
 * ones, like its one-token path, in the AVX2 kernels. */
bool nmlx_avx512_matmul_few(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                            int64_t d1) {
    if (w->mode == NMLX_QUANT_NONE) return nmlx_avx2_matmul_few(w, x, y, T, d0, d1);
    /* (the weights it leaves to quant_avx2.c at T = 1 are not planar ones:
     * no few-token form) */
    return nmlx_avx512_quant_matmul_few(w, x, y, T, d0, d1);
}
