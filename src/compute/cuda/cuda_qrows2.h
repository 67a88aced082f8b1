/* The few-rows quantized mat-mat, v2 (the default of cuda_qrows_mma.cu):
 * the kernel body, with no CUDA header of its own so that the warp logic
 * also compiles as host C++ (tests/cuda/qrows2_emu.cpp runs it on the CPU,
 * each CUDA thread a fiber, tests/cuda/warp_emu.h). Before it, the includer provides
 * the CUDA built-ins used (__ldg on u8/u16/u32/f32, __ldcg on f32,
 * __uint_as_float, __byte_perm, __syncthreads, __threadfence, atomicAdd,
 * threadIdx, blockIdx); after it, the primitives declared below:
 *   qr2_u4  qr2_ldg16(const void *p)             16-byte load (x hi / lo)
 *   void    qr2_mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1)
 *                                                mma.m16n8k16 bf16, f32 acc
 *   uint32_t qr2_sub128x2(uint32_t)              bf16 pair minus 128 each
 *   uint32_t qr2_pack_bf16(float lo, float hi)   two f32 as a bf16 pair (RN)
 *   float   qr2_h2f(uint16_t)                    f16 bits -> f32
 *   void    qr2_pdl()                            launched early (programmatic
 *                                                dependent launch): let the next
 *                                                kernel launch, then wait for the
 *                                                previous one (its x); first thing
 *
 * Why v2 (v1: one m16 tile of 16 weight rows a block, 8 warps taking its
 * 32-input chunks in turn): per chunk a v1 warp loads x hi + lo for its
 * one m16 tile, T tokens x 32 inputs x 4 bytes (T = 8: 1 KB) against 256
 * bytes of 4-bit codes, and the grid is N / 16 blocks with 2 x 4 bytes of
 * codes in flight a lane: the step time is the x traffic through L1/L2 and
 * the load latency, not the weight stream (8 sessions: ~2.7x a 1-session
 * step, which reads the same 4.5 GB).
 *
 * v2, what changes:
 *  - a warp covers MT m16 tiles (16 MT weight rows) and loads a chunk's x
 *    fragments once for all of them: x bytes per weight byte / MT (T = 8,
 *    MT = 4: 1 KB of x per 1 KB of 4-bit codes instead of per 256 B); the
 *    codes are loaded one chunk ahead (in flight while the chunk before is
 *    multiplied), the 4 MT (MXFP4: 2 MT) scale loads and the x loads of a
 *    chunk issued together before its first mma. Accumulators: MT x NT x 4
 *    f32 a lane (NT = ceil(T / 8) token tiles); the defaults keep <= 128
 *    registers (2 blocks, 16 warps an SM; __launch_bounds__ asks for it
 *    where MT NT <= 8): MT = 4 at T <= 8, 2 at T <= 32, 1 past (ptxas,
 *    sm_90, q4 bf16: NT1 MT4, NT2 MT2, NT4 MT2, NT8 MT1 all 128 registers,
 *    0 / 0 / 8 / 32 bytes spilled; MT NT = 16 forms: 255, one block an SM);
 *  - a block is WR row groups of 16 MT rows (WR = 2 at T <= 8, 4 at T <=
 *    32, 8 past), the 8 / WR warps of a group (wk) taking the chunks in
 *    turn: the WR warps of one wk read the same x chunk at the same time
 *    (L1 hits: x from L2 once per 16 MT WR rows, not once per 16 rows as in
 *    v1; at T = 32 x hi + lo is 32 x 128 B a chunk, 8x the codes of 32 rows),
 *    and the block reads WK x 16 contiguous bytes of a 4-bit row at a time;
 *  - split-K over blocks (blockIdx.y = s of S: chunks [C s / S, C (s+1) /
 *    S)) so that the grid reaches ~bps blocks per SM (S = bps SMs / row
 *    blocks, rounded down: default 2, one wave of resident blocks, e.g.
 *    4096 rows at T = 8: 32 row blocks x 8 splits = 256 blocks on 132 SMs). Each block
 *    writes its partial sums to scratch [S][T][D] f32 (L2-resident: S T D
 *    x 4 B, 1-4 MB), then counts itself done on its row block's counter
 *    (fence, atomicAdd); the last of the S adds the S partials in order s =
 *    0..S-1 (deterministic: the same bits whichever block comes last), adds
 *    the bias, writes y and sets the counter back to 0 (ready for the next
 *    launch or a graph replay);
 *  - the warps' sums of a row group are added in shared memory in wk order,
 *    one m16 tile at a time (NT x 4 KB of shared memory).
 * Kept from v1 (proven on the GPU): the fragment mapping (slot s of half h
 * of a chunk holds input 8c + 4h + (s % 2) + 2 (s >= 8): each lane's slots
 * are 8 consecutive inputs, BITS bytes of codes and 16 bytes of x hi / lo),
 * x as bf16 hi + lo (qx_split_kernel: x = hi + lo to ~2^-17), codes exact in
 * bf16, the group's s and b applied to each chunk's f32 sums: s sum q x +
 * b sum x (error ~1e-6 of the f32 reference, not bf16 rounding).
 *
 * Tried on the H100 (session 14) and not kept, each the same bits: the
 * scales and x loaded a chunk ahead like the codes (3% slower), the codes
 * 2 or 3 chunks ahead (4-bit step matmuls 4% faster at T <= 16, 8-bit 2%
 * slower, 8 sessions unchanged). T = 2 costs as much as T = 8 (4096x4096:
 * 17.4 against 18.3 us; one-token mat-vec 8.6) and 8-bit about as much as
 * 4-bit, so neither arithmetic nor bytes in flight set the time; ncu at T
 * = 17..32: 23% occupancy, 62% of cycles with no eligible warp. Next
 * suspects: the x split's own launch and the split-K tail.
 *
 * Not done (next step if T = 32..64 stays mma- or x-bound): x as int16
 * split into s8 hi + u8 lo against u8 codes, mma.m16n8k32.s32.u8.s8 (half
 * the x bytes, twice the k per instruction); x staged in shared memory.
 *
 * Predictions (H200, q4 g64 bf16 scales, bench_cuda_quant's few-rows table:
 * us a call, wall time of back-to-back calls, the x split's launch
 * included; the mat-vec's 7.9 / 17.2 / 18 us as the floor of a weight
 * stream plus the split launch and the partials):
 *                  4096x4096  6144x4096  28672x4096  4096x14336
 *   T = 2..8:        ~10        ~12         ~32         ~21
 *   T = 16:          ~12        ~14         ~38         ~25
 *   T = 32:          ~18        ~22         ~65         ~40
 *   T = 64:          ~32        ~40        ~115         ~70
 * v1 (estimated from the batch step times: ~0.5 TB/s at T = 8): ~2-3x
 * those at T = 8, ~2x at T = 32. q8: ~1.7x the q4 times at T <= 16 (twice
 * the code bytes), ~1.2x at T >= 32. The step's matmuls (4 shapes x 32
 * layers) at T = 8: ~2.4 ms (the 1-session mat-vecs: ~2.2 ms). */
#ifndef NMLX_CUDA_QROWS2_H
#define NMLX_CUDA_QROWS2_H

#include <stdint.h>

#ifndef QR2_BREAK
#define QR2_BREAK 0 /* tests/cuda/qrows2_emu.cpp's deliberately broken builds: 1, 2 */
#endif

enum { QR2_WARPS = 8, QR2_THREADS = 32 * QR2_WARPS };
/* scale storage (the same values as cuda_qdecode.h's SC_*) and the linear
 * bias's dtype */
enum { QR2_SC_F32 = 0, QR2_SC_F16, QR2_SC_BF16, QR2_SC_E8M0 };
enum { QR2_B_F32 = 0, QR2_B_F16, QR2_B_BF16 };

struct qr2_u4 {
    uint32_t x, y, z, w;
};

/* the includer's primitives (defined after this header) */
__device__ __forceinline__ qr2_u4 qr2_ldg16(const void *p);
__device__ __forceinline__ void qr2_mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1);
__device__ __forceinline__ uint32_t qr2_sub128x2(uint32_t p);
__device__ __forceinline__ uint32_t qr2_pack_bf16(float lo, float hi);
__device__ __forceinline__ float qr2_h2f(uint16_t h);
__device__ __forceinline__ void qr2_pdl();

/* y[t, d] = sum_k x[t, k] W[d, k] (+ bias[d]), t < T <= 8 NT; x as bf16 hi,
 * lo [T, N] and chunk sums xs [T, N / 32] (qx_split_kernel). */
struct qr2_args {
    const uint8_t *w;            /* codes [D, N * BITS / 8], rows 4-byte aligned */
    const void *scales, *biases; /* [D, G] (biases unused for MXFP4) */
    int gshift;                  /* log2(group_size / 32) */
    const uint16_t *xhi, *xlo;   /* bf16 bits [T, N], 16-byte aligned */
    const float *xs;             /* [T, N / 32] */
    float *y;                    /* [T, D] */
    float *part;                 /* S > 1: [S, T, D] partial sums */
    unsigned *cnt;               /* S > 1: per row block, 0 between launches */
    const void *lbias;           /* [D] or NULL */
    int lbdt;                    /* QR2_B_* */
    int T, S;
    int wr; /* row groups a block: 1, 2, 4, 8 (8 / wr warps a group share its chunks) */
    int64_t D, N;
};

template <int SC> __device__ __forceinline__ float qr2_scale(const void *p, int64_t i) {
    if constexpr (SC == QR2_SC_F32)
        return __ldg((const float *)p + i);
    else if constexpr (SC == QR2_SC_F16)
        return qr2_h2f(__ldg((const uint16_t *)p + i));
    else if constexpr (SC == QR2_SC_BF16)
        return __uint_as_float((uint32_t)__ldg((const uint16_t *)p + i) << 16);
    else {
        const uint32_t e = __ldg((const uint8_t *)p + i);
        return e ? __uint_as_float(e << 23) : __uint_as_float(0x00400000u);
    }
}

/* the linear bias of row d (A: qr2_args or cuda_qrows3.h's qr3_args) */
template <typename A> __device__ __forceinline__ float qr2_bias(const A &a, int64_t d) {
    if (!a.lbias) return 0.0f;
    if (a.lbdt == QR2_B_F32) return ((const float *)a.lbias)[d];
    const uint16_t v = ((const uint16_t *)a.lbias)[d];
    return a.lbdt == QR2_B_F16 ? qr2_h2f(v) : __uint_as_float((uint32_t)v << 16);
}

/* The 8 codes of piece k of a row (inputs 8k..8k+7): BITS bytes at byte k BITS */
template <int BITS> __device__ __forceinline__ uint64_t qr2_load8(const uint8_t *row, int k) {
    const uint8_t *p = row + k * BITS;
    if constexpr (BITS == 4) return __ldg((const uint32_t *)p);
    if constexpr (BITS == 8) {
        const uint32_t *q = (const uint32_t *)p;
        return (uint64_t)__ldg(q) | (uint64_t)__ldg(q + 1) << 32;
    }
    if constexpr (BITS == 2) return __ldg((const uint16_t *)p);
    if constexpr (BITS == 6) {
        const uint16_t *h = (const uint16_t *)p;
        return (uint64_t)__ldg(h) | (uint64_t)__ldg(h + 1) << 16 | (uint64_t)__ldg(h + 2) << 32;
    }
    uint64_t v = 0;
#pragma unroll
    for (int i = 0; i < BITS; i++)
        v |= (uint64_t)__ldg(p + i) << (8 * i);
    return v;
}

/* The 8 codes of a piece as 4 bf16 pairs in input order (affine: the
 * integer; MXFP4: the E2M1 value * 2^-14; all exact in bf16) */
template <int BITS, bool MX> __device__ __forceinline__ void qr2_codes(uint64_t v, uint32_t *p) {
    if constexpr (!MX && BITS == 4) {
        /* 128 + q through the exponent of 128.0 (bf16 ulp 1 there), minus 128 */
        const uint32_t w = (uint32_t)v;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const uint32_t u = w >> (8 * j);
            p[j] = qr2_sub128x2((u & 0xFu) | ((u & 0xF0u) << 12) | 0x43004300u);
        }
    } else if constexpr (!MX && BITS == 8) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const uint32_t w = (uint32_t)(v >> (32 * (j >> 1)));
            const int b = 2 * (j & 1);
            /* byte b of w as an exact float: 2^23 + byte, minus 2^23 */
            const float lo = __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7540u + b)) - 8388608.0f,
                        hi = __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7541u + b)) - 8388608.0f;
            p[j] = qr2_pack_bf16(lo, hi);
        }
    } else {
        float q[8];
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const uint32_t c = (uint32_t)(v >> (i * BITS)) & ((1u << BITS) - 1u);
            q[i] = MX ? qr2_h2f((uint16_t)(((c & 8u) << 12) | ((c & 7u) << 9)))
                      : __uint_as_float(c | 0x4B000000u) - 8388608.0f;
        }
#pragma unroll
        for (int j = 0; j < 4; j++)
            p[j] = qr2_pack_bf16(q[2 * j], q[2 * j + 1]);
    }
}

/* Split-K's end (v2, v3; S > 1, after the block wrote its partial sums):
 * the last block of this row block to finish adds the S partials in order
 * s = 0..S-1 (the same bits whichever block comes last), adds the bias,
 * writes y and puts the row block's counter back to 0 for the next launch.
 * last_block: the kernel's __shared__ flag; A: qr2_args or qr3_args. */
template <typename A>
__device__ __forceinline__ void qr2_splitk_join(const A &a, int S, int T, int64_t D, int64_t d0,
                                                int RB, int tid, unsigned &last_block) {
    __threadfence();
    __syncthreads();
    if (tid == 0) last_block = atomicAdd(a.cnt + blockIdx.x, 1u) == (unsigned)(S - 1);
    __syncthreads();
    if (!last_block) return;
    __threadfence();
    for (int v = tid; v < T * RB; v += QR2_THREADS) {
        const int t = v / RB;
        const int64_t d = d0 + v % RB;
        if (d >= D) continue;
        float s = 0.0f;
        for (int k = 0; k < S; k++)
            s += __ldcg(a.part + ((int64_t)k * T + t) * D + d);
        a.y[(int64_t)t * D + d] = s + qr2_bias(a, d);
    }
#if QR2_BREAK != 2 /* test hook (qrows2_emu): the counter not put back */
    if (tid == 0) a.cnt[blockIdx.x] = 0u;
#endif
}

/* One block's work: row block bx, split sp. Block: WR = a.wr (1, 2, 4, 8)
 * groups of 16 MT rows, the 8 / WR warps of a group (wk) taking the
 * split's chunks in turn. SKIP (the grouped kernel below, whose tasks have
 * 1..8 NT rows): token tiles past T skip their x loads and mma; T decides
 * NT in qrows2_kernel's launcher, so it never has such tiles. */
template <int BITS, int SC, int NT, int MT, bool SKIP>
__device__ __forceinline__ void qrows2_tile(const qr2_args &a, int64_t bx, int sp) {
    constexpr bool MX = SC == QR2_SC_E8M0;
    __shared__ float red[QR2_WARPS][NT * 4][32];
    __shared__ unsigned last_block;
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, c4 = lane & 3;
    const int T = a.T, S = a.S;
    const int WR = a.wr, WK = QR2_WARPS / WR, wr = warp % WR, wk = warp / WR;
    const int RB = 16 * MT * WR; /* weight rows a block */
    /* 32-bit indices where they fit (T N < 2^31, rows < 2^31): fewer registers */
    const int64_t D = a.D, d0 = bx * RB, rowb = a.N * BITS / 8;
    const int64_t dw = d0 + 16 * MT * wr; /* this warp's rows */
    const int N = (int)a.N, C = N >> 5, G = N >> (a.gshift + 5);
    const int cb = (int)((int64_t)C * sp / S), ce = (int)((int64_t)C * (sp + 1) / S);
    /* rows g and g + 8 of each m16 tile (past D: row D - 1, not stored) */
    int ra[MT], rb[MT];
#pragma unroll
    for (int i = 0; i < MT; i++) {
        const int64_t da = dw + 16 * i + g, db = da + 8;
        ra[i] = (int)(da < D ? da : D - 1), rb[i] = (int)(db < D ? db : D - 1);
    }
    /* this lane's token in each group of 8 (B fragment) and the two tokens
     * of its sums (C fragment); tokens past T read token 0, not stored */
    int xoff[NT], tc[NT][2];
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const int n = 8 * j + g;
        xoff[j] = (n < T ? n : 0) * N + 8 * c4;
        const int t0 = 8 * j + 2 * c4;
        tc[j][0] = (t0 < T ? t0 : 0) * C;
        tc[j][1] = (t0 + 1 < T ? t0 + 1 : 0) * C;
    }
    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                acc[i][j][e] = 0.0f;
    const float pk = MX ? 16384.0f : 1.0f; /* MXFP4: the codes' 2^-14 back (exact) */
    /* the codes one chunk ahead (loaded while the chunk before is multiplied) */
    uint64_t va[MT], vb[MT];
#pragma unroll
    for (int i = 0; i < MT; i++) {
        const int ch = cb + wk < ce ? cb + wk : cb; /* a warp without a chunk reads chunk cb */
        va[i] = cb < ce ? qr2_load8<BITS>(a.w + ra[i] * rowb, ch * 4 + c4) : 0;
        vb[i] = cb < ce ? qr2_load8<BITS>(a.w + rb[i] * rowb, ch * 4 + c4) : 0;
    }
    for (int ch = cb + wk; ch < ce; ch += WK) {
        const int gi = ch >> a.gshift;
        /* every load of the chunk first: the next chunk's codes, scales, x */
        uint64_t na[MT], nb[MT];
        float fsa[MT], fsb[MT], fba[MT], fbb[MT];
        const int chn = ch + WK < ce ? ch + WK : ch; /* the last: its own again (cached) */
#pragma unroll
        for (int i = 0; i < MT; i++) {
            const int64_t sa = (int64_t)ra[i] * G + gi, sb = (int64_t)rb[i] * G + gi;
            na[i] = qr2_load8<BITS>(a.w + ra[i] * rowb, chn * 4 + c4);
            nb[i] = qr2_load8<BITS>(a.w + rb[i] * rowb, chn * 4 + c4);
            fsa[i] = qr2_scale<SC>(a.scales, sa);
            fsb[i] = qr2_scale<SC>(a.scales, sb);
            fba[i] = MX ? 0.0f : qr2_scale<SC>(a.biases, sa);
            fbb[i] = MX ? 0.0f : qr2_scale<SC>(a.biases, sb);
        }
        qr2_u4 xh[NT], xl[NT];
        float s0[NT], s1[NT];
#pragma unroll
        for (int j = 0; j < NT; j++) {
            if (SKIP && j > 0 && 8 * j >= T) break;
            xh[j] = qr2_ldg16(a.xhi + xoff[j] + ch * 32);
            xl[j] = qr2_ldg16(a.xlo + xoff[j] + ch * 32);
            s0[j] = MX ? 0.0f : __ldg(a.xs + tc[j][0] + ch);
            s1[j] = MX ? 0.0f : __ldg(a.xs + tc[j][1] + ch);
        }
#pragma unroll
        for (int i = 0; i < MT; i++) {
            uint32_t pa[4], pb[4];
            qr2_codes<BITS, MX>(va[i], pa);
            qr2_codes<BITS, MX>(vb[i], pb);
            /* A fragments of the two halves (slots 2c, 2c+1 | 2c+8, 2c+9) */
#if QR2_BREAK == 1 /* test hook (qrows2_emu): the halves' slots crossed */
            const uint32_t a0[4] = {pa[0], pb[0], pa[2], pb[2]},
                           a1[4] = {pa[1], pb[1], pa[3], pb[3]};
#else
            const uint32_t a0[4] = {pa[0], pb[0], pa[1], pb[1]},
                           a1[4] = {pa[2], pb[2], pa[3], pb[3]};
#endif
#pragma unroll
            for (int j = 0; j < NT; j++) {
                if (SKIP && j > 0 && 8 * j >= T) break;
                float p[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                qr2_mma(p, a0, xh[j].x, xh[j].y);
                qr2_mma(p, a0, xl[j].x, xl[j].y);
                qr2_mma(p, a1, xh[j].z, xh[j].w);
                qr2_mma(p, a1, xl[j].z, xl[j].w);
                acc[i][j][0] = fmaf(fsa[i], p[0] * pk, fmaf(fba[i], s0[j], acc[i][j][0]));
                acc[i][j][1] = fmaf(fsa[i], p[1] * pk, fmaf(fba[i], s1[j], acc[i][j][1]));
                acc[i][j][2] = fmaf(fsb[i], p[2] * pk, fmaf(fbb[i], s0[j], acc[i][j][2]));
                acc[i][j][3] = fmaf(fsb[i], p[3] * pk, fmaf(fbb[i], s1[j], acc[i][j][3]));
            }
        }
#pragma unroll
        for (int i = 0; i < MT; i++)
            va[i] = na[i], vb[i] = nb[i];
    }
    /* the warps' sums, one m16 tile at a time, added in wk order */
#pragma unroll
    for (int i = 0; i < MT; i++) {
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                red[warp][j * 4 + e][lane] = acc[i][j][e];
        __syncthreads();
        for (int v = tid; v < WR * NT * 4 * 32; v += QR2_THREADS) {
            const int r = v / (NT * 4 * 32), e = (v >> 5) % (NT * 4), l = v & 31;
            const int j = e >> 2, k = e & 3;
            const int64_t d = d0 + 16 * MT * r + 16 * i + (l >> 2) + (k >= 2 ? 8 : 0);
            const int t = 8 * j + 2 * (l & 3) + (k & 1);
            if (d >= D || t >= T) continue;
            float s = 0.0f;
            for (int w = 0; w < WK; w++)
                s += red[w * WR + r][e][l];
            if (S == 1)
                a.y[(int64_t)t * D + d] = s + qr2_bias(a, d);
            else
                a.part[((int64_t)sp * T + t) * D + d] = s;
        }
        __syncthreads();
    }
    if (S > 1) qr2_splitk_join(a, S, T, D, d0, RB, tid, last_block);
}

/* Up to 2 blocks an SM kept resident (128 registers) where MT NT <= 8. */
template <int BITS, int SC, int NT, int MT>
__global__ void __launch_bounds__(QR2_THREADS, MT *NT <= 8 ? 2 : 1)
    qrows2_kernel(const qr2_args a) {
    qr2_pdl();
    qrows2_tile<BITS, SC, NT, MT, false>(a, blockIdx.x, (int)blockIdx.y);
}

#endif
