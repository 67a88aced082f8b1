/* AVX2+FMA quantized kernels (MLX affine, MXFP4; docs/quantization.md); the
 * portable reference is nmlx_quant_dequant_row + the portable matmul.
 *
 * Mat-vec (decode), W (D, N) packed @ x (N,) -> y (D,), rows [d0, d1):
 *   y[d] = sum_g s[d,g] * (q[d,g,:] . x[g,:]) + b[d,g] * sum(x[g,:])
 * so the packed row is read once and never widened to memory; sum(x) per
 * group is computed once per call. Bits 4/8 and MXFP4 (matvec_planar): four
 * rows per pass on x reordered into the nibbles' even/odd order; bits 2
 * unpack 8 codes per shift+mask; 3/5/6 widen one group at a time on the
 * stack (still no whole-matrix dequantization). The avx512 set has its own
 * mat-vec and prefill for 4/8-bit and MXFP4 (quant_avx512.c).
 * Row dequantization (prefill): W[row, k0:k0+n] -> f32 for the blocked
 * mat-mat in matmul_avx2.c (and quant_avx512.c's panels for other widths). */
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
                _mm_prefetch((const char *)row + (k + 4 * gs) * BITS / 8, NMLX_PF_STREAM);        \
                float s = nmlx_load_f32(sdt, w->scales.data, gi);                              \
                float b = nmlx_load_f32(sdt, w->biases.data, gi);                              \
                acc = _mm256_fmadd_ps(_mm256_set1_ps(s), group_dot(row, k, gs, BITS, x + k),   \
                                      acc);                                                    \
                bsum += b * xsum[(k - c0) / gs];                                               \
            }                                                                                  \
            y[d] += hsum8(acc) + bsum;                                                         \
        }                                                                                      \
    }
MATVEC_BITS(matvec_q2, 2) /* 4 and 8 bits: matvec_planar below */

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

/* ---- bits 4/8 and MXFP4: 4 rows per pass on planar x (as quant_avx512.c) ----
 * 4-bit: 8 bytes (16 codes) widen to 8 dword lanes; low nibbles are the
 * even elements, high nibbles the odd ones, so x is reordered once per call
 * into [8 even, 8 odd] per 16 elements. MXFP4 codes go through an 8-entry
 * magnitude table (vpermps reads the low 3 bits) plus the sign bit. */

enum { RB2 = 4, PF_ROWS2 = 8 };

/* f32 of n scale/bias elements from i0 (F32/F16/BF16, U8 E8M0). */
static void load_f32s2(nmlx_dtype dt, const void *p, size_t i0, int64_t n, float *dst) {
    int64_t i = 0;
    if (dt == NMLX_DT_BF16)
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8_bf16((const uint16_t *)p + i0 + i));
    else if (dt == NMLX_DT_F16)
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8_f16((const uint16_t *)p + i0 + i));
    for (; i < n; i++)
        dst[i] = dt == NMLX_DT_U8 ? nmlx_e8m0_value(((const uint8_t *)p)[i0 + i])
                                  : nmlx_load_f32(dt, p, i0 + (size_t)i);
}

AVX2_INLINE __m256 fp4_8(__m256i c, __m256 mag) { /* c: codes 0..15 per lane */
    __m256 m = _mm256_permutevar8x32_ps(mag, c);
    __m256i sign = _mm256_and_si256(_mm256_slli_epi32(c, 28), _mm256_set1_epi32((int)0x80000000u));
    return _mm256_xor_ps(m, _mm256_castsi256_ps(sign));
}

AVX2_INLINE void rows_dot2(int R, int BITS, int GS, bool FP4, const uint8_t *const *rows,
                           int64_t pf, const float *xp, const float *sc, int64_t ng, __m256 mag,
                           __m256 *acc) {
    for (int64_t g = 0; g < ng; g++) {
        __m256 ga[RB2];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            ga[r] = _mm256_setzero_ps();
            _mm_prefetch((const char *)rows[r] + g * GS * BITS / 8 + pf, NMLX_PF_STREAM);
        }
        if (BITS == 4) {
#pragma GCC unroll 8
            for (int j = 0; j < GS / 16; j++) {
                const int64_t c = g * (GS / 16) + j; /* 16-element chunk */
                __m256 x0 = _mm256_loadu_ps(xp + 16 * c), x1 = _mm256_loadu_ps(xp + 16 * c + 8);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) {
                    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(rows[r] + 8 * c)));
                    __m256i lo = _mm256_and_si256(v, _mm256_set1_epi32(15)), hi = _mm256_srli_epi32(v, 4);
                    __m256 fl = FP4 ? fp4_8(lo, mag) : _mm256_cvtepi32_ps(lo);
                    __m256 fh = FP4 ? fp4_8(hi, mag) : _mm256_cvtepi32_ps(hi);
                    ga[r] = _mm256_fmadd_ps(fl, x0, ga[r]);
                    ga[r] = _mm256_fmadd_ps(fh, x1, ga[r]);
                }
            }
        } else {
#pragma GCC unroll 16
            for (int j = 0; j < GS / 8; j++) {
                const int64_t c = g * (GS / 8) + j; /* 8-element chunk */
                __m256 xv = _mm256_loadu_ps(xp + 8 * c);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++)
                    ga[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
                                                _mm_loadl_epi64((const __m128i *)(rows[r] + 8 * c)))),
                                            xv, ga[r]);
            }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(sc[r * ng + g]), ga[r], acc[r]);
    }
}

typedef void (*rows2_fn)(const uint8_t *const *, int64_t, const float *, const float *, int64_t,
                         __m256, __m256 *);
#define ROWS2_FN(NAME, R, BITS, GS, FP4)                                                       \
    static void NAME(const uint8_t *const *rows, int64_t pf, const float *xp, const float *sc, \
                     int64_t ng, __m256 mag, __m256 *acc) {                                    \
        rows_dot2(R, BITS, GS, FP4, rows, pf, xp, sc, ng, mag, acc);                           \
    }
ROWS2_FN(r4_4_32, 4, 4, 32, false) ROWS2_FN(r4_4_64, 4, 4, 64, false) ROWS2_FN(r4_4_128, 4, 4, 128, false)
ROWS2_FN(r1_4_32, 1, 4, 32, false) ROWS2_FN(r1_4_64, 1, 4, 64, false) ROWS2_FN(r1_4_128, 1, 4, 128, false)
ROWS2_FN(r4_8_32, 4, 8, 32, false) ROWS2_FN(r4_8_64, 4, 8, 64, false) ROWS2_FN(r4_8_128, 4, 8, 128, false)
ROWS2_FN(r1_8_32, 1, 8, 32, false) ROWS2_FN(r1_8_64, 1, 8, 64, false) ROWS2_FN(r1_8_128, 1, 8, 128, false)
ROWS2_FN(r4_fp4, 4, 4, 32, true) ROWS2_FN(r1_fp4, 1, 4, 32, true)

/* [0: 4-bit, 1: 8-bit, 2: mxfp4][gs index][R == 4] */
static const rows2_fn rows2_fns[3][3][2] = {
    {{r1_4_32, r4_4_32}, {r1_4_64, r4_4_64}, {r1_4_128, r4_4_128}},
    {{r1_8_32, r4_8_32}, {r1_8_64, r4_8_64}, {r1_8_128, r4_8_128}},
    {{r1_fp4, r4_fp4}, {r1_fp4, r4_fp4}, {r1_fp4, r4_fp4}},
};

static bool planar_weight(const nmlx_weight *w) {
    if (w->mode == NMLX_QUANT_MXFP4) return w->bits == 4 && w->group_size == 32;
    return w->mode == NMLX_QUANT_AFFINE && (w->bits == 4 || w->bits == 8) &&
           (w->group_size == 32 || w->group_size == 64 || w->group_size == 128);
}

/* the four horizontal sums of a, b, c, d */
AVX2_INLINE __m128 hsum4x8(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

static void matvec_planar(const nmlx_weight *w, const float *x, float *y, int64_t d0, int64_t d1) {
    const int bits = w->bits, gs = w->group_size;
    const bool affine = w->mode == NMLX_QUANT_AFFINE;
    const int64_t N = w->cols, G = N / gs, row_bytes = nmlx_quant_row_words(N, bits) * 4;
    const uint8_t *packed = (const uint8_t *)w->w.data;
    float xp[CK] __attribute__((aligned(32)));
    float xsum[CK / 32], sc[RB2 * (CK / 32)], bi[RB2 * (CK / 32)];
    const __m256 mag = _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f);
    const rows2_fn *fns = rows2_fns[affine ? bits == 8 : 2][gs == 32 ? 0 : gs == 64 ? 1 : 2];
    const int64_t pf = PF_ROWS2 * row_bytes;
    const size_t ses = nmlx_dtype_size(w->scales.dtype);
    const __m256i ev = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);

    for (int64_t d = d0; d < d1; d++) y[d] = 0.0f;
    for (int64_t c0 = 0; c0 < N; c0 += CK) {
        const int64_t nc = N - c0 < CK ? N - c0 : CK, ng = nc / gs;
        const float *xv = x + c0;
        if (bits == 4) { /* per 16 elements: 8 even, then 8 odd */
            for (int64_t i = 0; i < nc; i += 16) {
                __m256 a = _mm256_permutevar8x32_ps(_mm256_loadu_ps(x + c0 + i), ev);
                __m256 b = _mm256_permutevar8x32_ps(_mm256_loadu_ps(x + c0 + i + 8), ev);
                _mm256_storeu_ps(xp + i, _mm256_permute2f128_ps(a, b, 0x20));
                _mm256_storeu_ps(xp + i + 8, _mm256_permute2f128_ps(a, b, 0x31));
            }
            xv = xp;
        }
        if (affine)
            for (int64_t g = 0; g < ng; g++) {
                __m256 a = _mm256_setzero_ps();
                for (int j = 0; j < gs; j += 8) a = _mm256_add_ps(a, _mm256_loadu_ps(x + c0 + g * gs + j));
                xsum[g] = hsum8(a);
            }
        for (int64_t d = d0; d < d1;) {
            const int R = d1 - d >= RB2 ? RB2 : 1;
            const uint8_t *rows[RB2];
            __m256 acc[RB2];
            for (int64_t o = 0; o < R * G * (int64_t)ses; o += 64) { /* scales/biases ahead */
                size_t at = (size_t)((d + PF_ROWS2) * G) * ses + (size_t)o;
                _mm_prefetch((const char *)w->scales.data + at, NMLX_PF_STREAM);
                if (affine) _mm_prefetch((const char *)w->biases.data + at, NMLX_PF_STREAM);
            }
            if (ng == G) { /* whole rows: the R rows' scales/biases are contiguous */
                load_f32s2(w->scales.dtype, w->scales.data, (size_t)(d * G), R * G, sc);
                if (affine) load_f32s2(w->biases.dtype, w->biases.data, (size_t)(d * G), R * G, bi);
            } else {
                for (int r = 0; r < R; r++) {
                    size_t gi = (size_t)((d + r) * G + c0 / gs);
                    load_f32s2(w->scales.dtype, w->scales.data, gi, ng, sc + r * ng);
                    if (affine) load_f32s2(w->biases.dtype, w->biases.data, gi, ng, bi + r * ng);
                }
            }
            for (int r = 0; r < R; r++) {
                rows[r] = packed + (d + r) * row_bytes + c0 * bits / 8;
                acc[r] = _mm256_setzero_ps();
                if (affine) { /* the bias half, folded into the accumulator */
                    int64_t g = 0;
                    for (; g + 8 <= ng; g += 8)
                        acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(bi + r * ng + g),
                                                 _mm256_loadu_ps(xsum + g), acc[r]);
                    float t = 0.0f;
                    for (; g < ng; g++) t += bi[r * ng + g] * xsum[g];
                    acc[r] = _mm256_add_ps(acc[r], _mm256_setr_ps(t, 0, 0, 0, 0, 0, 0, 0));
                }
            }
            fns[R == RB2](rows, pf, xv, sc, ng, mag, acc);
            if (R == RB2)
                _mm_storeu_ps(y + d, _mm_add_ps(hsum4x8(acc[0], acc[1], acc[2], acc[3]),
                                                _mm_loadu_ps(y + d)));
            else
                y[d] += hsum8(acc[0]);
            d += R;
        }
    }
}

void nmlx_avx2_quant_matvec(const nmlx_weight *w, const float *x, float *y, int64_t d0,
                            int64_t d1);
void nmlx_avx2_quant_matvec(const nmlx_weight *w, const float *x, float *y, int64_t d0,
                            int64_t d1) {
    if (planar_weight(w)) {
        matvec_planar(w, x, y, d0, d1);
        return;
    }
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
        matvec_q2(w, x, xsum, c0, nc, y, d0, d1); /* fast_bits and not planar: 2 bits */
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
