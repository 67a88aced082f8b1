/* AVX512_VNNI quantized prefill with int8 activations (opt-in precision,
 * NMLX_QUANT_INT8=prefill; docs/quantization.md). Reference: the same x
 * quantization followed by the dequantized weights in f64
 * (tests/test_quant_int8.c).
 *
 * W (D, N) affine 4/8-bit (group 32/64/128) or MXFP4 @ x (T, N) -> y (T, D),
 * rows [d0, d1), T >= 1 (the avx512 set reaches it for T >= 16):
 *
 *   x is quantized per token and block of XB columns (XB = the group size, or
 *   32 where asked; blocks never straddle a group):
 *     dx = max|x_blk| / 127,  x8 = round_half_even(x * (127 / max|x_blk|))
 *   and, with w = s q + b per group (q unsigned codes),
 *     y[t, d] = sum_blk s[d, g] dx[t, blk] (q . x8)_blk + b[d, g] dx[t, blk] sum(x8)_blk
 *   that is exactly W (dequantized, exact) times x8 dx (x rounded to int8),
 *   up to f32 rounding of the per-block terms. The bias term uses the
 *   quantized sum on purpose: the error is then sum w e, with w centred,
 *   instead of sum (w - b) e with b a group extreme (2-3x larger).
 *   MXFP4 fits the same form: code c -> 12 + 2 value(c) in 0..24 (the E2M1
 *   values doubled are integers), s' = s / 2, b' = -12 s'.
 *
 * q . x8 is `vpdpbusd` (u8 codes x s8 activations, 4 products per 32-bit
 * lane, 64 per instruction: 4x an f32 FMA's multiply-adds). Panels of 32 rows
 * x 256 columns are unpacked once to bytes in quad-major order,
 * panel[k/4][r] = q[r, k..k+3], and reused by every token: tiles of 6 tokens
 * x 32 rows keep 12 integer accumulators (a broadcast x8[t, k..k+3] times
 * 16 rows' quads) flushed into 12 f32 accumulators once per block. x is
 * quantized once per call into a heap buffer (T x N bytes); where that
 * allocation fails the f32 kernel runs instead. */
#define _POSIX_C_SOURCE 200809L
#pragma GCC target("avx512vnni")
#include "compute/cpu/quant_avx512.h"

#include <pthread.h>
#include <stdlib.h>

enum {
    IR = 32,   /* rows per panel */
    IK = 256,  /* columns per panel (a multiple of every group size) */
    IM = 12,   /* tokens per register tile */
    IXB = 128, /* the largest x block */
};

bool nmlx_avx512vnni_quant_ok(const nmlx_weight *w) {
    if (w->mode == NMLX_QUANT_MXFP4) return w->bits == 4 && w->group_size == 32;
    return w->mode == NMLX_QUANT_AFFINE && (w->bits == 4 || w->bits == 8) &&
           (w->group_size == 32 || w->group_size == 64 || w->group_size == 128);
}

/* ------------------------------------------------------------ x -> int8 */

/* Row x[0..n) (n % xb == 0) -> q[0..n) int8, per block: dx (the step) and
 * xs = dx * sum(q) (the block's sum as the kernel sees it). */
void nmlx_qint8_quantize_row(const float *x, int64_t n, int xb, int8_t *q, float *dx, float *xs) {
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < n / xb; b++) {
        const float *xv = x + b * xb;
        __m512 mx = _mm512_setzero_ps();
        for (int j = 0; j < xb; j += 16)
            mx = _mm512_max_ps(mx, _mm512_and_ps(_mm512_loadu_ps(xv + j), absmask));
        const float amax = _mm512_reduce_max_ps(mx);
        const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        const __m512 idv = _mm512_set1_ps(id);
        __m512i sum = _mm512_setzero_si512();
        for (int j = 0; j < xb; j += 16) {
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xv + j), idv));
            sum = _mm512_add_epi32(sum, v);
            _mm_storeu_si128((__m128i *)(q + b * xb + j), _mm512_cvtsepi32_epi8(v));
        }
        dx[b] = amax / 127.0f;
        xs[b] = dx[b] * (float)_mm512_reduce_add_epi32(sum);
    }
}

/* ------------------------------------------------------------ tiles */

/* One tile, 12 tokens x 32 rows over nb blocks of nq quads (XB = 4 nq
 * columns), in one asm loop so that the 24 integer accumulators stay in
 * zmm0-23 (with intrinsics GCC copied every accumulator each step; "+v"
 * operands would pass asm's 30-operand limit):
 *   per quad: the stripe's 2 x 16 rows of quads (u8 codes) and each token's
 *   x8 quad broadcast, `vpdpbusd` (64 multiply-adds);
 *   per block: f[t][r] += cvt(acc) * s[r] dx[t] + b[r] sx[t], where p, ps /
 *   pb (the block's 32 scales / biases) and dt / st (12 steps / sums of x
 *   per block, the tile's tokens) all advance block by block.
 * x rows are x + t * xs (12 readable rows); f is [12][32] f32. */
static void tile12(float *f, const int32_t *p, int64_t nq, int64_t nb, const int8_t *x, int64_t xs,
                   const float *ps, const float *pb, const float *dt, const float *st) {
    const int32_t *pe = p + nb * nq * IR;
    const int64_t xs3 = 3 * xs, nqb = nq * IR * 4;
    __asm__ volatile(
        "lea (%[x], %[s], 4), %%r10\n\t"
        "lea (%%r10, %[s], 4), %%r11\n\t"
        "2:\n\t"
        "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"
        "vpxord %%zmm1, %%zmm1, %%zmm1\n\t"
        "vpxord %%zmm2, %%zmm2, %%zmm2\n\t"
        "vpxord %%zmm3, %%zmm3, %%zmm3\n\t"
        "vpxord %%zmm4, %%zmm4, %%zmm4\n\t"
        "vpxord %%zmm5, %%zmm5, %%zmm5\n\t"
        "vpxord %%zmm6, %%zmm6, %%zmm6\n\t"
        "vpxord %%zmm7, %%zmm7, %%zmm7\n\t"
        "vpxord %%zmm8, %%zmm8, %%zmm8\n\t"
        "vpxord %%zmm9, %%zmm9, %%zmm9\n\t"
        "vpxord %%zmm10, %%zmm10, %%zmm10\n\t"
        "vpxord %%zmm11, %%zmm11, %%zmm11\n\t"
        "vpxord %%zmm12, %%zmm12, %%zmm12\n\t"
        "vpxord %%zmm13, %%zmm13, %%zmm13\n\t"
        "vpxord %%zmm14, %%zmm14, %%zmm14\n\t"
        "vpxord %%zmm15, %%zmm15, %%zmm15\n\t"
        "vpxord %%zmm16, %%zmm16, %%zmm16\n\t"
        "vpxord %%zmm17, %%zmm17, %%zmm17\n\t"
        "vpxord %%zmm18, %%zmm18, %%zmm18\n\t"
        "vpxord %%zmm19, %%zmm19, %%zmm19\n\t"
        "vpxord %%zmm20, %%zmm20, %%zmm20\n\t"
        "vpxord %%zmm21, %%zmm21, %%zmm21\n\t"
        "vpxord %%zmm22, %%zmm22, %%zmm22\n\t"
        "vpxord %%zmm23, %%zmm23, %%zmm23\n\t"
        "lea (%[p], %[nqb], 1), %%r12\n\t"
        "1:\n\t"
        "vmovdqa64 (%[p]), %%zmm30\n\t"
        "vmovdqa64 64(%[p]), %%zmm31\n\t"
        "vpbroadcastd (%[x]), %%zmm24\n\t"
        "vpdpbusd %%zmm24, %%zmm30, %%zmm0\n\t"
        "vpdpbusd %%zmm24, %%zmm31, %%zmm1\n\t"
        "vpbroadcastd (%[x], %[s], 1), %%zmm25\n\t"
        "vpdpbusd %%zmm25, %%zmm30, %%zmm2\n\t"
        "vpdpbusd %%zmm25, %%zmm31, %%zmm3\n\t"
        "vpbroadcastd (%[x], %[s], 2), %%zmm26\n\t"
        "vpdpbusd %%zmm26, %%zmm30, %%zmm4\n\t"
        "vpdpbusd %%zmm26, %%zmm31, %%zmm5\n\t"
        "vpbroadcastd (%[x], %[s3], 1), %%zmm27\n\t"
        "vpdpbusd %%zmm27, %%zmm30, %%zmm6\n\t"
        "vpdpbusd %%zmm27, %%zmm31, %%zmm7\n\t"
        "vpbroadcastd (%%r10), %%zmm28\n\t"
        "vpdpbusd %%zmm28, %%zmm30, %%zmm8\n\t"
        "vpdpbusd %%zmm28, %%zmm31, %%zmm9\n\t"
        "vpbroadcastd (%%r10, %[s], 1), %%zmm29\n\t"
        "vpdpbusd %%zmm29, %%zmm30, %%zmm10\n\t"
        "vpdpbusd %%zmm29, %%zmm31, %%zmm11\n\t"
        "vpbroadcastd (%%r10, %[s], 2), %%zmm24\n\t"
        "vpdpbusd %%zmm24, %%zmm30, %%zmm12\n\t"
        "vpdpbusd %%zmm24, %%zmm31, %%zmm13\n\t"
        "vpbroadcastd (%%r10, %[s3], 1), %%zmm25\n\t"
        "vpdpbusd %%zmm25, %%zmm30, %%zmm14\n\t"
        "vpdpbusd %%zmm25, %%zmm31, %%zmm15\n\t"
        "vpbroadcastd (%%r11), %%zmm26\n\t"
        "vpdpbusd %%zmm26, %%zmm30, %%zmm16\n\t"
        "vpdpbusd %%zmm26, %%zmm31, %%zmm17\n\t"
        "vpbroadcastd (%%r11, %[s], 1), %%zmm27\n\t"
        "vpdpbusd %%zmm27, %%zmm30, %%zmm18\n\t"
        "vpdpbusd %%zmm27, %%zmm31, %%zmm19\n\t"
        "vpbroadcastd (%%r11, %[s], 2), %%zmm28\n\t"
        "vpdpbusd %%zmm28, %%zmm30, %%zmm20\n\t"
        "vpdpbusd %%zmm28, %%zmm31, %%zmm21\n\t"
        "vpbroadcastd (%%r11, %[s3], 1), %%zmm29\n\t"
        "vpdpbusd %%zmm29, %%zmm30, %%zmm22\n\t"
        "vpdpbusd %%zmm29, %%zmm31, %%zmm23\n\t"
        "add $128, %[p]\n\t"
        "add $4, %[x]\n\t"
        "add $4, %%r10\n\t"
        "add $4, %%r11\n\t"
        "cmp %%r12, %[p]\n\t"
        "jne 1b\n\t"
        "vmovaps (%[ps]), %%zmm24\n\t"
        "vmovaps 64(%[ps]), %%zmm25\n\t"
        "vmovaps (%[pb]), %%zmm26\n\t"
        "vmovaps 64(%[pb]), %%zmm27\n\t"
        "vbroadcastss 0(%[dt]), %%zmm28\n\t"
        "vmulps %%zmm28, %%zmm24, %%zmm29\n\t"
        "vmulps %%zmm28, %%zmm25, %%zmm28\n\t"
        "vcvtdq2ps %%zmm0, %%zmm0\n\t"
        "vcvtdq2ps %%zmm1, %%zmm1\n\t"
        "vfmadd213ps 0(%[f]), %%zmm29, %%zmm0\n\t"
        "vfmadd213ps 64(%[f]), %%zmm28, %%zmm1\n\t"
        "vbroadcastss 0(%[st]), %%zmm28\n\t"
        "vfmadd231ps %%zmm28, %%zmm26, %%zmm0\n\t"
        "vfmadd231ps %%zmm28, %%zmm27, %%zmm1\n\t"
        "vmovaps %%zmm0, 0(%[f])\n\t"
        "vmovaps %%zmm1, 64(%[f])\n\t"
        "vbroadcastss 4(%[dt]), %%zmm28\n\t"
        "vmulps %%zmm28, %%zmm24, %%zmm29\n\t"
        "vmulps %%zmm28, %%zmm25, %%zmm28\n\t"
        "vcvtdq2ps %%zmm2, %%zmm2\n\t"
        "vcvtdq2ps %%zmm3, %%zmm3\n\t"
        "vfmadd213ps 128(%[f]), %%zmm29, %%zmm2\n\t"
        "vfmadd213ps 192(%[f]), %%zmm28, %%zmm3\n\t"
        "vbroadcastss 4(%[st]), %%zmm28\n\t"
        "vfmadd231ps %%zmm28, %%zmm26, %%zmm2\n\t"
        "vfmadd231ps %%zmm28, %%zmm27, %%zmm3\n\t"
        "vmovaps %%zmm2, 128(%[f])\n\t"
        "vmovaps %%zmm3, 192(%[f])\n\t"
        "vbroadcastss 8(%[dt]), %%zmm28\n\t"
        "vmulps %%zmm28, %%zmm24, %%zmm29\n\t"
        "vmulps %%zmm28, %%zmm25, %%zmm28\n\t"
        "vcvtdq2ps %%zmm4, %%zmm4\n\t"
        "vcvtdq2ps %%zmm5, %%zmm5\n\t"
        "vfmadd213ps 256(%[f]), %%zmm29, %%zmm4\n\t"
        "vfmadd213ps 320(%[f]), %%zmm28, %%zmm5\n\t"
        "vbroadcastss 8(%[st]), %%zmm28\n\t"
        "vfmadd231ps %%zmm28, %%zmm26, %%zmm4\n\t"
        "vfmadd231ps %%zmm28, %%zmm27, %%zmm5\n\t"
        "vmovaps %%zmm4, 256(%[f])\n\t"
        "vmovaps %%zmm5, 320(%[f])\n\t"
        "vbroadcastss 12(%[dt]), %%zmm28\n\t"
        "vmulps %%zmm28, %%zmm24, %%zmm29\n\t"
        "vmulps %%zmm28, %%zmm25, %%zmm28\n\t"
        "vcvtdq2ps %%zmm6, %%zmm6\n\t"
        "vcvtdq2ps %%zmm7, %%zmm7\n\t"
        "vfmadd213ps 384(%[f]), %%zmm29, %%zmm6\n\t"
        "vfmadd213ps 448(%[f]), %%zmm28, %%zmm7\n\t"
        "vbroadcastss 12(%[st]), %%zmm28\n\t"
        "vfmadd231ps %%zmm28, %%zmm26, %%zmm6\n\t"
        "vfmadd231ps %%zmm28, %%zmm27, %%zmm7\n\t"
        "vmovaps %%zmm6, 384(%[f])\n\t"
        "vmovaps %%zmm7, 448(%[f])\n\t"
        "vbroadcastss 16(%[dt]), %%zmm28\n\t"
        "vmulps %%zmm28, %%zmm24, %%zmm29\n\t"
        "vmulps %%zmm28, %%zmm25, %%zmm28\n\t"
        "vcvtdq2ps %%zmm8, %%zmm8\n\t"
        "vcvtdq2ps %%zmm9, %%zmm9\n\t"
        "vfmadd213ps 512(%[f]), %%zmm29, %%zmm8\n\t"
        "vfmadd213ps 576(%[f]), %%zmm28, %%zmm9\n\t"
        "vbroadcastss 16(%[st]), %%zmm28\n\t"
        "vfmadd231ps %%zmm28, %%zmm26, %%zmm8\n\t"
        "vfmadd231ps %%zmm28, %%zmm27, %%zmm9\n\t"
        "vmovaps %%zmm8, 512(%[f])\n\t"
        "vmovaps %%zmm9, 576(%[f])\n\t"
        "vbroadcastss 20(%[dt]), %%zmm28\n\t"
        "vmulps %%zmm28, %%zmm24, %%zmm29\n\t"
        "vmulps %%zmm28, %%zmm25, %%zmm28\n\t"
        "vcvtdq2ps %%zmm10, %%zmm10\n\t"
        "vcvtdq2ps %%zmm11, %%zmm11\n\t"
        "vfmadd213ps 640(%[f]), %%zmm29, %%zmm10\n\t"
        "vfmadd213ps 704(%[f]), %%zmm28, %%zmm11\n\t"
        "vbroadcastss 20(%[st]), %%zmm28\n\t"
        "vfmadd231ps %%zmm28, %%zmm26, %%zmm10\n\t"
        "vfmadd231ps %%zmm28, %%zmm27, %%zmm11\n\t"
        "vmovaps %%zmm10, 640(%[f])\n\t"
        "vmovaps %%zmm11, 704(%[f])\n\t"
        "vbroadcastss 24(%[dt]), %%zmm28\n\t"
        "vmulps %%zmm28, %%zmm24, %%zmm29\n\t"
        "vmulps %%zmm28, %%zmm25, %%zmm28\n\t"
        "vcvtdq2ps %%zmm12, %%zmm12\n\t"
        "vcvtdq2ps %%zmm13, %%zmm13\n\t"
        "vfmadd213ps 768(%[f]), %%zmm29, %%zmm12\n\t"
        "vfmadd213ps 832(%[f]), %%zmm28, %%zmm13\n\t"
        "vbroadcastss 24(%[st]), %%zmm28\n\t"
        "vfmadd231ps %%zmm28, %%zmm26, %%zmm12\n\t"
        "vfmadd231ps %%zmm28, %%zmm27, %%zmm13\n\t"
        "vmovaps %%zmm12, 768(%[f])\n\t"
        "vmovaps %%zmm13, 832(%[f])\n\t"
        "vbroadcastss 28(%[dt]), %%zmm28\n\t"
        "vmulps %%zmm28, %%zmm24, %%zmm29\n\t"
        "vmulps %%zmm28, %%zmm25, %%zmm28\n\t"
        "vcvtdq2ps %%zmm14, %%zmm14\n\t"
        "vcvtdq2ps %%zmm15, %%zmm15\n\t"
        "vfmadd213ps 896(%[f]), %%zmm29, %%zmm14\n\t"
        "vfmadd213ps 960(%[f]), %%zmm28, %%zmm15\n\t"
        "vbroadcastss 28(%[st]), %%zmm28\n\t"
        "vfmadd231ps %%zmm28, %%zmm26, %%zmm14\n\t"
        "vfmadd231ps %%zmm28, %%zmm27, %%zmm15\n\t"
        "vmovaps %%zmm14, 896(%[f])\n\t"
        "vmovaps %%zmm15, 960(%[f])\n\t"
        "vbroadcastss 32(%[dt]), %%zmm28\n\t"
        "vmulps %%zmm28, %%zmm24, %%zmm29\n\t"
        "vmulps %%zmm28, %%zmm25, %%zmm28\n\t"
        "vcvtdq2ps %%zmm16, %%zmm16\n\t"
        "vcvtdq2ps %%zmm17, %%zmm17\n\t"
        "vfmadd213ps 1024(%[f]), %%zmm29, %%zmm16\n\t"
        "vfmadd213ps 1088(%[f]), %%zmm28, %%zmm17\n\t"
        "vbroadcastss 32(%[st]), %%zmm28\n\t"
        "vfmadd231ps %%zmm28, %%zmm26, %%zmm16\n\t"
        "vfmadd231ps %%zmm28, %%zmm27, %%zmm17\n\t"
        "vmovaps %%zmm16, 1024(%[f])\n\t"
        "vmovaps %%zmm17, 1088(%[f])\n\t"
        "vbroadcastss 36(%[dt]), %%zmm28\n\t"
        "vmulps %%zmm28, %%zmm24, %%zmm29\n\t"
        "vmulps %%zmm28, %%zmm25, %%zmm28\n\t"
        "vcvtdq2ps %%zmm18, %%zmm18\n\t"
        "vcvtdq2ps %%zmm19, %%zmm19\n\t"
        "vfmadd213ps 1152(%[f]), %%zmm29, %%zmm18\n\t"
        "vfmadd213ps 1216(%[f]), %%zmm28, %%zmm19\n\t"
        "vbroadcastss 36(%[st]), %%zmm28\n\t"
        "vfmadd231ps %%zmm28, %%zmm26, %%zmm18\n\t"
        "vfmadd231ps %%zmm28, %%zmm27, %%zmm19\n\t"
        "vmovaps %%zmm18, 1152(%[f])\n\t"
        "vmovaps %%zmm19, 1216(%[f])\n\t"
        "vbroadcastss 40(%[dt]), %%zmm28\n\t"
        "vmulps %%zmm28, %%zmm24, %%zmm29\n\t"
        "vmulps %%zmm28, %%zmm25, %%zmm28\n\t"
        "vcvtdq2ps %%zmm20, %%zmm20\n\t"
        "vcvtdq2ps %%zmm21, %%zmm21\n\t"
        "vfmadd213ps 1280(%[f]), %%zmm29, %%zmm20\n\t"
        "vfmadd213ps 1344(%[f]), %%zmm28, %%zmm21\n\t"
        "vbroadcastss 40(%[st]), %%zmm28\n\t"
        "vfmadd231ps %%zmm28, %%zmm26, %%zmm20\n\t"
        "vfmadd231ps %%zmm28, %%zmm27, %%zmm21\n\t"
        "vmovaps %%zmm20, 1280(%[f])\n\t"
        "vmovaps %%zmm21, 1344(%[f])\n\t"
        "vbroadcastss 44(%[dt]), %%zmm28\n\t"
        "vmulps %%zmm28, %%zmm24, %%zmm29\n\t"
        "vmulps %%zmm28, %%zmm25, %%zmm28\n\t"
        "vcvtdq2ps %%zmm22, %%zmm22\n\t"
        "vcvtdq2ps %%zmm23, %%zmm23\n\t"
        "vfmadd213ps 1408(%[f]), %%zmm29, %%zmm22\n\t"
        "vfmadd213ps 1472(%[f]), %%zmm28, %%zmm23\n\t"
        "vbroadcastss 44(%[st]), %%zmm28\n\t"
        "vfmadd231ps %%zmm28, %%zmm26, %%zmm22\n\t"
        "vfmadd231ps %%zmm28, %%zmm27, %%zmm23\n\t"
        "vmovaps %%zmm22, 1408(%[f])\n\t"
        "vmovaps %%zmm23, 1472(%[f])\n\t"
        "add $128, %[ps]\n\t"
        "add $128, %[pb]\n\t"
        "add $48, %[dt]\n\t"
        "add $48, %[st]\n\t"
        "cmp %[pe], %[p]\n\t"
        "jne 2b\n\t"
        : [p] "+r"(p), [x] "+r"(x), [ps] "+r"(ps), [pb] "+r"(pb), [dt] "+r"(dt), [st] "+r"(st)
        : [s] "r"(xs), [s3] "r"(xs3), [nqb] "r"(nqb), [pe] "r"(pe), [f] "r"(f)
        : "r10", "r11", "r12", "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7",
          "zmm8", "zmm9", "zmm10", "zmm11", "zmm12", "zmm13", "zmm14", "zmm15", "zmm16", "zmm17",
          "zmm18", "zmm19", "zmm20", "zmm21", "zmm22", "zmm23", "zmm24", "zmm25", "zmm26", "zmm27",
          "zmm28", "zmm29", "zmm30", "zmm31", "cc", "memory");
}

/* y[t, 0..32) = the stripe's rows . x[t] for t < M (m masks the valid rows);
 * dt / st: the tile's steps / sums of x, [block][12]. */
static void i8_tile(int M, int XB, const int8_t *xq, int64_t xqs, const float *dt, const float *st,
                    const int32_t *p, const float *ps, const float *pb, int64_t nb, float *y,
                    int64_t ys, const __mmask16 *m) {
    float f[IM * IR] __attribute__((aligned(64)));
    for (int i = 0; i < IM * IR; i += 16)
        _mm512_store_ps(f + i, _mm512_setzero_ps());
    tile12(f, p, XB / 4, nb, xq, xqs, ps, pb, dt, st);
    for (int t = 0; t < M; t++)
        for (int v = 0; v < 2; v++)
            _mm512_mask_storeu_ps(y + t * ys + 16 * v, m[v], _mm512_load_ps(f + t * IR + 16 * v));
}

/* ------------------------------------------------------------ panels */

/* dst[0..nk) = the codes of row `row`, columns [k0, k0 + nk), one byte each
 * (MXFP4: 12 + 2 value, in 0..24). */
static void unpack_codes(const nmlx_weight *w, int64_t row, int64_t k0, int64_t nk, uint8_t *dst) {
    const uint8_t *q =
        (const uint8_t *)w->w.data + row * nmlx_quant_row_words(w->cols, w->bits) * 4;
    if (w->bits == 8) {
        memcpy(dst, q + k0, (size_t)nk);
        return;
    }
    /* E2M1 magnitudes doubled {0,1,2,3,4,6,8,12}, sign in bit 3, offset by 12 */
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

/* panel[kq][r] = codes W[r0 + r, k0 + 4kq .. +3] (0 for nr <= r < IR);
 * ps/pb[b][r] = the scale / bias of block b of row r (0 past nr). */
static void fill_panel(const nmlx_weight *w, int64_t r0, int nr, int64_t k0, int64_t nk, int xb,
                       int32_t *panel, float *ps, float *pb) {
    uint8_t rb[16 * IK] __attribute__((aligned(64)));
    const int gs = w->group_size;
    const int64_t G = w->cols / gs, ng = nk / gs, nb = nk / xb;
    const bool mx = w->mode == NMLX_QUANT_MXFP4;
    float s[IK / 32], bi[IK / 32];
    for (int h = 0; h < IR; h += 16) {
        for (int r = 0; r < 16; r++) {
            if (h + r >= nr) {
                memset(rb + r * IK, 0, (size_t)nk);
                for (int64_t b = 0; b < nb; b++)
                    ps[b * IR + h + r] = pb[b * IR + h + r] = 0.0f;
                continue;
            }
            unpack_codes(w, r0 + h + r, k0, nk, rb + r * IK);
            const size_t g0 = (size_t)((r0 + h + r) * G + k0 / gs);
            load_f32s(w->scales.dtype, w->scales.data, g0, ng, s);
            if (mx)
                for (int64_t g = 0; g < ng; g++)
                    s[g] *= 0.5f, bi[g] = -12.0f * s[g];
            else
                load_f32s(w->biases.dtype, w->biases.data, g0, ng, bi);
            for (int64_t b = 0; b < nb; b++) {
                ps[b * IR + h + r] = s[b * xb / gs];
                pb[b * IR + h + r] = bi[b * xb / gs];
            }
        }
        /* rows of 4-byte quads -> quad-major: 16x16 transposes of 32-bit lanes */
        for (int64_t kq = 0; kq < nk / 4; kq += 16)
            transpose16((const float *)(const void *)(rb + 4 * kq), IK / 4,
                        (float *)(void *)(panel + kq * IR + h), IR);
    }
}

/* the packed rows [r0, r0 + nr), columns [k0, k0 + nk), and their scales /
 * biases: requested while the current panel is multiplied */
static void prefetch_panel(const nmlx_weight *w, int64_t r0, int64_t nr, int64_t k0, int64_t nk) {
    const int64_t row_bytes = nmlx_quant_row_words(w->cols, w->bits) * 4,
                  G = w->cols / w->group_size;
    const size_t ses = nmlx_dtype_size(w->scales.dtype);
    for (int64_t r = r0; r < r0 + nr; r++) {
        const char *q = (const char *)w->w.data + r * row_bytes + k0 * w->bits / 8;
        for (int64_t o = 0; o < nk * w->bits / 8; o += 64)
            _mm_prefetch(q + o, _MM_HINT_T0);
        size_t gi = (size_t)(r * G + k0 / w->group_size) * ses;
        _mm_prefetch((const char *)w->scales.data + gi, _MM_HINT_T0);
        if (w->mode == NMLX_QUANT_AFFINE)
            _mm_prefetch((const char *)w->biases.data + gi, _MM_HINT_T0);
    }
}

/* ------------------------------------------------------------ the kernel */

int nmlx_qint8_xblock(const nmlx_weight *w, int xb) {
    return xb > 0 && xb < w->group_size ? xb : w->group_size;
}

bool nmlx_avx512vnni_quant_matmat_xb(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                     int64_t d0, int64_t d1, int xb_req) {
    const int64_t N = w->cols, D = w->rows;
    const int xb = nmlx_qint8_xblock(w, xb_req);
    const int64_t B = N / xb, tail = T % IM;
    /* one buffer, each part 64-byte aligned: the stripe's scales and biases
     * (B x 32 each), a 32-row stripe of quad-major codes (N / 4 x 32 int32,
     * plus 16 quads: fill_panel transposes 16 quads at a time), the steps
     * and sums of x per tile of 12 tokens ([tile][B][12] each, 0 past T),
     * x8 (T x N), the last tile's 12 padded rows (12 x N) and one token's
     * steps and sums (B each) */
    const int64_t tiles = (T + IM - 1) / IM;
#define A64(n) (((size_t)(n) + 63) / 64 * 64)
    const size_t o_pb = A64(B * IR * 4), o_st = o_pb + A64(B * IR * 4),
                 o_dt = o_st + A64((N + 64) * IR), o_sx = o_dt + A64(tiles * B * IM * 4),
                 o_xq = o_sx + A64(tiles * B * IM * 4), o_pad = o_xq + A64(T * N),
                 o_row = o_pad + (tail ? A64(IM * N) : 0), size = o_row + A64(2 * B * 4);
#undef A64
    char *buf = aligned_alloc(64, size);
    if (!buf) return false;
    float *ps = (float *)(void *)buf, *pb = (float *)(void *)(buf + o_pb);
    int32_t *stripe = (int32_t *)(void *)(buf + o_st);
    float *dt = (float *)(void *)(buf + o_dt), *sx = (float *)(void *)(buf + o_sx);
    int8_t *xq = (int8_t *)(buf + o_xq), *xpad = (int8_t *)(buf + o_pad);
    float *dxr = (float *)(void *)(buf + o_row), *sxr = dxr + B; /* one token's */
    memset(dt, 0, (size_t)(tiles * B * IM) * 4);
    memset(sx, 0, (size_t)(tiles * B * IM) * 4);
    for (int64_t t = 0; t < T; t++) {
        nmlx_qint8_quantize_row(x + t * N, N, xb, xq + t * N, dxr, sxr);
        float *dtt = dt + (t / IM) * B * IM + t % IM, *sxt = sx + (t / IM) * B * IM + t % IM;
        for (int64_t b = 0; b < B; b++)
            dtt[b * IM] = dxr[b], sxt[b * IM] = sxr[b];
    }
    if (tail)
        for (int64_t t = 0; t < IM; t++)
            memcpy(xpad + t * N, xq + (T - tail + (t < tail ? t : tail - 1)) * N, (size_t)N);

    for (int64_t r0 = d0; r0 < d1; r0 += IR) {
        const int nr = d1 - r0 < IR ? (int)(d1 - r0) : IR;
        const __mmask16 m[2] = {first_n(nr), first_n(nr > 16 ? nr - 16 : 0)};
        /* the stripe's codes, once; each tile then runs over all of N and
         * writes its y once */
        for (int64_t k0 = 0; k0 < N; k0 += IK) {
            const int64_t nk = N - k0 < IK ? N - k0 : IK;
            fill_panel(w, r0, nr, k0, nk, xb, stripe + k0 / 4 * IR, ps + k0 / xb * IR,
                       pb + k0 / xb * IR);
        }
        /* the next stripe's packed rows, a share per tile */
        const int64_t nx_r = r0 + IR, nx_nr = d1 - nx_r < IR ? d1 - nx_r : IR;
        for (int64_t t = 0, i = 0; t < T; t += IM, i++) {
            const int64_t M = T - t < IM ? T - t : IM;
            if (nx_nr > 0)
                prefetch_panel(w, nx_r + nx_nr * i / tiles,
                               nx_nr * (i + 1) / tiles - nx_nr * i / tiles, 0, N);
            i8_tile((int)M, xb, M < IM ? xpad : xq + t * N, N, dt + i * B * IM, sx + i * B * IM,
                    stripe, ps, pb, B, y + t * D + r0, D, m);
        }
    }
    free(buf);
    return true;
}

/* ------------------------------------------------------------ the switch */

static nmlx_qint8_mode g_mode;
static pthread_once_t g_mode_once = PTHREAD_ONCE_INIT;

/* NMLX_QUANT_INT8: unset / "0": off; "prefill" (or "1"): on for T >= 16
 * where the CPU has AVX512_VNNI; NMLX_QUANT_INT8_BLOCK=32: 32-column x
 * blocks instead of one per group. */
static void read_mode(void) {
    __builtin_cpu_init();
    const char *env = getenv("NMLX_QUANT_INT8");
    g_mode.prefill = env && (!strcmp(env, "prefill") || !strcmp(env, "1")) &&
                     __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
    const char *blk = getenv("NMLX_QUANT_INT8_BLOCK");
    g_mode.xblock = blk && !strcmp(blk, "32") ? 32 : 0;
}

nmlx_qint8_mode nmlx_qint8_get_mode(void) {
    pthread_once(&g_mode_once, read_mode);
    return g_mode;
}

bool nmlx_avx512vnni_quant_matmat(const nmlx_weight *w, const float *x, float *y, int64_t T,
                                  int64_t d0, int64_t d1) {
    return nmlx_avx512vnni_quant_matmat_xb(w, x, y, T, d0, d1, nmlx_qint8_get_mode().xblock);
}
