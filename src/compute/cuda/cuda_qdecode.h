/* Decoding of packed quantized codes, shared by the quantized kernels
 * (cuda_quant.cu: mat-vec, mat-mat, embed; cuda_qgemm.cu: the row-chunk
 * dequantization). Formats: docs/quantization.md. */
#ifndef NMLX_CUDA_QDECODE_H
#define NMLX_CUDA_QDECODE_H

#ifndef NMLX_QGEMM_EMU /* tests/cuda/qgemm_emu.cpp supplies cuda_load_f32 */
#include "compute/cuda/cuda_internal.h"
#endif

#include <stdint.h>

/* Small unsigned integer -> float without the slow int->float unit. */
__device__ __forceinline__ float code_f32(uint32_t q) {
    return __uint_as_float(q | 0x4B000000u) - 8388608.0f;
}

/* E2M1 code -> value * 2^-14: the code's bits placed as an f16 (exponent
 * field e = code bits 1-2, one mantissa bit; e = 0 lands on f16 subnormals,
 * which decode 0 and 0.5 exactly). Callers multiply by 2^14 once per chunk. */
__device__ __forceinline__ float fp4_f32_scaled(uint32_t q) {
    unsigned short h = (unsigned short)(((q & 8u) << 12) | ((q & 7u) << 9));
    return __half2float(__ushort_as_half(h));
}

/* E8M0 byte -> 2^(e - 127) (e = 0 decodes as 2^-127, like the CPU). */
__device__ __forceinline__ float e8m0_f32(uint8_t e) {
    return e ? __uint_as_float((uint32_t)e << 23) : __uint_as_float(0x00400000u);
}

/* q as f32 in the form the kernels multiply (affine: the integer; MXFP4:
 * the E2M1 value * 2^-14). */
template <bool MX> __device__ __forceinline__ float qvalue(uint32_t q) {
    return MX ? fp4_f32_scaled(q) : code_f32(q);
}

/* Scale and bias of group entry idx (MXFP4: 2^(e-127), bias 0). */
template <bool MX>
__device__ __forceinline__ void group_sb(const void *scales, const void *biases, nmlx_dtype sdt,
                                         int64_t idx, float *s, float *b) {
    if (MX) {
        *s = e8m0_f32(((const uint8_t *)scales)[idx]);
        *b = 0.0f;
    } else {
        *s = cuda_load_f32(sdt, scales, idx);
        *b = cuda_load_f32(sdt, biases, idx);
    }
}

/* The 8 codes of inputs 8k..8k+7 of a row: BITS bytes at byte k * BITS (the
 * row's base is 4-byte aligned, its length a multiple of 4 * BITS bytes). */
template <int BITS> __device__ __forceinline__ uint64_t load8(const uint8_t *row, int k) {
    const uint8_t *p = row + (size_t)k * BITS;
    if (BITS == 4) return __ldg((const uint32_t *)p);
    if (BITS == 8) {
        const uint32_t *q = (const uint32_t *)p;
        return (uint64_t)__ldg(q) | (uint64_t)__ldg(q + 1) << 32;
    }
    if (BITS == 2) return __ldg((const unsigned short *)p);
    if (BITS == 6) {
        const unsigned short *h = (const unsigned short *)p;
        return (uint64_t)__ldg(h) | (uint64_t)__ldg(h + 1) << 16 | (uint64_t)__ldg(h + 2) << 32;
    }
    uint64_t v = 0;
#pragma unroll
    for (int i = 0; i < BITS; i++)
        v |= (uint64_t)__ldg(p + i) << (8 * i);
    return v;
}

/* byte j of v as an exact float (0..255), through the 2^23 exponent trick:
 * one byte permute + one subtract */
__device__ __forceinline__ float byte_f32(uint32_t v, int j) {
    return __uint_as_float(__byte_perm(v, 0x4B000000u, 0x7540u + (unsigned)j)) - 8388608.0f;
}

/* The 8 codes in v as the floats dot8 (cuda_quant.cu) multiplies, in its order. */
template <int BITS, bool MX> __device__ __forceinline__ void decode8(uint64_t v, float *q) {
    if (!MX && BITS == 4) {
        const uint32_t w = (uint32_t)v, lo = w & 0x0F0F0F0Fu, hi = (w >> 4) & 0x0F0F0F0Fu;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            q[2 * j] = byte_f32(lo, j);
            q[2 * j + 1] = byte_f32(hi, j);
        }
    } else if (!MX && BITS == 8) {
#pragma unroll
        for (int j = 0; j < 4; j++)
            q[j] = byte_f32((uint32_t)v, j);
#pragma unroll
        for (int j = 0; j < 4; j++)
            q[4 + j] = byte_f32((uint32_t)(v >> 32), j);
    } else {
#pragma unroll
        for (int i = 0; i < 8; i++)
            q[i] = qvalue<MX>((uint32_t)(v >> (i * BITS)) & ((1u << BITS) - 1u));
    }
}

#ifndef NMLX_QGEMM_EMU /* PTX */
/* The tensor cores' mma.m16n8k16, bf16 in, f32 accumulate: c += a b
 * (fragment layouts: qmm_kernel in cuda_quant.cu, cuda_qrows_mma.cu). */
__device__ __forceinline__ void mma_bf16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* .x = lo (low half) */
    return *(uint32_t *)&v;
}
#endif

/* Scale/bias storage, a template parameter so loads carry no dtype branch
 * (a branch between a load and its use keeps the compiler from batching
 * loads across iterations: every piece would wait for its scale). */
enum { SC_F32 = 0, SC_F16, SC_BF16, SC_E8M0 };

template <int SC> struct sc_raw { typedef uint16_t t; };
template <> struct sc_raw<SC_F32> { typedef float t; };
template <> struct sc_raw<SC_E8M0> { typedef uint8_t t; };

template <int SC>
__device__ __forceinline__ typename sc_raw<SC>::t sc_load(const void *p, int64_t i) {
    return __ldg((const typename sc_raw<SC>::t *)p + i);
}
template <int SC> __device__ __forceinline__ float sc_f32(typename sc_raw<SC>::t v) {
    if constexpr (SC == SC_F32)
        return v;
    else if constexpr (SC == SC_F16)
        return __half2float(__ushort_as_half(v));
    else if constexpr (SC == SC_BF16)
        return __uint_as_float((uint32_t)v << 16);
    else
        return e8m0_f32(v);
}

/* The 8 inputs of piece k (x[8k .. 8k + 7]) and, unless MX, their sum (the
 * bias term's factor); vec: x is 16-byte aligned (two float4 loads). */
template <bool MX>
__device__ __forceinline__ float load_x8(const float *x, int64_t k, bool vec, float *xv) {
    if (vec) {
        const float4 a = __ldg((const float4 *)x + 2 * k), b = __ldg((const float4 *)x + 2 * k + 1);
        xv[0] = a.x, xv[1] = a.y, xv[2] = a.z, xv[3] = a.w;
        xv[4] = b.x, xv[5] = b.y, xv[6] = b.z, xv[7] = b.w;
    } else {
#pragma unroll
        for (int i = 0; i < 8; i++)
            xv[i] = __ldg(x + 8 * k + i);
    }
    float xs = 0.0f;
    if (!MX) {
#pragma unroll
        for (int i = 0; i < 8; i++)
            xs += xv[i];
    }
    return xs;
}

#endif
