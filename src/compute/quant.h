/* MLX quantized weights (docs/quantization.md): validation, row
 * dequantization (the reference every quantized kernel is tested against)
 * and the quantizer used by `nmlx convert` and quantize-on-load.
 *
 * Affine: w (U32) [rows, cols*bits/32], scales/biases (F32/F16/BF16)
 * [rows, cols/group]; W[r,k] = s[r,k/g] * q[r,k] + b[r,k/g], q read from the
 * row's little-endian bit stream at bit k*bits.
 * MXFP4: w (U32) [rows, cols/8] E2M1 codes, scales (U8 E8M0) [rows, cols/32]. */
#ifndef NMLX_QUANT_H
#define NMLX_QUANT_H

#include "nmlx.h"
#include "tensor.h"

#include <stdbool.h>

bool nmlx_quant_bits_ok(nmlx_quant_mode mode, int bits);
bool nmlx_quant_group_ok(nmlx_quant_mode mode, int group_size);
const char *nmlx_quant_mode_name(nmlx_quant_mode mode); /* "affine", "mxfp4", "none" */

/* Packed U32 words per row: cols * bits / 32. */
static inline int64_t nmlx_quant_row_words(int64_t cols, int bits) { return cols * bits / 32; }

/* Reads the b-bit code of element k from a row's bit stream. */
static inline unsigned nmlx_quant_code(const uint8_t *row, int64_t k, int bits) {
    uint64_t bit = (uint64_t)k * (uint64_t)bits;
    const uint8_t *p = row + (bit >> 3);
    unsigned sh = (unsigned)(bit & 7), v = p[0];
    if (sh + (unsigned)bits > 8) v |= (unsigned)p[1] << 8;
    return (v >> sh) & ((1u << bits) - 1u);
}

/* E2M1 code -> value; E8M0 byte -> 2^(e-127) (0 decodes as 2^-127, like MLX). */
float nmlx_fp4_value(unsigned code);
float nmlx_e8m0_value(uint8_t e);

/* dst[0..n) = W[row, k0..k0+n) as f32, for a quantized (affine/mxfp4) w. */
void nmlx_quant_dequant_row(const nmlx_weight *w, int64_t row, int64_t k0, int64_t n, float *dst);

/* Quantizes one row src[cols] (cols % group_size == 0) as MLX does:
 * packed[cols*bits/32] words, scales/biases[cols/group] written in
 * `sdtype` (F32/F16/BF16; for MXFP4 scales are U8 and biases unused).
 * The packed codes are chosen with the f32 scale/bias, as MLX does.
 * Affine rows go through the SIMD quantizer (quant_affine.h). */
void nmlx_quant_quantize_row(nmlx_quant_mode mode, int bits, int group_size, const float *src,
                             int64_t cols, uint32_t *packed, void *scales, void *biases,
                             nmlx_dtype sdtype);

/* The scalar quantizer, one element at a time: the reference the fast
 * affine path is tested against (byte-identical output). */
void nmlx_quant_quantize_row_ref(nmlx_quant_mode mode, int bits, int group_size, const float *src,
                                 int64_t cols, uint32_t *packed, void *scales, void *biases,
                                 nmlx_dtype sdtype);

#endif
