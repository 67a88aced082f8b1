/* AVX2+FMA+F16C attention row kernels (cpu_kernels.attn_scores / attn_mix):
 * one query row against n cached keys, and the probability-weighted sum of
 * n cached values, for f32, f16 and bf16 caches. A decode step at a long
 * context calls these with thousands of rows per head, so each is one call
 * per (query, group of heads sharing a KV head) with the loops over keys
 * inside: four keys per pass for the scores, every head of the group on
 * them while they sit in L1 (the keys are read from memory once), and for
 * the mix eight register accumulators over 64 output lanes, head by head
 * (two heads per loaded value row measured 1.8x slower). Compiled with -mavx2 -mfma -mf16c (CMake);
 * only called after a cpuid check. */
#include "compute/cpu/cpu_internal.h"
#include "compute/cpu/simd_avx2.h"

#include <string.h>

enum { KIND_F32, KIND_F16, KIND_BF16 };

/* 8 cache values of row `row`, columns d..d+7, as f32 */
AVX2_INLINE __m256 load8_kv(int kind, const void *base, int64_t row, int64_t HD, int64_t d) {
    const int64_t i = row * HD + d;
    if (kind == KIND_F32) return _mm256_loadu_ps((const float *)base + i);
    if (kind == KIND_F16) return load8_f16((const uint16_t *)base + i);
    return load8_bf16((const uint16_t *)base + i);
}

AVX2_INLINE float load1_kv(int kind, const void *base, int64_t row, int64_t HD, int64_t d) {
    const int64_t i = row * HD + d;
    if (kind == KIND_F32) return ((const float *)base)[i];
    if (kind == KIND_F16) return nmlx_f16_to_f32(((const uint16_t *)base)[i]);
    return nmlx_bf16_to_f32(((const uint16_t *)base)[i]);
}

/* sc[i][j] = scale * q_i . K[j] for the g heads i < g (q rows and sc rows
 * contiguous, sc row stride n): four keys per pass, every head on them
 * while the four rows sit in L1, so the cache is read from memory once. */
AVX2_INLINE void scores(int kind, const float *q, int64_t g, const void *K, int64_t n, int64_t HD,
                        float scale, float *sc) {
    const int64_t d8 = HD & ~(int64_t)7;
    int64_t j = 0;
    for (; j + 4 <= n; j += 4)
        for (int64_t i = 0; i < g; i++) {
            const float *qi = q + i * HD;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t d = 0; d < d8; d += 8) {
                __m256 qv = _mm256_loadu_ps(qi + d);
                a0 = _mm256_fmadd_ps(qv, load8_kv(kind, K, j, HD, d), a0);
                a1 = _mm256_fmadd_ps(qv, load8_kv(kind, K, j + 1, HD, d), a1);
                a2 = _mm256_fmadd_ps(qv, load8_kv(kind, K, j + 2, HD, d), a2);
                a3 = _mm256_fmadd_ps(qv, load8_kv(kind, K, j + 3, HD, d), a3);
            }
            float s[4] = {hsum8(a0), hsum8(a1), hsum8(a2), hsum8(a3)};
            for (int r = 0; r < 4; r++) {
                for (int64_t d = d8; d < HD; d++)
                    s[r] += qi[d] * load1_kv(kind, K, j + r, HD, d);
                sc[i * n + j + r] = s[r] * scale;
            }
        }
    for (; j < n; j++)
        for (int64_t i = 0; i < g; i++) {
            const float *qi = q + i * HD;
            __m256 a = _mm256_setzero_ps();
            for (int64_t d = 0; d < d8; d += 8)
                a = _mm256_fmadd_ps(_mm256_loadu_ps(qi + d), load8_kv(kind, K, j, HD, d), a);
            float s = hsum8(a);
            for (int64_t d = d8; d < HD; d++)
                s += qi[d] * load1_kv(kind, K, j, HD, d);
            sc[i * n + j] = s * scale;
        }
}

/* out_h[d0 .. d0 + 8W) = sum_j p_h[j] V[j][d0 ..], W accumulators */
#define MIX_BLOCK(W)                                                                               \
    do {                                                                                           \
        __m256 acc[W];                                                                             \
        for (int w = 0; w < W; w++)                                                                \
            acc[w] = _mm256_setzero_ps();                                                          \
        const float *ph = p + h * n;                                                               \
        for (int64_t j = 0; j < n; j++) {                                                          \
            __m256 pj = _mm256_set1_ps(ph[j]);                                                     \
            for (int w = 0; w < W; w++)                                                            \
                acc[w] = _mm256_fmadd_ps(pj, load8_kv(kind, V, j, HD, d0 + 8 * w), acc[w]);        \
        }                                                                                          \
        for (int w = 0; w < W; w++)                                                                \
            _mm256_storeu_ps(out + h * HD + d0 + 8 * w, acc[w]);                                   \
    } while (0)

AVX2_INLINE void mix(int kind, const float *p, int64_t g, const void *V, int64_t n, int64_t HD,
                     float *out) {
    const int64_t d8 = HD & ~(int64_t)7;
    for (int64_t h = 0; h < g; h++) { /* per head: 8 accumulators over 64 lanes */
        int64_t d0 = 0;
        for (; d0 + 64 <= d8; d0 += 64)
            MIX_BLOCK(8);
        for (; d0 + 8 <= d8; d0 += 8)
            MIX_BLOCK(1);
    }
    for (int64_t i = 0; i < g; i++)
        for (int64_t d = d8; d < HD; d++) {
            float s = 0.0f;
            for (int64_t j = 0; j < n; j++)
                s += p[i * n + j] * load1_kv(kind, V, j, HD, d);
            out[i * HD + d] = s;
        }
}

/* ---- many rows (a prefill's block of queries, cpu_attention.c): keys and
 * values widened to f32 once per chunk of KC keys (keys transposed,
 * d-major), then register tiles of 4 rows x 16 keys (scores) or 4 rows x 16
 * lanes (mix: 8 accumulators, 2 loads, a broadcast: 11 of the 16 ymm
 * registers; 3 x 32 spilled), so each widened element serves every row and
 * nothing is summed across lanes. For g >= BLK_MIN_ROWS, HD % 8 == 0, HD <= 512. */

enum { BLK_FLOATS = 4096, BLK_HD_MAX = 512, BLK_MIN_ROWS = 6 };

static inline int64_t blk_keys(int64_t HD) { /* keys per chunk: a multiple of 8 */
    int64_t kc = BLK_FLOATS / HD;
    return kc < 8 ? 8 : kc & ~(int64_t)7;
}

/* kt[d * KC + i] = K[j0 + i][d] as f32 for i < kc, 0 up to the next 8 */
AVX2_INLINE void widen_keys_t(int kind, const void *K, int64_t j0, int64_t kc, int64_t HD,
                              int64_t KC, float *kt) {
    for (int64_t i0 = 0; i0 < kc; i0 += 8)
        for (int64_t d = 0; d < HD; d += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++)
                r[i] = i0 + i < kc ? load8_kv(kind, K, j0 + i0 + i, HD, d) : _mm256_setzero_ps();
            transpose8_ps(r);
            for (int i = 0; i < 8; i++)
                _mm256_storeu_ps(kt + (d + i) * KC + i0, r[i]);
        }
}

/* sc[r * n + 8 v + i] = scale * q_r . kt[:, 8 v + i] for r < R, v < NV; the
 * last vector stores only the lanes in m */
AVX2_INLINE void scores_tile(int R, int NV, const float *q, int64_t HD, const float *kt, int64_t KC,
                             float scale, float *sc, int64_t n, __m256i m) {
    const int full = _mm256_movemask_ps(_mm256_castsi256_ps(m)) == 0xFF;
    __m256 a[4][2];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            a[r][v] = _mm256_setzero_ps();
    for (int64_t d = 0; d < HD; d++) {
        __m256 k[2];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            k[v] = _mm256_loadu_ps(kt + d * KC + 8 * v);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m256 qb = _mm256_broadcast_ss(q + r * HD + d);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                a[r][v] = _mm256_fmadd_ps(qb, k[v], a[r][v]);
        }
    }
    const __m256 sv = _mm256_set1_ps(scale);
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            const __m256 y = _mm256_mul_ps(a[r][v], sv);
            if (v == NV - 1 && full == 0) /* vmaskmovps stores are slow: tails only */
                _mm256_maskstore_ps(sc + r * n + 8 * v, m, y);
            else
                _mm256_storeu_ps(sc + r * n + 8 * v, y);
        }
}

/* out[r * HD + 8 v ..] += sum_i p[r * n + i] vf[i * HD + 8 v ..], i < kc */
AVX2_INLINE void mix_tile(int R, int NV, const float *p, int64_t n, const float *vf, int64_t kc,
                          int64_t HD, float *out) {
    __m256 a[4][2];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            a[r][v] = _mm256_loadu_ps(out + r * HD + 8 * v);
    for (int64_t i = 0; i < kc; i++) {
        __m256 x[2];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            x[v] = _mm256_loadu_ps(vf + i * HD + 8 * v);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const __m256 pb = _mm256_broadcast_ss(p + r * n + i);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++)
                a[r][v] = _mm256_fmadd_ps(pb, x[v], a[r][v]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            _mm256_storeu_ps(out + r * HD + 8 * v, a[r][v]);
}

typedef void (*scores_fn)(const float *, int64_t, const float *, int64_t, float, float *, int64_t,
                          __m256i);
typedef void (*mix_fn)(const float *, int64_t, const float *, int64_t, int64_t, float *);
#define BLK_FNS(R, NV)                                                                             \
    static void sc_##R##_##NV(const float *q, int64_t HD, const float *kt, int64_t KC,             \
                              float scale, float *sc, int64_t n, __m256i m) {                      \
        scores_tile(R, NV, q, HD, kt, KC, scale, sc, n, m);                                        \
    }                                                                                              \
    static void mx_##R##_##NV(const float *p, int64_t n, const float *vf, int64_t kc, int64_t HD,  \
                              float *out) {                                                        \
        mix_tile(R, NV, p, n, vf, kc, HD, out);                                                    \
    }
BLK_FNS(1, 1)
BLK_FNS(1, 2)
BLK_FNS(2, 1)
BLK_FNS(2, 2)
BLK_FNS(3, 1)
BLK_FNS(3, 2)
BLK_FNS(4, 1)
BLK_FNS(4, 2)
#undef BLK_FNS
static const scores_fn sc_fns[4][2] = {
    {sc_1_1, sc_1_2}, {sc_2_1, sc_2_2}, {sc_3_1, sc_3_2}, {sc_4_1, sc_4_2}};
static const mix_fn mx_fns[4][2] = {
    {mx_1_1, mx_1_2}, {mx_2_1, mx_2_2}, {mx_3_1, mx_3_2}, {mx_4_1, mx_4_2}};

static bool many_ok(int64_t g, int64_t HD) {
    return g >= BLK_MIN_ROWS && HD % 8 == 0 && HD <= BLK_HD_MAX;
}

AVX2_INLINE void scores_many(int kind, const float *q, int64_t g, const void *K, int64_t n,
                             int64_t HD, float scale, float *sc) {
    const int64_t KC = blk_keys(HD);
    float kt[BLK_FLOATS] __attribute__((aligned(32)));
    for (int64_t j0 = 0; j0 < n; j0 += KC) {
        const int64_t kc = n - j0 < KC ? n - j0 : KC;
        widen_keys_t(kind, K, j0, kc, HD, KC, kt);
        for (int64_t jv = 0; jv < kc; jv += 16) {
            const int64_t left = kc - jv < 16 ? kc - jv : 16;
            const int nv = (int)((left + 7) / 8);
            const __m256i m = tail_mask(left - 8 * (nv - 1));
            for (int64_t r = 0; r < g; r += 4) {
                const int rr = (int)(g - r < 4 ? g - r : 4);
                sc_fns[rr - 1][nv - 1](q + r * HD, HD, kt + jv, KC, scale, sc + r * n + j0 + jv, n,
                                       m);
            }
        }
    }
}

AVX2_INLINE void mix_many(int kind, const float *p, int64_t g, const void *V, int64_t n, int64_t HD,
                          float *out) {
    const int64_t KC = blk_keys(HD);
    float vbuf[BLK_FLOATS] __attribute__((aligned(32)));
    memset(out, 0, (size_t)(g * HD) * sizeof(float));
    for (int64_t j0 = 0; j0 < n; j0 += KC) {
        const int64_t kc = n - j0 < KC ? n - j0 : KC;
        const float *vf = (const float *)V + j0 * HD;
        if (kind != KIND_F32) {
            for (int64_t i = 0; i < kc; i++)
                for (int64_t d = 0; d < HD; d += 8)
                    _mm256_storeu_ps(vbuf + i * HD + d, load8_kv(kind, V, j0 + i, HD, d));
            vf = vbuf;
        }
        for (int64_t r = 0; r < g; r += 4) {
            const int rr = (int)(g - r < 4 ? g - r : 4);
            for (int64_t d0 = 0; d0 < HD; d0 += 16) {
                const int nv = (int)(HD - d0 >= 16 ? 2 : 1);
                mx_fns[rr - 1][nv - 1](p + r * n + j0, n, vf + d0, kc, HD, out + r * HD + d0);
            }
        }
    }
}

static int kind_of(nmlx_dtype dt) {
    return dt == NMLX_DT_F16 ? KIND_F16 : dt == NMLX_DT_BF16 ? KIND_BF16 : KIND_F32;
}

void nmlx_avx2_attn_scores(nmlx_dtype dt, const float *q, int64_t g, const void *K, int64_t n,
                           int64_t HD, float scale, float *sc) {
    if (many_ok(g, HD)) {
        switch (kind_of(dt)) {
        case KIND_F16: scores_many(KIND_F16, q, g, K, n, HD, scale, sc); break;
        case KIND_BF16: scores_many(KIND_BF16, q, g, K, n, HD, scale, sc); break;
        default: scores_many(KIND_F32, q, g, K, n, HD, scale, sc); break;
        }
        return;
    }
    switch (kind_of(dt)) { /* literal kinds: one specialised loop each */
    case KIND_F16: scores(KIND_F16, q, g, K, n, HD, scale, sc); break;
    case KIND_BF16: scores(KIND_BF16, q, g, K, n, HD, scale, sc); break;
    default: scores(KIND_F32, q, g, K, n, HD, scale, sc); break;
    }
}

void nmlx_avx2_attn_mix(nmlx_dtype dt, const float *p, int64_t g, const void *V, int64_t n,
                        int64_t HD, float *out) {
    if (many_ok(g, HD)) {
        switch (kind_of(dt)) {
        case KIND_F16: mix_many(KIND_F16, p, g, V, n, HD, out); break;
        case KIND_BF16: mix_many(KIND_BF16, p, g, V, n, HD, out); break;
        default: mix_many(KIND_F32, p, g, V, n, HD, out); break;
        }
        return;
    }
    switch (kind_of(dt)) {
    case KIND_F16: mix(KIND_F16, p, g, V, n, HD, out); break;
    case KIND_BF16: mix(KIND_BF16, p, g, V, n, HD, out); break;
    default: mix(KIND_F32, p, g, V, n, HD, out); break;
    }
}
