/* Few-token form of the AVX2 dense mat-vec (matmul_avx2.c, MATVEC):
 * W (D, N) f32/f16/bf16 @ x (T, N) -> y (T, D), rows [d0, d1),
 * 1 <= T < NMLX_CPU_FEW_TOKENS (a batched decode step). Each 16 columns of
 * a weight row are loaded and widened to f32 once and fed to every token.
 *
 * Bit for bit: each token's row equals the one-token mat-vec's (tests/
 * test_kernels.c): per row the lanes accumulate in the same order (a over
 * the first 8 of every 16 columns, b over the second 8, an 8-column tail
 * into a, hsum8(a + b), then the last N % 8 columns added one by one as
 * scalar products), which does not depend on how rows are grouped.
 * Compiled with -mavx2 -mfma -mf16c; only called after a cpuid check. */
#include "compute/cpu/cpu_internal.h"
#include "compute/cpu/simd_avx2.h"

#include <string.h>

enum {
    TT = 5,           /* tokens per tile (2 TT accumulators of 16 ymm) */
    PF_ROWS = 8,      /* prefetch distance in rows */
    RB = 4,           /* rows per block */
    KC = 256,         /* columns per block (a multiple of 16) */
    XP_FLOATS = 32768 /* x copies on the stack: 128 KiB */
};

/* 8 weights widened to f32, and one; DT: 0 f32, 1 f16, 2 bf16 */
AVX2_INLINE __m256 load_w(int DT, const void *w, int64_t k) {
    if (DT == 0) return _mm256_loadu_ps((const float *)w + k);
    return DT == 1 ? load8_f16((const uint16_t *)w + k) : load8_bf16((const uint16_t *)w + k);
}

AVX2_INLINE float scalar_w(int DT, const void *w, int64_t k) {
    if (DT == 0) return ((const float *)w)[k];
    return DT == 1 ? nmlx_f16_to_f32(((const uint16_t *)w)[k])
                   : nmlx_bf16_to_f32(((const uint16_t *)w)[k]);
}

/* One row d, M tokens (x rows of stride xs), columns [k0, k1): ab[t * 2 +
 * 0 / 1] holds a / b between calls; k1 == N finishes the row (tails, y). */
AVX2_INLINE void row_tok(int DT, int M, const void *W, int64_t N, int64_t xs, const float *x,
                         float *y, int64_t ys, int64_t d, int64_t d1, int64_t k0, int64_t k1,
                         __m256 *ab) {
    const char *w0 = (const char *)W + d * N * (DT == 0 ? 4 : 2);
    const int64_t n8 = N & ~(int64_t)7, pf = PF_ROWS * N * (DT == 0 ? 4 : 2);
    const bool do_pf = d + PF_ROWS < d1;
    __m256 a[TT], b[TT];
#pragma GCC unroll 5
    for (int t = 0; t < M; t++)
        a[t] = k0 ? ab[2 * t] : _mm256_setzero_ps(),
        b[t] = k0 ? ab[2 * t + 1] : _mm256_setzero_ps();
    int64_t k = k0;
    for (; k + 16 <= k1; k += 16) {
        if (do_pf) _mm_prefetch(w0 + pf + k * (DT == 0 ? 4 : 2), _MM_HINT_T1);
        const __m256 wa = load_w(DT, w0, k), wb = load_w(DT, w0, k + 8);
#pragma GCC unroll 5
        for (int t = 0; t < M; t++) {
            a[t] = _mm256_fmadd_ps(wa, _mm256_loadu_ps(x + t * xs + k), a[t]);
            b[t] = _mm256_fmadd_ps(wb, _mm256_loadu_ps(x + t * xs + k + 8), b[t]);
        }
    }
    if (k1 < N) { /* more column blocks to come */
#pragma GCC unroll 5
        for (int t = 0; t < M; t++)
            ab[2 * t] = a[t], ab[2 * t + 1] = b[t];
        return;
    }
    for (; k < n8; k += 8) {
        const __m256 wa = load_w(DT, w0, k);
#pragma GCC unroll 5
        for (int t = 0; t < M; t++)
            a[t] = _mm256_fmadd_ps(wa, _mm256_loadu_ps(x + t * xs + k), a[t]);
    }
#pragma GCC unroll 5
    for (int t = 0; t < M; t++) {
        const float *xt = x + t * xs;
        float s0 = hsum8(_mm256_add_ps(a[t], b[t]));
        for (int64_t j = n8; j < N; j++)
            s0 += scalar_w(DT, w0, j) * xt[j];
        y[t * ys + d] = s0;
    }
}

typedef void (*row_fn)(const void *, int64_t, int64_t, const float *, float *, int64_t, int64_t,
                       int64_t, int64_t, int64_t, __m256 *);
#define ROW_FN(DT, M)                                                                              \
    static void row_##DT##_##M(const void *W, int64_t N, int64_t xs, const float *x, float *y,     \
                               int64_t ys, int64_t d, int64_t d1, int64_t k0, int64_t k1,          \
                               __m256 *ab) {                                                       \
        row_tok(DT, M, W, N, xs, x, y, ys, d, d1, k0, k1, ab);                                     \
    }
/* clang-format off */
#define ROW_FNS(DT) ROW_FN(DT, 1) ROW_FN(DT, 2) ROW_FN(DT, 3) ROW_FN(DT, 4) ROW_FN(DT, 5)
ROW_FNS(0) ROW_FNS(1) ROW_FNS(2)
/* [dtype: f32, f16, bf16][tokens - 1] */
static const row_fn row_fns[3][TT] = {
    {row_0_1, row_0_2, row_0_3, row_0_4, row_0_5},
    {row_1_1, row_1_2, row_1_3, row_1_4, row_1_5},
    {row_2_1, row_2_2, row_2_3, row_2_4, row_2_5},
};
/* clang-format on */

bool nmlx_avx2_matmul_few(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                          int64_t d1) {
    if (w->mode != NMLX_QUANT_NONE) return nmlx_avx2_quant_matmul_few(w, x, y, T, d0, d1);
    if (T < 1) return false;
    const int kind = w->w.dtype == NMLX_DT_F32    ? 0
                     : w->w.dtype == NMLX_DT_F16  ? 1
                     : w->w.dtype == NMLX_DT_BF16 ? 2
                                                  : -1;
    /* bf16/f16 past 8 tokens: no faster than a mat-vec per token on Zen 4
     * (compute-bound either way; bench/batched_decode.md), so leave it */
    if (kind < 0 || (kind > 0 && T > 8)) return false;
    const int64_t N = w->cols, D = w->rows;
    __m256 ab[RB * NMLX_CPU_FEW_TOKENS * 2]; /* [row in block][token][a, b] */
    float xp[XP_FLOATS] __attribute__((aligned(32)));
    /* x copied into rows one 64-byte line past a multiple of 4 KiB apart (no
     * shared L1 sets); tokens whose copies fit stream the weights once */
    const int64_t xs = N + 16, tg = XP_FLOATS / xs < T ? XP_FLOATS / xs : T;
    if (tg < 1) return false;
    for (int64_t t0 = 0; t0 < T; t0 += tg) {
        const int64_t m = T - t0 < tg ? T - t0 : tg;
        for (int64_t t = 0; t < m; t++)
            memcpy(xp + t * xs, x + (t0 + t) * N, (size_t)N * sizeof(float));
        /* blocks of RB rows x KC columns: the tokens' x block stays in L1
         * while the rows pass; the last column block takes the tails */
        for (int64_t db = d0; db < d1; db += RB) {
            const int64_t db1 = d1 - db < RB ? d1 : db + RB;
            for (int64_t k0 = 0; k0 < N; k0 += KC) {
                const int64_t k1 = N - k0 <= KC + 15 ? N : k0 + KC;
                for (int64_t d = db; d < db1; d++)
                    for (int64_t t1 = 0; t1 < m;) {
                        /* balanced tiles of at most TT tokens */
                        const int64_t tiles = (m - t1 + TT - 1) / TT,
                                      mt = (m - t1 + tiles - 1) / tiles;
                        row_fns[kind][mt - 1](w->w.data, N, xs, xp + t1 * xs, y + (t0 + t1) * D, D,
                                              d, d1, k0, k1,
                                              ab + ((d - db) * NMLX_CPU_FEW_TOKENS + t1) * 2);
                        t1 += mt;
                    }
                if (k1 == N) break;
            }
        }
    }
    return true;
}
