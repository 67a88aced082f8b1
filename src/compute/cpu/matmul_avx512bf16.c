/* AVX512_BF16 decode mat-vec for bf16 weights:
 *   W (D, N) bf16 @ x (N,) f32 -> y (D,) f32, rows d0 <= d < d1.
 *
 * x is rounded to bf16 (round to nearest even) once per call into a stack
 * buffer, then each 64-byte line of a weight row feeds one vdpbf16ps (32
 * bf16 products, summed in pairs into 16 f32 lanes): no widening, so one
 * core keeps more DRAM lines in flight than the AVX2 widen-and-FMA loop.
 * This is the precision contract for bf16 checkpoints (activations rounded
 * to bf16 inside the matmul, as MLX does); f32 and f16 weights never come
 * here. Rows are streamed R at a time (R in {2, 4, 6, 8}) with one of
 * three prefetch schemes (none, PF bytes ahead in the row, or the same
 * columns one or two row groups ahead into L2). All variants give
 * bit-identical results (each row accumulates in the same order); the
 * default r8ng was the fastest or tied on Zen 4 (bench/cpu_decode.md),
 * NMLX_BF16_MATVEC=<name> picks another, `bench_kernels S variants` times
 * them all on the machine at hand.
 *
 * Compiled with -mavx512f/bw/vl/bf16; only called after a cpuid check. */
#include "compute/cpu/cpu_internal.h"

#include <immintrin.h>

/* bf16 vectors: a plain vector cast (gcc 12: short lanes, gcc 13+: __bf16). */
#define AS_BH(v) ((__m512bh)(v))

/* x[0, N) rounded to bf16 into xb, zero-padded to a multiple of 32. */
static void round_x(const float *x, int64_t N, uint16_t *xb) {
    int64_t k = 0;
    for (; k + 32 <= N; k += 32) {
        __m512 lo = _mm512_loadu_ps(x + k), hi = _mm512_loadu_ps(x + k + 16);
        _mm512_storeu_si512((void *)(xb + k), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
    if (k < N) {
        int64_t r = N - k;
        __mmask16 m0 = (__mmask16)(r >= 16 ? 0xffffu : (1u << r) - 1u);
        __mmask16 m1 = (__mmask16)(r > 16 ? (1u << (r - 16)) - 1u : 0u);
        __m512 lo = _mm512_maskz_loadu_ps(m0, x + k), hi = _mm512_maskz_loadu_ps(m1, x + k + 16);
        _mm512_storeu_si512((void *)(xb + k), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
}

/* Rows d..d+R-1 (R <= 8). pf > 0: prefetch each row pf bytes ahead into
 * L1; pf < 0: prefetch the same columns of the group of R rows -pf groups
 * ahead into L2 (so short rows do not start cold: rows are
 * contiguous, but R streams that each end after N/32 lines leave the
 * hardware prefetchers little time to ramp up); pf == 0: none. */
static inline __attribute__((always_inline)) void rows_R(int R, int64_t pf, const uint16_t *W,
                                                         int64_t N, const uint16_t *xb, float *y,
                                                         int64_t d, int64_t d1) {
    const uint16_t *w[8];
    __m512 a[8], b[8];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        w[r] = W + (d + r) * N;
        a[r] = _mm512_setzero_ps();
        b[r] = a[r];
    }
    int64_t k = 0;
    for (; k + 64 <= N; k += 64) {
        __m512i x0 = _mm512_loadu_si512((const void *)(xb + k));
        __m512i x1 = _mm512_loadu_si512((const void *)(xb + k + 32));
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            if (pf > 0) {
                _mm_prefetch((const char *)(w[r] + k) + pf, _MM_HINT_T0);
                _mm_prefetch((const char *)(w[r] + k) + pf + 64, _MM_HINT_T0);
            } else if (pf < 0 && d - pf * R + r < d1) {
                _mm_prefetch((const char *)(w[r] - pf * R * N + k), _MM_HINT_T1);
                _mm_prefetch((const char *)(w[r] - pf * R * N + k) + 64, _MM_HINT_T1);
            }
            a[r] = _mm512_dpbf16_ps(a[r], AS_BH(_mm512_loadu_si512((const void *)(w[r] + k))),
                                    AS_BH(x0));
            b[r] = _mm512_dpbf16_ps(b[r], AS_BH(_mm512_loadu_si512((const void *)(w[r] + k + 32))),
                                    AS_BH(x1));
        }
    }
    for (; k < N; k += 32) { /* xb is zero-padded: masked weight loads suffice */
        int64_t rem = N - k;
        __mmask32 m = rem >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << rem) - 1u);
        __m512i x0 = _mm512_loadu_si512((const void *)(xb + k));
#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
            a[r] = _mm512_dpbf16_ps(a[r], AS_BH(_mm512_maskz_loadu_epi16(m, w[r] + k)), AS_BH(x0));
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
        y[d + r] = _mm512_reduce_add_ps(_mm512_add_ps(a[r], b[r]));
}

#define VARIANT(R, PF)                                                                             \
    static void mv_##R##_##PF(const uint16_t *W, int64_t N, const uint16_t *xb, float *y,          \
                              int64_t d0, int64_t d1) {                                            \
        int64_t d = d0;                                                                            \
        for (; d + R <= d1; d += R)                                                                \
            rows_R(R, PF, W, N, xb, y, d, d1);                                                     \
        for (; d < d1; d++)                                                                        \
            rows_R(1, PF > 0 ? PF : 0, W, N, xb, y, d, d1);                                        \
    }
#define NG (-1)  /* next-group prefetch */
#define NG2 (-2) /* two groups ahead */
/* clang-format off */
VARIANT(2, 0) VARIANT(2, 1024) VARIANT(2, NG) VARIANT(2, NG2)
VARIANT(4, 0) VARIANT(4, 1024) VARIANT(4, NG) VARIANT(4, NG2)
VARIANT(6, 0) VARIANT(6, 1024) VARIANT(6, NG) VARIANT(6, NG2)
VARIANT(8, 0) VARIANT(8, 1024) VARIANT(8, NG) VARIANT(8, NG2)

typedef void (*mv_fn)(const uint16_t *, int64_t, const uint16_t *, float *, int64_t, int64_t);
/* clang-format on */
#define V(R, PF, NAME)                                                                             \
    { mv_##R##_##PF, NAME }
static const struct {
    mv_fn fn;
    const char *name;
} variants[] = {
    V(8, NG, "r8ng"), /* first = the default */
    V(2, 0, "r2pf0"), V(2, 1024, "r2pf1024"), V(2, NG, "r2ng"),   V(2, NG2, "r2ng2"),
    V(4, 0, "r4pf0"), V(4, 1024, "r4pf1024"), V(4, NG, "r4ng"),   V(4, NG2, "r4ng2"),
    V(6, 0, "r6pf0"), V(6, 1024, "r6pf1024"), V(6, NG, "r6ng"),   V(6, NG2, "r6ng2"),
    V(8, 0, "r8pf0"), V(8, 1024, "r8pf1024"), V(8, NG2, "r8ng2"),
};

int nmlx_avx512bf16_matvec_variants(void) { return (int)(sizeof variants / sizeof variants[0]); }

const char *nmlx_avx512bf16_matvec_name(int v) {
    return v >= 0 && v < nmlx_avx512bf16_matvec_variants() ? variants[v].name : "";
}

bool nmlx_avx512bf16_matvec(int variant, const uint16_t *W, int64_t N, const float *x, float *y,
                            int64_t d0, int64_t d1) {
    if (N > NMLX_BF16_MATVEC_MAX_N) return false;
    uint16_t xb[NMLX_BF16_MATVEC_MAX_N + 32] __attribute__((aligned(64)));
    if (variant < 0 || variant >= nmlx_avx512bf16_matvec_variants()) variant = 0;
    round_x(x, N, xb);
    variants[variant].fn(W, N, xb, y, d0, d1);
    return true;
}

/* ------------------------------------------------------------ few tokens */

/* The few-token form (1 <= T < NMLX_CPU_FEW_TOKENS, a batched decode
 * step): W (D, N) bf16 @ x (T, N) -> y (T, D), rows [d0, d1). Each 64-byte
 * line of a weight row is loaded once and fed to every token's vdpbf16ps;
 * per token and row the lanes accumulate exactly as rows_R does (a over
 * the first 32 columns of each 64, b over the second, the masked tail into
 * a, y = reduce(a + b)), so each row equals the one-token kernel's bit for
 * bit (every variant gives the same bits). R rows x M tokens share the
 * loads: 2 R M accumulators. */
enum {
    FEW_TT = 6,
    FEW_XB = 64 * 1024,
    FEW_PF = 8
}; /* tokens per tile; bf16 x on the stack (128 KiB); prefetch distance in rows */

static inline __attribute__((always_inline)) void rows_tok(int R, int M, const uint16_t *W,
                                                           int64_t N, int64_t xs,
                                                           const uint16_t *xb, float *y, int64_t ys,
                                                           int64_t d, int64_t d1) {
    const uint16_t *w[2];
    __m512 a[2][FEW_TT], b[2][FEW_TT];
#pragma GCC unroll 2
    for (int r = 0; r < R; r++) {
        w[r] = W + (d + r) * N;
#pragma GCC unroll 8
        for (int t = 0; t < M; t++)
            a[r][t] = _mm512_setzero_ps(), b[r][t] = a[r][t];
    }
    /* the same columns of the rows FEW_PF ahead into L2 (as the default
     * variant, which reads 8 rows at a time, does for the next 8) */
    const bool pf = d + FEW_PF + R <= d1;
    int64_t k = 0;
    for (; k + 64 <= N; k += 64) {
        __m512i w0[2], w1[2];
#pragma GCC unroll 2
        for (int r = 0; r < R; r++) {
            if (pf) {
                _mm_prefetch((const char *)(w[r] + FEW_PF * N + k), _MM_HINT_T1);
                _mm_prefetch((const char *)(w[r] + FEW_PF * N + k) + 64, _MM_HINT_T1);
            }
            w0[r] = _mm512_loadu_si512((const void *)(w[r] + k));
            w1[r] = _mm512_loadu_si512((const void *)(w[r] + k + 32));
        }
#pragma GCC unroll 8
        for (int t = 0; t < M; t++) {
            __m512i x0 = _mm512_loadu_si512((const void *)(xb + t * xs + k));
            __m512i x1 = _mm512_loadu_si512((const void *)(xb + t * xs + k + 32));
#pragma GCC unroll 2
            for (int r = 0; r < R; r++) {
                a[r][t] = _mm512_dpbf16_ps(a[r][t], AS_BH(w0[r]), AS_BH(x0));
                b[r][t] = _mm512_dpbf16_ps(b[r][t], AS_BH(w1[r]), AS_BH(x1));
            }
        }
    }
    for (; k < N; k += 32) {
        int64_t rem = N - k;
        __mmask32 m = rem >= 32 ? ~(__mmask32)0 : (__mmask32)((1u << rem) - 1u);
        __m512i w0[2];
#pragma GCC unroll 2
        for (int r = 0; r < R; r++)
            w0[r] = _mm512_maskz_loadu_epi16(m, w[r] + k);
#pragma GCC unroll 8
        for (int t = 0; t < M; t++) {
            __m512i x0 = _mm512_loadu_si512((const void *)(xb + t * xs + k));
#pragma GCC unroll 2
            for (int r = 0; r < R; r++)
                a[r][t] = _mm512_dpbf16_ps(a[r][t], AS_BH(w0[r]), AS_BH(x0));
        }
    }
#pragma GCC unroll 2
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int t = 0; t < M; t++)
            y[t * ys + d + r] = _mm512_reduce_add_ps(_mm512_add_ps(a[r][t], b[r][t]));
}

typedef void (*few_fn)(const uint16_t *, int64_t, int64_t, const uint16_t *, float *, int64_t,
                       int64_t, int64_t);
#define FEW_FN(R, M)                                                                               \
    static void few_##R##_##M(const uint16_t *W, int64_t N, int64_t xs, const uint16_t *xb,        \
                              float *y, int64_t ys, int64_t d, int64_t d1) {                       \
        rows_tok(R, M, W, N, xs, xb, y, ys, d, d1);                                                \
    }
/* clang-format off */
FEW_FN(1, 1) FEW_FN(1, 2) FEW_FN(1, 3) FEW_FN(1, 4) FEW_FN(1, 5) FEW_FN(1, 6)
FEW_FN(2, 1) FEW_FN(2, 2) FEW_FN(2, 3) FEW_FN(2, 4) FEW_FN(2, 5) FEW_FN(2, 6)
static const few_fn few_fns[2][FEW_TT] = {
    {few_1_1, few_1_2, few_1_3, few_1_4, few_1_5, few_1_6},
    {few_2_1, few_2_2, few_2_3, few_2_4, few_2_5, few_2_6},
};
/* clang-format on */

bool nmlx_avx512bf16_matvec_few(const uint16_t *W, int64_t N, int64_t D, const float *x, float *y,
                                int64_t T, int64_t d0, int64_t d1) {
    if (N > NMLX_BF16_MATVEC_MAX_N || T < 1) return false;
    uint16_t xb[FEW_XB] __attribute__((aligned(64)));
    /* round_x pads to 32; one more line keeps the tokens' rows off shared L1 sets */
    const int64_t xs = ((N + 31) & ~(int64_t)31) + 32;
    const int64_t tg = FEW_XB / xs < T ? FEW_XB / xs : T;
    for (int64_t t0 = 0; t0 < T; t0 += tg) {
        const int64_t m = T - t0 < tg ? T - t0 : tg;
        for (int64_t t = 0; t < m; t++)
            round_x(x + (t0 + t) * N, N, xb + t * xs);
        for (int64_t d = d0; d < d1;) {
            const int R = d1 - d >= 2 ? 2 : 1;
            for (int64_t t1 = 0; t1 < m;) {
                const int64_t tiles = (m - t1 + FEW_TT - 1) / FEW_TT,
                              mt = (m - t1 + tiles - 1) / tiles;
                few_fns[R - 1][mt - 1](W, N, xs, xb + t1 * xs, y + (t0 + t1) * D, D, d, d1);
                t1 += mt;
            }
            d += R;
        }
    }
    return true;
}

/* The avx512bf16 set's cpu_kernels.matmul_few: dense bf16 weights here
 * (as matvec_bf16 takes them), anything else as the avx512 set. */
bool nmlx_avx512bf16_matmul_few(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                int64_t d0, int64_t d1) {
    if (w->mode == NMLX_QUANT_NONE && w->w.dtype == NMLX_DT_BF16 &&
        nmlx_avx512bf16_matvec_few(w->w.data, w->cols, w->rows, x, y, T, d0, d1))
        return true;
    return nmlx_avx512_matmul_few(w, x, y, T, d0, d1);
}
