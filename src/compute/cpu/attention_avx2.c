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

#include <math.h>
#include <stdint.h>
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

/* ---- the avx2 set's flash prefill attention (cpu_kernels.attn_flash; the
 * AVX-512 kernel's scheme, attention_avx512.c, in 8-lane vectors): an item
 * of up to 32 query rows (4 vectors of 8 rows) of one KV head against 64
 * keys at a time; S^T in 16-row x 6-key tiles (12 accumulators), the mask
 * as compares on the key index (and-ed: exp8 gives 1e-38, not 0, below
 * -87), online softmax per lane, O = alpha O + P V in 6-row x 16-lane tiles.
 * f32 throughout. */

enum { FL_ROWS = NMLX_ATTN_FLASH_ROWS, FL_KEYS = NMLX_ATTN_FLASH_KEYS, FL_QK = 6 };

/* st[c * FL_ROWS + 8 v + lane] = scale * q_(8 v + lane) . k_c, v < 2, c <
 * FL_QK (keys past nk repeat the last one; their scores are not read) */
static void fl_qk(const float *qt, const float *k, int64_t HD, int64_t nk, float scale, float *st) {
    const float *kr[FL_QK];
    for (int c = 0; c < FL_QK; c++)
        kr[c] = k + (c < nk ? c : nk - 1) * HD;
    __m256 acc[FL_QK][2];
#pragma GCC unroll 6
    for (int c = 0; c < FL_QK; c++)
        acc[c][0] = acc[c][1] = _mm256_setzero_ps();
    for (int64_t d = 0; d < HD; d++) {
        const __m256 q0 = _mm256_loadu_ps(qt + d * FL_ROWS),
                     q1 = _mm256_loadu_ps(qt + d * FL_ROWS + 8);
#pragma GCC unroll 6
        for (int c = 0; c < FL_QK; c++) {
            const __m256 kb = _mm256_broadcast_ss(kr[c] + d);
            acc[c][0] = _mm256_fmadd_ps(q0, kb, acc[c][0]);
            acc[c][1] = _mm256_fmadd_ps(q1, kb, acc[c][1]);
        }
    }
    const __m256 sv = _mm256_set1_ps(scale);
#pragma GCC unroll 6
    for (int c = 0; c < FL_QK; c++) {
        _mm256_storeu_ps(st + c * FL_ROWS, _mm256_mul_ps(acc[c][0], sv));
        _mm256_storeu_ps(st + c * FL_ROWS + 8, _mm256_mul_ps(acc[c][1], sv));
    }
}

/* o[r * HD + 8 w ..] = alpha[r] o[..] + sum_c p[c * FL_ROWS + r] v[c * HD + 8 w ..],
 * r < NR, w < NW */
AVX2_INLINE void fl_pv_tile(int NR, int NW, const float *p, const float *v, int64_t HD, int64_t kb,
                            const float *alpha, float *o) {
    __m256 acc[6][2];
#pragma GCC unroll 6
    for (int r = 0; r < NR; r++) {
        const __m256 al = _mm256_set1_ps(alpha[r]);
#pragma GCC unroll 2
        for (int w = 0; w < NW; w++)
            acc[r][w] = _mm256_mul_ps(_mm256_loadu_ps(o + r * HD + 8 * w), al);
    }
    for (int64_t c = 0; c < kb; c++) {
        __m256 x[2];
#pragma GCC unroll 2
        for (int w = 0; w < NW; w++)
            x[w] = _mm256_loadu_ps(v + c * HD + 8 * w);
#pragma GCC unroll 6
        for (int r = 0; r < NR; r++) {
            const __m256 pb = _mm256_broadcast_ss(p + c * FL_ROWS + r);
#pragma GCC unroll 2
            for (int w = 0; w < NW; w++)
                acc[r][w] = _mm256_fmadd_ps(pb, x[w], acc[r][w]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
        for (int w = 0; w < NW; w++)
            _mm256_storeu_ps(o + r * HD + 8 * w, acc[r][w]);
}

typedef void (*fl_pv_fn)(const float *, const float *, int64_t, int64_t, const float *, float *);
#define FL_PV(R, W)                                                                                \
    static void fl_pv_##R##_##W(const float *p, const float *v, int64_t HD, int64_t kb,            \
                                const float *al, float *o) {                                       \
        fl_pv_tile(R, W, p, v, HD, kb, al, o);                                                     \
    }
FL_PV(6, 2) /* HD % 16 == 0: 16-lane column blocks only */
FL_PV(4, 2)
FL_PV(2, 2)
#undef FL_PV

static void fl_widen(nmlx_dtype dt, const uint16_t *src, int64_t kb, int64_t HD, float *dst) {
    const int64_t n = kb * HD; /* HD % 16 == 0 */
    if (dt == NMLX_DT_F16)
        for (int64_t i = 0; i < n; i += 8)
            _mm256_storeu_ps(dst + i, load8_f16(src + i));
    else
        for (int64_t i = 0; i < n; i += 8)
            _mm256_storeu_ps(dst + i, load8_bf16(src + i));
}

bool nmlx_avx2_attn_flash_ok(int64_t HD, int64_t g) {
    return HD % 16 == 0 && HD > 0 && HD <= NMLX_ATTN_FLASH_HD_MAX && g >= 1 && g <= FL_ROWS;
}

void nmlx_avx2_attn_flash(const nmlx_attn_args *a, int64_t t0, int64_t kvh, int64_t g, float *buf,
                          nmlx_attn_wide *wide) {
    const int64_t HD = a->HD, nq_max = FL_ROWS / g, h0 = kvh * g;
    const int64_t nq = a->T - t0 < nq_max ? a->T - t0 : nq_max, R = nq * g;
    const int NV = (int)((R + 7) / 8), NP = (NV + 1) / 2; /* row vectors, 16-row halves */
    const int64_t RT = (R + 1) & ~(int64_t)1;
    float *qt = buf, *ob = qt + HD * FL_ROWS, *st = ob + FL_ROWS * HD;
    float *kf = st + (FL_KEYS + 16) * FL_ROWS, *vf = kf + FL_KEYS * HD;
    float alpha[FL_ROWS] __attribute__((aligned(32))), lsum[FL_ROWS] __attribute__((aligned(32)));
    int32_t lo[FL_ROWS] __attribute__((aligned(32))), hi[FL_ROWS] __attribute__((aligned(32)));
    int64_t jlo = INT64_MAX, jhi = -1;
    for (int64_t r = 0; r < FL_ROWS; r++) {
        lo[r] = 1, hi[r] = 0;
        if (r >= R) continue;
        const int64_t qi = a->q_pos + t0 + r / g;
        const int64_t h = qi < a->n_kv - 1 ? qi : a->n_kv - 1;
        const int64_t l = a->window > 0 && qi - a->window + 1 > 0 ? qi - a->window + 1 : 0;
        if (l > h) continue;
        lo[r] = (int32_t)l, hi[r] = (int32_t)h;
        jlo = l < jlo ? l : jlo;
        jhi = h > jhi ? h : jhi;
    }
    if (jhi < 0) {
        for (int64_t r = 0; r < R; r++)
            memset(a->out + ((t0 + r / g) * a->H + h0 + r % g) * HD, 0, (size_t)HD * sizeof(float));
        return;
    }
    for (int64_t r = 0; r < FL_ROWS; r++) {
        const float *q = r < R ? a->q + ((t0 + r / g) * a->H + h0 + r % g) * HD : NULL;
        for (int64_t d = 0; d < HD; d++)
            qt[d * FL_ROWS + r] = q ? q[d] : 0.0f;
    }
    memset(ob, 0, (size_t)(FL_ROWS * HD) * sizeof(float));
    __m256 m[4], l[4];
    for (int v = 0; v < 4; v++) {
        m[v] = _mm256_set1_ps(-INFINITY), l[v] = _mm256_setzero_ps();
        if (a->sinks) {
            float sk[8];
            for (int i = 0; i < 8; i++)
                sk[i] = a->sinks[h0 + (8 * v + i) % g];
            m[v] = _mm256_loadu_ps(sk), l[v] = _mm256_set1_ps(1.0f);
        }
    }
    const bool half = a->kv_dtype != NMLX_DT_F32;
    const int64_t base = kvh * a->cap * HD;
    const __m256 ninf = _mm256_set1_ps(-INFINITY), zero = _mm256_setzero_ps();
    for (int64_t j0 = jlo; j0 <= jhi; j0 += FL_KEYS) {
        const int64_t kb = jhi - j0 + 1 < FL_KEYS ? jhi - j0 + 1 : FL_KEYS;
        const float *K, *V;
        if (half && wide) {
            if (wide->kvh != kvh) {
                fl_widen(a->kv_dtype, a->k16 + base + wide->j0 * HD, wide->n, HD, wide->k);
                fl_widen(a->kv_dtype, a->v16 + base + wide->j0 * HD, wide->n, HD, wide->v);
                wide->kvh = kvh;
            }
            K = wide->k + (j0 - wide->j0) * HD, V = wide->v + (j0 - wide->j0) * HD;
        } else if (half) {
            fl_widen(a->kv_dtype, a->k16 + base + j0 * HD, kb, HD, kf);
            fl_widen(a->kv_dtype, a->v16 + base + j0 * HD, kb, HD, vf);
            K = kf, V = vf;
        } else {
            K = a->k + base + j0 * HD, V = a->v + base + j0 * HD;
        }
        for (int hp = 0; hp < NP; hp++) /* rows 16 hp .. 16 hp + 15 */
            for (int64_t c = 0; c < kb; c += FL_QK)
                fl_qk(qt + 16 * hp, K + c * HD, HD, kb - c < FL_QK ? kb - c : FL_QK, a->scale,
                      st + c * FL_ROWS + 16 * hp);
        if (a->softcap > 0) {
            const float cap = a->softcap, inv = 1.0f / cap;
            for (int64_t c = 0; c < kb; c++)
                for (int64_t r = 0; r < R; r++)
                    st[c * FL_ROWS + r] = tanhf(st[c * FL_ROWS + r] * inv) * cap;
        }
        for (int v = 0; v < NV; v++) { /* online softmax, 8 rows a vector */
            const __m256i lov = _mm256_load_si256((const __m256i *)(lo + 8 * v)),
                          hiv = _mm256_load_si256((const __m256i *)(hi + 8 * v));
            __m256 mk[FL_KEYS];
            __m256 mn = m[v];
            for (int64_t c = 0; c < kb; c++) {
                const __m256i jv = _mm256_set1_epi32((int32_t)(j0 + c));
                /* lo <= j <= hi: !(lo > j) && !(j > hi) */
                mk[c] = _mm256_castsi256_ps(_mm256_andnot_si256(
                    _mm256_or_si256(_mm256_cmpgt_epi32(lov, jv), _mm256_cmpgt_epi32(jv, hiv)),
                    _mm256_set1_epi32(-1)));
                mn = _mm256_blendv_ps(
                    mn, _mm256_max_ps(mn, _mm256_loadu_ps(st + c * FL_ROWS + 8 * v)), mk[c]);
            }
            const __m256 fin = _mm256_cmp_ps(m[v], ninf, _CMP_NEQ_OQ);
            const __m256 al = _mm256_and_ps(fin, exp8(_mm256_sub_ps(m[v], mn)));
            const __m256 mr = _mm256_and_ps(_mm256_cmp_ps(mn, ninf, _CMP_NEQ_OQ), mn);
            __m256 ls = zero;
            for (int64_t c = 0; c < kb; c++) {
                float *s = st + c * FL_ROWS + 8 * v;
                const __m256 p = _mm256_and_ps(mk[c], exp8(_mm256_sub_ps(_mm256_loadu_ps(s), mr)));
                _mm256_storeu_ps(s, p);
                ls = _mm256_add_ps(ls, p);
            }
            l[v] = _mm256_fmadd_ps(l[v], al, ls);
            m[v] = mn;
            _mm256_store_ps(alpha + 8 * v, al);
        }
        for (int64_t r0 = 0, nr; r0 < RT; r0 += nr) {
            const int64_t left = RT - r0;
            nr = left >= 6 && left != 8 ? 6 : left >= 4 ? 4 : 2;
            const fl_pv_fn fn = nr == 6 ? fl_pv_6_2 : nr == 4 ? fl_pv_4_2 : fl_pv_2_2;
            for (int64_t d0 = 0; d0 < HD; d0 += 16)
                fn(st + r0, V + d0, HD, kb, alpha + r0, ob + r0 * HD + d0);
        }
    }
    for (int v = 0; v < NV; v++)
        _mm256_store_ps(lsum + 8 * v, l[v]);
    for (int64_t r = 0; r < R; r++) {
        float *out = a->out + ((t0 + r / g) * a->H + h0 + r % g) * HD;
        const __m256 iv = _mm256_set1_ps(lsum[r] > 0 ? 1.0f / lsum[r] : 0.0f);
        for (int64_t d = 0; d < HD; d += 8)
            _mm256_storeu_ps(out + d, _mm256_mul_ps(_mm256_loadu_ps(ob + r * HD + d), iv));
    }
}
