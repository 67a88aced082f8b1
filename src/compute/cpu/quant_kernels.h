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
    bool prefill;           /* nmlx_avx512bf16_quant_matmat for T >= 16, unless w->f32_input */
    bool prefill_affine;    /* ...for affine weights too (forced only), not just MXFP4 */
    bool matvec;            /* nmlx_avx512bf16_quant_matvec for affine 4-bit */
    bool matvec_int16;      /* nmlx_avx512vnni_quant_matvec16 for affine 4-bit (before
                               matvec; needs AVX512_VNNI) */
    bool matvec_int16_q8;   /* ...and for affine 8-bit (timed apart) */
    bool prefill_int16;     /* nmlx_avx512vnni_quant_matmat16 for T >= 24 (the default
                               precision; needs AVX512_VNNI) */
    bool dense_bf16;        /* dense bf16 prefill on bf16 x (nmlx_avx512bf16_quant_matmat) */
    bool dense_amx;         /* dense bf16 prefill on AMX tiles (nmlx_amx_bf16_matmat; NMLX_AMX) */
    int prefill_amx;        /* quantized prefill on AMX tiles, default precision only
                               (nmlx_amx_quant_matmat, this many terms: NMLX_AMX_QUANT's, else
                               NMLX_AMX_QUANT_DEFAULT_TERMS; 0 off) */
    int prefill_amx_min_t;  /* ...from this many tokens (where the pick's cost lines cross;
                               fixed where the default is untimed, matmul_amx.h) */
    bool prefill_amx8;      /* quantized prefill on AMX-INT8 tiles with int16 x, the int16
                               prefill's bits (nmlx_amx8_quant_matmat; NMLX_AMX_INT8), default
                               precision only; before prefill_amx where both are on */
    int prefill_amx8_min_t; /* ...from this many tokens (where the cost lines cross) */
} nmlx_qbf16_pick;
/* Measured once per process (thread-safe, a few milliseconds of CPU time on
 * cache-resident problems); NMLX_QUANT_BF16=0/1 forces the bf16 quantized
 * kernels, NMLX_QUANT_INT16=0/1 the int16 prefill, NMLX_QUANT_INT16_DEC=0/1
 * the int16 (VNNI) decode mat-vec, NMLX_DENSE_BF16=0/1 the
 * dense bf16 prefill, NMLX_AMX / NMLX_AMX_QUANT / NMLX_AMX_INT8 the AMX ones
 * (matmul_amx.h);
 * NMLX_QUANT_PICK_LOG=1 prints the timings. */
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

/* The AVX512_VNNI prefill with int8 activations (quant_int8_avx512.c), an
 * opt-in precision: x rounded to int8 per token and block (the group, or 32
 * columns), the weights exact (docs/quantization.md). */
typedef struct nmlx_qint8_mode {
    bool prefill; /* NMLX_QUANT_INT8=prefill and the CPU has AVX512_VNNI */
    int xblock;   /* 0: one x block per weight group; 32: 32-column blocks */
} nmlx_qint8_mode;
/* Read once per process (thread-safe). */
nmlx_qint8_mode nmlx_qint8_get_mode(void);
/* Whether this CPU has what the int8 kernel needs (AVX512_VNNI, AVX-512 BW). */
bool nmlx_qint8_cpu_ok(void);
/* Whether the integer kernels handle w (affine 2-6/8-bit group 32/64/128, MXFP4). */
bool nmlx_avx512vnni_quant_ok(const nmlx_weight *w);
/* The x block the kernel uses for w when asked for xb (0: the group size). */
int nmlx_qint8_xblock(const nmlx_weight *w, int xb);
/* x[0..n) -> q (int8), per xb-column block dx (step) and xs = dx * sum(q);
 * n % xb == 0. Needs AVX512_VNNI's CPU (AVX-512 F/BW). */
void nmlx_qint8_quantize_row(const float *x, int64_t n, int xb, int8_t *q, float *dx, float *xs);
/* W (D, N) @ x (T, N) -> y (T, D) rows [d0, d1), x in int8 per block of
 * nmlx_qint8_xblock(w, xb); false (y untouched) if its x buffer cannot be
 * allocated. Only for nmlx_avx512vnni_quant_ok weights on an AVX512_VNNI CPU. */
bool nmlx_avx512vnni_quant_matmat_xb(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                     int64_t d0, int64_t d1, int xb);
/* The default precision's prefill where the CPU has AVX512_VNNI: x rounded
 * to int16 per token and weight group (step max|x| / 32767: 2^-15 of the
 * group's largest, far finer than bf16's 2^-9 of each value), the weights
 * exact, `vpdpwssd` (32 multiply-adds per instruction, as `vdpbf16ps`).
 * Same weights, contract and refusal as the int8 kernel. */
void nmlx_qint16_quantize_row(const float *x, int64_t n, int xb, int16_t *q, float *dx, float *xs);
/* The int16 x of the VNNI decode mat-vec: qmax NMLX_QINT16S_MAX (= 127 *
 * 256 + 127), so that x = 256 hi + lo with hi, lo signed bytes. */
#define NMLX_QINT16S_MAX 32639.0f
void nmlx_qint16s_quantize_row(const float *x, int64_t n, int xb, int16_t *q, float *dx, float *xs);
/* The AVX512_VNNI decode mat-vec on int16 x (quant_dec_vnni_avx512.c):
 * affine 4/8-bit, group 32/64/128, cols <= 16384; y = W (exact) times x
 * rounded to int16 per group (qmax NMLX_QINT16S_MAX), sum q x as two
 * `vpdpbusd` (codes x the high and the low byte of x). */
bool nmlx_avx512vnni_matvec16_ok(const nmlx_weight *w);
void nmlx_avx512vnni_quant_matvec16(const nmlx_weight *w, const float *x, float *y, int64_t d0,
                                    int64_t d1);
/* Whether the avx512 sets' decode takes the int16 VNNI mat-vec for w */
static inline bool nmlx_qdec16_takes(const nmlx_qbf16_pick *p, const nmlx_weight *w) {
    return (w->bits == 8 ? p->matvec_int16_q8 : p->matvec_int16) && nmlx_avx512vnni_matvec16_ok(w);
}
/* Its few-token form (1 <= T < NMLX_CPU_FEW_TOKENS; rows bit for bit the
 * one-token kernel's; false, y untouched, where it does not take w or its
 * x buffer cannot be allocated). */
bool nmlx_avx512vnni_quant_matmul_few16(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                        int64_t d0, int64_t d1);
bool nmlx_avx512vnni_quant_matmat16(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                    int64_t d0, int64_t d1);
/* The AVX2 form of the int16 prefill (quant_int16_avx2.c: `vpmaddwd`), for
 * the avx2 kernel set (CPUs without AVX512_VNNI); same weights. */
bool nmlx_avx2_quant_int16_ok(const nmlx_weight *w);
/* Whether the avx2 set uses it by default (measured once per process). */
bool nmlx_avx2_quant_int16_default(void);
void nmlx_avx2_qint16_quantize_row(const float *x, int64_t n, int xb, int16_t *q, float *dx,
                                   float *xs);
bool nmlx_avx2_quant_matmat16(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                              int64_t d1);
/* The same with the process's NMLX_QUANT_INT8_BLOCK choice. */
bool nmlx_avx512vnni_quant_matmat(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                  int64_t d0, int64_t d1);

#endif

#endif
