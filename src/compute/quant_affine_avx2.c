/* AVX2 (+F16C) MLX-affine quantizer kernel (see quant_affine.h): 8
 * elements per step, the same operations as quant_affine_avx512.c
 * (vmaxps(w, acc) / vminps(w, acc), vdivps, vroundps nearest, clamp); the
 * codes are narrowed to bytes 32 at a time and packed by
 * nmlx_qaffine_pack. */
#if defined(__x86_64__)
#include "compute/quant_affine.h"

#include <immintrin.h>

#define INLINE static inline __attribute__((always_inline))

INLINE __m256 load8(nmlx_dtype xdt, const void *src, int64_t i) {
    if (xdt == NMLX_DT_BF16) {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)src + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    if (xdt == NMLX_DT_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)src + i)));
    return _mm256_loadu_ps((const float *)src + i);
}

INLINE float hmax8(__m256 v) { /* no NaN in v: any order gives the reference's value */
    __m128 b = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    b = _mm_max_ps(b, _mm_movehl_ps(b, b));
    b = _mm_max_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

INLINE float hmin8(__m256 v) {
    __m128 b = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    b = _mm_min_ps(b, _mm_movehl_ps(b, b));
    b = _mm_min_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

/* One group of gs (32/64/128) elements. */
INLINE void group(int bits, int gs, nmlx_dtype xdt, const void *src, uint8_t *out, float *scale,
                  float *bias) {
    __m256 w[16];
    __m256 hi = _mm256_set1_ps(-INFINITY), lo = _mm256_set1_ps(INFINITY);
    const int nv = gs / 8;
    for (int v = 0; v < nv; v++) {
        w[v] = load8(xdt, src, 8 * v);
        hi = _mm256_max_ps(w[v], hi);
        lo = _mm256_min_ps(w[v], lo);
    }
    float s, b;
    nmlx_qaffine_params(hmin8(lo), hmax8(hi), bits, &s, &b);
    *scale = s;
    *bias = b;
    const __m256 vs = _mm256_set1_ps(s), vb = _mm256_set1_ps(b), zero = _mm256_setzero_ps();
    const __m256 nbins = _mm256_set1_ps((float)((1 << bits) - 1));
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    uint8_t codes[128];
    uint8_t *dst = bits == 8 ? out : codes;
    for (int v = 0; v < nv; v += 4) {
        __m256i c[4];
        for (int u = 0; u < 4; u++) {
            __m256 q = _mm256_round_ps(_mm256_div_ps(_mm256_sub_ps(w[v + u], vb), vs),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            q = _mm256_min_ps(_mm256_max_ps(q, zero), nbins); /* NaN -> 0, as fmaxf(NaN, 0) */
            c[u] = _mm256_cvttps_epi32(q);
        }
        /* 4 x 8 int32 (0..255) -> 32 bytes in element order */
        __m256i ab = _mm256_packs_epi32(c[0], c[1]), cd = _mm256_packs_epi32(c[2], c[3]);
        __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), order);
        _mm256_storeu_si256((__m256i *)(dst + 8 * v), bytes);
    }
    if (bits != 8) nmlx_qaffine_pack_any(codes, gs, bits, out);
}

#define QAFFINE_ENTRY nmlx_qaffine_avx2
#include "compute/quant_affine_entry.h"
#endif
