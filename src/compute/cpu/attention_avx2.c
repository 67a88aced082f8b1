/* AVX2+FMA+F16C attention row kernels (cpu_kernels.attn_scores / attn_mix):
 * one query row against n cached keys, and the probability-weighted sum of
 * n cached values, for f32, f16 and bf16 caches. A decode step at a long
 * context calls these with thousands of rows per head, so each is one call
 * per (query, head) with the loop over keys inside: four keys per pass for
 * the scores (the query slice is loaded once for four dot products), and
 * register accumulators over 64 output lanes for the mix. Compiled with
 * -mavx2 -mfma -mf16c (CMake); only called after a cpuid check. */
#include "compute/cpu/cpu_internal.h"
#include "compute/cpu/simd_avx2.h"

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

AVX2_INLINE void scores(int kind, const float *q, const void *K, int64_t n, int64_t HD, float scale,
                        float *sc) {
    const int64_t d8 = HD & ~(int64_t)7;
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t d = 0; d < d8; d += 8) {
            __m256 qv = _mm256_loadu_ps(q + d);
            a0 = _mm256_fmadd_ps(qv, load8_kv(kind, K, j, HD, d), a0);
            a1 = _mm256_fmadd_ps(qv, load8_kv(kind, K, j + 1, HD, d), a1);
            a2 = _mm256_fmadd_ps(qv, load8_kv(kind, K, j + 2, HD, d), a2);
            a3 = _mm256_fmadd_ps(qv, load8_kv(kind, K, j + 3, HD, d), a3);
        }
        float s[4] = {hsum8(a0), hsum8(a1), hsum8(a2), hsum8(a3)};
        for (int r = 0; r < 4; r++) {
            for (int64_t d = d8; d < HD; d++)
                s[r] += q[d] * load1_kv(kind, K, j + r, HD, d);
            sc[j + r] = s[r] * scale;
        }
    }
    for (; j < n; j++) {
        __m256 a = _mm256_setzero_ps();
        for (int64_t d = 0; d < d8; d += 8)
            a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8_kv(kind, K, j, HD, d), a);
        float s = hsum8(a);
        for (int64_t d = d8; d < HD; d++)
            s += q[d] * load1_kv(kind, K, j, HD, d);
        sc[j] = s * scale;
    }
}

/* out[d0..d0+8*W) over all n rows, W accumulators in registers */
#define MIX_BLOCK(W)                                                                               \
    do {                                                                                           \
        __m256 acc[W];                                                                             \
        for (int w = 0; w < W; w++)                                                                \
            acc[w] = _mm256_setzero_ps();                                                          \
        for (int64_t j = 0; j < n; j++) {                                                          \
            __m256 pj = _mm256_set1_ps(p[j]);                                                      \
            for (int w = 0; w < W; w++)                                                            \
                acc[w] = _mm256_fmadd_ps(pj, load8_kv(kind, V, j, HD, d0 + 8 * w), acc[w]);        \
        }                                                                                          \
        for (int w = 0; w < W; w++)                                                                \
            _mm256_storeu_ps(out + d0 + 8 * w, acc[w]);                                            \
    } while (0)

AVX2_INLINE void mix(int kind, const float *p, const void *V, int64_t n, int64_t HD, float *out) {
    const int64_t d8 = HD & ~(int64_t)7;
    int64_t d0 = 0;
    for (; d0 + 64 <= d8; d0 += 64)
        MIX_BLOCK(8);
    for (; d0 + 8 <= d8; d0 += 8)
        MIX_BLOCK(1);
    for (int64_t d = d8; d < HD; d++) {
        float s = 0.0f;
        for (int64_t j = 0; j < n; j++)
            s += p[j] * load1_kv(kind, V, j, HD, d);
        out[d] = s;
    }
}

static int kind_of(nmlx_dtype dt) {
    return dt == NMLX_DT_F16 ? KIND_F16 : dt == NMLX_DT_BF16 ? KIND_BF16 : KIND_F32;
}

void nmlx_avx2_attn_scores(nmlx_dtype dt, const float *q, const void *K, int64_t n, int64_t HD,
                           float scale, float *sc);
void nmlx_avx2_attn_scores(nmlx_dtype dt, const float *q, const void *K, int64_t n, int64_t HD,
                           float scale, float *sc) {
    switch (kind_of(dt)) { /* literal kinds: one specialised loop each */
    case KIND_F16: scores(KIND_F16, q, K, n, HD, scale, sc); break;
    case KIND_BF16: scores(KIND_BF16, q, K, n, HD, scale, sc); break;
    default: scores(KIND_F32, q, K, n, HD, scale, sc); break;
    }
}

void nmlx_avx2_attn_mix(nmlx_dtype dt, const float *p, const void *V, int64_t n, int64_t HD,
                        float *out);
void nmlx_avx2_attn_mix(nmlx_dtype dt, const float *p, const void *V, int64_t n, int64_t HD,
                        float *out) {
    switch (kind_of(dt)) {
    case KIND_F16: mix(KIND_F16, p, V, n, HD, out); break;
    case KIND_BF16: mix(KIND_BF16, p, V, n, HD, out); break;
    default: mix(KIND_F32, p, V, n, HD, out); break;
    }
}
