/* A quantized weight row's codes, one byte each, for the integer-activation
 * prefills (quant_int8_avx512.c, quant_int16_avx2.c): SSSE3 only, included
 * by files compiled for AVX2 or AVX-512; static inline. */
#ifndef NMLX_QUANT_CODES_H
#define NMLX_QUANT_CODES_H

#include "compute/quant.h"

#include <immintrin.h>
#include <string.h>

/* dst[0..nk) = the codes of row `row`, columns [k0, k0 + nk), one byte each
 * (MXFP4: 12 + 2 value, in 0..24). */
static inline void unpack_codes(const nmlx_weight *w, int64_t row, int64_t k0, int64_t nk,
                                uint8_t *dst) {
    const uint8_t *q =
        (const uint8_t *)w->w.data + row * nmlx_quant_row_words(w->cols, w->bits) * 4;
    if (w->bits == 8) {
        memcpy(dst, q + k0, (size_t)nk);
        return;
    }
    if (w->bits != 4) { /* 2, 3, 5, 6 bits: the packed bit stream, code by code */
        for (int64_t k = 0; k < nk; k++)
            dst[k] = (uint8_t)nmlx_quant_code(q, k0 + k, w->bits);
        return;
    }
    /* MXFP4: E2M1 magnitudes doubled {0,1,2,3,4,6,8,12}, sign in bit 3, offset by 12 */
    const __m128i lut =
        w->mode == NMLX_QUANT_MXFP4
            ? _mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0)
            : _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m128i lo4 = _mm_set1_epi8(15);
    for (int64_t k = 0; k < nk; k += 32) {
        __m128i by = _mm_loadu_si128((const __m128i *)(q + (k0 + k) / 2));
        __m128i lo = _mm_shuffle_epi8(lut, _mm_and_si128(by, lo4));
        __m128i hi = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(by, 4), lo4));
        _mm_storeu_si128((__m128i *)(dst + k), _mm_unpacklo_epi8(lo, hi));
        _mm_storeu_si128((__m128i *)(dst + k + 16), _mm_unpackhi_epi8(lo, hi));
    }
}

#endif
