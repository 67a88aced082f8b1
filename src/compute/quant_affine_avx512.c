/* AVX-512 (F/BW/VL/DQ) MLX-affine quantizer kernel (see quant_affine.h):
 * 16 elements per step; max/min keep the reference's NaN handling
 * (vmaxps(w, acc) keeps acc when w is NaN, like `if (w > hi) hi = w`), the
 * codes are vdivps + vrndscaleps (nearest even, like rintf) + clamp.
 * Bits 4/8 pack in registers; other widths through nmlx_qaffine_pack. */
#if defined(__x86_64__)
#include "compute/quant_affine.h"

#include <immintrin.h>

#define INLINE static inline __attribute__((always_inline))

INLINE __m512 load16(nmlx_dtype xdt, const void *src, int64_t i) {
    if (xdt == NMLX_DT_BF16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)src + i));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    if (xdt == NMLX_DT_F16)
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)src + i)));
    return _mm512_loadu_ps((const float *)src + i);
}

INLINE float hmax16(__m512 v) { /* no NaN in v: any order gives the reference's value */
    __m256 a = _mm256_max_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 b = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_max_ps(b, _mm_movehl_ps(b, b));
    b = _mm_max_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

INLINE float hmin16(__m512 v) {
    __m256 a = _mm256_min_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 b = _mm_min_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    b = _mm_min_ps(b, _mm_movehl_ps(b, b));
    b = _mm_min_ss(b, _mm_movehdup_ps(b));
    return _mm_cvtss_f32(b);
}

/* One group of gs (32/64/128) elements. */
INLINE void group(int bits, int gs, nmlx_dtype xdt, const void *src, uint8_t *out, float *scale,
                  float *bias) {
    __m512 w[8];
    __m512 hi = _mm512_set1_ps(-INFINITY), lo = _mm512_set1_ps(INFINITY);
    const int nv = gs / 16;
    for (int v = 0; v < nv; v++) {
        w[v] = load16(xdt, src, 16 * v);
        hi = _mm512_max_ps(w[v], hi);
        lo = _mm512_min_ps(w[v], lo);
    }
    float s, b;
    nmlx_qaffine_params(hmin16(lo), hmax16(hi), bits, &s, &b);
    *scale = s;
    *bias = b;
    const __m512 vs = _mm512_set1_ps(s), vb = _mm512_set1_ps(b), zero = _mm512_setzero_ps();
    const __m512 nbins = _mm512_set1_ps((float)((1 << bits) - 1));
    uint8_t codes[128];
    for (int v = 0; v < nv; v++) {
        __m512 q = _mm512_roundscale_ps(_mm512_div_ps(_mm512_sub_ps(w[v], vb), vs),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q = _mm512_min_ps(_mm512_max_ps(q, zero), nbins); /* NaN -> 0, as fmaxf(NaN, 0) */
        __m512i c = _mm512_cvttps_epi32(q);
        if (bits == 8) {
            _mm_storeu_si128((__m128i *)(out + 16 * v), _mm512_cvtepi32_epi8(c));
        } else if (bits == 4) { /* pairs (c0, c1) of a 64-bit lane -> c0 | c1 << 4 */
            __m512i p = _mm512_or_si512(c, _mm512_srli_epi64(c, 28));
            _mm_storel_epi64((__m128i *)(out + 8 * v), _mm512_cvtepi64_epi8(p));
        } else {
            _mm_storeu_si128((__m128i *)(codes + 16 * v), _mm512_cvtepi32_epi8(c));
        }
    }
    if (bits != 8 && bits != 4) nmlx_qaffine_pack_any(codes, gs, bits, out);
}

#define QAFFINE_ENTRY nmlx_qaffine_avx512
#include "compute/quant_affine_entry.h"
#endif
