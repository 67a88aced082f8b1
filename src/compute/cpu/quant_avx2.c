/* AVX2+FMA quantized kernels (MLX affine, docs/quantization.md); the
 * portable reference is nmlx_quant_dequant_row + the portable matmul.
 *
 * Mat-vec (decode), W (D, N) packed @ x (N,) -> y (D,), rows [d0, d1):
 *   y[d] = sum_g s[d,g] * (q[d,g,:] . x[g,:]) + b[d,g] * sum(x[g,:])
 * so the packed row is read once and never widened to memory; sum(x) per
 * group is computed once per call. Bits 2/4/8 unpack in registers (shift +
 * mask, or byte widening); 3/5/6 and MXFP4 widen one group at a time on the
 * stack (still no whole-matrix dequantization).
 * Row dequantization (prefill): W[row, k0:k0+n] -> f32 for the blocked
 * mat-mat in matmul_avx2.c / matmul_avx512.c. */
#include "compute/cpu/cpu_internal.h"
#include "compute/cpu/simd_avx2.h"
#include "compute/quant.h"

enum { CK = 4096 }; /* columns per pass: sum(x) per group stays on the stack */

/* 8 codes of a bits-wide stream starting at element 8*i of `row` (bits 2/4/8). */
AVX2_INLINE __m256 codes8(const uint8_t *row, int64_t i, int bits) {
    if (bits == 8)
        return _mm256_cvtepi32_ps(
            _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + 8 * i))));
    if (bits == 4) {
        uint32_t u;
        __builtin_memcpy(&u, row + 4 * i, 4);
        __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32((int)u),
                                      _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
        return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15)));
    }
    uint16_t u; /* bits == 2 */
    __builtin_memcpy(&u, row + 2 * i, 2);
    __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32((int)u),
                                  _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(3)));
}

static inline bool fast_bits(const nmlx_weight *w) {
    return w->mode == NMLX_QUANT_AFFINE && (w->bits == 2 || w->bits == 4 || w->bits == 8);
}

/* q . x over one group (gs elements starting at element k) for bits 2/4/8. */
AVX2_INLINE __m256 group_dot(const uint8_t *row, int64_t k, int gs, int bits, const float *x) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int64_t i0 = k / 8;
    for (int j = 0; j < gs / 8; j += 2) {
        a0 = _mm256_fmadd_ps(codes8(row, i0 + j, bits), _mm256_loadu_ps(x + 8 * j), a0);
        a1 = _mm256_fmadd_ps(codes8(row, i0 + j + 1, bits), _mm256_loadu_ps(x + 8 * j + 8), a1);
    }
    return _mm256_add_ps(a0, a1);
}

static float dot_avx2(const float *a, const float *b, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float s = hsum8(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

#define MATVEC_BITS(NAME, BITS)                                                                \
    static void NAME(const nmlx_weight *w, const float *x, const float *xsum, int64_t c0,      \
                     int64_t nc, float *y, int64_t d0, int64_t d1) {                           \
        const int gs = w->group_size;                                                          \
        const int64_t words = nmlx_quant_row_words(w->cols, BITS), G = w->cols / gs;           \
        const nmlx_dtype sdt = w->scales.dtype;                                                \
        for (int64_t d = d0; d < d1; d++) {                                                    \
            const uint8_t *row = (const uint8_t *)((const uint32_t *)w->w.data + d * words);   \
            __m256 acc = _mm256_setzero_ps();                                                  \
            float bsum = 0.0f;                                                                 \
            for (int64_t k = c0; k < c0 + nc; k += gs) {                                       \
                size_t gi = (size_t)(d * G + k / gs);                                          \
                _mm_prefetch((const char *)row + (k + 4 * gs) * BITS / 8, _MM_HINT_T0);        \
                float s = nmlx_load_f32(sdt, w->scales.data, gi);                              \
                float b = nmlx_load_f32(sdt, w->biases.data, gi);                              \
                acc = _mm256_fmadd_ps(_mm256_set1_ps(s), group_dot(row, k, gs, BITS, x + k),   \
                                      acc);                                                    \
                bsum += b * xsum[(k - c0) / gs];                                               \
            }                                                                                  \
            y[d] += hsum8(acc) + bsum;                                                         \
        }                                                                                      \
    }
MATVEC_BITS(matvec_q2, 2)
MATVEC_BITS(matvec_q4, 4)
MATVEC_BITS(matvec_q8, 8)

/* Any mode/bits: widen one group on the stack, then dot. */
static void matvec_generic(const nmlx_weight *w, const float *x, int64_t c0, int64_t nc, float *y,
                           int64_t d0, int64_t d1) {
    const int gs = w->group_size;
    float buf[128];
    for (int64_t d = d0; d < d1; d++) {
        float s = 0.0f;
        for (int64_t k = c0; k < c0 + nc; k += gs) {
            nmlx_quant_dequant_row(w, d, k, gs, buf);
            s += dot_avx2(buf, x + k, gs);
        }
        y[d] += s;
    }
}

void nmlx_avx2_quant_matvec(const nmlx_weight *w, const float *x, float *y, int64_t d0,
                            int64_t d1);
void nmlx_avx2_quant_matvec(const nmlx_weight *w, const float *x, float *y, int64_t d0,
                            int64_t d1) {
    const int64_t N = w->cols;
    const int gs = w->group_size;
    float xsum[CK / 32];
    for (int64_t d = d0; d < d1; d++) y[d] = 0.0f;
    for (int64_t c0 = 0; c0 < N; c0 += CK) {
        int64_t nc = N - c0 < CK ? N - c0 : CK;
        if (!fast_bits(w)) {
            matvec_generic(w, x, c0, nc, y, d0, d1);
            continue;
        }
        for (int64_t g = 0; g < nc / gs; g++) {
            __m256 a = _mm256_setzero_ps();
            for (int j = 0; j < gs; j += 8) a = _mm256_add_ps(a, _mm256_loadu_ps(x + c0 + g * gs + j));
            xsum[g] = hsum8(a);
        }
        switch (w->bits) {
        case 2: matvec_q2(w, x, xsum, c0, nc, y, d0, d1); break;
        case 4: matvec_q4(w, x, xsum, c0, nc, y, d0, d1); break;
        default: matvec_q8(w, x, xsum, c0, nc, y, d0, d1); break;
        }
    }
}

/* dst[0..n) = W[row, k0..k0+n) in f32; k0 and n multiples of 8 use the
 * register unpack for bits 2/4/8. */
void nmlx_avx2_quant_row(const nmlx_weight *w, int64_t row, int64_t k0, int64_t n, float *dst);
void nmlx_avx2_quant_row(const nmlx_weight *w, int64_t row, int64_t k0, int64_t n, float *dst) {
    if (!fast_bits(w) || (k0 & 7) || (n & 7)) {
        nmlx_quant_dequant_row(w, row, k0, n, dst);
        return;
    }
    const int bits = w->bits, gs = w->group_size;
    const int64_t words = nmlx_quant_row_words(w->cols, bits), G = w->cols / gs;
    const uint8_t *r = (const uint8_t *)((const uint32_t *)w->w.data + row * words);
    for (int64_t i = 0; i < n; i += 8) {
        int64_t k = k0 + i;
        size_t gi = (size_t)(row * G + k / gs);
        __m256 s = _mm256_set1_ps(nmlx_load_f32(w->scales.dtype, w->scales.data, gi));
        __m256 b = _mm256_set1_ps(nmlx_load_f32(w->biases.dtype, w->biases.data, gi));
        __m256 q = bits == 4 ? codes8(r, k / 8, 4) : bits == 8 ? codes8(r, k / 8, 8) : codes8(r, k / 8, 2);
        _mm256_storeu_ps(dst + i, _mm256_fmadd_ps(q, s, b));
    }
}
