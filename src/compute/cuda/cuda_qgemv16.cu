/* Decode mat-vec for MLX affine 4-bit and 8-bit weights on int16
 * activations: y_i[D_i] = W_i[D_i, N] x[N] for one to three weights that
 * read the same x (q/k/v, gate/up) in one launch.
 *
 * Why int16: the f32 form (cuda_quant.cu qgemv_kernel) spends ~3
 * instructions a weight (byte permute, subtract, FMA); at the H200's
 * 4.3 TB/s of 4-bit codes that is close to the SMs' whole issue rate. Here
 * x is rounded per 16 inputs to int16 (step max|x| / 32767: 2^-16 of the
 * block's largest value, where bf16 keeps 2^-9) and each instruction
 * `dp2a` multiplies two int16 x by two code bytes into an int32 sum: codes
 * need only a mask and a shift (4-bit) or nothing (8-bit). Per group the
 * sums take the scales:
 *   sum_k W[d,k] x[k] = s * sum_blocks dx_b * (sum q x16) + b * sum_k x[k]
 * with sum x taken in f32 from the unrounded x. Measured error on random
 * data up to ~5e-5 of max|y| (the f32 kernel ~5e-7; bf16 x ~2e-3):
 * tests/cuda/test_cuda_ops.c bounds it at 2e-4.
 *
 * A block takes Q16_WARPS * R rows (a tile). It first writes x to shared
 * memory as int16 (4-bit: each 8 inputs reordered x0 x2 x4 x6 x1 x3 x5 x7,
 * so the low and high nibbles of a code word meet their x pairs without
 * shuffles), one f32 step and one f32 sum per 16 inputs. Then each warp
 * takes R rows; lane l reads 16-byte pieces of codes l, l + 32, ...
 * (coalesced) and the matching x from shared memory (pieces stored
 * swizzled: no bank conflicts).
 *
 * PAIR (backend.h gate_up_act): two weights of one shape, gate and up; a
 * warp's R rows are R / 2 gate rows and the same up rows, interleaved, each
 * summed as above, and lane 0 writes act(gate) * up (y of weight 0) instead
 * of both: the act_mul launch and a pass over gate and up saved.
 *
 * NORM (backend.h add_rmsnorm_matmul, one decode token): x is the residual
 * stream and the block stages rmsnorm(x + d) instead of x, the add_rmsnorm
 * launch saved. Each block first sums the squares of x + d (N floats, from
 * L1/L2) in the order of add_rmsnorm's kernel (norm_sumsq), so its staged
 * values are the f32 y that add_rmsnorm writes, bit for bit. x + d and y
 * must still be written once, but every block reads x while it stages:
 * after staging, thread 0 counts its block done on a device counter
 * (fence, then atomicAdd); the block that counts last has seen every other
 * block finish reading x, so it alone writes x + d and y (at its end,
 * recomputed from the unchanged x and d) and resets the counter to 0 for
 * the next launch (no host work: a recorded graph replays it). */
#include "compute/cuda/cuda_internal.h"
#include "compute/cuda/cuda_qgemv16.h"

#include <stdint.h>
#include <string.h>

namespace {

enum { Q16_WARPS = 8, Q16_THREADS = 32 * Q16_WARPS, Q16_MAXW = 3 };
enum { SCF32 = 0, SCF16, SCBF16 };

struct q16_weight {
    const uint4 *w;
    const void *scales, *biases;
    const void *lbias; /* optional per-row bias of dtype lbdt */
    float *y;
    int64_t D;
    unsigned blk0; /* first block of this weight */
    nmlx_dtype lbdt;
};

struct q16_args {
    q16_weight m[Q16_MAXW];
    int n;
    nmlx_act act; /* PAIR only */
    const float *x;
    int64_t N;
    int gshift;     /* log2(group_size / piece inputs) */
    unsigned tiles; /* tiles of Q16_WARPS * R rows over all weights */
    /* NORM only: x += d (x is `xw`), staged as y = rmsnorm(x) (weight nw,
     * offset noff, eps neps), y written to yn; done: the blocks' counter */
    float *xw, *yn;
    const float *d;
    const void *nw;
    nmlx_dtype nwdt;
    float noff, neps;
    unsigned *done;
};

template <int SC> __device__ __forceinline__ float sc_get(const void *p, int64_t i) {
    if constexpr (SC == SCF32)
        return __ldg((const float *)p + i);
    else if constexpr (SC == SCF16)
        return __half2float(__ushort_as_half(__ldg((const unsigned short *)p + i)));
    else
        return __uint_as_float((uint32_t)__ldg((const unsigned short *)p + i) << 16);
}

/* two int16 of a (signed) times bytes 0,1 (lo) or 2,3 (hi) of b (unsigned) */
__device__ __forceinline__ int dp2a_lo(int a, unsigned b, int c) {
    int d;
    asm("dp2a.lo.s32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
__device__ __forceinline__ int dp2a_hi(int a, unsigned b, int c) {
    int d;
    asm("dp2a.hi.s32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

/* Inputs per 16-byte piece of codes, bytes of x per piece, and the swizzle
 * key of piece k (8 lanes of one shared-memory phase hit distinct banks). */
template <int BITS> struct piece {
    enum { IN = 128 / BITS, XB = IN * 2, SEG = XB / 16 };
    static __device__ __forceinline__ int key(int64_t k) {
        return BITS == 4 ? (int)((k >> 1) & 3) : (int)((k >> 2) & 1);
    }
};

/* dot of one 32-bit code word (8 nibbles or 4 bytes) with its x int16
 * pairs a (uint4 segment: 4-bit uses all four, 8-bit two of them) */
template <int BITS> __device__ __forceinline__ int word_dot(unsigned w, const int *xp, int acc) {
    if (BITS == 4) {
        const unsigned lo = w & 0x0F0F0F0Fu, hi = (w >> 4) & 0x0F0F0F0Fu;
        acc = dp2a_lo(xp[0], lo, acc);
        acc = dp2a_hi(xp[1], lo, acc);
        acc = dp2a_lo(xp[2], hi, acc);
        return dp2a_hi(xp[3], hi, acc);
    } else {
        acc = dp2a_lo(xp[0], w, acc);
        return dp2a_hi(xp[1], w, acc);
    }
}

/* The weight of tile t (tiles numbered across the weights) */
__device__ __forceinline__ q16_weight weight_of(const q16_args &a, unsigned t) {
    q16_weight m = a.m[0]; /* selected without a dynamic index (no local copy of a) */
    if (a.n > 1 && t >= a.m[1].blk0) m = a.m[1];
    if (a.n > 2 && t >= a.m[2].blk0) m = a.m[2];
    return m;
}

/* The sum of squares of x + d (N inputs) as add_rmsnorm_kernel (cuda_fused.cu)
 * sums it with NT = cuda_norm_threads(N) threads: virtual thread v adds
 * (double)(x + d)^2 over v, v + NT, ..., then cuda_block_sum's two
 * shuffle trees. This block has Q16_THREADS (256): for NT = 512 thread t
 * is virtual threads t and t + 256, for NT = 64 threads from 64 on add
 * nothing. Every thread gets the sum. */
__device__ __forceinline__ double norm_sumsq(const float *x, const float *d, int64_t N) {
    __shared__ double part[16];
    const int NT = N >= 1024 ? 512 : N >= 256 ? 256 : 64;
    const int t = threadIdx.x, w = t / 32, l = t % 32;
    double s0 = 0, s1 = 0;
    if (t < NT)
        for (int64_t i = t; i < N; i += NT) {
            float v = x[i] + d[i];
            s0 += (double)v * v;
        }
    if (NT == 512)
        for (int64_t i = t + 256; i < N; i += NT) {
            float v = x[i] + d[i];
            s1 += (double)v * v;
        }
    for (int o = 16; o > 0; o >>= 1) {
        s0 += __shfl_xor_sync(0xffffffffu, s0, o);
        s1 += __shfl_xor_sync(0xffffffffu, s1, o);
    }
    if (l == 0 && t < NT) part[w] = s0;
    if (l == 0 && NT == 512) part[w + 8] = s1;
    __syncthreads();
    double v = l < NT / 32 ? part[l] : 0.0;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* y[i] = (x[i] + d[i]) * inv * (w[i] + off) as add_rmsnorm_kernel writes it
 * (s = x[i] + d[i]); __fmul_rn: never contracted into an FMA with the
 * staging's sums (the unfused kernel reads y rounded from memory) */
__device__ __forceinline__ float norm_one(const q16_args &a, float s, float inv, int64_t i) {
    const float v = __fmul_rn(s, inv);
    return a.nw ? __fmul_rn(v, cuda_load_f32(a.nwdt, a.nw, i) + a.noff) : v;
}

/* The dot products of a warp's R rows (from d0) with the staged x, and
 * their outputs. */
template <int BITS, int SC, int R, bool PAIR>
__device__ __forceinline__ void rows_dot(const q16_args &a, const q16_weight &m,
                                         const q16_weight &mu, int64_t d0, const uint4 *const *rows,
                                         const uint4 *c0, const unsigned char *smem) {
    typedef piece<BITS> P;
    const int64_t N = a.N, NB = N / 16, NP = N / P::IN;
    const unsigned char *xq = smem;
    const float *xstep = (const float *)(smem + N * 2), *xsum = xstep + NB;
    constexpr int RW = PAIR ? R / 2 : R;
    const int lane = threadIdx.x & 31;
    auto drow = [&](int r) -> int64_t {
        const int64_t d = d0 + (PAIR ? r / 2 : r);
        return d < m.D ? d : m.D - 1;
    };
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        acc[r] = 0.0f;
    const int64_t G = NP >> a.gshift; /* groups a row */
#pragma unroll 2
    for (int64_t k = lane; k < NP; k += 32) {
        uint4 c[R];
#pragma unroll
        for (int r = 0; r < R; r++)
            c[r] = k == lane ? c0[r] : __ldg(rows[r] + k);
        const int64_t g = k >> a.gshift;
        float s[R], bb[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            const bool up = PAIR && (r & 1);
            s[r] = sc_get<SC>(up ? mu.scales : m.scales, drow(r) * G + g);
            bb[r] = sc_get<SC>(up ? mu.biases : m.biases, drow(r) * G + g);
        }
        int xp[P::SEG * 4];
#pragma unroll
        for (int j = 0; j < P::SEG; j++) {
            const uint4 u = *(const uint4 *)(xq + k * P::XB + (j ^ P::key(k)) * 16);
            xp[4 * j] = (int)u.x, xp[4 * j + 1] = (int)u.y, xp[4 * j + 2] = (int)u.z,
                   xp[4 * j + 3] = (int)u.w;
        }
        if constexpr (BITS == 4) { /* 32 inputs: x blocks 2k, 2k + 1 */
            const float2 st = *(const float2 *)(xstep + 2 * k);
            const float2 sm = *(const float2 *)(xsum + 2 * k);
            const float xs = sm.x + sm.y;
#pragma unroll
            for (int r = 0; r < R; r++) {
                int i0 = word_dot<4>(c[r].x, xp, 0);
                i0 = word_dot<4>(c[r].y, xp + 4, i0);
                int i1 = word_dot<4>(c[r].z, xp + 8, 0);
                i1 = word_dot<4>(c[r].w, xp + 12, i1);
                const float dot = fmaf(st.x, (float)i0, st.y * (float)i1);
                acc[r] = fmaf(s[r], dot, fmaf(bb[r], xs, acc[r]));
            }
        } else { /* 16 inputs: x block k */
            const float st = xstep[k], xs = xsum[k];
#pragma unroll
            for (int r = 0; r < R; r++) {
                int i0 = word_dot<8>(c[r].x, xp, 0);
                i0 = word_dot<8>(c[r].y, xp + 2, i0);
                i0 = word_dot<8>(c[r].z, xp + 4, i0);
                i0 = word_dot<8>(c[r].w, xp + 6, i0);
                acc[r] = fmaf(s[r], st * (float)i0, fmaf(bb[r], xs, acc[r]));
            }
        }
    }
    if constexpr (PAIR) {
#pragma unroll
        for (int j = 0; j < RW; j++) {
            float g = acc[2 * j], u = acc[2 * j + 1];
            for (int o = 16; o > 0; o >>= 1) {
                g += __shfl_xor_sync(0xffffffffu, g, o);
                u += __shfl_xor_sync(0xffffffffu, u, o);
            }
            const int64_t d = d0 + j;
            if (lane == 0 && d < m.D) {
                g += m.lbias ? cuda_load_f32(m.lbdt, m.lbias, d) : 0.0f;
                u += mu.lbias ? cuda_load_f32(mu.lbdt, mu.lbias, d) : 0.0f;
                m.y[d] = cuda_act1(a.act, g) * u;
            }
        }
    } else {
#pragma unroll
        for (int r = 0; r < R; r++) {
            float v = acc[r];
            for (int o = 16; o > 0; o >>= 1)
                v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0 && d0 + r < m.D)
                m.y[d0 + r] = v + (m.lbias ? cuda_load_f32(m.lbdt, m.lbias, d0 + r) : 0.0f);
        }
    }
}

/* NORM's staging takes registers: 3 blocks a multiprocessor kept (<= 80,
 * measured with ptxas -v: no spills) where the plain kernel has 3 or 4;
 * minimum 0 = none given, the plain kernels compile as before */
template <int BITS, int SC, int R, bool PAIR, bool NORM>
__global__ void __launch_bounds__(Q16_THREADS, NORM && (PAIR || R == 2) ? 3 : 0)
    qgemv16_kernel(q16_args a) {
    typedef piece<BITS> P;
    extern __shared__ __align__(16) unsigned char smem[];
    const int64_t N = a.N, NB = N / 16, NP = N / P::IN;
    unsigned char *xq = smem;               /* N int16, swizzled pieces */
    float *xstep = (float *)(smem + N * 2); /* NB steps */
    float *xsum = xstep + NB;               /* NB sums */
    const q16_weight m = PAIR ? a.m[0] : weight_of(a, blockIdx.x);
    const q16_weight mu = PAIR ? a.m[1] : m; /* PAIR: odd rows r are up's */
    constexpr int RW = PAIR ? R / 2 : R;     /* rows of one weight a warp takes */
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    const int64_t d0 = ((int64_t)(blockIdx.x - m.blk0) * Q16_WARPS + warp) * RW;
    auto drow = [&](int r) -> int64_t { /* the weight row of the warp's row r (clamped) */
                                        const int64_t d = d0 + (PAIR ? r / 2 : r);
                                        return d < m.D ? d : m.D - 1;
    };

    /* first codes in flight before x is staged */
    const int64_t rowb = N * BITS / 128; /* 16-byte pieces a row */
    const uint4 *rows[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        rows[r] = (PAIR && (r & 1) ? mu.w : m.w) + drow(r) * rowb;
    uint4 c0[R];
    if (lane < NP)
#pragma unroll
        for (int r = 0; r < R; r++)
            c0[r] = __ldg(rows[r] + lane);
    cuda_pdl_trigger(); /* the next mat-vec may start its own code loads */
    cuda_pdl_wait();    /* launched early (NMLX_CUDA_PDL): x is ready from here */

    [[maybe_unused]] float ninv = 1.0f; /* NORM: 1 / rms(x + d), as add_rmsnorm rounds it */
    if constexpr (NORM) ninv = (float)(1.0 / sqrt(norm_sumsq(a.x, a.d, N) / (double)N + a.neps));

    /* stage x (NORM: y = rmsnorm(x + d)): a thread takes 16 inputs at a time */
    for (int64_t b = threadIdx.x; b < NB; b += Q16_THREADS) {
        float v[16];
        const float4 *src = (const float4 *)(a.x + b * 16);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float4 f = src[i];
            v[4 * i] = f.x, v[4 * i + 1] = f.y, v[4 * i + 2] = f.z, v[4 * i + 3] = f.w;
        }
        if constexpr (NORM) {
            const float4 *dsrc = (const float4 *)(a.d + b * 16);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float4 f = dsrc[i];
                v[4 * i] += f.x, v[4 * i + 1] += f.y, v[4 * i + 2] += f.z, v[4 * i + 3] += f.w;
            }
#pragma unroll
            for (int i = 0; i < 16; i++)
                v[i] = norm_one(a, v[i], ninv, b * 16 + i);
        }
        float mx = 0.0f, sum = 0.0f;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            mx = fmaxf(mx, fabsf(v[i]));
            sum += v[i];
        }
        const float step = mx / 32767.0f, inv = mx > 0.0f ? 32767.0f / mx : 0.0f;
        int q[16];
#pragma unroll
        for (int i = 0; i < 16; i++)
            q[i] = __float2int_rn(v[i] * inv);
            /* 8 inputs -> one 16-byte segment (4 int16 pairs) */
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int *s = q + 8 * h;
            uint32_t pr[4];
            if (BITS == 4) { /* pairs (x0,x2) (x4,x6) (x1,x3) (x5,x7) */
                pr[0] = (uint32_t)(s[0] & 0xFFFF) | (uint32_t)s[2] << 16;
                pr[1] = (uint32_t)(s[4] & 0xFFFF) | (uint32_t)s[6] << 16;
                pr[2] = (uint32_t)(s[1] & 0xFFFF) | (uint32_t)s[3] << 16;
                pr[3] = (uint32_t)(s[5] & 0xFFFF) | (uint32_t)s[7] << 16;
            } else {
#pragma unroll
                for (int j = 0; j < 4; j++)
                    pr[j] = (uint32_t)(s[2 * j] & 0xFFFF) | (uint32_t)s[2 * j + 1] << 16;
            }
            const int64_t seg = b * 2 + h; /* logical 16-byte segment */
            const int64_t k = seg / P::SEG;
            const int j = (int)(seg % P::SEG) ^ P::key(k);
            *(uint4 *)(xq + k * P::XB + j * 16) = make_uint4(pr[0], pr[1], pr[2], pr[3]);
        }
        xstep[b] = step;
        xsum[b] = sum;
    }
    __syncthreads();
    [[maybe_unused]] bool last = false; /* NORM: this block is the last to read x */
    if constexpr (NORM) {
        if (threadIdx.x == 0) {
            __threadfence();
            last = atomicAdd(a.done, 1u) == gridDim.x - 1;
        }
    }
    if (d0 < m.D) rows_dot<BITS, SC, R, PAIR>(a, m, mu, d0, rows, c0, smem);
    if constexpr (NORM) {
        if (__syncthreads_or(last)) { /* the last block: x += d, y */
            __threadfence();
            for (int64_t i = 4 * threadIdx.x; i < N; i += 4 * Q16_THREADS) {
                const float4 xv = *(const float4 *)(a.xw + i), dv = *(const float4 *)(a.d + i);
                const float4 sv = make_float4(xv.x + dv.x, xv.y + dv.y, xv.z + dv.z, xv.w + dv.w);
                *(float4 *)(a.xw + i) = sv;
                *(float4 *)(a.yn + i) =
                    make_float4(norm_one(a, sv.x, ninv, i), norm_one(a, sv.y, ninv, i + 1),
                                norm_one(a, sv.z, ninv, i + 2), norm_one(a, sv.w, ninv, i + 3));
            }
            if (threadIdx.x == 0) *a.done = 0; /* for the next launch */
        }
    }
}

template <int BITS, int SC, int R, bool PAIR, bool NORM>
void launch_r(cudaStream_t st, const q16_args &a) {
    const size_t sm = (size_t)a.N * 2 + (size_t)(a.N / 16) * 8;
    if (sm > 48 * 1024) {
        static size_t set = 0; /* per instantiation: raise the opt-in once */
        if (sm > set) {
            cudaFuncSetAttribute(qgemv16_kernel<BITS, SC, R, PAIR, NORM>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm);
            set = sm;
        }
    }
    if (nmlx_cuda_pdl_on()) { /* may start while the previous kernel ends */
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(a.tiles);
        cfg.blockDim = dim3(Q16_THREADS);
        cfg.dynamicSmemBytes = sm;
        cfg.stream = st;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        cudaLaunchKernelEx(&cfg, qgemv16_kernel<BITS, SC, R, PAIR, NORM>, a);
        return;
    }
    qgemv16_kernel<BITS, SC, R, PAIR, NORM><<<a.tiles, Q16_THREADS, sm, st>>>(a);
}

template <int BITS, int SC, int R, bool PAIR> void launch_n(cudaStream_t st, const q16_args &a) {
    if (a.done)
        launch_r<BITS, SC, R, PAIR, true>(st, a);
    else
        launch_r<BITS, SC, R, PAIR, false>(st, a);
}

/* pair: a.n == 2, gate and up of one shape, tiles over the row pairs */
template <int BITS, int SC> void launch_sc(cudaStream_t st, q16_args &a, int R, bool pair) {
    unsigned blk = 0;
    if (pair) {
        a.m[0].blk0 = a.m[1].blk0 = 0;
        a.tiles = (unsigned)((a.m[0].D + Q16_WARPS * (R / 2) - 1) / (Q16_WARPS * (R / 2)));
        if (R == 4)
            launch_n<BITS, SC, 4, true>(st, a);
        else
            launch_n<BITS, SC, 2, true>(st, a);
        return;
    }
    for (int i = 0; i < a.n; i++) {
        a.m[i].blk0 = blk;
        blk += (unsigned)((a.m[i].D + Q16_WARPS * R - 1) / (Q16_WARPS * R));
    }
    a.tiles = blk;
    if (R == 4)
        launch_n<BITS, SC, 4, false>(st, a);
    else
        launch_n<BITS, SC, 2, false>(st, a);
}

} // namespace
bool nmlx_cuda_qgemv16_ok(const nmlx_weight *w) {
    if (w->mode != NMLX_QUANT_AFFINE || (w->bits != 4 && w->bits != 8)) return false;
    if (w->group_size < 32 || w->group_size % 32 || w->cols % w->group_size) return false;
    const nmlx_dtype sd = w->scales.dtype;
    if (sd != NMLX_DT_F32 && sd != NMLX_DT_F16 && sd != NMLX_DT_BF16) return false;
    if (w->biases.dtype != sd || (uintptr_t)w->w.data % 16) return false;
    /* x staged whole in shared memory (the H100/H200 give a block 227 KB) */
    return (size_t)w->cols * 2 + (size_t)(w->cols / 16) * 8 <= 200 * 1024;
}

/* n weights (pair: gate and up, act) reading x (nrm != NULL: rmsnorm(x +
 * d), x = nrm->x); false if they do not qualify */
static bool qgemv16_run(nmlx_backend *be, int n, const nmlx_weight *const *ws,
                        const nmlx_tensor *const *biases, const float *x, float *const *ys,
                        bool pair, nmlx_act act, const nmlx_cuda_norm_in *nrm) {
    if (n < 1 || n > Q16_MAXW || (uintptr_t)x % 16) return false;
    const nmlx_weight *w0 = ws[0];
    for (int i = 0; i < n; i++) {
        const nmlx_weight *w = ws[i];
        if (!nmlx_cuda_qgemv16_ok(w) || w->bits != w0->bits || w->cols != w0->cols ||
            w->group_size != w0->group_size || w->scales.dtype != w0->scales.dtype)
            return false;
    }
    if (pair && (n != 2 || ws[1]->rows != w0->rows)) return false;
    if (nrm && (!nrm->done || nrm->D != w0->cols || ((uintptr_t)nrm->d | (uintptr_t)nrm->y) % 16))
        return false;
    q16_args a;
    memset(&a, 0, sizeof a);
    if (nrm) {
        a.xw = nrm->x, a.d = nrm->d, a.yn = nrm->y, a.done = nrm->done;
        a.nw = nrm->w ? nrm->w->data : NULL;
        a.nwdt = nrm->w ? nrm->w->dtype : NMLX_DT_F32;
        a.noff = nrm->w_offset, a.neps = nrm->eps;
    }
    a.n = n;
    a.act = act;
    a.x = x;
    a.N = w0->cols;
    const int in = 128 / w0->bits;
    a.gshift = 0;
    while ((in << a.gshift) < w0->group_size)
        a.gshift++;
    int64_t rows = 0;
    for (int i = 0; i < n; i++) {
        a.m[i].w = (const uint4 *)ws[i]->w.data;
        a.m[i].scales = ws[i]->scales.data;
        a.m[i].biases = ws[i]->biases.data;
        a.m[i].lbias = biases && biases[i] ? biases[i]->data : NULL;
        a.m[i].lbdt = biases && biases[i] ? biases[i]->dtype : NMLX_DT_F32;
        a.m[i].y = ys[i];
        a.m[i].D = ws[i]->rows;
        rows += ws[i]->rows;
    }
    /* measured on an H200 (bench/cuda/README.md): 4 rows a warp pay off for
     * 4-bit from 16384 rows; an 8-bit LM head runs faster on the f32 kernel */
    if (w0->bits == 8 && n == 1 && rows >= 16384) return false;
    const int R = w0->bits == 4 && rows >= 16384 ? 4 : 2;
    cudaStream_t st = cuda_of(be)->stream;
    const nmlx_dtype sd = w0->scales.dtype;
    const int sc = sd == NMLX_DT_F32 ? SCF32 : sd == NMLX_DT_F16 ? SCF16 : SCBF16;
    if (w0->bits == 4) {
        if (sc == SCF32)
            launch_sc<4, SCF32>(st, a, R, pair);
        else if (sc == SCF16)
            launch_sc<4, SCF16>(st, a, R, pair);
        else
            launch_sc<4, SCBF16>(st, a, R, pair);
    } else {
        if (sc == SCF32)
            launch_sc<8, SCF32>(st, a, R, pair);
        else if (sc == SCF16)
            launch_sc<8, SCF16>(st, a, R, pair);
        else
            launch_sc<8, SCBF16>(st, a, R, pair);
    }
    nmlx_cuda_note(be, cudaGetLastError());
    return true;
}

bool nmlx_cuda_qgemv16(nmlx_backend *be, int n, const nmlx_weight *const *ws,
                       const nmlx_tensor *const *biases, const float *x, float *const *ys) {
    return qgemv16_run(be, n, ws, biases, x, ys, false, NMLX_ACT_SILU, NULL);
}

bool nmlx_cuda_qgemv16_act(nmlx_backend *be, nmlx_act act, const nmlx_weight *g,
                           const nmlx_weight *u, const nmlx_tensor *bg, const nmlx_tensor *bu,
                           const float *x, float *gate) {
    const nmlx_weight *ws[2] = {g, u};
    const nmlx_tensor *bs[2] = {bg, bu};
    float *ys[2] = {gate, NULL}; /* up's y is never written */
    return qgemv16_run(be, 2, ws, bs, x, ys, true, act, NULL);
}

bool nmlx_cuda_qgemv16_norm(nmlx_backend *be, const nmlx_cuda_norm_in *nrm, int act, int n,
                            const nmlx_weight *const *ws, const nmlx_tensor *const *biases,
                            float *const *ys) {
    if (act >= 0) {
        if (n != 2) return false;
        float *gate[2] = {ys[0], NULL}; /* up's y is never written */
        return qgemv16_run(be, 2, ws, biases, nrm->x, gate, true, (nmlx_act)act, nrm);
    }
    return qgemv16_run(be, n, ws, biases, nrm->x, ys, false, NMLX_ACT_SILU, nrm);
}
