/* AVX2+FMA+F16C matmul: y[T, D] = x[T, N] @ W[D, N]^T for a range of rows.
 *
 * T == 1 (decode) is a mat-vec bound by memory bandwidth: stream 4 weight
 * rows at once, widening bf16/f16 to f32 in registers, sharing each x load.
 * T > 1 (prefill) is blocked so it is compute-bound: a block of RB weight
 * rows x KB columns is widened to f32 once (L1-resident) and reused for all
 * T tokens, in register tiles of 4 tokens x 3 rows (12 accumulators). */
#include "compute/cpu/cpu_internal.h"
#include "compute/cpu/simd_avx2.h"

#include <string.h>

enum { RB = 12, KB = 512 }; /* 24 KiB f32 weight block + 8 KiB x tile: L1 */

/* ------------------------------------------------------------- mat-vec */

/* Prefetch: each of the 4 rows streamed now also prefetches the same
 * columns of the row 4 ahead (the next group) into L2, so a group's rows
 * never start cold: rows of 1-3K columns end after a few dozen lines, too
 * soon for the hardware prefetchers to ramp up (measured on Zen 4: 1.3-2x
 * over a fixed 1 KiB look-ahead within the row; bench_kernels variants). */
#define PF_ROW(p, last)                                                                        \
    do {                                                                                       \
        if (!(last)) _mm_prefetch((const char *)((p) + 4 * N), _MM_HINT_T1);                   \
    } while (0)

#define MATVEC(NAME, WT, LOAD8)                                                                \
    static void NAME(const WT *W, int64_t N, const float *x, float *y, int64_t d0, int64_t d1) { \
        int64_t d = d0;                                                                        \
        const int64_t n8 = N & ~(int64_t)7, n16 = N & ~(int64_t)15;                            \
        for (; d + 4 <= d1; d += 4) {                                                          \
            const WT *w0 = W + d * N, *w1 = w0 + N, *w2 = w1 + N, *w3 = w2 + N;                \
            const bool last = d + 8 > d1;                                                      \
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                        \
            __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;                                         \
            int64_t k = 0;                                                                     \
            for (; k < n16; k += 16) {                                                         \
                PF_ROW(w0 + k, last);                                                          \
                PF_ROW(w1 + k, last);                                                          \
                PF_ROW(w2 + k, last);                                                          \
                PF_ROW(w3 + k, last);                                                          \
                __m256 xv = _mm256_loadu_ps(x + k), xw = _mm256_loadu_ps(x + k + 8);           \
                a0 = _mm256_fmadd_ps(LOAD8(w0 + k), xv, a0);                                   \
                a1 = _mm256_fmadd_ps(LOAD8(w1 + k), xv, a1);                                   \
                a2 = _mm256_fmadd_ps(LOAD8(w2 + k), xv, a2);                                   \
                a3 = _mm256_fmadd_ps(LOAD8(w3 + k), xv, a3);                                   \
                b0 = _mm256_fmadd_ps(LOAD8(w0 + k + 8), xw, b0);                               \
                b1 = _mm256_fmadd_ps(LOAD8(w1 + k + 8), xw, b1);                               \
                b2 = _mm256_fmadd_ps(LOAD8(w2 + k + 8), xw, b2);                               \
                b3 = _mm256_fmadd_ps(LOAD8(w3 + k + 8), xw, b3);                               \
            }                                                                                  \
            for (; k < n8; k += 8) {                                                           \
                __m256 xv = _mm256_loadu_ps(x + k);                                            \
                a0 = _mm256_fmadd_ps(LOAD8(w0 + k), xv, a0);                                   \
                a1 = _mm256_fmadd_ps(LOAD8(w1 + k), xv, a1);                                   \
                a2 = _mm256_fmadd_ps(LOAD8(w2 + k), xv, a2);                                   \
                a3 = _mm256_fmadd_ps(LOAD8(w3 + k), xv, a3);                                   \
            }                                                                                  \
            float s0 = hsum8(_mm256_add_ps(a0, b0)), s1 = hsum8(_mm256_add_ps(a1, b1));        \
            float s2 = hsum8(_mm256_add_ps(a2, b2)), s3 = hsum8(_mm256_add_ps(a3, b3));        \
            for (; k < N; k++) {                                                               \
                s0 += scalar_##NAME(w0[k]) * x[k];                                             \
                s1 += scalar_##NAME(w1[k]) * x[k];                                             \
                s2 += scalar_##NAME(w2[k]) * x[k];                                             \
                s3 += scalar_##NAME(w3[k]) * x[k];                                             \
            }                                                                                  \
            y[d] = s0, y[d + 1] = s1, y[d + 2] = s2, y[d + 3] = s3;                            \
        }                                                                                      \
        for (; d < d1; d++) {                                                                  \
            const WT *w0 = W + d * N;                                                          \
            __m256 a0 = _mm256_setzero_ps(), a1 = a0;                                          \
            int64_t k = 0;                                                                     \
            for (; k < n16; k += 16) {                                                         \
                a0 = _mm256_fmadd_ps(LOAD8(w0 + k), _mm256_loadu_ps(x + k), a0);               \
                a1 = _mm256_fmadd_ps(LOAD8(w0 + k + 8), _mm256_loadu_ps(x + k + 8), a1);       \
            }                                                                                  \
            for (; k < n8; k += 8) a0 = _mm256_fmadd_ps(LOAD8(w0 + k), _mm256_loadu_ps(x + k), a0); \
            float s0 = hsum8(_mm256_add_ps(a0, a1));                                           \
            for (; k < N; k++) s0 += scalar_##NAME(w0[k]) * x[k];                              \
            y[d] = s0;                                                                         \
        }                                                                                      \
    }

static inline float scalar_matvec_f32(float v) { return v; }
static inline float scalar_matvec_f16(uint16_t v) { return nmlx_f16_to_f32(v); }
static inline float scalar_matvec_bf16(uint16_t v) { return nmlx_bf16_to_f32(v); }
#define LOAD8_F32(p) _mm256_loadu_ps(p)

MATVEC(matvec_f32, float, LOAD8_F32)
MATVEC(matvec_f16, uint16_t, load8_f16)
MATVEC(matvec_bf16, uint16_t, load8_bf16)

/* ------------------------------------------------------------- mat-mat */

/* Widens W[r0:r0+nr, k0:k0+nk] to f32 rows of stride KB. */
static void widen_block(const nmlx_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk,
                        float *blk) {
    const int64_t N = w->cols;
    if (w->mode != NMLX_QUANT_NONE) { /* quantized: one block dequantized, quant_avx2.c */
        for (int64_t r = 0; r < nr; r++) nmlx_avx2_quant_row(w, r0 + r, k0, nk, blk + r * KB);
        return;
    }
    for (int64_t r = 0; r < nr; r++) {
        float *dst = blk + r * KB;
        int64_t k = 0;
        if (w->w.dtype == NMLX_DT_F32) {
            memcpy(dst, (const float *)w->w.data + (r0 + r) * N + k0, (size_t)nk * sizeof(float));
        } else if (w->w.dtype == NMLX_DT_BF16) {
            const uint16_t *src = (const uint16_t *)w->w.data + (r0 + r) * N + k0;
            for (; k + 8 <= nk; k += 8) _mm256_storeu_ps(dst + k, load8_bf16(src + k));
            for (; k < nk; k++) dst[k] = nmlx_bf16_to_f32(src[k]);
        } else {
            const uint16_t *src = (const uint16_t *)w->w.data + (r0 + r) * N + k0;
            for (; k + 8 <= nk; k += 8) _mm256_storeu_ps(dst + k, load8_f16(src + k));
            for (; k < nk; k++) dst[k] = nmlx_f16_to_f32(src[k]);
        }
    }
}

/* y[t, r] += sum_k x[t, k] * w[r, k] for MT tokens x MR rows over nk columns.
 * Instantiated with constant MT/MR so the accumulators live in registers. */
static inline __attribute__((always_inline)) void tile(int MT, int MR, const float *x, int64_t xs,
                                                       const float *w, int64_t ws, float *y,
                                                       int64_t ys, int64_t nk) {
    __m256 acc[4][3];
#pragma GCC unroll 4
    for (int t = 0; t < MT; t++)
#pragma GCC unroll 3
        for (int r = 0; r < MR; r++) acc[t][r] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= nk; k += 8) {
        __m256 wv[3];
#pragma GCC unroll 3
        for (int r = 0; r < MR; r++) wv[r] = _mm256_loadu_ps(w + r * ws + k);
#pragma GCC unroll 4
        for (int t = 0; t < MT; t++) {
            __m256 xv = _mm256_loadu_ps(x + t * xs + k);
#pragma GCC unroll 3
            for (int r = 0; r < MR; r++) acc[t][r] = _mm256_fmadd_ps(xv, wv[r], acc[t][r]);
        }
    }
    if (k < nk) {
        __m256i m = tail_mask(nk - k);
        __m256 wv[3];
#pragma GCC unroll 3
        for (int r = 0; r < MR; r++) wv[r] = _mm256_maskload_ps(w + r * ws + k, m);
#pragma GCC unroll 4
        for (int t = 0; t < MT; t++) {
            __m256 xv = _mm256_maskload_ps(x + t * xs + k, m);
#pragma GCC unroll 3
            for (int r = 0; r < MR; r++) acc[t][r] = _mm256_fmadd_ps(xv, wv[r], acc[t][r]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < MT; t++)
#pragma GCC unroll 3
        for (int r = 0; r < MR; r++) y[t * ys + r] += hsum8(acc[t][r]);
}

#define TILE_FN(MT, MR)                                                                        \
    static void tile_##MT##x##MR(const float *x, int64_t xs, const float *w, int64_t ws,       \
                                 float *y, int64_t ys, int64_t nk) {                           \
        tile(MT, MR, x, xs, w, ws, y, ys, nk);                                                 \
    }
TILE_FN(4, 3) TILE_FN(4, 2) TILE_FN(4, 1)
TILE_FN(3, 3) TILE_FN(3, 2) TILE_FN(3, 1)
TILE_FN(2, 3) TILE_FN(2, 2) TILE_FN(2, 1)
TILE_FN(1, 3) TILE_FN(1, 2) TILE_FN(1, 1)

typedef void (*tile_fn)(const float *, int64_t, const float *, int64_t, float *, int64_t, int64_t);
static const tile_fn tiles[4][3] = {
    {tile_1x1, tile_1x2, tile_1x3},
    {tile_2x1, tile_2x2, tile_2x3},
    {tile_3x1, tile_3x2, tile_3x3},
    {tile_4x1, tile_4x2, tile_4x3},
};

static void matmat(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                   int64_t d1) {
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
                for (int64_t r = 0; r < nr; r += 3) {
                    int64_t mr = nr - r < 3 ? nr - r : 3;
                    tiles[mt - 1][mr - 1](x + t * N + k0, N, wb + r * ws, ws, y + t * D + r0 + r,
                                          D, nk);
                }
            }
        }
    }
}

void nmlx_avx2_matmul_rows(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                           int64_t d1);
void nmlx_avx2_matmul_rows(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                           int64_t d1) {
    if (T > 1) {
        matmat(w, x, y, T, d0, d1);
        return;
    }
    if (w->mode != NMLX_QUANT_NONE) {
        nmlx_avx2_quant_matvec(w, x, y, d0, d1);
        return;
    }
    switch (w->w.dtype) {
    case NMLX_DT_F32: matvec_f32(w->w.data, w->cols, x, y, d0, d1); break;
    case NMLX_DT_F16: matvec_f16(w->w.data, w->cols, x, y, d0, d1); break;
    case NMLX_DT_BF16: matvec_bf16(w->w.data, w->cols, x, y, d0, d1); break;
    default: break;
    }
}
