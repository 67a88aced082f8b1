/* AVX512_VNNI decode mat-vec for affine 4-bit and 8-bit weights (group 32,
 * 64 or 128; f32, f16 or bf16 scales and biases) on int16 activations: the
 * default decode kernel of the avx512 sets for these weights where the CPU
 * has AVX512_VNNI and the one-time pick (quant_bf16_avx512.c) finds it
 * faster than the bf16 and f32 mat-vecs. Reference: the same x rounding
 * (nmlx_qint16s_quantize_row) times the dequantized weights in f64
 * (tests/test_quant_int8.c), and f32 x (docs/quantization.md).
 *
 * Precision: x is rounded to int16 once per call, per weight group, step
 * dx = max|x_g| / 32639 (the int16 prefill's quantizer with qmax 127 * 256
 * + 127 instead of 32767), so the error of a value is at most 2^-16 of its
 * group's largest: far below bf16's 2^-9 of the value itself. The weights
 * stay exact, and
 *     y[d] = sum_g s dx (q . x16)_g + b xs_g,   xs_g = dx sum(x16)_g
 * is W (dequantized) times the rounded x up to f32 rounding of the
 * per-group terms (the bias uses the rounded x's sum, as the int16 prefill
 * does: the error is then sum w e with w centred).
 *
 * The integer dot product: each x16 splits into a signed high and a signed
 * low byte (x16 = 256 hi + lo, both in [-128, 127] thanks to qmax 32639),
 * so q . x16 = 256 (q . hi) + (q . lo), two `vpdpbusd` (u8 codes x s8
 * bytes, 64 multiply-adds each) into int32 lanes: exact (|q . x16| < 2^31
 * over a group of 128 8-bit codes). The codes are used as they lie in
 * memory, 64 bytes a load: 8-bit codes as they are; 4-bit ones as low
 * nibbles (v & 15, the even elements) and high nibbles ((v >> 4) & 15, the
 * odd ones). x is rearranged once per call to match (byte planes per chunk
 * of 64 code bytes: 4-bit [even lo, even hi, odd lo, odd hi], 8-bit [lo,
 * hi]). A `vpdpbusd` lane sums 4 code bytes: 8 consecutive columns
 * (4-bit) or 4 (8-bit), so the lanes of a chunk belong to 1, 2 or 4
 * groups; per flush unit (one chunk, or two for 8-bit group 128) the
 * lanes' int32 sums 256 ah + al are converted and multiplied by a per-lane
 * vector of s dx (a `vpermps` of 16 groups' s dx, made once per row and 16
 * groups). Four rows at a time share each x load. */
#pragma GCC target("avx512vnni")
#include "compute/cpu/quant_avx512.h"

#include <stdlib.h>

enum {
    MV_NMAX = 16384,            /* the widest row taken (x on the stack) */
    GS_PAD = MV_NMAX / 32 + 16, /* per-group arrays, padded to a 16-group block */
    RB = 4,                     /* rows per block */
    MT = 4                      /* tokens per tile (few-token form) */
};

#ifndef NMLX_QDEC16_SHIFT_ADD /* 1: 4-bit combines 256 ah + al with a shift and an add */
#define NMLX_QDEC16_SHIFT_ADD 0
#endif
#ifndef NMLX_QDEC_PF_BYTES
#define NMLX_QDEC_PF_BYTES 4096
#endif

bool nmlx_avx512vnni_matvec16_ok(const nmlx_weight *w) {
    return w->mode == NMLX_QUANT_AFFINE && (w->bits == 4 || w->bits == 8) &&
           (w->group_size == 32 || w->group_size == 64 || w->group_size == 128) &&
           w->cols <= MV_NMAX && w->cols % w->group_size == 0;
}

/* x16 (n int16, zero-padded to whole chunks) -> byte planes, per chunk of
 * 64 code bytes: 4-bit (128 columns) [x[2p] lo, x[2p] hi, x[2p+1] lo,
 * x[2p+1] hi] for p < 64; 8-bit (64 columns) [x[p] lo, x[p] hi]. lo is the
 * low byte read as signed, hi = (x + 128) >> 8 (its high byte: x + 128 <=
 * 32767), so that x = 256 hi + lo. */
static void split_planes(const int16_t *x16, int64_t nchunks, int bits, uint8_t *xp) {
    const __m512i c128 = _mm512_set1_epi16(128);
    if (bits == 4) {
        for (int64_t c = 0; c < nchunks; c++) {
            uint8_t *o = xp + 256 * c;
            for (int m = 0; m < 4; m++) { /* 16 pairs of columns */
                const __m512i d = _mm512_loadu_si512(x16 + 128 * c + 32 * m);
                const __m512i h = _mm512_add_epi16(d, c128);
                _mm_storeu_si128((__m128i *)(o + 16 * m), _mm512_cvtepi32_epi8(d));
                _mm_storeu_si128((__m128i *)(o + 64 + 16 * m),
                                 _mm512_cvtepi32_epi8(_mm512_srli_epi32(h, 8)));
                _mm_storeu_si128((__m128i *)(o + 128 + 16 * m),
                                 _mm512_cvtepi32_epi8(_mm512_srli_epi32(d, 16)));
                _mm_storeu_si128((__m128i *)(o + 192 + 16 * m),
                                 _mm512_cvtepi32_epi8(_mm512_srli_epi32(h, 24)));
            }
        }
    } else {
        for (int64_t c = 0; c < nchunks; c++) {
            uint8_t *o = xp + 128 * c;
            for (int m = 0; m < 2; m++) { /* 32 columns */
                const __m512i v = _mm512_loadu_si512(x16 + 64 * c + 32 * m);
                _mm256_storeu_si256((__m256i *)(o + 32 * m), _mm512_cvtepi16_epi8(v));
                _mm256_storeu_si256(
                    (__m256i *)(o + 64 + 32 * m),
                    _mm512_cvtepi16_epi8(_mm512_srli_epi16(_mm512_add_epi16(v, c128), 8)));
            }
        }
    }
}

typedef struct {
    const uint8_t *packed;
    const void *sc, *bi;
    nmlx_dtype sdt;
    size_t ses;
    int64_t row_bytes, G, nchunks, pf_rows;
} qv_w;

/* y[d..d+R) = rows d..d+R-1 times x (planes xp; per group dx, xs, padded
 * with zeros to a 16-group block). */
AVX512_INLINE void qv_rows(int R, int BITS, int GS, const qv_w *w, int64_t d, const uint8_t *xp,
                           const float *dx, const float *xs, float *y) {
    const int XV = BITS == 4 ? 4 : 2;                        /* x vectors per chunk */
    const int CPF = BITS == 8 && GS == 128 ? 2 : 1;          /* chunks per flush unit */
    const int GPF = BITS == 4 ? 128 / GS : GS == 32 ? 2 : 1; /* groups per flush unit */
    const int UPB = 16 / GPF;                                /* flush units per 16 groups */
    const int LPG = 16 / GPF;                                /* lanes per group */
    const __m512i lo4 = _mm512_set1_epi8(15);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i pat = _mm512_srli_epi32(lane, LPG == 16 ? 4 : LPG == 8 ? 3 : 2);
    __m512 acc[RB];
    const uint8_t *rows[RB];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        acc[r] = _mm512_setzero_ps();
        rows[r] = w->packed + (d + r) * w->row_bytes;
    }
    const int64_t pf = w->pf_rows * w->row_bytes;
    for (int64_t g0 = 0; g0 < w->G; g0 += 16) {
        const __mmask16 gm = first_n(w->G - g0);
        const __m512 DX = _mm512_loadu_ps(dx + g0), XS = _mm512_loadu_ps(xs + g0);
        __m512 S[RB];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const size_t gi = (size_t)((d + r) * w->G + g0);
            const size_t ga = (size_t)((d + r + w->pf_rows) * w->G + g0) * w->ses;
            _mm_prefetch((const char *)w->sc + ga, NMLX_PF_STREAM);
            _mm_prefetch((const char *)w->bi + ga, NMLX_PF_STREAM);
            S[r] = _mm512_mul_ps(load16(w->sdt, w->sc, gi, gm), DX);
            acc[r] = _mm512_fmadd_ps(load16(w->sdt, w->bi, gi, gm), XS, acc[r]);
        }
        const int64_t cb = g0 * GS / (BITS == 4 ? 128 : 64); /* the block's first chunk */
        for (int u = 0; u < UPB; u++) {
            const int64_t c0 = cb + (int64_t)u * CPF;
            if (c0 >= w->nchunks) break;
            const __m512i idx = _mm512_add_epi32(pat, _mm512_set1_epi32(GPF * u));
            __m512i ah[RB], al[RB];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                ah[r] = _mm512_setzero_si512(), al[r] = ah[r];
#pragma GCC unroll 2
            for (int k = 0; k < CPF; k++) {
                const int64_t c = c0 + k;
                /* the last chunk of a row may be shorter than 64 bytes */
                const int64_t left = w->row_bytes - 64 * c;
                const __mmask64 bm = left >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << left) - 1;
                const uint8_t *xc = xp + 64 * XV * c;
                __m512i X[4];
#pragma GCC unroll 4
                for (int i = 0; i < XV; i++)
                    X[i] = _mm512_loadu_si512(xc + 64 * i);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    _mm_prefetch((const char *)rows[r] + pf + 64 * c, NMLX_PF_STREAM);
                    const __m512i v = _mm512_maskz_loadu_epi8(bm, rows[r] + 64 * c);
                    if (BITS == 4) {
                        const __m512i ce = _mm512_and_si512(v, lo4);
                        const __m512i co = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
                        al[r] = _mm512_dpbusd_epi32(al[r], ce, X[0]);
                        ah[r] = _mm512_dpbusd_epi32(ah[r], ce, X[1]);
                        al[r] = _mm512_dpbusd_epi32(al[r], co, X[2]);
                        ah[r] = _mm512_dpbusd_epi32(ah[r], co, X[3]);
                    } else {
                        al[r] = _mm512_dpbusd_epi32(al[r], v, X[0]);
                        ah[r] = _mm512_dpbusd_epi32(ah[r], v, X[1]);
                    }
                }
            }
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                /* 256 ah + al; 4-bit: |ah| <= 8 x 15 x 128 < 2^15 per lane, so
                 * one `vpdpwssd` (ah's low word x 256, its high word x 0) */
                const __m512i t = BITS == 4 && !NMLX_QDEC16_SHIFT_ADD
                                      ? _mm512_dpwssd_epi32(al[r], ah[r], _mm512_set1_epi32(256))
                                      : _mm512_add_epi32(_mm512_slli_epi32(ah[r], 8), al[r]);
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_permutexvar_ps(idx, S[r]),
                                         acc[r]);
            }
        }
    }
    if (R == RB) {
        _mm_storeu_ps(y + d, hsum4x16(acc[0], acc[1], acc[2], acc[3]));
    } else {
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            y[d + r] = _mm512_reduce_add_ps(acc[r]);
    }
}

typedef void (*qv_fn)(const qv_w *, int64_t, const uint8_t *, const float *, const float *,
                      float *);
#define QV_FN(R, BITS, GS)                                                                         \
    static void qv_##R##_##BITS##_##GS(const qv_w *w, int64_t d, const uint8_t *xp,                \
                                       const float *dx, const float *xs, float *y) {               \
        qv_rows(R, BITS, GS, w, d, xp, dx, xs, y);                                                 \
    }
/* clang-format off */
QV_FN(4, 4, 32) QV_FN(4, 4, 64) QV_FN(4, 4, 128) QV_FN(1, 4, 32) QV_FN(1, 4, 64) QV_FN(1, 4, 128)
QV_FN(4, 8, 32) QV_FN(4, 8, 64) QV_FN(4, 8, 128) QV_FN(1, 8, 32) QV_FN(1, 8, 64) QV_FN(1, 8, 128)
/* [bits == 8][gs index][R == 4] */
static const qv_fn qv_fns[2][3][2] = {
    {{qv_1_4_32, qv_4_4_32}, {qv_1_4_64, qv_4_4_64}, {qv_1_4_128, qv_4_4_128}},
    {{qv_1_8_32, qv_4_8_32}, {qv_1_8_64, qv_4_8_64}, {qv_1_8_128, qv_4_8_128}},
};
/* clang-format on */

/* x (N) -> its byte planes xp (2 N + 256 bytes) and per-group steps dx and
 * sums xs (GS_PAD each, zeros past the last group to a 16-group block) */
static void prep_x(const nmlx_weight *w, const float *x, uint8_t *xp, float *dx, float *xs) {
    const int bits = w->bits, gs = w->group_size;
    const int64_t N = w->cols, G = N / gs, cpc = bits == 4 ? 128 : 64;
    const int64_t nchunks = (N + cpc - 1) / cpc;
    int16_t x16[MV_NMAX + 128] __attribute__((aligned(64)));
    nmlx_qint16s_quantize_row(x, N, gs, x16, dx, xs);
    for (int64_t k = N; k < nchunks * cpc; k++)
        x16[k] = 0;
    for (int64_t g = G; g < (G + 15) / 16 * 16; g++)
        dx[g] = xs[g] = 0.0f;
    split_planes(x16, nchunks, bits, xp);
}

static qv_w qv_of(const nmlx_weight *w) {
    const int64_t row_bytes = w->cols * w->bits / 8, cpc = w->bits == 4 ? 128 : 64;
    const int64_t pf_rows = (NMLX_QDEC_PF_BYTES + row_bytes - 1) / row_bytes;
    return (qv_w){.packed = (const uint8_t *)w->w.data,
                  .sc = w->scales.data,
                  .bi = w->biases.data,
                  .sdt = w->scales.dtype,
                  .ses = nmlx_dtype_size(w->scales.dtype),
                  .row_bytes = row_bytes,
                  .G = w->cols / w->group_size,
                  .nchunks = (w->cols + cpc - 1) / cpc,
                  .pf_rows = pf_rows < 8 ? 8 : pf_rows};
}

/* rows [d0, d1) in blocks of 4 from d0, the last d1 - d0 mod 4 alone */
static void rows_range(const nmlx_weight *w, const qv_w *q, const uint8_t *xp, const float *dx,
                       const float *xs, float *y, int64_t d0, int64_t d1) {
    const qv_fn *fns = qv_fns[w->bits == 8][w->group_size == 32 ? 0 : w->group_size == 64 ? 1 : 2];
    for (int64_t d = d0; d < d1;) {
        const int R = d1 - d >= RB ? RB : 1;
        fns[R == RB](q, d, xp, dx, xs, y);
        d += R;
    }
}

void nmlx_avx512vnni_quant_matvec16(const nmlx_weight *w, const float *x, float *y, int64_t d0,
                                    int64_t d1) {
    uint8_t xp[2 * MV_NMAX + 256] __attribute__((aligned(64)));
    float dx[GS_PAD], xs[GS_PAD];
    prep_x(w, x, xp, dx, xs);
    const qv_w q = qv_of(w);
    rows_range(w, &q, xp, dx, xs, y, d0, d1);
}

/* The few-token form's kernel: one row d times M tokens' x, each code
 * chunk loaded and split once for all of them; acc[t] gets exactly the
 * accumulator qv_rows makes for (row d, token t): the same f32 operations
 * in the same order (the integer sums are exact, in any order). */
AVX512_INLINE void qv_tok(int M, int BITS, int GS, const qv_w *w, int64_t d,
                          const uint8_t *const *xp, const float *const *dx, const float *const *xs,
                          __m512 *accp) {
    const int XV = BITS == 4 ? 4 : 2;
    const int CPF = BITS == 8 && GS == 128 ? 2 : 1;
    const int GPF = BITS == 4 ? 128 / GS : GS == 32 ? 2 : 1;
    const int UPB = 16 / GPF, LPG = 16 / GPF;
    const __m512i lo4 = _mm512_set1_epi8(15);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i pat = _mm512_srli_epi32(lane, LPG == 16 ? 4 : LPG == 8 ? 3 : 2);
    __m512 acc[MT];
#pragma GCC unroll 4
    for (int t = 0; t < M; t++)
        acc[t] = _mm512_setzero_ps();
    const uint8_t *row = w->packed + d * w->row_bytes;
    const int64_t pf = w->pf_rows * w->row_bytes;
    for (int64_t g0 = 0; g0 < w->G; g0 += 16) {
        const __mmask16 gm = first_n(w->G - g0);
        const size_t gi = (size_t)(d * w->G + g0);
        const size_t ga = (size_t)((d + w->pf_rows) * w->G + g0) * w->ses;
        _mm_prefetch((const char *)w->sc + ga, NMLX_PF_STREAM);
        _mm_prefetch((const char *)w->bi + ga, NMLX_PF_STREAM);
        const __m512 SC = load16(w->sdt, w->sc, gi, gm), BI = load16(w->sdt, w->bi, gi, gm);
        __m512 S[MT];
#pragma GCC unroll 4
        for (int t = 0; t < M; t++) {
            S[t] = _mm512_mul_ps(SC, _mm512_loadu_ps(dx[t] + g0));
            acc[t] = _mm512_fmadd_ps(BI, _mm512_loadu_ps(xs[t] + g0), acc[t]);
        }
        const int64_t cb = g0 * GS / (BITS == 4 ? 128 : 64);
        for (int u = 0; u < UPB; u++) {
            const int64_t c0 = cb + (int64_t)u * CPF;
            if (c0 >= w->nchunks) break;
            const __m512i idx = _mm512_add_epi32(pat, _mm512_set1_epi32(GPF * u));
            __m512i ah[MT], al[MT];
#pragma GCC unroll 4
            for (int t = 0; t < M; t++)
                ah[t] = _mm512_setzero_si512(), al[t] = ah[t];
#pragma GCC unroll 2
            for (int k = 0; k < CPF; k++) {
                const int64_t c = c0 + k;
                const int64_t left = w->row_bytes - 64 * c;
                const __mmask64 bm = left >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << left) - 1;
                _mm_prefetch((const char *)row + pf + 64 * c, NMLX_PF_STREAM);
                const __m512i v = _mm512_maskz_loadu_epi8(bm, row + 64 * c);
                if (BITS == 4) {
                    const __m512i ce = _mm512_and_si512(v, lo4);
                    const __m512i co = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
#pragma GCC unroll 4
                    for (int t = 0; t < M; t++) {
                        const uint8_t *xc = xp[t] + 64 * XV * c;
                        al[t] = _mm512_dpbusd_epi32(al[t], ce, _mm512_loadu_si512(xc));
                        ah[t] = _mm512_dpbusd_epi32(ah[t], ce, _mm512_loadu_si512(xc + 64));
                        al[t] = _mm512_dpbusd_epi32(al[t], co, _mm512_loadu_si512(xc + 128));
                        ah[t] = _mm512_dpbusd_epi32(ah[t], co, _mm512_loadu_si512(xc + 192));
                    }
                } else {
#pragma GCC unroll 4
                    for (int t = 0; t < M; t++) {
                        const uint8_t *xc = xp[t] + 64 * XV * c;
                        al[t] = _mm512_dpbusd_epi32(al[t], v, _mm512_loadu_si512(xc));
                        ah[t] = _mm512_dpbusd_epi32(ah[t], v, _mm512_loadu_si512(xc + 64));
                    }
                }
            }
#pragma GCC unroll 4
            for (int t = 0; t < M; t++) {
                const __m512i s = BITS == 4 && !NMLX_QDEC16_SHIFT_ADD
                                      ? _mm512_dpwssd_epi32(al[t], ah[t], _mm512_set1_epi32(256))
                                      : _mm512_add_epi32(_mm512_slli_epi32(ah[t], 8), al[t]);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_permutexvar_ps(idx, S[t]),
                                         acc[t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < M; t++)
        accp[t] = acc[t];
}

typedef void (*qt_fn)(const qv_w *, int64_t, const uint8_t *const *, const float *const *,
                      const float *const *, __m512 *);
#define QT_FN(M, BITS, GS)                                                                         \
    static void qt_##M##_##BITS##_##GS(const qv_w *w, int64_t d, const uint8_t *const *xp,         \
                                       const float *const *dx, const float *const *xs,             \
                                       __m512 *acc) {                                              \
        qv_tok(M, BITS, GS, w, d, xp, dx, xs, acc);                                                \
    }
#define QT_FNS(BITS, GS) QT_FN(1, BITS, GS) QT_FN(2, BITS, GS) QT_FN(3, BITS, GS) QT_FN(4, BITS, GS)
/* clang-format off */
QT_FNS(4, 32) QT_FNS(4, 64) QT_FNS(4, 128) QT_FNS(8, 32) QT_FNS(8, 64) QT_FNS(8, 128)
/* [bits == 8][gs index][M - 1] */
static const qt_fn qt_fns[2][3][MT] = {
    {{qt_1_4_32, qt_2_4_32, qt_3_4_32, qt_4_4_32}, {qt_1_4_64, qt_2_4_64, qt_3_4_64, qt_4_4_64},
     {qt_1_4_128, qt_2_4_128, qt_3_4_128, qt_4_4_128}},
    {{qt_1_8_32, qt_2_8_32, qt_3_8_32, qt_4_8_32}, {qt_1_8_64, qt_2_8_64, qt_3_8_64, qt_4_8_64},
     {qt_1_8_128, qt_2_8_128, qt_3_8_128, qt_4_8_128}},
};
/* clang-format on */

/* The few-token form: each token's x prepared once per call, then per
 * block of FR rows (its codes stay in L2 while the token tiles pass) and
 * tile of at most MT tokens, each row's codes loaded and split once for the
 * tile (qv_tok). Rows are reduced as the one-token call reduces them (4-row
 * blocks from d0 with hsum4x16, the last d1 - d0 mod 4 rows alone), so every
 * row is bit for bit the one-token kernel's. */
bool nmlx_avx512vnni_quant_matmul_few16(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                        int64_t d0, int64_t d1) {
    enum { FR = 64 };
    if (!nmlx_avx512vnni_matvec16_ok(w) || T < 1 || T >= NMLX_CPU_FEW_TOKENS) return false;
    const int64_t N = w->cols, D = w->rows, xps = 2 * N + 256;
    char *buf = aligned_alloc(64, (size_t)(T * xps + 2 * T * GS_PAD * 4 + 63) / 64 * 64);
    if (!buf) return false;
    float *dxb = (float *)(void *)(buf + T * xps), *xsb = dxb + T * GS_PAD;
    const uint8_t *xp[NMLX_CPU_FEW_TOKENS];
    const float *dx[NMLX_CPU_FEW_TOKENS], *xs[NMLX_CPU_FEW_TOKENS];
    for (int64_t t = 0; t < T; t++) {
        prep_x(w, x + t * N, (uint8_t *)buf + t * xps, dxb + t * GS_PAD, xsb + t * GS_PAD);
        xp[t] = (const uint8_t *)buf + t * xps, dx[t] = dxb + t * GS_PAD, xs[t] = xsb + t * GS_PAD;
    }
    const qv_w q = qv_of(w);
    const qt_fn *fns = qt_fns[w->bits == 8][w->group_size == 32 ? 0 : w->group_size == 64 ? 1 : 2];
    for (int64_t b0 = d0; b0 < d1; b0 += FR) {
        const int64_t b1 = d1 - b0 < FR ? d1 : b0 + FR;
        for (int64_t t0 = 0; t0 < T;) {
            /* balanced tiles of at most MT tokens */
            const int64_t tiles = (T - t0 + MT - 1) / MT, m = (T - t0 + tiles - 1) / tiles;
            for (int64_t d = b0; d < b1;) {
                const int R = b1 - d >= RB ? RB : 1;
                __m512 acc[RB][MT];
                for (int r = 0; r < R; r++)
                    fns[m - 1](&q, d + r, xp + t0, dx + t0, xs + t0, acc[r]);
                for (int64_t t = 0; t < m; t++) {
                    float *yt = y + (t0 + t) * D + d;
                    if (R == RB)
                        _mm_storeu_ps(yt, hsum4x16(acc[0][t], acc[1][t], acc[2][t], acc[3][t]));
                    else
                        yt[0] = _mm512_reduce_add_ps(acc[0][t]);
                }
                d += R;
            }
            t0 += m;
        }
    }
    free(buf);
    return true;
}
