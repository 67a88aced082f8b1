/* Helpers shared by the AVX-512 quantized kernels (quant_avx512.c, the f32
 * set, and quant_bf16_avx512.c, the AVX512_BF16 set). Included only by
 * files compiled for AVX-512; everything here is static inline. */
#ifndef NMLX_QUANT_AVX512_H
#define NMLX_QUANT_AVX512_H

#include "compute/cpu/cpu_internal.h"
#include "compute/cpu/quant_kernels.h"
#include "compute/quant.h"

#include <immintrin.h>
#include <stdbool.h>
#include <string.h>

#define AVX512_INLINE static inline __attribute__((always_inline))

/* Prefetch the codes, scales and biases of W rows [r0, r1) x columns [k0,
 * k0 + nk) into L2 while the AMX tiles work on the current panel
 * (quant_amx.c, quant_int8_amx.c): a panel's rows are a few hundred columns
 * of long rows, a stride the hardware prefetcher does not follow, so
 * unprefetched the panel packing waited on memory (most of its time at 8
 * bits). */
static inline void quant_prefetch_panel(const nmlx_weight *w, int64_t r0, int64_t r1, int64_t k0,
                                        int64_t nk) {
    const int64_t row_bytes = nmlx_quant_row_words(w->cols, w->bits) * 4;
    const int64_t b0 = k0 * w->bits / 8 / 64 * 64, b1 = (k0 + nk) * w->bits / 8;
    const int64_t G = w->cols / w->group_size, g0 = k0 / w->group_size;
    const size_t ss = nmlx_dtype_size(w->scales.dtype);
    const size_t bs = w->mode == NMLX_QUANT_AFFINE ? nmlx_dtype_size(w->biases.dtype) : 0;
    for (int64_t r = r0; r < r1; r++) {
        const char *q = (const char *)w->w.data + r * row_bytes;
        for (int64_t b = b0; b < b1; b += 64)
            _mm_prefetch(q + b, _MM_HINT_T1);
        _mm_prefetch((const char *)w->scales.data + (size_t)(r * G + g0) * ss, _MM_HINT_T1);
        if (bs) _mm_prefetch((const char *)w->biases.data + (size_t)(r * G + g0) * bs, _MM_HINT_T1);
    }
}

static inline __mmask16 first_n(int64_t n) {
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
}

/* 16 elements [i0, i0 + 16) of a scale/bias buffer as f32 (those outside
 * the mask m zero): F32, F16, BF16, or U8 E8M0 (2^(e-127); e = 0 decodes
 * as 2^-127, e = 255 as inf). */
static inline __m512 load16(nmlx_dtype dt, const void *p, size_t i0, __mmask16 m) {
    switch (dt) {
    case NMLX_DT_BF16:
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i0)), 16));
    case NMLX_DT_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i0));
    case NMLX_DT_U8: {
        __m512i e = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, (const uint8_t *)p + i0));
        __m512i bitsv = _mm512_slli_epi32(e, 23);
        __mmask16 z = _mm512_mask_cmpeq_epi32_mask(m, e, _mm512_setzero_si512());
        return _mm512_castsi512_ps(_mm512_mask_mov_epi32(bitsv, z, _mm512_set1_epi32(0x00400000)));
    }
    default: return _mm512_maskz_loadu_ps(m, (const float *)p + i0);
    }
}

/* dst[0..n) = f32 of elements [i0, i0+n) of a scale/bias buffer (load16) */
static inline void load_f32s(nmlx_dtype dt, const void *p, size_t i0, int64_t n, float *dst) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = first_n(n - i);
        _mm512_mask_storeu_ps(dst + i, m, load16(dt, p, i0 + (size_t)i, m));
    }
}

static inline bool fast_weight(const nmlx_weight *w) {
    if (w->mode == NMLX_QUANT_MXFP4) return w->bits == 4 && w->group_size == 32;
    return w->mode == NMLX_QUANT_AFFINE && (w->bits == 4 || w->bits == 8) &&
           (w->group_size == 32 || w->group_size == 64 || w->group_size == 128);
}

/* the longest segment dequant_seg takes */
enum { QSEG_MAX = 256 };

/* dst[0..nk) = W[row, k0..k0+nk) for fast_weight() weights; k0 and nk are
 * multiples of the group size. */
static inline void dequant_seg(const nmlx_weight *w, int64_t row, int64_t k0, int64_t nk,
                               __m512 lut, float *dst) {
    const int gs = w->group_size, bits = w->bits;
    const int64_t G = w->cols / gs;
    const uint8_t *q = (const uint8_t *)w->w.data + row * nmlx_quant_row_words(w->cols, bits) * 4;
    float s[QSEG_MAX / 32], b[QSEG_MAX / 32];
    const int64_t ng = nk / gs, g0 = row * G + k0 / gs;
    load_f32s(w->scales.dtype, w->scales.data, (size_t)g0, ng, s);
    if (w->mode == NMLX_QUANT_AFFINE)
        load_f32s(w->biases.dtype, w->biases.data, (size_t)g0, ng, b);
    else
        memset(b, 0, sizeof b);
    for (int64_t g = 0; g < ng; g++) {
        const __m512 sv = _mm512_set1_ps(s[g]), bv = _mm512_set1_ps(b[g]);
        for (int j = 0; j < gs; j += 16) {
            const int64_t k = k0 + g * gs + j;
            __m512 v;
            if (bits == 8) {
                v = _mm512_cvtepi32_ps(
                    _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(q + k))));
            } else { /* 8 bytes -> 16 nibbles in element order (low nibble first) */
                __m128i by = _mm_loadl_epi64((const __m128i *)(q + k / 2));
                __m128i lo = _mm_and_si128(by, _mm_set1_epi8(15));
                __m128i hi = _mm_and_si128(_mm_srli_epi16(by, 4), _mm_set1_epi8(15));
                v = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)), lut);
            }
            _mm512_storeu_ps(dst + g * gs + j, _mm512_fmadd_ps(v, sv, bv));
        }
    }
}

/* The f32 mat-vec (quant_avx512.c) and its few-token form
 * (quant_few_avx512.c) sum x in column chunks of this many elements; both
 * must use the same chunks to give the same bits. */
#define NMLX_QMV_CK 4096

/* lanes summing to a . b (n elements) */
static inline __m512 dot_lanes(const float *a, const float *b, int64_t n) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = first_n(n - i);
        acc =
            _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
    }
    return acc;
}

/* x[0..n) (n % 32 == 0) -> per 32-element chunk: its 16 even elements, then its 16 odd ones. */
static inline void planar(const float *x, int64_t n, float *xp) {
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_add_epi32(ev, _mm512_set1_epi32(1));
    for (int64_t i = 0; i < n; i += 32) {
        __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        _mm512_storeu_ps(xp + i, _mm512_permutex2var_ps(a, ev, b));
        _mm512_storeu_ps(xp + i + 16, _mm512_permutex2var_ps(a, od, b));
    }
}

/* the four horizontal sums of a, b, c, d */
static inline __m128 hsum4x16(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
    __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
    __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a8, b8), _mm256_hadd_ps(c8, d8));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* 16x16 transpose: out[c * os + r] = in[r * is + c]. */
static inline void transpose16(const float *in, int64_t is, float *out, int64_t os) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++)
        r[i] = _mm512_loadu_ps(in + i * is);
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_castpd_ps(
            _mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 1] = _mm512_castpd_ps(
            _mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 2] = _mm512_castpd_ps(
            _mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
        r[i + 3] = _mm512_castpd_ps(
            _mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
    /* r[4q + j] holds rows 4q..4q+3, column j of each 4-column block (lanes: block, row) */
    for (int j = 0; j < 4; j++) {
        __m512 a = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88),
               b = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xdd);
        __m512 c = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88),
               d = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xdd);
        t[j] = _mm512_shuffle_f32x4(a, c, 0x88);      /* column j      */
        t[8 + j] = _mm512_shuffle_f32x4(a, c, 0xdd);  /* column 8 + j  */
        t[4 + j] = _mm512_shuffle_f32x4(b, d, 0x88);  /* column 4 + j  */
        t[12 + j] = _mm512_shuffle_f32x4(b, d, 0xdd); /* column 12 + j */
    }
    for (int i = 0; i < 16; i++)
        _mm512_storeu_ps(out + i * os, t[i]);
}

#endif
