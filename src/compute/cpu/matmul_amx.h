/* AMX-BF16 prefills: dense bf16 (matmul_amx.c) and quantized weights
 * (quant_amx.c), one tile kernel (amx_tile.h). Safe to include anywhere:
 * the functions test the CPU and the OS themselves. */
#ifndef NMLX_MATMUL_AMX_H
#define NMLX_MATMUL_AMX_H

#include "compute/tensor.h"

#include <stdbool.h>
#include <stdint.h>

/* Whether the AMX prefill runs when NMLX_AMX is unset: the one-time pick
 * in quant_bf16_avx512.c times it against the f32 and avx512bf16 kernels
 * and keeps the fastest. On by default since measured on AMX hardware
 * (Xeon, Emerald Rapids: 5.6-6.5x the other two per layer, 1 thread,
 * T = 512; tests passing there; bench/cpu_decode.md). */
#define NMLX_AMX_DEFAULT 1

/* The CPU has AMX-TILE, AMX-BF16 and AVX512_BF16, XCR0 enables the tile
 * state and Linux granted this process the tile data (arch_prctl
 * ARCH_REQ_XCOMP_PERM, requested once on the first call). */
bool nmlx_amx_ok(void);
/* "usable", or which check failed (probes like nmlx_amx_ok) */
const char *nmlx_amx_status(void);
/* NMLX_AMX: -1 unset, 0 for "0", 1 otherwise */
int nmlx_amx_env(void);
/* NMLX_AMX=1, or unset and NMLX_AMX_DEFAULT (nmlx_amx_ok() still needed) */
bool nmlx_amx_wanted(void);
/* y[t, d] = sum_n bf16(x[t, n]) W[d, n] for d in [d0, d1), t < T, f32
 * accumulation; W dense bf16 (D x N, any N >= 1). false (y untouched) where
 * AMX is not usable, for other weights, or when scratch memory runs out. */
bool nmlx_amx_bf16_matmat(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                          int64_t d1);

/* Whether the quantized AMX prefill runs when NMLX_AMX_QUANT is unset (and
 * NMLX_AMX is not 0), at the default precision only. */
#define NMLX_AMX_QUANT_DEFAULT 1
/* ...with how many terms (nmlx_amx_quant_matmat). 3: x and W as bf16
 * hi + lo, as accurate as the int16 prefill; the one-time pick times it
 * against the int16 / f32 prefill and takes it from the T where it is
 * faster. 1: x and W rounded to bf16 (as MLX computes a bf16 model), taken
 * for every prefill matmul from NMLX_AMX_QUANT_BF16_MIN_T tokens, untimed
 * (so the logits do not depend on a timing; NMLX_QUANT_PICK_LOG=1 still
 * prints where the timed lines would cross). Stays 3: the one-term kernel
 * flips argmaxes on two quantized fixtures once their tokens go through
 * the prefill (tests/test_precision.c, docs/quantization.md), which issue
 * 9's precision contract forbids. -D for experiments: the pick cache keys
 * its records by this value. */
#ifndef NMLX_AMX_QUANT_DEFAULT_TERMS
#define NMLX_AMX_QUANT_DEFAULT_TERMS 3
#endif
#ifndef NMLX_AMX_QUANT_BF16_MIN_T
#define NMLX_AMX_QUANT_BF16_MIN_T 24 /* >= NMLX_CPU_FEW_CHUNKED */
#endif
/* NMLX_AMX_QUANT: -1 unset, 0 for "0", 1 for "bf16" (1 term), 2 for "2"
 * (2 terms), 3 otherwise ("1": the default's 3 terms, forced) */
int nmlx_amx_quant_env(void);
/* Weights nmlx_amx_quant_matmat takes: MLX affine 2/3/4/5/6/8-bit at group
 * 32/64/128, MXFP4 (group 32), cols a multiple of 32. */
bool nmlx_amx_quant_ok(const nmlx_weight *w);
/* y[t, d] = sum_n x[t, n] W[d, n] for d in [d0, d1), t < T, W quantized;
 * terms 3: x and W each as bf16 hi + lo (about 2^-16 relative per product),
 * 2: x as hi + lo, W rounded to bf16 (2^-8), 1: both rounded to bf16. false (y untouched) where AMX
 * is not usable, for other weights or terms, or when scratch memory runs out. */
bool nmlx_amx_quant_matmat(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                           int64_t d1, int terms);

/* AMX-INT8 prefill with int16 x (quant_int8_amx.c): the int16 VNNI
 * prefill (nmlx_avx512vnni_quant_matmat16) on tiles, the same bits. */
/* nmlx_amx_ok() and the CPU has AMX-INT8 */
bool nmlx_amx_int8_ok(void);
/* NMLX_AMX_INT8: -1 unset, 0 for "0", 1 otherwise (forced on) */
int nmlx_amx_int8_env(void);
/* Weights it takes: MLX affine 2/3/4/5/6/8-bit at group 32/64/128, MXFP4
 * (group 32). */
bool nmlx_amx8_quant_ok(const nmlx_weight *w);
/* y[t, d] = sum_n x[t, n] W[d, n] for d in [d0, d1), t < T, x rounded to
 * int16 per token and group as nmlx_avx512vnni_quant_matmat16 does, with
 * its bits. false (y untouched) where AMX-INT8 is not usable, for other
 * weights, or when scratch memory runs out. */
bool nmlx_amx8_quant_matmat(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                            int64_t d1);

#endif
