/* Fused quantized mat-mat for prefill (opt-in: NMLX_CUDA_QMM=fused):
 * y[T, D] = x[T, N] W[D, N]^T (+ bias) for MLX affine 4-bit and 8-bit
 * weights (group 32/64/128, F32/F16/BF16 scales and biases), the codes
 * decoded inside the kernel: no dequantized copy of W, no GEMM output to
 * join. Anything else declines (false: the caller runs cuda_qgemm.cu).
 *
 * Precision: only x is rounded. Each token t is scaled by 2^-e_t (max|x_t|
 * = f 2^e_t, f in [0.5, 1): exact, no f16 overflow or underflow) and
 * rounded to f16 once (x~, qf_xprep_kernel, which also writes the f32 group
 * sums xs~[t, g] of those rounded values). The codes q (integers <= 255) are
 * exact in f16, so the tensor cores give part_g = sum_{k in g} x~_k q_k with
 * exact products and f32 sums, and the group's scale and bias are applied
 * in f32 on the accumulators:
 *   y[t, d] = 2^e_t sum_g (s_g part_g + b_g xs~_g) (+ bias[d])
 *           = 2^e_t sum_k W[d, k] x~_k, W = s q + b exact.
 * Error: sum_k |W_k| |x_k - x~_k 2^e| <= 2^-11 sum_k |W_k x_k| (f16's half
 * ulp): x's rounding alone. gemm1 (cuda_qgemm.cu) rounds x the same way and
 * W = s q + b to f16 as well: equal where W is exact in f16 (4-bit codes
 * with bf16 scales), larger otherwise (8-bit, f32 scales). (The group sums
 * must be of x~, not x: with exact x in the b term the error would follow
 * |s q| instead of |W|, ~2x gemm1's on centred groups.) tests/cuda/
 * test_cuda_qmm_fused.c bounds it at 2e-3 of each row's max|y| and requires
 * it no worse than gemm1's on the same cases.
 *
 * Block: BM tokens x BN weight rows (128 x 128; 64 x 64 when the big tile
 * would leave most SMs idle), 8 warps as 2 (tokens) x 4 (rows), each a
 * 16 MT x 8 NT tile of m16n8k16 mma (f16 in, f32 accumulate). K steps of 64
 * inputs (one g64 group, two g32, half a g128) go through a QF_STAGES-deep
 * cp.async pipeline: x~ tile [BM][64] (rows padded to 72 f16 so the 8 rows of
 * an ldmatrix start in different banks), the packed codes [BN][64 BITS / 8]
 * bytes, the group sums [BM]; scales and biases (strided in memory: one
 * value per row) are loaded to registers one tile ahead, as f32 {s, b}.
 * A warp keeps two accumulator sets: part (the current group's products,
 * the group's first mma starts from zero) and acc (folded once per group:
 * acc = s part + b xs~ + acc, 2 FFMA per element).
 *
 * mma.m16n8k16 fragments (lane = 4 g + c; each 32-bit register two f16, the
 * lower k in the low half):
 *   A (x~, 16 tokens x 16 k)  a0: token g, k 2c, 2c+1   a1: token g+8, same k
 *                             a2: token g, k 2c+8, +9   a3: token g+8, same k
 *   B (codes, 16 k x 8 rows)  b0: k 2c, 2c+1 of row g   b1: k 2c+8, 2c+9 of row g
 *   C (f32, 16 tokens x 8 rows) c0, c1: token g, rows 2c, 2c+1; c2, c3: token g+8
 * A comes from ldmatrix.x4 (lanes 0-15 give token rows 0-15 at k 0, lanes
 * 16-31 the same rows at k 8). B is decoded in registers from the codes of
 * row g that lane c holds for the whole 64-input tile: inputs 8c .. 8c+7
 * and 32 + 8c .. 32 + 8c + 7 (4-bit: two words, 8-bit: four; two shared
 * loads), k steps 0-1 from the first eight, 2-3 from the others, so a g32
 * group is k steps 0-1 or 2-3 whole. Within a step the pairs come in the
 * order the decode yields them; a dot product does not care which input
 * sits in which k slot as long as A and B agree, so x~ is stored permuted:
 * tile position p = 16 s + 8 h + 2 c + e (k step s, register b0 / b1 = h,
 * half e) holds input (qf_perm)
 *   4-bit: 32 (s / 2) + 8 c + 2 (s % 2) + h + 4 e   (pair P = 2 (s % 2) + h of
 *          word s / 2: the 0x000f000f / 0x00f000f0 mask of w >> 8 (P / 2)
 *          takes nibbles P and P + 4 into the two halves)
 *   8-bit: 32 (s / 2) + 8 c + 4 (s % 2) + 2 h + e   (word s, bytes 2h, 2h+1)
 * (tests/cuda/qmm_fused_emu.cpp runs this file on the CPU against a
 * reference and checks it).
 * Decode: a nibble or byte q placed in the mantissa of the f16 1024 (0x6400)
 * reads 1024 + q exactly (a nibble at bits 4-7: 1024 + 16 q); 4-bit: one
 * lop3 and one hfma2 (x 1 - 1024, or x 1/16 - 64) a pair, exact q. 8-bit:
 * one prmt a pair, 1024 + q kept: the mma sums part + 1024 xs~ and the fold
 * uses b - 1024 s (f32, staged with the scales) for b, s part' + (b - 1024 s)
 * xs~ = s part + b xs~; the cancelled 1024 s xs~ costs f32 rounding ~1% of
 * x's own error (emulation: <= 5.6e-6 of max|y| against 3e-4; for 4-bit
 * codes, 60x smaller on average, it would be ~1/6, so they are shifted back).
 *
 * Speed estimate (H100 SXM, 132 SMs, ~1.75 GHz under load): per k tile a
 * big-tile warp issues 64 mma, 16 ldmatrix, 32 decoded registers (4-bit:
 * lop3 + hfma2 each; 8-bit: one prmt), 8 code loads, the copies of the next
 * tile and, per group, 128 FFMA (2 per accumulator): ~6.5-7 instructions a
 * mma (PTX count of the loop: 7.3 at 4-bit g64, 6.5 at 8-bit g64, before
 * ptxas fuses and/or into lop3). A sub-partition issues one a cycle and
 * takes ~6-8 cycles a mma.sync at its peak (~500-660 dense f16 TFLOP/s
 * without wgmma), so the loop is near issue-bound: ~580 TFLOP/s if nothing
 * stalled, 300-400 expected with two warps a sub-partition (one 256-thread
 * block an SM: ~230 registers a thread) and a barrier a tile. Operand
 * traffic (L2 -> SM) per 64-input tile: 16 KiB of x~ + 4 KiB of codes
 * (8-bit: 8) for 2.1 MFLOP: ~3.9 TB/s at 400 TFLOP/s, within the L2's
 * bandwidth; x~ (4 MiB at T 512, N 4096) and a layer's codes stay in the
 * 50 MB L2. Against the chunked path: no 436 MB of f16 written and read
 * back a layer, no join, no row scales, one launch (+ the x prep, shared
 * by q/k/v and gate/up). Known losses: D = 14336 at T = 512 is 448 blocks,
 * 3.4 waves (the last 40% full: ~15% lost); the 64 x 64 tile (small
 * grids) costs ~2x the instructions a mma. */
#ifndef NMLX_CUDA_QMM_FUSED_H
#define NMLX_CUDA_QMM_FUSED_H

#ifndef QF_BREAK
#define QF_BREAK 0 /* tests/cuda/qmm_fused_emu.cpp's deliberately broken build: 1 */
#endif

#ifndef NMLX_QMM_EMU /* tests/cuda/qmm_fused_emu.cpp supplies its own */
#include "compute/cuda/cuda_backend.h"
#include "compute/cuda/cuda_internal.h"
#endif

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

namespace {

enum { QF_BK = 64, QF_THREADS = 256, QF_STAGES = 4, QF_XLD = QF_BK + 8 };

/* scale / bias / linear-bias storage (runtime: one load a tile); E8M0:
 * MXFP4's scales (2^(e - 127), no biases) */
enum { QF_F32 = 0, QF_F16, QF_BF16, QF_E8M0 };

#ifndef NMLX_QMM_EMU
__device__ __forceinline__ void qf_cp16(void *smem, const void *gmem, int bytes) {
    const unsigned sa = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(gmem),
                 "r"(bytes));
}
/* 4 bytes (bytes = 4) or a zero (bytes = 0): the grouped form's group sums,
 * whose rows start anywhere */
__device__ __forceinline__ void qf_cp4(void *smem, const void *gmem, int bytes) {
    const unsigned sa = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(sa), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void qf_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void qf_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void qf_ldsm_x4(uint32_t *r, const uint16_t *p) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

/* c += a b; qf_mma0: c = a b (a group's first step: no zeroing) */
__device__ __forceinline__ void qf_mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void qf_mma0(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};\n"
                 : "=f"(c[0]), "=f"(c[1]), "=f"(c[2]), "=f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.0f));
}

/* f16x2 a * b + c on the bits */
__device__ __forceinline__ uint32_t qf_hfma2(uint32_t a, uint32_t b, uint32_t c) {
    const __half2 r = __hfma2(*(const __half2 *)&a, *(const __half2 *)&b, *(const __half2 *)&c);
    return *(const uint32_t *)&r;
}
#endif

/* 8-bit codes enter the mma as 1024 + q (saves an hsub2 a register; the
 * fold takes 1024 s xs~ off through b - 1024 s); 4-bit ones as q (with an
 * offset 60x q's mean the f32 sums would lose ~1/6 of x's own precision). */
template <int BITS> __host__ __device__ constexpr float qf_offset() {
    return BITS == 8 ? 1024.0f : 0.0f;
}

/* Register h (b0 / b1) of k step s from a lane's codes (4-bit: two words,
 * 8-bit: four; see the header), as an f16 pair of q + qf_offset (exact). */
template <int BITS>
__device__ __forceinline__ uint32_t qf_decode(const uint32_t *cw, int s, int h) {
    if constexpr (BITS == 4) {
        const int P = 2 * (s & 1) + h; /* nibbles P, P + 4 of word s / 2 */
        const uint32_t v = P >= 2 ? cw[s >> 1] >> 8 : cw[s >> 1];
        if (P & 1) /* nibbles at bits 4-7, 20-23: 1024 + 16 q -> q */
            return qf_hfma2((v & 0x00f000f0u) | 0x64006400u, 0x2c002c00u /* 1/16 */,
                            0xd400d400u /* -64 */);
        return qf_hfma2((v & 0x000f000fu) | 0x64006400u, 0x3c003c00u /* 1 */,
                        0xe400e400u /* -1024 */);
    } else {
        /* bytes 2h, 2h+1 of word s into the low mantissa bytes of 0x6400: 1024 + q */
        return __byte_perm(cw[s], 0x64646464u, h ? 0x4342u : 0x4140u);
    }
}

/* MXFP4: register h of k step s as an f16 pair of the E2M1 values (exact).
 * The same nibbles as the 4-bit decode; a nibble's sign to bit 15, its
 * exponent and mantissa bits to bits 11-9 read E2M1 * 2^-14 (0.5 as a
 * subnormal, exact), then * 2^14 (exact: the products stay normal). */
__device__ __forceinline__ uint32_t qf_decode_mx(const uint32_t *cw, int s, int h) {
    const int P = 2 * (s & 1) + h;
    uint32_t v = P >= 2 ? cw[s >> 1] >> 8 : cw[s >> 1];
    if (P & 1) v >>= 4;
    const uint32_t r = (v & 0x00070007u) << 9 | (v & 0x00080008u) << 12;
    return qf_hfma2(r, 0x74007400u /* 2^14 */, 0x80008000u /* -0 */);
}

/* Input index (of the 64-input tile) held by tile position p: x~'s permutation. */
template <int BITS> __host__ __device__ __forceinline__ int qf_perm(int p) {
    const int s = p >> 4, h = (p >> 3) & 1, c = (p >> 1) & 3, e = p & 1;
    return BITS == 4 ? 32 * (s >> 1) + 8 * c + 2 * (s & 1) + h + 4 * e
                     : 32 * (s >> 1) + 8 * c + 4 * (s & 1) + 2 * h + e;
}

__device__ __forceinline__ float qf_load(int dt, const void *p, int64_t i) {
    if (dt == QF_E8M0) { /* e = 0: 2^-127 (a subnormal), as cuda_qdecode.h */
        const uint32_t e = ((const uint8_t *)p)[i];
        return __uint_as_float(e ? e << 23 : 0x00400000u);
    }
    if (dt == QF_BF16) return __uint_as_float((uint32_t)((const uint16_t *)p)[i] << 16);
    if (dt == QF_F16) return __half2float(((const __half *)p)[i]);
    return ((const float *)p)[i];
}

/* 2^e with m = f 2^e, f in [0.5, 1); 0 for m = 0 or not finite; |e| <= 100 */
__device__ __forceinline__ int qf_exp(float m) {
    int e = 0;
    if (m > 0.0f && isfinite(m)) frexpf(m, &e);
    return e < -100 ? -100 : e > 100 ? 100 : e;
}

/* One block per token t: ix[t] = 2^e (max|x_t| = f 2^e), x~[t] = f16(x_t 2^-e)
 * permuted per 64-input tile (qf_perm), xs[g Tp + t] = sum of group g's
 * x~ (the rounded values, in f32, in input order). N a multiple of 64 and of gs.
 * x_t is row t of x, or with rows (the MoE's gather) row rows[t] / rdiv. */
template <int BITS>
__global__ void __launch_bounds__(QF_THREADS)
    qf_xprep_kernel(const float *x, const int32_t *rows, int rdiv, int64_t N, int gs, int64_t Tp,
                    uint16_t *xt, float *xs, float *ix) {
    extern __shared__ __align__(16) unsigned char qf_sm[]; /* QF_THREADS / 32 floats */
    float *red = (float *)qf_sm;
    const int tid = (int)threadIdx.x, lane = tid & 31;
    const int64_t t = blockIdx.x;
    const float *xr = x + (rows ? (int64_t)(rows[t] / rdiv) : t) * N;
    float m = 0.0f;
    for (int64_t k = tid; k < N; k += QF_THREADS)
        m = fmaxf(m, fabsf(xr[k]));
    for (int o = 16; o > 0; o >>= 1)
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) red[tid >> 5] = m;
    __syncthreads();
    m = red[0];
    for (int i = 1; i < QF_THREADS / 32; i++)
        m = fmaxf(m, red[i]);
    const int e = qf_exp(m);
    const float sc = ldexpf(1.0f, -e);
    if (tid == 0) ix[t] = ldexpf(1.0f, e);
    /* 8 positions (16 bytes) a piece; the 8 pieces of a 64-input tile are 8
     * lanes in a row (a g128 group's two tiles, 16), which add their
     * rounded values into the group sums (g32: two a tile) by shuffles */
    const int64_t NP = N / 8;
    for (int64_t b0 = 0; b0 < NP; b0 += QF_THREADS) { /* every thread, every pass */
        const int64_t pc = b0 + tid;
        float s0 = 0.0f, s1 = 0.0f;
        if (pc < NP) {
            const int64_t k0 = (pc >> 3) * QF_BK;
            const int p0 = (int)(pc & 7) * 8;
            __align__(16) __half h[8];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const int in = qf_perm<BITS>(p0 + j);
                h[j] = __float2half_rn(xr[k0 + in] * sc);
                if (gs == 32 && in >= 32)
                    s1 += __half2float(h[j]);
                else
                    s0 += __half2float(h[j]);
            }
            uint4 v;
            memcpy(&v, h, 16);
            *(uint4 *)(xt + t * N + k0 + p0) = v;
        }
        for (int o = 1; o < 8; o <<= 1) {
            s0 += __shfl_xor_sync(0xffffffffu, s0, o);
            s1 += __shfl_xor_sync(0xffffffffu, s1, o);
        }
        if (gs == 128) s0 += __shfl_xor_sync(0xffffffffu, s0, 8);
        if (pc < NP && (pc & (gs == 128 ? 15 : 7)) == 0) {
            const int64_t tile = pc >> 3;
            if (gs == 32) {
                xs[2 * tile * Tp + t] = s0;
                xs[(2 * tile + 1) * Tp + t] = s1;
            } else {
                xs[(gs == 128 ? tile / 2 : tile) * Tp + t] = s0;
            }
        }
    }
}

/* The arguments of one launch */
struct qf_args {
    const uint16_t *xt;          /* x~ [T, N], permuted per tile */
    const float *xs;             /* group sums [G, Tp] */
    const float *ix;             /* 2^e_t [T] */
    const uint8_t *w;            /* packed codes [D, N BITS / 8], 16-byte aligned */
    const void *scales, *biases; /* [D, G], dtype sdt */
    int sdt;
    const void *lb; /* linear bias [D] or NULL, dtype lbdt */
    int lbdt;
    float *y; /* [T, D] */
    int64_t T, D, N, Tp;
    bool y2; /* y 8-byte aligned and D even: float2 stores */
};

/* Shared memory of one stage (bytes): x~ [BM][QF_XLD] f16, codes [BN][8 BITS],
 * {s, b} [NG][BN] float2, group sums [NG][BM] f32; NG groups a tile. */
template <int BITS, int GS, int MT, int NT> struct qf_cfg {
    static constexpr int BM = 32 * MT, BN = 32 * NT, NG = GS == 32 ? 2 : 1;
    static constexpr int X_OFF = 0, C_OFF = BM * QF_XLD * 2, SB_OFF = C_OFF + BN * 8 * BITS,
                         XS_OFF = SB_OFF + NG * BN * 8, STAGE = (XS_OFF + NG * BM * 4 + 15) & ~15,
                         SMEM = QF_STAGES * STAGE;
    static_assert(NG * BN <= QF_THREADS, "one {s, b} row a thread");
};

/* One block's tile: weight rows d0.., tokens t0.. (rows past a.T and a.D
 * read as zeros and are not stored); see the header. MX: MXFP4 codes
 * (BITS 4, GS 32, E8M0 scales, no biases: no group sums). GRP: the grouped
 * form, whose t0 is any row (its group sums are copied 4 bytes at a time). */
template <int BITS, int GS, int MT, int NT, bool MX, bool GRP>
__device__ __forceinline__ void qf_tile(const qf_args &a, const int64_t d0, const int64_t t0) {
    static_assert(!MX || (BITS == 4 && GS == 32), "MXFP4: 4-bit codes, groups of 32");
    typedef qf_cfg<BITS, GS, MT, NT> C;
    constexpr int SPG = GS / 16; /* k steps a group */
    extern __shared__ __align__(16) unsigned char qf_sm[];
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, c = lane & 3, wm = warp >> 2, wn = warp & 3;
    const int64_t T = a.T, D = a.D, N = a.N, G = N / GS, RB = N * BITS / 8;
    const int KT = (int)(N / QF_BK);

    /* Each thread's copies are at fixed places of every tile: its source
     * pointers are set once here and step by a constant a tile (no 64-bit
     * index math in the loop). */
    constexpr int XJ = C::BM * 8 / QF_THREADS; /* x~ chunks a thread: rows r + 32 j */
    constexpr int CPR = BITS / 2;              /* 16-byte code chunks a row */
    constexpr int CJ = (C::BN * CPR + QF_THREADS - 1) / QF_THREADS; /* rows rc + (256 / CPR) j */
    const int xr = tid >> 3, xch = tid & 7, rc = tid / CPR, cch = tid % CPR;
    const int xsl = tid / (C::BM / 4), xsc = tid % (C::BM / 4); /* group sums: slot, chunk */
    const uint16_t *xsrc = a.xt + (t0 + xr) * N + 8 * xch;
    const uint8_t *csrc = a.w + (d0 + rc) * RB + 16 * cch;
    const int64_t tl = T - (t0 + 4 * xsc); /* tokens left from this thread's group-sum chunk */
    const int xsb = tl >= 4 ? 16 : tl > 0 ? (int)tl * 4 : 0;
    const float *xssrc = a.xs + (xsb ? t0 + 4 * xsc : 0);

    /* tile kt's x~, codes and group sums into stage st (cp.async); rows past
     * T or D read as zeros (src-size 0, from a valid address) */
    auto load_async = [&](int kt, int st) {
        unsigned char *base = qf_sm + st * C::STAGE;
#pragma unroll
        for (int j = 0; j < XJ; j++) {
            const bool ok = t0 + xr + 32 * j < T;
            qf_cp16(base + C::X_OFF + ((xr + 32 * j) * QF_XLD + 8 * xch) * 2,
                    ok ? xsrc + 32 * j * N + kt * QF_BK : a.xt, ok ? 16 : 0);
        }
#pragma unroll
        for (int j = 0; j < CJ; j++) {
            const int r = rc + (QF_THREADS / CPR) * j;
            if (r < C::BN) {
                const bool ok = d0 + r < D;
                qf_cp16(base + C::C_OFF + r * 8 * BITS + 16 * cch,
                        ok ? csrc + (QF_THREADS / CPR) * j * RB + kt * (8 * BITS) : a.w,
                        ok ? 16 : 0);
            }
        }
        if constexpr (MX) {
            /* no biases: the group sums are not read */
        } else if constexpr (GRP) {
            if (tid < C::NG * C::BM) { /* slot tid / BM, row tid % BM */
                const int64_t t = t0 + tid % C::BM;
                qf_cp4(base + C::XS_OFF + tid * 4,
                       t < T ? a.xs + ((int64_t)kt * QF_BK / GS + tid / C::BM) * a.Tp + t : a.xs,
                       t < T ? 4 : 0);
            }
        } else if (tid < C::NG * C::BM / 4) {
            qf_cp16(base + C::XS_OFF + (xsl * C::BM + 4 * xsc) * 4,
                    xssrc + ((int64_t)kt * QF_BK / GS + xsl) * a.Tp, xsb);
        }
    };
    /* tile kt's scales and biases: to registers, then (after the tile's
     * math has hidden the latency) to stage st as f32 {s, b - qf_offset s}
     * (see qf_decode); thread i < NG BN: slot i / BN, row i % BN; 0 past D */
    auto load_sb = [&](int kt, float2 &v) {
        const int slot = tid / C::BN, r = tid % C::BN;
        v = make_float2(0.0f, 0.0f);
        if (tid < C::NG * C::BN && d0 + r < D) {
            const int64_t idx = (d0 + r) * G + (int64_t)kt * QF_BK / GS + slot;
            if constexpr (MX)
                v.x = qf_load(QF_E8M0, a.scales, idx);
            else
                v = make_float2(qf_load(a.sdt, a.scales, idx), qf_load(a.sdt, a.biases, idx));
        }
    };
    auto store_sb = [&](int st, float2 v) {
        if (tid < C::NG * C::BN)
            ((float2 *)(qf_sm + st * C::STAGE + C::SB_OFF))[tid] =
                make_float2(v.x, fmaf(-qf_offset<BITS>(), v.x, v.y));
    };

    float acc[MT][NT][4], part[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int r = 0; r < 4; r++)
                acc[i][j][r] = part[i][j][r] = 0.0f;

    for (int st = 0; st < QF_STAGES - 1; st++) {
        if (st < KT) {
            load_async(st, st);
            float2 v;
            load_sb(st, v);
            store_sb(st, v);
        }
        qf_commit();
    }

    for (int kt = 0; kt < KT; kt++) {
        qf_wait<QF_STAGES - 2>(); /* tile kt has landed (this thread's copies) */
        __syncthreads();          /* ... everyone's; and stage (kt - 1) % S is free */
        const int nk = kt + QF_STAGES - 1, ns = nk % QF_STAGES;
        if (nk < KT) load_async(nk, ns);
        qf_commit();
        float2 sbv = make_float2(0.0f, 0.0f);
        if (nk < KT) load_sb(nk, sbv);

        const unsigned char *base = qf_sm + (kt % QF_STAGES) * C::STAGE;
        const uint16_t *xs_t = (const uint16_t *)(base + C::X_OFF);
        const float4 *sb = (const float4 *)(base + C::SB_OFF);
        const float *gsum = (const float *)(base + C::XS_OFF);
        /* the lane's codes of each n tile (row g): inputs 8c.., 32 + 8c.. */
        uint32_t cw[NT][BITS / 2];
#pragma unroll
        for (int j = 0; j < NT; j++) {
            const unsigned char *p = base + C::C_OFF + (wn * 8 * NT + 8 * j + g) * 8 * BITS;
            if constexpr (BITS == 4) {
                cw[j][0] = *(const uint32_t *)(p + 4 * c);
                cw[j][1] = *(const uint32_t *)(p + 16 + 4 * c);
            } else {
                const uint2 u = *(const uint2 *)(p + 8 * c), v = *(const uint2 *)(p + 32 + 8 * c);
                cw[j][0] = u.x, cw[j][1] = u.y, cw[j][2] = v.x, cw[j][3] = v.y;
            }
        }
#pragma unroll
        for (int s = 0; s < 4; s++) {
            uint32_t af[MT][4];
#pragma unroll
            for (int i = 0; i < MT; i++)
                qf_ldsm_x4(af[i], xs_t + (wm * 16 * MT + 16 * i + (lane & 15)) * QF_XLD + 16 * s +
                                      8 * (lane >> 4));
            /* a group's first step starts its part from zero (g128, which spans
             * two tiles, zeroes part after its fold instead: no branch per mma) */
            const bool first = SPG <= 4 && s % SPG == 0;
            const bool fold = SPG <= 4 ? (s + 1) % SPG == 0 : s == 3 && (kt & 1);
#pragma unroll
            for (int j = 0; j < NT; j++) {
                const uint32_t b0 = MX ? qf_decode_mx(cw[j], s, 0) : qf_decode<BITS>(cw[j], s, 0),
                               b1 = MX ? qf_decode_mx(cw[j], s, 1) : qf_decode<BITS>(cw[j], s, 1);
#pragma unroll
                for (int i = 0; i < MT; i++) {
                    if (first)
                        qf_mma0(part[i][j], af[i], b0, b1);
                    else
                        qf_mma(part[i][j], af[i], b0, b1);
                }
            }
            if (fold) { /* acc += s part + b xs~ (8-bit: s part' + (b - 1024 s) xs~), in f32 */
                const int slot = SPG == 2 ? s >> 1 : 0;
#pragma unroll
                for (int j = 0; j < NT; j++) {
                    /* rows 2c, 2c+1: {s0, b0', s1, b1'}, b' = b - qf_offset s */
                    const float4 v = sb[(slot * C::BN + wn * 8 * NT + 8 * j + 2 * c) >> 1];
#pragma unroll
                    for (int i = 0; i < MT; i++) {
                        float *A = acc[i][j];
                        const float *P = part[i][j];
                        if constexpr (MX) { /* acc += s part */
                            A[0] = fmaf(v.x, P[0], A[0]), A[1] = fmaf(v.z, P[1], A[1]);
                            A[2] = fmaf(v.x, P[2], A[2]), A[3] = fmaf(v.z, P[3], A[3]);
                            continue;
                        }
                        const int tr = slot * C::BM + wm * 16 * MT + 16 * i + g;
                        const float x0 = gsum[tr], x1 = gsum[tr + 8];
                        A[0] = fmaf(v.x, P[0], fmaf(v.y, x0, A[0]));
                        A[1] = fmaf(v.z, P[1], fmaf(v.w, x0, A[1]));
                        A[2] = fmaf(v.x, P[2], fmaf(v.y, x1, A[2]));
                        A[3] = fmaf(v.z, P[3], fmaf(v.w, x1, A[3]));
                    }
                }
                if (SPG > 4)
#pragma unroll
                    for (int i = 0; i < MT; i++)
#pragma unroll
                        for (int j = 0; j < NT; j++)
#pragma unroll
                            for (int r = 0; r < 4; r++)
                                part[i][j][r] = 0.0f;
            }
        }
        if (nk < KT) store_sb(ns, sbv);
    }
    qf_wait<0>(); /* no copy left in flight at exit */

    /* y[t, d] = acc 2^e_t (+ bias[d]) */
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            const int64_t t = t0 + wm * 16 * MT + 16 * i + g + 8 * hh;
            if (t >= T) continue;
            const float sc = a.ix[t];
#pragma unroll
            for (int j = 0; j < NT; j++) {
                const int64_t d = d0 + wn * 8 * NT + 8 * j + 2 * c;
                if (d >= D) continue;
                float v0 = acc[i][j][2 * hh] * sc, v1 = acc[i][j][2 * hh + 1] * sc;
                if (a.lb) {
                    v0 += qf_load(a.lbdt, a.lb, d);
                    if (d + 1 < D) v1 += qf_load(a.lbdt, a.lb, d + 1);
                }
                float *o = a.y + t * D + d;
                if (a.y2)
                    *(float2 *)o = make_float2(v0, v1);
                else {
                    o[0] = v0;
                    if (d + 1 < D) o[1] = v1;
                }
            }
        }
}

/* The dense form: blockIdx.x BN weight rows, blockIdx.y BM tokens. */
template <int BITS, int GS, int MT, int NT>
__global__ void __launch_bounds__(QF_THREADS, MT == 4 ? 1 : 2) qmm_fused_kernel(const qf_args a) {
    qf_tile<BITS, GS, MT, NT, false, false>(a, (int64_t)blockIdx.x * (32 * NT),
                                            (int64_t)blockIdx.y * (32 * MT));
}

/* The grouped form (the MoE prefill's experts, cuda_moe_qmm.cu): x~ of all
 * P rows sorted by expert, prepared once; the host cuts each used expert's
 * rows into tasks of at most BM (expert, first row, rows); block (x, y, z)
 * is weight rows x BN.. of task y's expert in linear z (gate and up read
 * the same x~: one launch). A task's tile is the dense form's with t0 its
 * first row and T its end: the same sums as that expert's dense launch on
 * its rows alone (tests/cuda/qmm_fused_emu.cpp checks it). */
struct qf_expert { /* cuda_internal.h moe_ptrs' layout: codes, scales, biases, linear bias */
    const void *w, *s, *b, *bias;
};
struct qf_group_args {
    const qf_expert *tab[2]; /* [E] each, blockIdx.z picks */
    float *y[2];             /* [P, D] each */
    int lbdt[2];             /* the linear biases' QF_* dtype */
    const int32_t *task;     /* [tasks][3]: expert, first row, rows (1..BM) */
    const uint16_t *xt;      /* x~ [P, N] */
    const float *xs, *ix;    /* group sums [G, Tp], 2^e_t [P] */
    int sdt;
    int64_t D, N, Tp;
    bool y2;
};

template <int BITS, int GS, int MT, int NT, bool MX>
__global__ void __launch_bounds__(QF_THREADS, 2) qmm_fused_group_kernel(const qf_group_args g) {
    const int32_t *tk = g.task + 3 * (int64_t)blockIdx.y;
    const int e = tk[0], r0 = tk[1], n = tk[2];
    if (n <= 0) return; /* a slot past the device sort's last task */
    const bool z = blockIdx.z != 0;
    const qf_expert p = (z ? g.tab[1] : g.tab[0])[e];
    qf_args a;
    a.xt = g.xt, a.xs = g.xs, a.ix = g.ix;
    a.w = (const uint8_t *)p.w, a.scales = p.s, a.biases = p.b, a.sdt = g.sdt;
    a.lb = p.bias, a.lbdt = z ? g.lbdt[1] : g.lbdt[0];
    a.y = z ? g.y[1] : g.y[0];
    a.T = (int64_t)r0 + n, a.D = g.D, a.N = g.N, a.Tp = g.Tp, a.y2 = g.y2;
#if QF_BREAK == 1 /* test hook (qmm_fused_emu): every task reads the first rows */
    a.T = n;
    qf_tile<BITS, GS, MT, NT, MX, true>(a, (int64_t)blockIdx.x * (32 * NT), 0);
    return;
#endif
    qf_tile<BITS, GS, MT, NT, MX, true>(a, (int64_t)blockIdx.x * (32 * NT), r0);
}

} // namespace

#endif
