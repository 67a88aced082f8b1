/* AVX512_BF16 quantized matmuls (the avx512 kernel set uses them where the
 * CPU has AVX512_BF16 and a one-time measurement finds them faster; see
 * nmlx_qbf16_get_pick). Reference: nmlx_quant_dequant_row + the portable
 * matmul; tests/test_quant_kernels.c checks both kernels here against it.
 *
 * Precision (docs/quantization.md): activations are rounded to bf16 inside
 * the matmul, as MLX does with bf16 activations; products are exact in f32
 * and summed in f32.
 *
 * Prefill, W (D, N) @ x (T, N) -> y (T, D), rows [d0, d1): blocks of 4
 * panels x 32 rows x 256 columns are dequantized once (f32, rounded to
 * bf16) into k-pair-major panels, panel[k/2][r][2]; x is rounded to bf16 per
 * block of 96 tokens x 256 columns; tiles of 12 tokens x 32 rows keep 24
 * accumulators, each `vdpbf16ps` a broadcast pair x[t, k..k+1] times 16
 * rows' pairs (32 multiply-adds: twice the f32 FMA's). The weights are
 * rounded to bf16 too (relative 2^-9), well inside the precision contract.
 *
 * Decode, affine 4-bit (group 64 or 128): y[d] = sum_g s (q . x) + b sum(x).
 * 32 packed bytes (64 codes) widen to 32 words; a code OR 0x4300 is the
 * bf16 of 128 + q, so one `vpternlogd` (low nibble) or a shift and an OR
 * (high nibble) make the weights, and two `vdpbf16ps` sum 64 products:
 * sum x (128 + q) = 128 sum(x) + q . x, so the bias term becomes
 * (b - 128 s) sum(x) with sum(x) over the bf16-rounded x. Low nibbles are
 * the even elements, high nibbles the odd ones: x is split once per call
 * into that order. */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#pragma GCC target("avx512bf16")
#include "compute/cpu/matmul_amx.h"
#include "compute/cpu/pick_cache.h"
#include "compute/cpu/quant_avx512.h"
#include "common.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

/* ------------------------------------------------------------ prefill */

enum {
    BR = 32,  /* rows per panel */
    BK = 256, /* columns per panel (a multiple of every group size) */
    BP = 4,   /* panels dequantized together (128 rows) */
    BMC = 96, /* tokens rounded to bf16 together */
    BT = 12   /* tokens per register tile */
};

/* y[t, 0..32) += x[t, 0..2nkp) . panel rows, t < M; m masks the valid rows */
AVX512_INLINE void bf_tile(int M, const uint16_t *xb, const uint32_t *p, int64_t nkp, float *y,
                           int64_t ys, const __mmask16 *m) {
    __m512 a[BT][2];
#pragma GCC unroll 12
    for (int t = 0; t < M; t++)
        a[t][0] = _mm512_setzero_ps(), a[t][1] = a[t][0];
    for (int64_t kp = 0; kp < nkp; kp++) {
        const __m512bh w0 = (__m512bh)_mm512_load_si512(p + kp * BR);
        const __m512bh w1 = (__m512bh)_mm512_load_si512(p + kp * BR + 16);
#pragma GCC unroll 12
        for (int t = 0; t < M; t++) {
            int32_t pair;
            memcpy(&pair, xb + t * BK + 2 * kp, sizeof pair);
            const __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
            a[t][0] = _mm512_dpbf16_ps(a[t][0], xv, w0);
            a[t][1] = _mm512_dpbf16_ps(a[t][1], xv, w1);
        }
    }
#pragma GCC unroll 12
    for (int t = 0; t < M; t++)
        for (int v = 0; v < 2; v++) {
            float *yt = y + t * ys + 16 * v;
            _mm512_mask_storeu_ps(yt, m[v],
                                  _mm512_add_ps(_mm512_maskz_loadu_ps(m[v], yt), a[t][v]));
        }
}

typedef void (*bf_tile_fn)(const uint16_t *, const uint32_t *, int64_t, float *, int64_t,
                           const __mmask16 *);
#define BF_TILE_FN(M)                                                                              \
    static void bf_tile_##M(const uint16_t *xb, const uint32_t *p, int64_t nkp, float *y,          \
                            int64_t ys, const __mmask16 *m) {                                      \
        bf_tile(M, xb, p, nkp, y, ys, m);                                                          \
    }
BF_TILE_FN(1)
BF_TILE_FN(2)
BF_TILE_FN(3)
BF_TILE_FN(4)
BF_TILE_FN(5)
BF_TILE_FN(6)
BF_TILE_FN(7)
BF_TILE_FN(8)
BF_TILE_FN(9)
BF_TILE_FN(10)
BF_TILE_FN(11) BF_TILE_FN(12) static const bf_tile_fn bf_tiles[BT] = {
    bf_tile_1, bf_tile_2, bf_tile_3, bf_tile_4,  bf_tile_5,  bf_tile_6,
    bf_tile_7, bf_tile_8, bf_tile_9, bf_tile_10, bf_tile_11, bf_tile_12};

/* dst[0..n/2) = bf16 pairs of src[0..n), n % 32 == 0 */
static inline void to_bf16(const float *src, int64_t n, uint16_t *dst) {
    for (int64_t k = 0; k < n; k += 32) {
        __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + k + 16), _mm512_loadu_ps(src + k));
        _mm512_storeu_si512(dst + k, (__m512i)v);
    }
}

/* panel[kp][r] = bf16 pair W[r0 + r, k0 + 2kp .. +1] for r < nr, 0 for
 * nr <= r < BR; nk % 32 == 0. */
static void fill_panel_bf16(const nmlx_weight *w, int64_t r0, int nr, int64_t k0, int64_t nk,
                            __m512 lut, uint32_t *panel) {
    float row[BK] __attribute__((aligned(64)));
    uint16_t rb[16 * BK] __attribute__((aligned(64)));
    const bool fast = fast_weight(w);
    for (int h = 0; h < BR; h += 16) {
        for (int r = 0; r < 16; r++) {
            uint16_t *dst = rb + r * BK;
            if (h + r >= nr) {
                memset(dst, 0, (size_t)nk * sizeof *dst);
                continue;
            }
            if (fast)
                dequant_seg(w, r0 + h + r, k0, nk, lut, row);
            else
                nmlx_avx2_quant_row(w, r0 + h + r, k0, nk, row);
            to_bf16(row, nk, dst);
        }
        /* rows of 32-bit pairs -> pair-major: a 16x16 transpose of 32-bit lanes */
        for (int64_t kp = 0; kp < nk / 2; kp += 16)
            transpose16((const float *)(const void *)(rb + 2 * kp), BK / 2,
                        (float *)(void *)(panel + kp * BR + h), BR);
    }
}

/* The same from a dense bf16 W (copied, exact): nk % 32 == 0. */
static void fill_panel_dense(const nmlx_weight *w, int64_t r0, int nr, int64_t k0, int64_t nk,
                             uint32_t *panel) {
    uint16_t rb[16 * BK] __attribute__((aligned(64)));
    const uint16_t *W = (const uint16_t *)w->w.data;
    for (int h = 0; h < BR; h += 16) {
        for (int r = 0; r < 16; r++) {
            uint16_t *dst = rb + r * BK;
            if (h + r >= nr)
                memset(dst, 0, (size_t)nk * sizeof *dst);
            else
                memcpy(dst, W + (r0 + h + r) * w->cols + k0, (size_t)nk * sizeof *dst);
        }
        for (int64_t kp = 0; kp < nk / 2; kp += 16)
            transpose16((const float *)(const void *)(rb + 2 * kp), BK / 2,
                        (float *)(void *)(panel + kp * BR + h), BR);
    }
}

/* Requests part `part` of `parts` of the packed rows [r0, r0 + nr), columns
 * [k0, k0 + nk), and their scales/biases: the next block, read from DRAM
 * while the current one is multiplied. */
static void prefetch_block(const nmlx_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk,
                           int64_t part, int64_t parts) {
    if (w->mode == NMLX_QUANT_NONE) { /* dense bf16 */
        for (int64_t r = r0 + nr * part / parts; r < r0 + nr * (part + 1) / parts; r++)
            for (int64_t o = 0; o < nk * 2; o += 64)
                _mm_prefetch((const char *)w->w.data + (r * w->cols + k0) * 2 + o, _MM_HINT_T0);
        return;
    }
    const int64_t row_bytes = nmlx_quant_row_words(w->cols, w->bits) * 4,
                  G = w->cols / w->group_size;
    const int64_t seg = nk * w->bits / 8;
    const size_t ses = nmlx_dtype_size(w->scales.dtype);
    for (int64_t r = r0 + nr * part / parts; r < r0 + nr * (part + 1) / parts; r++) {
        const char *q = (const char *)w->w.data + r * row_bytes + k0 * w->bits / 8;
        for (int64_t o = 0; o < seg; o += 64)
            _mm_prefetch(q + o, _MM_HINT_T0);
        size_t gi = (size_t)(r * G + k0 / w->group_size) * ses;
        _mm_prefetch((const char *)w->scales.data + gi, _MM_HINT_T0);
        if (w->mode == NMLX_QUANT_AFFINE)
            _mm_prefetch((const char *)w->biases.data + gi, _MM_HINT_T0);
    }
}

/* A quantized W (dequantized and rounded to bf16) or a dense bf16 one
 * (exact) times x rounded to bf16. */
void nmlx_avx512bf16_quant_matmat(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                  int64_t d0, int64_t d1) {
    const int64_t N = w->cols, D = w->rows;
    const bool dense = w->mode == NMLX_QUANT_NONE;
    uint32_t wp[BP][BK / 2 * BR] __attribute__((aligned(64)));
    uint16_t xb[BMC * BK] __attribute__((aligned(64)));
    float lut_f[16];
    for (unsigned c = 0; c < 16; c++)
        lut_f[c] = w->mode == NMLX_QUANT_MXFP4 ? nmlx_fp4_value(c) : (float)c;
    const __m512 lut = _mm512_loadu_ps(lut_f);
    for (int64_t t = 0; t < T; t++)
        memset(y + t * D + d0, 0, (size_t)(d1 - d0) * sizeof(float));
    for (int64_t jc = d0; jc < d1; jc += BP * BR) {
        const int64_t nrb = d1 - jc < BP * BR ? d1 - jc : BP * BR;
        const int np = (int)((nrb + BR - 1) / BR);
        for (int64_t k0 = 0; k0 < N; k0 += BK) {
            const int64_t nk = N - k0 < BK ? N - k0 : BK;
            for (int p = 0; p < np; p++) {
                const int64_t left = nrb - (int64_t)p * BR;
                if (dense)
                    fill_panel_dense(w, jc + p * BR, left < BR ? (int)left : BR, k0, nk, wp[p]);
                else
                    fill_panel_bf16(w, jc + p * BR, left < BR ? (int)left : BR, k0, nk, lut, wp[p]);
            }
            /* the next block: the next columns, or the next rows' first */
            int64_t nx_r = jc, nx_k = k0 + BK, nx_nr = nrb;
            if (nx_k >= N)
                nx_r = jc + BP * BR, nx_k = 0, nx_nr = d1 - nx_r < BP * BR ? d1 - nx_r : BP * BR;
            const int64_t nx_nk = N - nx_k < BK ? N - nx_k : BK;
            const int64_t parts = ((T + BMC - 1) / BMC) * np;
            int64_t part = 0;
            for (int64_t t0 = 0; t0 < T; t0 += BMC) {
                const int64_t mc = T - t0 < BMC ? T - t0 : BMC;
                for (int64_t t = 0; t < mc; t++) {
                    const float *xr = x + (t0 + t) * N + k0;
                    if (t + 2 < mc)
                        for (int64_t o = 0; o < nk; o += 16)
                            _mm_prefetch((const char *)(xr + 2 * N + o), _MM_HINT_T0);
                    to_bf16(xr, nk, xb + t * BK);
                }
                for (int p = 0; p < np; p++, part++) {
                    if (nx_r < d1) prefetch_block(w, nx_r, nx_nr, nx_k, nx_nk, part, parts);
                    const int64_t left = nrb - (int64_t)p * BR;
                    const int nr = left < BR ? (int)left : BR;
                    const __mmask16 m[2] = {first_n(nr), first_n(nr > 16 ? nr - 16 : 0)};
                    float *yp = y + t0 * D + jc + p * BR;
                    for (int64_t t = 0; t < mc; t += BT) {
                        const int64_t M = mc - t < BT ? mc - t : BT;
                        bf_tiles[M - 1](xb + t * BK, wp[p], nk / 2, yp + t * D, D, m);
                    }
                }
            }
        }
    }
}

/* ------------------------------------------------------------ decode */

/* The decode mat-vec (affine 4-bit) and its few-token form are in
 * quant_dec_bf16_avx512.c. */

/* ------------------------------------------------------------ the pick */

static nmlx_qbf16_pick g_pick;
static pthread_once_t g_pick_once = PTHREAD_ONCE_INIT;

/* CPU seconds of this thread: the best of 5 runs of fn over a hot problem */
static double time_best(void (*run)(void *), void *ctx) {
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = nmlx_thread_cpu_seconds();
        run(ctx);
        double t = nmlx_thread_cpu_seconds() - t0;
        best = t < best ? t : best;
    }
    return best;
}

typedef struct {
    nmlx_weight w;
    float *x, *y;
    int64_t T;
    bool bf;
    int amx_terms; /* run_quant_amx's */
} pick_job;

static void run_matmat(void *p) {
    pick_job *j = p;
    if (j->bf)
        nmlx_avx512bf16_quant_matmat(&j->w, j->x, j->y, j->T, 0, j->w.rows);
    else
        nmlx_avx512f32_quant_matmat(&j->w, j->x, j->y, j->T, 0, j->w.rows);
}

static void run_matmat16(void *p) {
    pick_job *j = p;
    if (!nmlx_avx512vnni_quant_matmat16(&j->w, j->x, j->y, j->T, 0, j->w.rows))
        nmlx_avx512f32_quant_matmat(&j->w, j->x, j->y, j->T, 0, j->w.rows);
}

/* An environment switch: -1 unset, 0 for "0", 1 otherwise */
static int env_switch(const char *name) {
    const char *e = getenv(name);
    if (!e || !*e) return -1;
    return strcmp(e, "0") != 0;
}

static void run_matvec(void *p) {
    pick_job *j = p;
    for (int i = 0; i < 8; i++) {
        if (j->bf)
            nmlx_avx512bf16_quant_matvec(&j->w, j->x, j->y, 0, j->w.rows);
        else
            nmlx_avx512f32_quant_matvec(&j->w, j->x, j->y, 0, j->w.rows);
    }
}

static void run_matvec16(void *p) {
    pick_job *j = p;
    for (int i = 0; i < 8; i++)
        nmlx_avx512vnni_quant_matvec16(&j->w, j->x, j->y, 0, j->w.rows);
}

static void run_dense(void *p) {
    pick_job *j = p;
    if (j->bf)
        nmlx_avx512bf16_quant_matmat(&j->w, j->x, j->y, j->T, 0, j->w.rows);
    else
        nmlx_avx512_matmul_rows(&j->w, j->x, j->y, j->T, 0, j->w.rows);
}

static void run_dense_amx(void *p) {
    pick_job *j = p;
    if (!nmlx_amx_bf16_matmat(&j->w, j->x, j->y, j->T, 0, j->w.rows))
        nmlx_avx512_matmul_rows(&j->w, j->x, j->y, j->T, 0, j->w.rows);
}

static void run_quant_amx8(void *p) {
    pick_job *j = p;
    if (!nmlx_amx8_quant_matmat(&j->w, j->x, j->y, j->T, 0, j->w.rows))
        nmlx_avx512f32_quant_matmat(&j->w, j->x, j->y, j->T, 0, j->w.rows);
}

static void run_quant_amx(void *p) {
    pick_job *j = p;
    if (!nmlx_amx_quant_matmat(&j->w, j->x, j->y, j->T, 0, j->w.rows, j->amx_terms))
        nmlx_avx512f32_quant_matmat(&j->w, j->x, j->y, j->T, 0, j->w.rows);
}

/* AMX-INT8 (t[0]) and the 3-term AMX-BF16 kernel (t[1]) at 256 tokens on
 * 512 rows of j's 4-bit weight pattern (its first 128 rows repeated); t
 * untouched where memory runs out */
static void amx8_vs_amx3(const pick_job *j, double t[2]) {
    enum { R = 512, TL = 256 };
    const int64_t N = j->w.cols, D0 = j->w.rows, G = N / j->w.group_size, words = N / 8;
    const size_t xb = (size_t)TL * N * 4, yb = (size_t)TL * R * 4, qb = (size_t)R * words * 4,
                 sb = (size_t)R * G * 2, size = xb + yb + qb + 2 * sb;
    char *big = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (big == MAP_FAILED) return;
    pick_job jl = *j;
    jl.x = (float *)(void *)big, jl.y = (float *)(void *)(big + xb), jl.T = TL;
    uint32_t *q = (uint32_t *)(void *)(big + xb + yb);
    uint16_t *s = (uint16_t *)(void *)(big + xb + yb + qb), *b = s + R * G;
    for (int64_t r = 0; r < R; r++) {
        memcpy(q + r * words, (const uint32_t *)j->w.w.data + r % D0 * words, (size_t)words * 4);
        memcpy(s + r * G, (const uint16_t *)j->w.scales.data + r % D0 * G, (size_t)G * 2);
        memcpy(b + r * G, (const uint16_t *)j->w.biases.data + r % D0 * G, (size_t)G * 2);
    }
    jl.w.w.data = q, jl.w.scales.data = s, jl.w.biases.data = b, jl.w.rows = R;
    jl.w.w.shape[0] = jl.w.scales.shape[0] = jl.w.biases.shape[0] = R;
    for (int64_t i = 0; i < TL * N; i++)
        jl.x[i] = (float)(i % 17) * 0.01f - 0.08f;
    jl.amx_terms = 3;
    t[0] = time_best(run_quant_amx8, &jl);
    t[1] = time_best(run_quant_amx, &jl);
    munmap(big, size);
}

/* The fewest tokens from which kernel a (times ta at T0 and T1 tokens)
 * beats kernel b (tb), on the lines through the two points; 0: not even at
 * T1. At least NMLX_CPU_FEW_CHUNKED (the prefill's smallest T). */
static int amx_crossover(int64_t T0, int64_t T1, const double ta[2], const double tb[2]) {
    if (!(ta[1] < tb[1])) return 0;
    if (ta[0] < tb[0]) return NMLX_CPU_FEW_CHUNKED;
    const double sa = (ta[1] - ta[0]) / (double)(T1 - T0), sb = (tb[1] - tb[0]) / (double)(T1 - T0);
    const double T = (double)T0 + (ta[0] - tb[0]) / (sb - sa); /* sb > sa here */
    return T < NMLX_CPU_FEW_CHUNKED ? NMLX_CPU_FEW_CHUNKED : (int)T + 1;
}

/* g_pick as stored by pick_cache.h: the measured fields (prefill_affine is
 * forced-only, off when nothing is forced) */
enum { CACHED_FIELDS = 11 };

static void pick_to_cache(const char *features) {
    const int v[CACHED_FIELDS] = {g_pick.prefill,           g_pick.matvec,
                                  g_pick.matvec_int16,      g_pick.matvec_int16_q8,
                                  g_pick.prefill_int16,     g_pick.dense_bf16,
                                  g_pick.dense_amx,         g_pick.prefill_amx,
                                  g_pick.prefill_amx_min_t, g_pick.prefill_amx8,
                                  g_pick.prefill_amx8_min_t};
    nmlx_pick_cache_store("avx512", features, v, CACHED_FIELDS);
}

/* The quantized AMX prefill by default (NMLX_AMX_QUANT unset, AMX usable):
 * NMLX_AMX_QUANT_DEFAULT_TERMS terms; 3 are timed (from the T where faster,
 * 0: never), any other count is taken untimed from a fixed T. */
static bool amxq_untimed(void) { return NMLX_AMX_QUANT_DEFAULT_TERMS != 3; }
static int amxq_untimed_min_t(void) {
    return NMLX_AMX_QUANT_BF16_MIN_T > NMLX_CPU_FEW_CHUNKED ? NMLX_AMX_QUANT_BF16_MIN_T
                                                            : NMLX_CPU_FEW_CHUNKED;
}

/* A record is taken only where it asks for nothing this CPU lacks (a
 * damaged file must not pick an instruction set the CPU does not have) and,
 * for the quantized AMX prefill, only what this build's default takes (its
 * term count; the fixed start T where untimed). */
static bool pick_from_cache(const char *features, bool bf16, bool vnni, bool amx, bool amxq,
                            bool amx8) {
    int v[CACHED_FIELDS];
    if (!nmlx_pick_cache_load("avx512", features, v, CACHED_FIELDS)) return false;
    const bool allowed[7] = {bf16, bf16, vnni, vnni, vnni, bf16, amx};
    for (int i = 0; i < 7; i++)
        if (v[i] != 0 && !(v[i] == 1 && allowed[i])) return false;
    if ((v[7] != 0 && !(v[7] == NMLX_AMX_QUANT_DEFAULT_TERMS && amxq)) ||
        (v[8] != 0 && v[8] < NMLX_CPU_FEW_CHUNKED))
        return false;
    if (amxq && amxq_untimed() &&
        (v[7] != NMLX_AMX_QUANT_DEFAULT_TERMS || v[8] != amxq_untimed_min_t()))
        return false;
    if ((v[9] != 0 && !(v[9] == 1 && amx8)) || (v[10] != 0 && v[10] < NMLX_CPU_FEW_CHUNKED))
        return false;
    g_pick.prefill = v[0], g_pick.matvec = v[1], g_pick.matvec_int16 = v[2];
    g_pick.matvec_int16_q8 = v[3], g_pick.prefill_int16 = v[4], g_pick.dense_bf16 = v[5];
    g_pick.dense_amx = v[6], g_pick.prefill_amx = v[7], g_pick.prefill_amx_min_t = v[8];
    g_pick.prefill_amx8 = v[9], g_pick.prefill_amx8_min_t = v[10];
    return true;
}

/* The kernels are timed (CPU time of this thread, best of 5) on a 128 x
 * 1024 weight, affine 4-bit g64 and dense bf16, over 48 tokens (prefill)
 * or 8 calls (decode): the problem stays in cache, so the DRAM and the
 * other threads' load matter little. A kernel that rounds more is taken
 * only where it is clearly faster (bf16 x for dense bf16: 1.3x); int16 x,
 * as accurate as f32, unless clearly slower (1.25x): a single timing
 * swung by up to 1.8x under other processes' load. */
static void measure_pick(void) {
    __builtin_cpu_init();
    const bool bf16 = __builtin_cpu_supports("avx512bf16"), vnni = nmlx_qint8_cpu_ok();
    const int e_i16 = env_switch("NMLX_QUANT_INT16"), e_dense = env_switch("NMLX_DENSE_BF16");
    const int e_i16d = env_switch("NMLX_QUANT_INT16_DEC");
    /* NMLX_QUANT_BF16: "0" none, "1" both, "matvec" / "prefill" / "both"
     * force the choice of the quantized bf16 kernels; unset: measured */
    const char *env = getenv("NMLX_QUANT_BF16");
    const bool forced = env && *env;
    if (bf16 && forced) {
        bool all = !strcmp(env, "1") || !strcmp(env, "both");
        g_pick.prefill = g_pick.prefill_affine = all || !strcmp(env, "prefill");
        g_pick.matvec = all || !strcmp(env, "matvec");
    }
    g_pick.prefill_int16 = vnni && e_i16 == 1;
    g_pick.matvec_int16 = g_pick.matvec_int16_q8 = vnni && e_i16d == 1;
    g_pick.dense_bf16 = bf16 && e_dense == 1;
    const bool log = getenv("NMLX_QUANT_PICK_LOG") != NULL;
    /* AMX (matmul_amx.h): NMLX_AMX=1 forces it, unset measures it if
     * NMLX_AMX_DEFAULT; asks the OS for the tiles only then */
    const int e_amx = nmlx_amx_env();
    const bool amx = bf16 && nmlx_amx_wanted() && nmlx_amx_ok();
    g_pick.dense_amx = amx && e_amx == 1;
    /* quantized prefill on AMX: NMLX_AMX_QUANT=1 / 2 / bf16 forces 3 / 2 / 1
     * terms where AMX is usable; unset, if NMLX_AMX_QUANT_DEFAULT: the
     * default's terms (matmul_amx.h), 3 measured, any other count untimed */
    const int e_amxq = nmlx_amx_quant_env();
    const bool amxq = bf16 && e_amx != 0 && e_amxq != 0 && (e_amxq > 0 || NMLX_AMX_QUANT_DEFAULT) &&
                      nmlx_amx_ok();
    const bool amxq_fixed = amxq && e_amxq < 0 && amxq_untimed();
    g_pick.prefill_amx = amxq && e_amxq > 0 ? e_amxq
                         : amxq_fixed       ? NMLX_AMX_QUANT_DEFAULT_TERMS
                                            : 0;
    g_pick.prefill_amx_min_t = amxq_fixed ? amxq_untimed_min_t() : NMLX_CPU_FEW_CHUNKED;
    /* AMX-INT8 on int16 x (quant_int8_amx.c, the int16 prefill's bits):
     * NMLX_AMX_INT8=1 forces it (from T = 24), =0 turns it off; unset:
     * timed against the prefill it replaces, off where NMLX_QUANT_INT16=0,
     * NMLX_AMX_QUANT=0 (no quantized AMX prefill), NMLX_AMX_QUANT=1/2/bf16
     * (the AMX-BF16 kernel asked for by name) and in a build whose AMX-BF16
     * default is untimed (matmul_amx.h: that default is then the pick) */
    const int e_a8 = nmlx_amx_int8_env();
    const bool amx8 = e_a8 != 0 && amx && nmlx_amx_int8_ok() &&
                      (e_a8 > 0 || (e_i16 != 0 && e_amxq < 0 && !amxq_fixed));
    g_pick.prefill_amx8 = amx8 && e_a8 > 0;
    g_pick.prefill_amx8_min_t = NMLX_CPU_FEW_CHUNKED;
    if (!(bf16 && !forced) && !(vnni && e_i16 < 0) && !(vnni && e_i16d < 0) &&
        !(bf16 && e_dense < 0) && !log && !(amx && e_amx < 0) && !(amxq && e_amxq < 0) &&
        !(amx8 && e_a8 < 0))
        return;
    /* nothing forced: this machine's earlier measurement (pick_cache.h), so
     * that every run takes the same kernels; NMLX_QUANT_PICK_LOG measures
     * again (and stores the result) */
    const bool cacheable =
        !forced && e_i16 < 0 && e_i16d < 0 && e_dense < 0 && e_amx < 0 && e_amxq < 0 && e_a8 < 0;
    char features[80];
    /* amxq-terms: a record measured for another default (3 terms timed, or
     * an untimed other count) is another machine's */
    snprintf(features, sizeof features,
             "avx512bf16=%d vnni=%d amx=%d amxq=%d amxq-terms=%d amx8=%d", bf16, vnni, amx, amxq,
             amxq ? NMLX_AMX_QUANT_DEFAULT_TERMS : 0, amx8);
    if (cacheable && !log && pick_from_cache(features, bf16, vnni, amx, amxq, amx8)) return;
    enum { PD = 128, PN = 1024, PT = 48, PTL = 256 };
    uint32_t *q = malloc((size_t)PD * PN / 8 * 4);
    uint16_t *s = malloc((size_t)PD * PN / 64 * 2), *b = malloc((size_t)PD * PN / 64 * 2);
    uint16_t *wd = malloc((size_t)PD * PN * 2);
    float *x = malloc((size_t)PT * PN * 4), *y = malloc((size_t)PT * PD * 4);
    if (!q || !s || !b || !wd || !x || !y) goto out;
    uint32_t st = 2463534242u;
    for (int64_t i = 0; i < PD * PN / 8; i++)
        st ^= st << 13, st ^= st >> 17, st ^= st << 5, q[i] = st;
    for (int64_t i = 0; i < PD * PN; i++)
        st ^= st << 13, st ^= st >> 17, st ^= st << 5, wd[i] = (uint16_t)(0x3c00 | (st & 0x3ff));
    for (int64_t i = 0; i < PD * PN / 64; i++)
        s[i] = nmlx_f32_to_bf16(0.01f), b[i] = nmlx_f32_to_bf16(-0.08f);
    for (int64_t i = 0; i < PT * PN; i++)
        x[i] = (float)(i % 17) * 0.01f - 0.08f;
    pick_job j = {
        .w = {.w = {.dtype = NMLX_DT_U32, .ndim = 2, .shape = {PD, PN / 8}, .data = q},
              .scales = {.dtype = NMLX_DT_BF16, .ndim = 2, .shape = {PD, PN / 64}, .data = s},
              .biases = {.dtype = NMLX_DT_BF16, .ndim = 2, .shape = {PD, PN / 64}, .data = b},
              .mode = NMLX_QUANT_AFFINE,
              .bits = 4,
              .group_size = 64,
              .rows = PD,
              .cols = PN},
        .x = x,
        .y = y,
        .T = PT};
    double t[2][2] = {{0}}, t16 = 0, t16d = 0, t8[2] = {0}, td[2] = {0}, td_amx = 0;
    double tq_amx[2] = {0}, tq_alt[2] = {0}, tq8[2] = {0}, tq8_alt[2] = {0}, tq8w[2] = {0};
    int amx_cross = 0, amx8_cross = 0; /* where the timed AMX and alternative lines cross */
    for (int bf = 0; bf < 2; bf++) {
        j.bf = bf;
        if (bf && !bf16) break;
        t[0][bf] = time_best(run_matmat, &j);
        t[1][bf] = time_best(run_matvec, &j);
    }
    if (vnni) t16d = time_best(run_matvec16, &j);
    if (vnni) t16 = time_best(run_matmat16, &j);
    if (vnni && e_i16 < 0) g_pick.prefill_int16 = t16 <= 1.25 * t[0][0];
    /* AMX with x and W as bf16 hi + lo: as accurate as int16 x, so taken
     * wherever faster than the prefill it replaces */
    if (amxq && (!amxq_fixed || log)) { /* the untimed default: for the log only */
        /* at 48 and 256 tokens (the panels' dequantization is paid once per
         * 512 tokens): AMX from where the two cost lines cross */
        j.bf = false;
        j.amx_terms = e_amxq > 0 ? e_amxq : NMLX_AMX_QUANT_DEFAULT_TERMS;
        void (*alt)(void *) = g_pick.prefill_int16 ? run_matmat16 : run_matmat;
        tq_amx[0] = time_best(run_quant_amx, &j);
        tq_alt[0] = g_pick.prefill_int16 ? t16 : t[0][0];
        /* mapped, not malloc'ed: a freed 1 MiB block would raise malloc's
         * mmap threshold for the rest of the process */
        const size_t xb = (size_t)PTL * PN * 4, yb = (size_t)PTL * PD * 4;
        void *big = mmap(NULL, xb + yb, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (big != MAP_FAILED) {
            pick_job jl = j;
            jl.x = big, jl.y = (float *)(void *)((char *)big + xb), jl.T = PTL;
            for (int64_t i = 0; i < PTL * PN; i++)
                jl.x[i] = (float)(i % 17) * 0.01f - 0.08f;
            tq_amx[1] = time_best(run_quant_amx, &jl);
            tq_alt[1] = time_best(alt, &jl);
            munmap(big, xb + yb);
        }
        amx_cross = amx_crossover(PT, PTL, tq_amx, tq_alt);
        if (e_amxq < 0 && !amxq_untimed()) {
            g_pick.prefill_amx_min_t = amx_cross;
            g_pick.prefill_amx = amx_cross ? 3 : 0;
        }
    }
    /* AMX-INT8 on int16 x, at the same two sizes, against the same
     * alternative (int16 where picked, else f32): from where the lines
     * cross. Where the AMX-BF16 kernel is timed too, only the faster of the
     * two at 256 tokens stays on (the AMX-INT8 one has the int16 prefill's
     * bits, so the logits do not depend on this timing where int16 is
     * picked). */
    if (amx8 && e_a8 < 0) {
        j.bf = false;
        void (*alt)(void *) = g_pick.prefill_int16 ? run_matmat16 : run_matmat;
        tq8[0] = time_best(run_quant_amx8, &j);
        tq8_alt[0] = g_pick.prefill_int16 ? t16 : t[0][0];
        const size_t xb = (size_t)PTL * PN * 4, yb = (size_t)PTL * PD * 4;
        void *big = mmap(NULL, xb + yb, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (big != MAP_FAILED) {
            pick_job jl = j;
            jl.x = big, jl.y = (float *)(void *)((char *)big + xb), jl.T = PTL;
            for (int64_t i = 0; i < PTL * PN; i++)
                jl.x[i] = (float)(i % 17) * 0.01f - 0.08f;
            tq8[1] = time_best(run_quant_amx8, &jl);
            tq8_alt[1] = tq_alt[1] > 0 ? tq_alt[1] : time_best(alt, &jl);
            munmap(big, xb + yb);
        }
        amx8_cross = amx_crossover(PT, PTL, tq8, tq8_alt);
        g_pick.prefill_amx8 = amx8_cross > 0;
        g_pick.prefill_amx8_min_t = amx8_cross ? amx8_cross : NMLX_CPU_FEW_CHUNKED;
        /* both AMX kernels on: the faster at 256 tokens on 512 rows (a
         * thread's share of a small model's layer; on 128 rows the fixed
         * per-call cost of the int16 rounding of x weighs too much) */
        if (g_pick.prefill_amx8 && g_pick.prefill_amx && e_amxq < 0) {
            tq8w[0] = tq8w[1] = 0;
            amx8_vs_amx3(&j, tq8w);
            if (tq8w[0] > 0 && tq8w[1] > 0 && tq8w[0] > tq8w[1])
                g_pick.prefill_amx8 = false, g_pick.prefill_amx8_min_t = NMLX_CPU_FEW_CHUNKED;
            else
                g_pick.prefill_amx = 0, g_pick.prefill_amx_min_t = NMLX_CPU_FEW_CHUNKED;
        }
    }
    if (bf16 && !forced) {
        /* The bf16 prefill rounds x and the dequantized weights; by default
         * it runs only on MXFP4 weights (exact in bf16) and never on weights
         * flagged f32_input (the LM head): elsewhere an argmax flips on the
         * quantized fixtures, where top-2 margins are 0.2% of max|logit|. */
        g_pick.prefill = t[0][1] < t[0][0];
        g_pick.matvec = t[1][1] < t[1][0];
    }
    /* int16 x decode: more accurate than bf16 x, within 2^-16 of each
     * group's max|x| of f32; taken where faster than the mat-vec it replaces
     * (for 4-bit not where NMLX_QUANT_BF16 forces the bf16 decode, unless
     * NMLX_QUANT_INT16_DEC=1) */
    if (vnni && e_i16d < 0) {
        const double best = g_pick.matvec && t[1][1] > 0 ? t[1][1] : t[1][0];
        g_pick.matvec_int16 = t16d < best && !(forced && g_pick.matvec);
        /* 8-bit g64 (the codes of q reread as bytes): against the f32 mat-vec */
        j.w.bits = 8, j.w.w.shape[1] = PN / 4, j.w.rows = PD / 2, j.w.scales.shape[0] = PD / 2;
        j.w.biases.shape[0] = PD / 2, j.bf = false;
        t8[0] = time_best(run_matvec, &j);
        t8[1] = time_best(run_matvec16, &j);
        g_pick.matvec_int16_q8 = t8[1] < t8[0];
    }
    if (bf16) {
        j.w = (nmlx_weight){.w = {.dtype = NMLX_DT_BF16, .ndim = 2, .shape = {PD, PN}, .data = wd},
                            .rows = PD,
                            .cols = PN};
        for (int bf = 0; bf < 2; bf++)
            j.bf = bf, td[bf] = time_best(run_dense, &j);
        if (e_dense < 0) g_pick.dense_bf16 = td[0] >= 1.3 * td[1];
        if (amx) {
            td_amx = time_best(run_dense_amx, &j);
            if (e_amx < 0) g_pick.dense_amx = td_amx < td[0] && td_amx < td[1];
        }
    }
    if (log)
        fprintf(stderr,
                "nmlx cpu pick (ms): quantized prefill f32 %.3g bf16 %.3g int16 %.3g, decode f32 "
                "%.3g bf16 %.3g int16-vnni %.3g, 8-bit decode f32 %.3g int16-vnni %.3g; dense "
                "bf16 prefill f32 %.3g bf16 %.3g -> quantized prefill %s (MXFP4 %s), decode %s, "
                "8-bit decode %s, dense bf16 prefill %s\n",
                1e3 * t[0][0], 1e3 * t[0][1], 1e3 * t16, 1e3 * t[1][0], 1e3 * t[1][1], 1e3 * t16d,
                1e3 * t8[0], 1e3 * t8[1], 1e3 * td[0], 1e3 * td[1],
                g_pick.prefill_int16 ? "int16" : "f32", g_pick.prefill ? "bf16" : "f32",
                g_pick.matvec_int16 ? "int16-vnni"
                : g_pick.matvec     ? "bf16"
                                    : "f32",
                g_pick.matvec_int16_q8 ? "int16-vnni" : "f32", g_pick.dense_bf16 ? "bf16" : "f32");
    if (log)
        fprintf(stderr,
                "nmlx cpu pick (ms): dense bf16 prefill amx %.3g, quantized prefill T=%d amx %.3g "
                "%s %.3g, T=%d amx %.3g %s %.3g (%s; timed lines cross at T=%d) -> amx %s, "
                "quantized amx %s from T=%d%s\n",
                1e3 * td_amx, PT, 1e3 * tq_amx[0], g_pick.prefill_int16 ? "int16" : "f32",
                1e3 * tq_alt[0], PTL, 1e3 * tq_amx[1], g_pick.prefill_int16 ? "int16" : "f32",
                1e3 * tq_alt[1],
                amx                  ? "AMX usable"
                : !bf16              ? "not run: no avx512bf16"
                : !nmlx_amx_wanted() ? "not run: NMLX_AMX unset or 0"
                                     : nmlx_amx_status(),
                amx_cross, g_pick.dense_amx ? "on" : "off",
                g_pick.prefill_amx == 3   ? "on (3 terms)"
                : g_pick.prefill_amx == 2 ? "on (2 terms)"
                : g_pick.prefill_amx == 1 ? "on (bf16)"
                                          : "off",
                g_pick.prefill_amx_min_t, amxq_fixed ? " (the default, untimed)" : "");
    if (log)
        fprintf(stderr,
                "nmlx cpu pick (ms): quantized prefill AMX-INT8 (int16 x) T=%d %.3g %s %.3g, "
                "T=%d %.3g %s %.3g (%s; timed lines cross at T=%d); T=256 x 512 rows "
                "AMX-INT8 %.3g AMX-BF16 %.3g -> amx-int8 %s from T=%d\n",
                PT, 1e3 * tq8[0], g_pick.prefill_int16 ? "int16" : "f32", 1e3 * tq8_alt[0], PTL,
                1e3 * tq8[1], g_pick.prefill_int16 ? "int16" : "f32", 1e3 * tq8_alt[1],
                amx8          ? (e_a8 > 0 ? "forced by NMLX_AMX_INT8=1" : "AMX-INT8 usable")
                : e_a8 == 0   ? "off: NMLX_AMX_INT8=0"
                : !amx        ? "off: AMX not usable or NMLX_AMX=0"
                : e_amxq > 0  ? "off: NMLX_AMX_QUANT forces the AMX-BF16 kernel"
                : e_i16 == 0  ? "off: NMLX_QUANT_INT16=0"
                : e_amxq == 0 ? "off: NMLX_AMX_QUANT=0"
                              : "cpuid: no AMX-INT8",
                amx8_cross, 1e3 * tq8w[0], 1e3 * tq8w[1], g_pick.prefill_amx8 ? "on" : "off",
                g_pick.prefill_amx8_min_t);
    if (cacheable) pick_to_cache(features);
out:
    free(q), free(s), free(b), free(wd), free(x), free(y);
}

nmlx_qbf16_pick nmlx_qbf16_get_pick(void) {
    pthread_once(&g_pick_once, measure_pick);
    return g_pick;
}
