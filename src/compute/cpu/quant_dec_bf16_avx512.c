/* AVX512_BF16 decode mat-vec for affine 4-bit weights (group 64 or 128)
 * and its few-token form, one kernel for both (the avx512 set's default for
 * these weights where the CPU has AVX512_BF16 and the one-time pick of
 * quant_bf16_avx512.c finds it faster than the f32 kernel). Reference:
 * nmlx_quant_dequant_row + the portable matmul (tests/test_quant_kernels.c).
 *
 * Precision (docs/quantization.md): x is rounded to bf16 once per call, as
 * MLX does with bf16 activations; the weights stay exact: a code q OR
 * 0x4300 is the bf16 of 128 + q, so products are exact in f32 and
 * y[d] = sum_g s (x . (128 + q)) + (b - 128 s) sum(x), sum(x) over the
 * rounded x of the group.
 *
 * Layout: 64 packed bytes (128 codes) load as 32 16-bit words; word i holds
 * elements 4i .. 4i+3, one per nibble. One `vpternlogd` per nibble (after a
 * shift) makes 32 bf16 weights, so four `vdpbf16ps` sum the 128 products
 * with no widening shuffle; x is split once per call to match (vector k of
 * a 128-column chunk holds x[4i + k]). A `vdpbf16ps` lane sums 8
 * consecutive columns, so with group 64 lanes 0-7 belong to the chunk's
 * first group and 8-15 to its second: one per-lane scale vector (a
 * `vpermps` of 16 scales converted once per row and 16 groups) folds both.
 *
 * Bit for bit: every (row, token) runs the same operations in the same
 * order whichever form calls it (the inline qd_rows below): the bias term
 * first, then per chunk a chain of four `vdpbf16ps` from zero and one FMA
 * into the accumulator, one 16-group block after another, reduced by
 * _mm512_reduce_add_ps; x is split by the same function
 * (nmlx_avx512bf16_quant_split_x). So a batched decode step gives each
 * sequence the bits it gets alone (tests/test_quant_kernels.c,
 * test_few_token_rows). */
#pragma GCC target("avx512bf16")
#include "compute/cpu/quant_avx512.h"

enum {
    MV_NMAX = 16384,            /* the widest row taken (x on the stack) */
    XS_MAX = MV_NMAX / 64 + 16, /* group sums, padded to a 16-group block */
    RB = 4,                     /* rows per mat-vec block */
    MT = 8,                     /* tokens per register tile (few-token form) */
    FR = 16,                    /* rows per few-token block */
    XB_ELEMS = 64 * 1024,       /* few-token form: split x on the stack, 128 KiB */
    TMAX = NMLX_CPU_FEW_TOKENS
};

/* Packed rows are prefetched this many bytes ahead, at least (in whole rows). */
#ifndef NMLX_QDEC_PF_BYTES
#define NMLX_QDEC_PF_BYTES 4096
#endif

bool nmlx_avx512bf16_matvec_ok(const nmlx_weight *w) {
    return w->mode == NMLX_QUANT_AFFINE && w->bits == 4 &&
           (w->group_size == 64 || w->group_size == 128) && w->cols <= MV_NMAX;
}

/* x (N,) -> xb: per 128-column chunk, four vectors of 32 bf16, vector k
 * holding x[4i + k] (zeros past N); xs[g]: the sum of group g's rounded
 * values, zeros from G up to the next multiple of 16. N % 64 == 0. */
void nmlx_avx512bf16_quant_split_x(const float *x, int64_t N, int gs, uint16_t *xb, float *xs) {
    const int64_t G = N / gs, NC = (N + 127) / 128;
    /* words 0..127 of a chunk in w0..w3; L: lanes 0-15 the words 4l + k,
     * lanes 16-31 the words 4l + k + 1 (l < 16), from w0:w1; H the same
     * from w2:w3 (words 64 + ...) */
    __m512i i01, i23;
    {
        uint16_t a[32], b[32];
        for (int l = 0; l < 16; l++)
            a[l] = (uint16_t)(4 * l), a[16 + l] = (uint16_t)(4 * l + 1);
        for (int l = 0; l < 32; l++)
            b[l] = (uint16_t)(a[l] + 2);
        i01 = _mm512_loadu_si512(a), i23 = _mm512_loadu_si512(b);
    }
    const __m512i hi16 = _mm512_set1_epi32((int)0xFFFF0000u);
    float half[2];
    for (int64_t c = 0; c < NC; c++) {
        __m512i wv[4];
        for (int j = 0; j < 4; j++) { /* 32 columns -> 32 bf16 words in order */
            const int64_t k0 = 128 * c + 32 * j;
            const int64_t na = N - k0 > 0 ? N - k0 : 0, nb = na > 16 ? na - 16 : 0;
            __m512 a = _mm512_maskz_loadu_ps(first_n(na), x + k0);
            __m512 b = _mm512_maskz_loadu_ps(first_n(nb), x + k0 + 16);
            wv[j] = (__m512i)_mm512_cvtne2ps_pbh(b, a);
        }
        /* group sums: each 64 columns (two word vectors), rounded values */
        for (int h = 0; h < 2; h++) {
            __m512i p = wv[2 * h], q = wv[2 * h + 1];
            __m512 s = _mm512_add_ps(_mm512_castsi512_ps(_mm512_slli_epi32(p, 16)),
                                     _mm512_castsi512_ps(_mm512_and_si512(p, hi16)));
            s = _mm512_add_ps(s, _mm512_add_ps(_mm512_castsi512_ps(_mm512_slli_epi32(q, 16)),
                                               _mm512_castsi512_ps(_mm512_and_si512(q, hi16))));
            half[h] = _mm512_reduce_add_ps(s);
        }
        if (gs == 64) {
            xs[2 * c] = half[0];
            if (2 * c + 1 < G) xs[2 * c + 1] = half[1];
        } else {
            xs[c] = half[0] + half[1];
        }
        const __m512i l01 = _mm512_permutex2var_epi16(wv[0], i01, wv[1]);
        const __m512i h01 = _mm512_permutex2var_epi16(wv[2], i01, wv[3]);
        const __m512i l23 = _mm512_permutex2var_epi16(wv[0], i23, wv[1]);
        const __m512i h23 = _mm512_permutex2var_epi16(wv[2], i23, wv[3]);
        uint16_t *o = xb + 128 * c;
        _mm512_storeu_si512(o, _mm512_shuffle_i64x2(l01, h01, 0x44));      /* k = 0 */
        _mm512_storeu_si512(o + 32, _mm512_shuffle_i64x2(l01, h01, 0xEE)); /* k = 1 */
        _mm512_storeu_si512(o + 64, _mm512_shuffle_i64x2(l23, h23, 0x44)); /* k = 2 */
        _mm512_storeu_si512(o + 96, _mm512_shuffle_i64x2(l23, h23, 0xEE)); /* k = 3 */
    }
    for (int64_t g = G; g < (G + 15) / 16 * 16; g++)
        xs[g] = 0.0f;
}

typedef struct {
    const uint8_t *packed;
    const void *sc, *bi;
    nmlx_dtype sdt;
    size_t ses;
    int64_t row_bytes, G, NC, pf_rows;
} qd_w;

/* acc[r * M + t] += rows d..d+R-1 times token t's x over the 16-group
 * blocks [u0, u1); G128: group 128 (else 64). */
AVX512_INLINE void qd_rows(int R, int M, int G128, const qd_w *w, int64_t d, int64_t u0, int64_t u1,
                           const uint16_t *const *xb, const float *const *xs, __m512 *accp) {
    const __m512i lo4 = _mm512_set1_epi16(0x000F), e128 = _mm512_set1_epi16(0x4300);
    const int64_t CPU_ = G128 ? 16 : 8; /* chunks per 16-group block */
    __m512 acc[RB * MT];
#pragma GCC unroll 8
    for (int i = 0; i < R * M; i++)
        acc[i] = accp[i];
    const uint8_t *rows[RB];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
        rows[r] = w->packed + (d + r) * w->row_bytes;
    const int64_t pf = w->pf_rows * w->row_bytes;
    for (int64_t u = u0; u < u1; u++) {
        const int64_t g0 = 16 * u, ng = w->G - g0 < 16 ? w->G - g0 : 16;
        const __mmask16 gm = first_n(ng);
        __m512 S[RB];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const size_t gi = (size_t)((d + r) * w->G + g0);
            const size_t ga = (size_t)((d + r + w->pf_rows) * w->G + g0) * w->ses;
            _mm_prefetch((const char *)w->sc + ga, NMLX_PF_STREAM);
            _mm_prefetch((const char *)w->bi + ga, NMLX_PF_STREAM);
            S[r] = load16(w->sdt, w->sc, gi, gm);
            const __m512 bp =
                _mm512_fnmadd_ps(_mm512_set1_ps(128.0f), S[r], load16(w->sdt, w->bi, gi, gm));
#pragma GCC unroll 8
            for (int t = 0; t < M; t++)
                acc[r * M + t] = _mm512_fmadd_ps(bp, _mm512_loadu_ps(xs[t] + g0), acc[r * M + t]);
        }
        const int64_t c0 = u * CPU_, c1 = w->NC - c0 < CPU_ ? w->NC : c0 + CPU_;
        for (int64_t c = c0; c < c1; c++) {
            const int j = (int)(c - c0);
            const __m512i idx = G128 ? _mm512_set1_epi32(j)
                                     : _mm512_add_epi32(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1,
                                                                          1, 1, 1, 1, 1, 1, 1),
                                                        _mm512_set1_epi32(2 * j));
            /* the last chunk of a row of 64 * odd columns has 32 bytes */
            const __mmask64 bm =
                128 * c + 64 < w->row_bytes * 2 ? ~(__mmask64)0 : (__mmask64)0xFFFFFFFFu;
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                _mm_prefetch((const char *)rows[r] + pf + 64 * c, NMLX_PF_STREAM);
                const __m512i v = _mm512_maskz_loadu_epi8(bm, rows[r] + 64 * c);
                const __m512bh w0 = (__m512bh)_mm512_ternarylogic_epi32(v, lo4, e128, 0xEA);
                const __m512bh w1 =
                    (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 4), lo4, e128, 0xEA);
                const __m512bh w2 =
                    (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi16(v, 8), lo4, e128, 0xEA);
                const __m512bh w3 = (__m512bh)_mm512_or_si512(_mm512_srli_epi16(v, 12), e128);
                const __m512 scv = _mm512_permutexvar_ps(idx, S[r]);
#pragma GCC unroll 8
                for (int t = 0; t < M; t++) {
                    const uint16_t *xc = xb[t] + 128 * c;
                    __m512 s =
                        _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)_mm512_loadu_si512(xc), w0);
                    s = _mm512_dpbf16_ps(s, (__m512bh)_mm512_loadu_si512(xc + 32), w1);
                    s = _mm512_dpbf16_ps(s, (__m512bh)_mm512_loadu_si512(xc + 64), w2);
                    s = _mm512_dpbf16_ps(s, (__m512bh)_mm512_loadu_si512(xc + 96), w3);
                    acc[r * M + t] = _mm512_fmadd_ps(scv, s, acc[r * M + t]);
                }
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R * M; i++)
        accp[i] = acc[i];
}

typedef void (*qd_fn)(const qd_w *, int64_t, int64_t, int64_t, const uint16_t *const *,
                      const float *const *, __m512 *);
#define QD_FN(R, M, G128)                                                                          \
    static void qd_##R##_##M##_##G128(const qd_w *w, int64_t d, int64_t u0, int64_t u1,            \
                                      const uint16_t *const *xb, const float *const *xs,           \
                                      __m512 *acc) {                                               \
        qd_rows(R, M, G128, w, d, u0, u1, xb, xs, acc);                                            \
    }
/* clang-format off */
#define QD_FNS(G128)                                                                               \
    QD_FN(4, 1, G128) QD_FN(1, 1, G128) QD_FN(1, 2, G128) QD_FN(1, 3, G128) QD_FN(1, 4, G128)      \
    QD_FN(1, 5, G128) QD_FN(1, 6, G128) QD_FN(1, 7, G128) QD_FN(1, 8, G128)
QD_FNS(0) QD_FNS(1)
static const qd_fn qd_block[2] = {qd_4_1_0, qd_4_1_1};
static const qd_fn qd_tok[2][MT] = {
    {qd_1_1_0, qd_1_2_0, qd_1_3_0, qd_1_4_0, qd_1_5_0, qd_1_6_0, qd_1_7_0, qd_1_8_0},
    {qd_1_1_1, qd_1_2_1, qd_1_3_1, qd_1_4_1, qd_1_5_1, qd_1_6_1, qd_1_7_1, qd_1_8_1}};
/* clang-format on */

static qd_w qd_of(const nmlx_weight *w) {
    const int64_t row_bytes = w->cols / 2;
    int64_t pf_rows = (NMLX_QDEC_PF_BYTES + row_bytes - 1) / row_bytes;
    if (pf_rows < 8) pf_rows = 8;
    return (qd_w){.packed = (const uint8_t *)w->w.data,
                  .sc = w->scales.data,
                  .bi = w->biases.data,
                  .sdt = w->scales.dtype,
                  .ses = nmlx_dtype_size(w->scales.dtype),
                  .row_bytes = row_bytes,
                  .G = w->cols / w->group_size,
                  .NC = (w->cols + 127) / 128,
                  .pf_rows = pf_rows};
}

void nmlx_avx512bf16_quant_matvec(const nmlx_weight *w, const float *x, float *y, int64_t d0,
                                  int64_t d1) {
    const qd_w q = qd_of(w);
    const int g128 = w->group_size == 128;
    uint16_t xbuf[MV_NMAX] __attribute__((aligned(64)));
    float xsum[XS_MAX];
    nmlx_avx512bf16_quant_split_x(x, w->cols, w->group_size, xbuf, xsum);
    const uint16_t *xb[1] = {xbuf};
    const float *xs[1] = {xsum};
    const int64_t U = (q.G + 15) / 16;
    for (int64_t d = d0; d < d1;) {
        const int R = d1 - d >= RB ? RB : 1;
        __m512 acc[RB];
        for (int r = 0; r < R; r++)
            acc[r] = _mm512_setzero_ps();
        (R == RB ? qd_block[g128] : qd_tok[g128][0])(&q, d, 0, U, xb, xs, acc);
        for (int r = 0; r < R; r++)
            y[d + r] = _mm512_reduce_add_ps(acc[r]);
        d += R;
    }
}

bool nmlx_avx512bf16_quant_matmul_few(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                      int64_t d0, int64_t d1) {
    if (!nmlx_avx512bf16_matvec_ok(w) || T < 1 || T >= TMAX) return false;
    qd_w q = qd_of(w);
    q.pf_rows = FR; /* the next row block, at the same columns */
    const int g128 = w->group_size == 128;
    const int64_t N = w->cols, D = w->rows, U = (q.G + 15) / 16;
    uint16_t xbuf[XB_ELEMS] __attribute__((aligned(64)));
    float xsum[TMAX][XS_MAX];
    __m512 accv[FR][MT];
    /* tokens whose split x fits the stack buffer (all of them unless N is
     * large); one line past a multiple of 4 KiB apart: no L1 set sharing */
    const int64_t xstride = q.NC * 128 + 32;
    const int64_t tg = XB_ELEMS / xstride < T ? XB_ELEMS / xstride : T;
    for (int64_t t0 = 0; t0 < T; t0 += tg) {
        const int64_t m = T - t0 < tg ? T - t0 : tg;
        const uint16_t *xb[TMAX];
        const float *xs[TMAX];
        for (int64_t t = 0; t < m; t++) {
            nmlx_avx512bf16_quant_split_x(x + (t0 + t) * N, N, w->group_size, xbuf + t * xstride,
                                          xsum[t]);
            xb[t] = xbuf + t * xstride, xs[t] = xsum[t];
        }
        for (int64_t d = d0; d < d1; d += FR) {
            const int64_t nr = d1 - d < FR ? d1 - d : FR;
            for (int64_t t1 = 0; t1 < m;) {
                /* balanced tiles of at most MT tokens */
                const int64_t tiles = (m - t1 + MT - 1) / MT, mt = (m - t1 + tiles - 1) / tiles;
                for (int64_t r = 0; r < nr; r++)
                    for (int64_t t = 0; t < mt; t++)
                        accv[r][t] = _mm512_setzero_ps();
                /* one 16-group block of the tile's rows at a time: its x
                 * (all the tile's tokens) stays in L1 while the rows pass;
                 * each (row, token) accumulator carries over in accv */
                for (int64_t u = 0; u < U; u++)
                    for (int64_t r = 0; r < nr; r++)
                        qd_tok[g128][mt - 1](&q, d + r, u, u + 1, xb + t1, xs + t1, accv[r]);
                for (int64_t r = 0; r < nr; r++)
                    for (int64_t t = 0; t < mt; t++)
                        y[(t0 + t1 + t) * D + d + r] = _mm512_reduce_add_ps(accv[r][t]);
                t1 += mt;
            }
        }
    }
    return true;
}
