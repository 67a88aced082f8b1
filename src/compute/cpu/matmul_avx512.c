/* AVX-512 prefill matmul (T > 1): the AVX2 blocked scheme with 16-wide
 * vectors and 4 tokens x 4 rows register tiles (16 of the 32 zmm registers
 * hold accumulators). Decode (T == 1) is memory-bound and uses the AVX2
 * mat-vec. Compiled with -mavx512f/bw/vl/dq -mfma -mf16c; only called after
 * a cpuid check. */
#include "compute/cpu/cpu_internal.h"

#include <immintrin.h>
#include <string.h>

void nmlx_avx2_matmul_rows(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                           int64_t d1);
void nmlx_avx512_matmul_rows(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                             int64_t d1);

enum { RB = 16, KB = 384 }; /* 24 KiB f32 weight block + 6 KiB x tile: L1 */

static void widen_block(const nmlx_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk,
                        float *blk) {
    const int64_t N = w->cols;
    if (w->mode != NMLX_QUANT_NONE) { /* quantized: one block dequantized, quant_avx2.c */
        for (int64_t r = 0; r < nr; r++) nmlx_avx2_quant_row(w, r0 + r, k0, nk, blk + r * KB);
        return;
    }
    const bool bf16 = w->w.dtype == NMLX_DT_BF16;
    if (w->w.dtype == NMLX_DT_F32) {
        for (int64_t r = 0; r < nr; r++)
            memcpy(blk + r * KB, (const float *)w->w.data + (r0 + r) * N + k0,
                   (size_t)nk * sizeof(float));
        return;
    }
    for (int64_t r = 0; r < nr; r++) {
        float *dst = blk + r * KB;
        const uint16_t *src = (const uint16_t *)w->w.data + (r0 + r) * N + k0;
        int64_t k = 0;
        for (; k + 16 <= nk; k += 16) {
            __m256i h = _mm256_loadu_si256((const __m256i *)(src + k));
            __m512 v = bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                            : _mm512_cvtph_ps(h);
            _mm512_storeu_ps(dst + k, v);
        }
        for (; k < nk; k++) dst[k] = bf16 ? nmlx_bf16_to_f32(src[k]) : nmlx_f16_to_f32(src[k]);
    }
}

static inline __attribute__((always_inline)) void tile(int MT, int MR, const float *x, int64_t xs,
                                                       const float *w, int64_t ws, float *y,
                                                       int64_t ys, int64_t nk) {
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int t = 0; t < MT; t++)
#pragma GCC unroll 4
        for (int r = 0; r < MR; r++) acc[t][r] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= nk; k += 16) {
        __m512 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < MR; r++) wv[r] = _mm512_loadu_ps(w + r * ws + k);
#pragma GCC unroll 4
        for (int t = 0; t < MT; t++) {
            __m512 xv = _mm512_loadu_ps(x + t * xs + k);
#pragma GCC unroll 4
            for (int r = 0; r < MR; r++) acc[t][r] = _mm512_fmadd_ps(xv, wv[r], acc[t][r]);
        }
    }
    if (k < nk) {
        __mmask16 m = (__mmask16)((1u << (nk - k)) - 1u);
        __m512 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < MR; r++) wv[r] = _mm512_maskz_loadu_ps(m, w + r * ws + k);
#pragma GCC unroll 4
        for (int t = 0; t < MT; t++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + t * xs + k);
#pragma GCC unroll 4
            for (int r = 0; r < MR; r++) acc[t][r] = _mm512_fmadd_ps(xv, wv[r], acc[t][r]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < MT; t++)
#pragma GCC unroll 4
        for (int r = 0; r < MR; r++) y[t * ys + r] += _mm512_reduce_add_ps(acc[t][r]);
}

#define TILE_FN(MT, MR)                                                                        \
    static void tile_##MT##x##MR(const float *x, int64_t xs, const float *w, int64_t ws,       \
                                 float *y, int64_t ys, int64_t nk) {                           \
        tile(MT, MR, x, xs, w, ws, y, ys, nk);                                                 \
    }
TILE_FN(4, 4) TILE_FN(4, 3) TILE_FN(4, 2) TILE_FN(4, 1)
TILE_FN(3, 4) TILE_FN(3, 3) TILE_FN(3, 2) TILE_FN(3, 1)
TILE_FN(2, 4) TILE_FN(2, 3) TILE_FN(2, 2) TILE_FN(2, 1)
TILE_FN(1, 4) TILE_FN(1, 3) TILE_FN(1, 2) TILE_FN(1, 1)

typedef void (*tile_fn)(const float *, int64_t, const float *, int64_t, float *, int64_t, int64_t);
static const tile_fn tiles[4][4] = {
    {tile_1x1, tile_1x2, tile_1x3, tile_1x4},
    {tile_2x1, tile_2x2, tile_2x3, tile_2x4},
    {tile_3x1, tile_3x2, tile_3x3, tile_3x4},
    {tile_4x1, tile_4x2, tile_4x3, tile_4x4},
};

void nmlx_avx512_matmul_rows(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                             int64_t d1) {
    if (w->mode != NMLX_QUANT_NONE) { /* quantized: quant_avx512.c */
        nmlx_avx512_quant_matmul_rows(w, x, y, T, d0, d1);
        return;
    }
    if (T == 1) {
        nmlx_avx2_matmul_rows(w, x, y, T, d0, d1);
        return;
    }
    const int64_t N = w->cols, D = w->rows;
    float blk[RB * KB] __attribute__((aligned(64)));
    for (int64_t t = 0; t < T; t++) memset(y + t * D + d0, 0, (size_t)(d1 - d0) * sizeof(float));
    for (int64_t r0 = d0; r0 < d1; r0 += RB) {
        int64_t nr = d1 - r0 < RB ? d1 - r0 : RB;
        for (int64_t k0 = 0; k0 < N; k0 += KB) {
            int64_t nk = N - k0 < KB ? N - k0 : KB;
            const float *wb;
            int64_t ws;
            widen_block(w, r0, nr, k0, nk, blk); /* f32 too: a compact L1 block */
            wb = blk;
            ws = KB;
            for (int64_t t = 0; t < T; t += 4) {
                int64_t mt = T - t < 4 ? T - t : 4;
                for (int64_t r = 0; r < nr; r += 4) {
                    int64_t mr = nr - r < 4 ? nr - r : 4;
                    tiles[mt - 1][mr - 1](x + t * N + k0, N, wb + r * ws, ws, y + t * D + r0 + r,
                                          D, nk);
                }
            }
        }
    }
}
