/* The fast MLX-affine row quantizer behind nmlx_quant_quantize_row,
 * quantize-on-load and `nmlx convert` (docs/quantization.md). Its output
 * (packed codes, scales, biases) is byte-identical to the scalar reference
 * nmlx_quant_quantize_row_ref: every element goes through the same f32
 * operations in the same order (max/min, then (w - bias) / scale, rint,
 * clamp; there is no multiply-add to contract). Kernels: portable C, AVX2
 * (quant_affine_avx2.c) and AVX-512 (quant_affine_avx512.c), chosen by cpuid
 * (NMLX_CPU=portable|avx2|avx512 caps the choice, as for the CPU backend).
 * Sources F32/F16/BF16 are widened to f32 a group at a time. */
#ifndef NMLX_QUANT_AFFINE_H
#define NMLX_QUANT_AFFINE_H

#include "compute/tensor.h"
#include "compute/threadpool.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* gs (group size) is 32, 64 or 128 everywhere below. */

/* Groups [0, ng) of gs elements of src (F32/F16/BF16 `xdt`) -> packed
 * (ng * gs * bits / 8 bytes, every byte written) and each group's f32
 * scale and bias. */
typedef void (*nmlx_qaffine_fn)(int bits, int gs, nmlx_dtype xdt, const void *src, int64_t ng,
                                uint8_t *packed, float *scale, float *bias);

void nmlx_qaffine_portable(int bits, int gs, nmlx_dtype xdt, const void *src, int64_t ng,
                           uint8_t *packed, float *scale, float *bias);
#if defined(__x86_64__)
void nmlx_qaffine_avx2(int bits, int gs, nmlx_dtype xdt, const void *src, int64_t ng,
                       uint8_t *packed, float *scale, float *bias);
void nmlx_qaffine_avx512(int bits, int gs, nmlx_dtype xdt, const void *src, int64_t ng,
                         uint8_t *packed, float *scale, float *bias);
#endif

/* "portable", "avx2", "avx512": that kernel if this CPU runs it, else
 * NULL; isa NULL: the best one (cached). */
nmlx_qaffine_fn nmlx_qaffine_kernel(const char *isa);

/* One row, as nmlx_quant_quantize_row (affine) but from an F32/F16/BF16
 * row; scales/biases stored in sdt (F32/F16/BF16). k NULL: the best kernel. */
void nmlx_qaffine_row(nmlx_qaffine_fn k, int bits, int gs, nmlx_dtype xdt, const void *src,
                      int64_t cols, uint32_t *packed, void *scales, void *biases, nmlx_dtype sdt);

/* Rows [0, rows) of src (row stride cols elements) -> packed rows of
 * cols*bits/32 words, scales/biases rows of cols/gs, the rows split over
 * `pool` (NULL: this thread). */
void nmlx_qaffine_rows(nmlx_pool *pool, nmlx_qaffine_fn k, int bits, int gs, nmlx_dtype xdt,
                       const void *src, int64_t rows, int64_t cols, uint32_t *packed, void *scales,
                       void *biases, nmlx_dtype sdt);

/* ---- shared by the kernels (each compiles them for its ISA) ---- */

/* A group's scale and bias from its min `lo` and max `hi`: the reference's
 * scalar code, unchanged. */
static inline void nmlx_qaffine_params(float lo, float hi, int bits, float *scale_out,
                                       float *bias_out) {
    const float nbins = (float)((1 << bits) - 1), eps = 1e-7f;
    int lo_edge = fabsf(lo) > fabsf(hi);
    float scale = fmaxf((hi - lo) / nbins, eps);
    if (!lo_edge) scale = -scale;
    float edge = lo_edge ? lo : hi, bias = 0.0f;
    float q0 = rintf(edge / scale);
    if (q0 != 0.0f) {
        scale = edge / q0;
        bias = edge;
    }
    *scale_out = scale;
    *bias_out = bias;
}

/* Packs n (a multiple of 8) codes of `bits` bits, one per byte, into
 * n * bits / 8 bytes of the little-endian bit stream: 8 codes -> `bits`
 * bytes by merging neighbours in a 64-bit word. */
static inline __attribute__((always_inline)) void nmlx_qaffine_pack(const uint8_t *codes, int n,
                                                                    int bits, uint8_t *out) {
    const uint64_t b = (uint64_t)bits;
    /* bits of each 16/32/64-bit unit that the upper half lands in */
    const uint64_t m1 =
        0x0001000100010001ull * ((((uint64_t)1 << (2 * b)) - 1) & ~((1ull << b) - 1));
    const uint64_t m2 =
        0x0000000100000001ull * ((((uint64_t)1 << (4 * b)) - 1) & ~((1ull << (2 * b)) - 1));
    const uint64_t m3 =
        (b == 8 ? ~0ull : (((uint64_t)1 << (8 * b)) - 1)) & ~((1ull << (4 * b)) - 1);
    for (int i = 0; i < n; i += 8) {
        uint64_t x;
        memcpy(&x, codes + i, 8);
        x = (x & 0x00ff00ff00ff00ffull) | ((x >> (8 - b)) & m1);
        x = (x & 0x0000ffff0000ffffull) | ((x >> (16 - 2 * b)) & m2);
        x = (x & 0x00000000ffffffffull) | ((x >> (32 - 4 * b)) & m3);
        memcpy(out + (size_t)(i / 8) * b, &x, b); /* little-endian: the low `bits` bytes */
    }
}

/* nmlx_qaffine_pack with `bits` a constant in each branch (so it folds). */
static inline __attribute__((always_inline)) void nmlx_qaffine_pack_any(const uint8_t *codes, int n,
                                                                        int bits, uint8_t *out) {
    switch (bits) {
    case 2: nmlx_qaffine_pack(codes, n, 2, out); break;
    case 3: nmlx_qaffine_pack(codes, n, 3, out); break;
    case 4: nmlx_qaffine_pack(codes, n, 4, out); break;
    case 5: nmlx_qaffine_pack(codes, n, 5, out); break;
    case 6: nmlx_qaffine_pack(codes, n, 6, out); break;
    default: memcpy(out, codes, (size_t)n); break;
    }
}

#endif
