/* AVX-512 quantized matmul for the avx512 kernel set (MLX affine 4/8-bit,
 * MXFP4; docs/quantization.md); other widths use the AVX2 kernels
 * (quant_avx2.c). Reference: nmlx_quant_dequant_row + the portable matmul.
 * Compiled with -mavx512f/bw/vl/dq; called after cpuid. All f32 arithmetic
 * (no int8 activations): results match the dequantized reference to f32
 * rounding (tests/test_quant_kernels.c).
 *
 * Decode, W (D, N) packed @ x (N,) -> y (D,), rows [d0, d1):
 *   y[d] = sum_g s[d,g] * (q[d,g,:] . x[g,:])  +  sum_g b[d,g] * xsum[g]
 * xsum[g] = sum(x[g,:]) is computed once per call, so the bias half is one
 * short vector FMA per row and the scale one FMA per group: each weight
 * costs an unpack, a convert and one FMA.
 * 4-bit: 16 bytes (32 codes) widen to 16 dword lanes; low nibbles are the
 * even elements, high nibbles the odd ones, so x is reordered once per call
 * into that even/odd ("planar") order. A 16-entry float table read by
 * vpermps (which looks at the low 4 bits of each lane only) turns codes into
 * floats without a mask: 0..15 for affine, the E2M1 values for MXFP4.
 * Four rows go together so each x load feeds four rows.
 *
 * Prefill (T >= FEW_TOKENS): dequantized k-major panels reused by register
 * tiles of tokens (see below); fewer tokens: the mat-vec per token. */
#include "compute/cpu/quant_avx512.h"

enum { CK = NMLX_QMV_CK, GMAX = CK / 32, RB = 4 }; /* columns per pass, groups per pass, rows per pass */

/* Prefetch distance in rows: while a block of rows is summed, the same
 * columns of the rows PF_ROWS further on (and their scales/biases) are
 * requested, so one thread keeps enough misses in flight. */
#ifndef NMLX_QMATVEC_PF_BYTES
#define NMLX_QMATVEC_PF_BYTES 4096
#endif
#ifndef NMLX_QMATVEC_PF_ROWS
#define NMLX_QMATVEC_PF_ROWS 8
#endif

/* out[r] = sum_g sc[r][g] * (q[r, g, :] . x[g, :]) over ng groups of GS, for
 * R rows of BITS-bit codes starting at rows[r]; xp is x in planar order for
 * 4 bits, plain for 8. */
AVX512_INLINE void rows_dot(int R, int BITS, int GS, const uint8_t *const *rows, bool lin, int64_t pf,
                            const float *xp, const float *sc, int64_t ng, __m512 lut,
                            __m512 *accp) {
    __m512 acc[RB];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) acc[r] = accp[r];
    for (int64_t g = 0; g < ng; g++) {
        __m512 ga[RB], gb[RB];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            ga[r] = _mm512_setzero_ps(), gb[r] = ga[r];
            _mm_prefetch(lin ? (const char *)rows[0] + pf + (g * R + r) * (GS * BITS / 8)
                             : (const char *)rows[r] + g * GS * BITS / 8 + pf,
                         NMLX_PF_STREAM);
        }
        if (BITS == 4) {
#pragma GCC unroll 4
            for (int j = 0; j < GS / 32; j++) {
                const int64_t c = g * (GS / 32) + j; /* 32-element chunk */
                __m512 x0 = _mm512_loadu_ps(xp + 32 * c), x1 = _mm512_loadu_ps(xp + 32 * c + 16);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    __m512i v = _mm512_cvtepu8_epi32(
                        _mm_loadu_si128((const __m128i *)(rows[r] + 16 * c)));
#ifdef NMLX_Q4_CVT
                    __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(15)));
                    __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
#else
                    __m512 lo = _mm512_permutexvar_ps(v, lut);
                    __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut);
#endif
                    ga[r] = _mm512_fmadd_ps(lo, x0, ga[r]);
                    gb[r] = _mm512_fmadd_ps(hi, x1, gb[r]);
                }
            }
        } else {
#pragma GCC unroll 8
            for (int j = 0; j < GS / 16; j++) {
                const int64_t c = g * (GS / 16) + j; /* 16-element chunk */
                __m512 xv = _mm512_loadu_ps(xp + 16 * c);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    __m512 q = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
                        _mm_loadu_si128((const __m128i *)(rows[r] + 16 * c))));
                    ga[r] = _mm512_fmadd_ps(q, xv, ga[r]); /* one chain: 4 rows interleave */
                }
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(sc[r * ng + g]),
                                     BITS == 4 ? _mm512_add_ps(ga[r], gb[r]) : ga[r], acc[r]);
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) accp[r] = acc[r];
}

typedef void (*rows_fn)(const uint8_t *const *, bool, int64_t, const float *, const float *, int64_t,
                        __m512, __m512 *);
#define ROWS_FN(R, BITS, GS)                                                                   \
    static void rows_##R##_##BITS##_##GS(const uint8_t *const *rows, bool lin, int64_t pf,      \
                                         const float *xp,                                      \
                                         const float *sc, int64_t ng, __m512 lut, __m512 *acc) { \
        rows_dot(R, BITS, GS, rows, lin, pf, xp, sc, ng, lut, acc);                                 \
    }
ROWS_FN(4, 4, 32) ROWS_FN(4, 4, 64) ROWS_FN(4, 4, 128)
ROWS_FN(1, 4, 32) ROWS_FN(1, 4, 64) ROWS_FN(1, 4, 128)
ROWS_FN(4, 8, 32) ROWS_FN(4, 8, 64) ROWS_FN(4, 8, 128)
ROWS_FN(1, 8, 32) ROWS_FN(1, 8, 64) ROWS_FN(1, 8, 128)

/* [bits == 8][gs index][R == 4] */
static const rows_fn rows_fns[2][3][2] = {
    {{rows_1_4_32, rows_4_4_32}, {rows_1_4_64, rows_4_4_64}, {rows_1_4_128, rows_4_4_128}},
    {{rows_1_8_32, rows_4_8_32}, {rows_1_8_64, rows_4_8_64}, {rows_1_8_128, rows_4_8_128}},
};

void nmlx_avx512f32_quant_matvec(const nmlx_weight *w, const float *x, float *y, int64_t d0,
                                 int64_t d1) {
    if (!fast_weight(w)) {
        nmlx_avx2_quant_matvec(w, x, y, d0, d1);
        return;
    }
    const int bits = w->bits, gs = w->group_size;
    const bool affine = w->mode == NMLX_QUANT_AFFINE;
    const int64_t N = w->cols, G = N / gs, row_bytes = nmlx_quant_row_words(N, bits) * 4;
    const uint8_t *packed = (const uint8_t *)w->w.data;
    float xp[CK] __attribute__((aligned(64)));
    float xsum[GMAX], sc[RB * GMAX], bi[RB * GMAX];
    float lut_f[16];
    for (unsigned c = 0; c < 16; c++) lut_f[c] = affine ? (float)c : nmlx_fp4_value(c);
    const __m512 lut = _mm512_loadu_ps(lut_f);
    const rows_fn *fns = rows_fns[bits == 8][gs == 32 ? 0 : gs == 64 ? 1 : 2];
    const int64_t pf = NMLX_QMATVEC_PF_ROWS * row_bytes;
    const size_t ses = nmlx_dtype_size(w->scales.dtype);

    for (int64_t d = d0; d < d1; d++) y[d] = 0.0f;
    for (int64_t c0 = 0; c0 < N; c0 += CK) {
        const int64_t nc = N - c0 < CK ? N - c0 : CK, ng = nc / gs;
        const float *xv = x + c0;
        if (bits == 4) {
            planar(x + c0, nc, xp);
            xv = xp;
        }
        if (affine) {
            for (int64_t g = 0; g < ng; g++) {
                __m512 a = _mm512_setzero_ps();
                for (int j = 0; j < gs; j += 16) a = _mm512_add_ps(a, _mm512_loadu_ps(x + c0 + g * gs + j));
                xsum[g] = _mm512_reduce_add_ps(a);
            }
        }
        for (int64_t d = d0; d < d1;) {
            const int R = d1 - d >= RB ? RB : 1;
            const uint8_t *rows[RB];
            __m512 acc[RB];
            /* scales/biases of the rows PF_ROWS ahead */
            for (int64_t o = 0; o < R * G * (int64_t)ses; o += 64) {
                size_t at = (size_t)((d + NMLX_QMATVEC_PF_ROWS) * G) * ses + (size_t)o;
                _mm_prefetch((const char *)w->scales.data + at, NMLX_PF_STREAM);
                if (affine) _mm_prefetch((const char *)w->biases.data + at, NMLX_PF_STREAM);
            }
            if (ng == G) { /* whole rows: the R rows' scales/biases are contiguous */
                load_f32s(w->scales.dtype, w->scales.data, (size_t)(d * G), R * G, sc);
                if (affine) load_f32s(w->biases.dtype, w->biases.data, (size_t)(d * G), R * G, bi);
            } else {
                for (int r = 0; r < R; r++) {
                    size_t gi = (size_t)((d + r) * G + c0 / gs);
                    load_f32s(w->scales.dtype, w->scales.data, gi, ng, sc + r * ng);
                    if (affine) load_f32s(w->biases.dtype, w->biases.data, gi, ng, bi + r * ng);
                }
            }
            for (int r = 0; r < R; r++) {
                rows[r] = packed + (d + r) * row_bytes + c0 * bits / 8;
                /* the bias half, folded into the accumulator */
                acc[r] = affine ? dot_lanes(bi + r * ng, xsum, ng) : _mm512_setzero_ps();
            }
            /* short whole rows (<= 1 KiB: too short for the hardware's
             * per-row streams): the block's rows are contiguous, so read
             * ahead linearly, NMLX_QMATVEC_PF_BYTES; longer rows: per row,
             * PF_ROWS rows ahead (bench_quant: each the faster there) */
            const bool lin = ng == G && row_bytes <= 1024;
            fns[R == RB](rows, lin, lin ? NMLX_QMATVEC_PF_BYTES : pf, xv, sc, ng, lut, acc);
            if (R == RB) {
                __m128 s4 = _mm_add_ps(hsum4x16(acc[0], acc[1], acc[2], acc[3]), _mm_loadu_ps(y + d));
                _mm_storeu_ps(y + d, s4);
            } else {
                y[d] += _mm512_reduce_add_ps(acc[0]);
            }
            d += R;
        }
    }
}

/* ------------------------------------------------------------ prefill */

/* Prefill (T > 1): y[t, d] = x[t, :] . W[d, :]. A panel of PR rows x PK
 * columns is dequantized once (f32, k-major: panel[k][PR], zero rows past
 * the end) and reused by every token: tiles of up to PT tokens x PR rows
 * keep 2*PT accumulators in registers, each FMA a broadcast x[t, k] times
 * 16 rows, so nothing is reduced horizontally (the panel, 32 KiB, stays
 * in L1/L2 while all tokens pass). */
#ifndef NMLX_QPANEL_NV
#define NMLX_QPANEL_NV 2
#endif
/* below FEW_TOKENS tokens the per-token mat-vec is cheaper (bench_quant:
 * ~25 ps per weight and token either way at 16 tokens, 5x less at 2) */
enum { FEW_TOKENS = 16, FEW_ROWS = 64 };
enum { NV = NMLX_QPANEL_NV, PR = 16 * NV, PK = 256, PT = 24 / NV }; /* PK: a multiple of every group size */

AVX512_INLINE void panel_tile(int M, const float *x, int64_t xs, const float *p, int64_t nk,
                              float *y, int64_t ys, const __mmask16 *m) {
    __m512 a[PT][NV];
#pragma GCC unroll 12
    for (int t = 0; t < M; t++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) a[t][v] = _mm512_setzero_ps();
    for (int64_t k = 0; k < nk; k++) {
        __m512 wv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) wv[v] = _mm512_load_ps(p + k * PR + 16 * v);
#pragma GCC unroll 12
        for (int t = 0; t < M; t++) {
            __m512 xb = _mm512_set1_ps(x[t * xs + k]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) a[t][v] = _mm512_fmadd_ps(xb, wv[v], a[t][v]);
        }
    }
#pragma GCC unroll 12
    for (int t = 0; t < M; t++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            float *yt = y + t * ys + 16 * v;
            _mm512_mask_storeu_ps(yt, m[v], _mm512_add_ps(_mm512_maskz_loadu_ps(m[v], yt), a[t][v]));
        }
}

typedef void (*panel_fn)(const float *, int64_t, const float *, int64_t, float *, int64_t,
                         const __mmask16 *);
#define PANEL_FN(M)                                                                            \
    static void panel_##M(const float *x, int64_t xs, const float *p, int64_t nk, float *y,    \
                          int64_t ys, const __mmask16 *m) {                                    \
        panel_tile(M < PT ? M : PT, x, xs, p, nk, y, ys, m);                                   \
    }
PANEL_FN(1) PANEL_FN(2) PANEL_FN(3) PANEL_FN(4) PANEL_FN(5) PANEL_FN(6)
PANEL_FN(7) PANEL_FN(8) PANEL_FN(9) PANEL_FN(10) PANEL_FN(11) PANEL_FN(12)
static const panel_fn panel_fns[12] = {panel_1, panel_2, panel_3, panel_4,  panel_5,  panel_6,
                                       panel_7, panel_8, panel_9, panel_10, panel_11, panel_12};

/* panel[k][r] = W[r0 + r, k0 + k] for r < nr, 0 for nr <= r < PR. */
static void fill_panel(const nmlx_weight *w, int64_t r0, int nr, int64_t k0, int64_t nk,
                       __m512 lut, float *panel) {
    float rows[16 * PK] __attribute__((aligned(64)));
    const bool fast = fast_weight(w);
    for (int h = 0; h < PR; h += 16) {
        for (int r = 0; r < 16; r++) {
            float *dst = rows + r * PK;
            if (h + r >= nr)
                memset(dst, 0, (size_t)nk * sizeof(float));
            else if (fast)
                dequant_seg(w, r0 + h + r, k0, nk, lut, dst);
            else
                nmlx_avx2_quant_row(w, r0 + h + r, k0, nk, dst);
        }
        for (int64_t k = 0; k < nk; k += 16) transpose16(rows + k, PK, panel + k * PR + h, PR);
    }
}

static void prefetch_panel(const nmlx_weight *w, int64_t r0, int nr, int64_t k0, int64_t nk) {
    const int64_t row_bytes = nmlx_quant_row_words(w->cols, w->bits) * 4, G = w->cols / w->group_size;
    const size_t ses = nmlx_dtype_size(w->scales.dtype);
    for (int r = 0; r < nr; r++) {
        const char *q = (const char *)w->w.data + (r0 + r) * row_bytes + k0 * w->bits / 8;
        for (int64_t o = 0; o < nk * w->bits / 8; o += 64) _mm_prefetch(q + o, _MM_HINT_T0);
        size_t gi = (size_t)((r0 + r) * G + k0 / w->group_size) * ses;
        _mm_prefetch((const char *)w->scales.data + gi, _MM_HINT_T0);
        if (w->mode == NMLX_QUANT_AFFINE) _mm_prefetch((const char *)w->biases.data + gi, _MM_HINT_T0);
    }
}

void nmlx_avx512f32_quant_matmat(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                 int64_t d0, int64_t d1) {
    const int64_t N = w->cols, D = w->rows;
    float panel[PK * PR] __attribute__((aligned(64)));
    float lut_f[16];
    for (unsigned c = 0; c < 16; c++)
        lut_f[c] = w->mode == NMLX_QUANT_AFFINE ? (float)c : nmlx_fp4_value(c);
    const __m512 lut = _mm512_loadu_ps(lut_f);
    for (int64_t t = 0; t < T; t++) memset(y + t * D + d0, 0, (size_t)(d1 - d0) * sizeof(float));
    for (int64_t r0 = d0; r0 < d1; r0 += PR) {
        const int nr = d1 - r0 < PR ? (int)(d1 - r0) : PR;
        __mmask16 m[NV];
        for (int v = 0; v < NV; v++) m[v] = first_n(nr > 16 * v ? nr - 16 * v : 0);
        for (int64_t k0 = 0; k0 < N; k0 += PK) {
            const int64_t nk = N - k0 < PK ? N - k0 : PK;
            fill_panel(w, r0, nr, k0, nk, lut, panel);
            /* the next panel's packed rows and scales come from DRAM: ask now */
            if (k0 + PK < N)
                prefetch_panel(w, r0, nr, k0 + PK, N - k0 - PK < PK ? N - k0 - PK : PK);
            else if (r0 + PR < d1)
                prefetch_panel(w, r0 + PR, d1 - r0 - PR < PR ? (int)(d1 - r0 - PR) : PR, 0,
                               N < PK ? N : PK);
            for (int64_t t = 0; t < T; t += PT) {
                const int64_t M = T - t < PT ? T - t : PT;
                panel_fns[M - 1](x + t * N + k0, N, panel, nk, y + t * D + r0, D, m);
            }
        }
    }
}

void nmlx_avx512_quant_matmul_rows(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                   int64_t d0, int64_t d1) {
    const nmlx_qbf16_pick pick = nmlx_qbf16_get_pick();
    if (T >= FEW_TOKENS) {
        /* (the integer-activation prefills are chosen before this, by the
         * backend's precision: cpu_ops.c) bf16 prefill: never for a flagged weight (the LM head); by default
         * only where it rounds x alone, MXFP4 (an fp4 value times a power of
         * two is exact in bf16): affine weights rounded too, or x rounded
         * alone in the f32 kernel, both flip fixture argmaxes (docs). */
        const bool bf = pick.prefill && !w->f32_input && w->cols % 32 == 0 &&
                        (w->mode == NMLX_QUANT_MXFP4 || pick.prefill_affine);
        if (bf)
            nmlx_avx512bf16_quant_matmat(w, x, y, T, d0, d1);
        else
            nmlx_avx512f32_quant_matmat(w, x, y, T, d0, d1);
        return;
    }
    const bool i16 = nmlx_qdec16_takes(&pick, w);
    const bool bf = !i16 && pick.matvec && nmlx_avx512bf16_matvec_ok(w);
    if (T == 1) { /* decode: one pass over the rows */
        if (i16)
            nmlx_avx512vnni_quant_matvec16(w, x, y, d0, d1);
        else if (bf)
            nmlx_avx512bf16_quant_matvec(w, x, y, d0, d1);
        else
            nmlx_avx512f32_quant_matvec(w, x, y, d0, d1);
        return;
    }
    /* few tokens (short prompts, MoE experts): a panel would be dequantized
     * for too little reuse; run the mat-vec per token over row blocks small
     * enough that the block's packed rows stay in cache across tokens;
     * quant_few_avx512.c's few-token kernels, where they take w, give the
     * same bits with each weight unpacked once */
    if (nmlx_avx512_quant_matmul_few(w, x, y, T, d0, d1)) return;
    for (int64_t b0 = d0; b0 < d1; b0 += FEW_ROWS) {
        const int64_t b1 = d1 - b0 < FEW_ROWS ? d1 : b0 + FEW_ROWS;
        for (int64_t t = 0; t < T; t++) {
            if (i16)
                nmlx_avx512vnni_quant_matvec16(w, x + t * w->cols, y + t * w->rows, b0, b1);
            else if (bf)
                nmlx_avx512bf16_quant_matvec(w, x + t * w->cols, y + t * w->rows, b0, b1);
            else
                nmlx_avx512f32_quant_matvec(w, x + t * w->cols, y + t * w->rows, b0, b1);
        }
    }
}
