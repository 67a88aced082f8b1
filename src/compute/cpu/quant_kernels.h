/* The x86-64 quantized kernels by name, beyond the kernel-set table of
 * cpu_internal.h: the f32 and AVX512_BF16 variants of the avx512 set, for
 * the set's own dispatch and for tests/test_quant_kernels.c. Plain
 * declarations (no intrinsics): any file may include this. */
#ifndef NMLX_QUANT_KERNELS_H
#define NMLX_QUANT_KERNELS_H

#include "compute/backend.h"

#include <stdbool.h>

#if defined(__x86_64__)
/* The AVX512_BF16 kernels (quant_bf16_avx512.c), used where the CPU has
 * that extension and a one-time measurement found them faster (see
 * nmlx_qbf16_pick). Precision: activations and dequantized weights rounded
 * to bf16, products summed in f32 (docs/quantization.md). */
typedef struct nmlx_qbf16_pick {
    bool prefill;        /* nmlx_avx512bf16_quant_matmat for T >= 16, unless w->f32_input */
    bool prefill_affine; /* ...for affine weights too (forced only), not just MXFP4 */
    bool matvec;         /* nmlx_avx512bf16_quant_matvec for affine 4-bit */
} nmlx_qbf16_pick;
/* Measured once per process (thread-safe); NMLX_QUANT_BF16=0/1 forces it. */
nmlx_qbf16_pick nmlx_qbf16_get_pick(void);
/* Whether nmlx_avx512bf16_quant_matvec handles w (affine 4-bit, group 64/128, cols <= 16384). */
bool nmlx_avx512bf16_matvec_ok(const nmlx_weight *w);
void nmlx_avx512bf16_quant_matvec(const nmlx_weight *w, const float *x, float *y, int64_t d0,
                                  int64_t d1);
/* x rounded to bf16 in the order nmlx_avx512bf16_quant_matvec reads it, and
 * the per-group sums of the rounded values (xb: N elements, xs: N / gs). */
void nmlx_avx512bf16_quant_split_x(const float *x, int64_t N, int gs, uint16_t *xb, float *xs);
/* The few-token forms (1 <= T < NMLX_CPU_FEW_TOKENS): y[t, d] for rows
 * [d0, d1), each row bit for bit the one-token kernel's on token t; false
 * (y untouched) for weights they do not take. bf16: w as for
 * nmlx_avx512bf16_matvec_ok; f32: affine 4/8-bit g32/64/128 and MXFP4 g32. */
bool nmlx_avx512bf16_quant_matmul_few(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                      int64_t d0, int64_t d1);
bool nmlx_avx512f32_quant_matmul_few(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                     int64_t d0, int64_t d1);
/* any quantized w with cols % 32 == 0, T >= 1 */
void nmlx_avx512bf16_quant_matmat(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                  int64_t d0, int64_t d1);
/* The f32 kernels of quant_avx512.c, by name (tests, the one-time pick). */
void nmlx_avx512f32_quant_matvec(const nmlx_weight *w, const float *x, float *y, int64_t d0,
                                 int64_t d1);
void nmlx_avx512f32_quant_matmat(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                 int64_t d0, int64_t d1);

#endif

#endif
