/* Device code of the dense decode mat-vec (cuda_matmul.cu, where the host
 * side and the cuBLAS paths are): gemv_kernel (T <= GEMV_MAX_T rows of x)
 * and gemv_norm_kernel (backend.h add_rmsnorm_matmul for one token). A
 * header so that tests/cuda/gemv_norm_emu.cpp can run both on the CPU: the
 * includer supplies cuda_internal.h's helpers (cuda_load_f32, cuda_act1,
 * cuda_rope_pair, cuda_rope_fold, the PDL calls). Included once, inside no
 * namespace. */
#ifndef NMLX_CUDA_GEMV_DEV_CUH
#define NMLX_CUDA_GEMV_DEV_CUH

#include "compute/cuda/cuda_norm_sumsq.cuh"

/* GEMV_MAX_T: up to this many rows of x (a batched decode step) run as the
 * mat-vec, so each row keeps the f32 arithmetic of a lone decode step. */
enum { GEMV_WARPS = 4, GEMV_MAX_T = 8 };

template <typename W> struct wvec;
/* 16 bytes of weights (one uint4) as 8 (bf16/f16) or 4 (f32) floats */
template <> struct wvec<__nv_bfloat16> {
    enum { N = 8 };
    static __device__ __forceinline__ void cvt(uint4 u, float *f) {
        const unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[2 * i] = __uint_as_float(w[i] << 16);
            f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
};
template <> struct wvec<__half> {
    enum { N = 8 };
    static __device__ __forceinline__ void cvt(uint4 u, float *f) {
        const __half2 *h = (const __half2 *)&u;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float2 v = __half22float2(h[i]);
            f[2 * i] = v.x;
            f[2 * i + 1] = v.y;
        }
    }
};
template <> struct wvec<float> {
    enum { N = 4 };
    static __device__ __forceinline__ void cvt(uint4 u, float *f) {
        f[0] = __uint_as_float(u.x);
        f[1] = __uint_as_float(u.y);
        f[2] = __uint_as_float(u.z);
        f[3] = __uint_as_float(u.w);
    }
};

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Up to GEMV_MULTI weights of one dtype and width N that read one x (q/k/v,
 * gate/up): their rows concatenated, one launch. pair_act >= 0: weights 0
 * and 1 are gate and up of one shape, a warp takes row d of both and writes
 * act(g) * u to y[0] (backend.h gate_up_act). */
enum { GEMV_MULTI = 3, GEMV_PRE = 4 };
typedef struct gemv_args {
    const void *w[GEMV_MULTI];
    const void *bias[GEMV_MULTI];
    nmlx_dtype bdt[GEMV_MULTI];
    float *y[GEMV_MULTI];
    int64_t D[GEMV_MULTI];
    int n;
    int pair_act; /* an nmlx_act, or -1 */
    nmlx_dtype wdt;
    const float *x;
    int64_t N;
    bool vec; /* every row start, x and N 16-byte aligned; else the scalar loop */
    /* non-NULL (backend.h matmul_residual: one weight, one row of x, not a
     * pair): y[0] is the residual stream, y[0] += W x, and each block's sum
     * of squares of the rows it updated goes to rsum (cuda_norm_sumsq.cuh) */
    double *rsum;
} gemv_args;

/* acc[t] += w[k .. k + V) . x[t, k .. k + V) */
template <typename W, int NT>
__device__ __forceinline__ void gemv_chunk(float *acc, uint4 u, const float *x, int64_t N,
                                           int64_t k) {
    const int V = wvec<W>::N;
    float f[V];
    wvec<W>::cvt(u, f);
#pragma unroll
    for (int t = 0; t < NT; t++)
#pragma unroll
        for (int i = 0; i < V; i += 4) {
            float4 xv = *(const float4 *)(x + t * N + k + i);
            acc[t] += f[i] * xv.x + f[i + 1] * xv.y + f[i + 2] * xv.z + f[i + 3] * xv.w;
        }
}

/* One warp per row: acc[t] = row . x[t, :] for the NT rows of x, the weight
 * row read once for all of them. The first GEMV_PRE loads of a lane are
 * issued before the wait for the kernel ahead (programmatic dependent
 * launch: x may not be written yet), so they overlap its end. Each row's
 * sum runs in the same order whatever NT is, so a row of a batched decode
 * (NT > 1) equals that token decoded alone (NT = 1) bit for bit. */
template <typename W, int NT, bool PAIR>
__global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_kernel(gemv_args a) {
    cuda_pdl_trigger();
    const int lane = threadIdx.x % 32;
    const int V = wvec<W>::N;
    const int64_t N = a.N;
    int64_t d = (int64_t)blockIdx.x * GEMV_WARPS + threadIdx.x / 32;
    int i = 0;
    if (!PAIR)
        while (i < a.n - 1 && d >= a.D[i])
            d -= a.D[i++];
    const bool live = d < a.D[i];
    const W *row = (const W *)a.w[i] + d * N;
    const W *row2 = PAIR ? (const W *)a.w[1] + d * N : NULL;
    uint4 pre[GEMV_PRE], pre2[GEMV_PRE];
#pragma unroll
    for (int p = 0; p < GEMV_PRE; p++) {
        const int64_t k = (int64_t)lane * V + (int64_t)p * 32 * V;
        const bool in = live && a.vec && k < N;
        pre[p] = in ? __ldg((const uint4 *)(row + k)) : make_uint4(0, 0, 0, 0);
        if (PAIR) pre2[p] = in ? __ldg((const uint4 *)(row2 + k)) : make_uint4(0, 0, 0, 0);
    }
    cuda_pdl_wait(); /* launched early (cuda_launch_pdl): x is ready from here */
    if (!live && !a.rsum) return;
    double ss = 0.0; /* rsum: lane 0's square of its updated row */
    if (live) {
        const float *x = a.x;
        float acc[NT], acc2[NT];
#pragma unroll
        for (int t = 0; t < NT; t++)
            acc[t] = acc2[t] = 0;
        if (a.vec) {
            int64_t k = (int64_t)lane * V;
#pragma unroll
            for (int p = 0; p < GEMV_PRE; p++, k += 32 * V) {
                if (k < N) {
                    gemv_chunk<W, NT>(acc, pre[p], x, N, k);
                    if (PAIR) gemv_chunk<W, NT>(acc2, pre2[p], x, N, k);
                }
            }
#pragma unroll 4
            for (; k < N; k += 32 * V) {
                gemv_chunk<W, NT>(acc, __ldg((const uint4 *)(row + k)), x, N, k);
                if (PAIR) gemv_chunk<W, NT>(acc2, __ldg((const uint4 *)(row2 + k)), x, N, k);
            }
        } else {
            for (int64_t k = lane; k < N; k += 32) {
                float f = cuda_load_f32(a.wdt, row, k);
#pragma unroll
                for (int t = 0; t < NT; t++)
                    acc[t] += f * x[t * N + k];
                if (PAIR) {
                    float f2 = cuda_load_f32(a.wdt, row2, k);
#pragma unroll
                    for (int t = 0; t < NT; t++)
                        acc2[t] += f2 * x[t * N + k];
                }
            }
        }
        const int64_t D = a.D[i];
        const float b = a.bias[i] ? cuda_load_f32(a.bdt[i], a.bias[i], d) : 0.0f;
        const float b2 = PAIR && a.bias[1] ? cuda_load_f32(a.bdt[1], a.bias[1], d) : 0.0f;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float g = warp_sum(acc[t]) + b;
            if (PAIR) g = cuda_act1((nmlx_act)a.pair_act, g) * (warp_sum(acc2[t]) + b2);
            if (lane == 0 && a.rsum) { /* x + y as the unfused add gives it */
                g += a.y[0][d];
                ss += (double)g * g;
            }
            if (lane == 0) a.y[i][t * D + d] = g;
        }
    }
    if (a.rsum) resid_sum_out<GEMV_WARPS>(a.rsum, ss);
}

/* ---- add_rmsnorm_matmul for dense weights (one decode token) ----
 * The residual add and the norm folded into the mat-vec, the add_rmsnorm
 * launch saved (and with rope, the rope_kv launch too). A persistent grid
 * (GN_BPS blocks a multiprocessor at most, one wave) whose warps take units
 * w, w + TW, ... (a unit: one row; a gate/up pair: row d of both; rope: the
 * rows (i, i + half) of one q or k head). Each block stages y =
 * rmsnorm(x + d) once in shared memory as f32, the values add_rmsnorm
 * writes bit for bit (its sum of squares in the order of add_rmsnorm's
 * kernel, norm_sumsq256); each row is then summed exactly as gemv_kernel<W, 1>
 * sums it from y in global memory (the same lane chunks and gemv_chunk, the
 * same warp tree and bias add), so every output equals add_rmsnorm +
 * matmul_multi / gate_up_act (+ rope_kv, cuda_rope_pair) bit for bit.
 * x + d and y must still be written once, while every block reads x: after
 * staging, thread 0 counts its block on nrm->done (fence, atomicAdd); the
 * last block to count writes x + d and y at its end and puts the counter
 * back to 0 (the int16 mat-vec's protocol, cuda_qgemv16.cu). A warp's first
 * weight loads go out before the wait for the kernel ahead (PDL), and the
 * next unit's before the current unit's warp tree. */
/* GN_BPS: blocks a multiprocessor (ptxas -v: 80 registers plain, 96 with
 * rope, 114 for 16-bit gate/up pairs: 2 blocks fit every form), as the
 * int16 mat-vec v2's default; a decode step's launch is recorded in a
 * graph capture, where the occupancy is not queried */
enum { GN_WARPS = 8, GN_THREADS = 32 * GN_WARPS, GN_BPS = 2, GN_MAX_N = 16384 };
enum { GN_PLAIN = 0, GN_PAIR, GN_ROPE };

typedef struct gemv_norm_args {
    const void *w[GEMV_MULTI];
    const void *bias[GEMV_MULTI];
    nmlx_dtype bdt[GEMV_MULTI];
    float *y[GEMV_MULTI];   /* GN_ROPE: y[0] = q (k and v go to the cache) */
    int64_t u0[GEMV_MULTI]; /* first unit of each weight */
    int64_t units;
    int n;
    int pair_act; /* GN_PAIR: an nmlx_act */
    int64_t N;
    /* x += d, staged as y = rmsnorm(x + d) (weight nw (NULL: none) + noff,
     * eps neps), y written to yn; done: the blocks' counter. d NULL: x
     * already holds the sum (not written); parts: its sums of squares from
     * the matmul_residual that wrote it (cuda_norm_sumsq.cuh), or NULL */
    float *x, *yn;
    const float *d;
    const double *parts;
    const void *nw;
    nmlx_dtype nwdt;
    float noff, neps;
    unsigned *done;
    cuda_rope_fold r; /* GN_ROPE */
} gemv_norm_args;

/* A unit: weight i, row d0 and (d1 >= 0) row d1 */
struct gn_unit {
    int i;
    int64_t d0, d1;
};

template <int MODE>
__device__ __forceinline__ gn_unit gn_unit_of(const gemv_norm_args &a, int64_t u) {
    gn_unit t;
    t.i = 0;
    if (MODE != GN_PAIR) { /* selected without a dynamic index (no local copy of a) */
        if (a.n > 1 && u >= a.u0[1]) t.i = 1;
        if (a.n > 2 && u >= a.u0[2]) t.i = 2;
    }
    const int64_t l = u - (t.i == 0 ? 0 : t.i == 1 ? a.u0[1] : a.u0[2]);
    t.d0 = l, t.d1 = MODE == GN_PAIR ? l : -1;
    if (MODE == GN_ROPE && t.i < 2 && a.r.half > 0) {
        const int64_t h = l / a.r.half, j = l - h * a.r.half;
        t.d0 = h * a.r.HD + j, t.d1 = t.d0 + a.r.half;
    }
    return t;
}

template <typename W>
__device__ __forceinline__ const W *gn_row(const gemv_norm_args &a, int i, int64_t d) {
    const void *w = i == 0 ? a.w[0] : i == 1 ? a.w[1] : a.w[2];
    return (const W *)w + d * a.N;
}

/* The first GEMV_PRE loads of a lane for unit t (none where !live) */
template <typename W, int MODE>
__device__ __forceinline__ void gn_prefetch(const gemv_norm_args &a, const gn_unit &t, bool live,
                                            uint4 *pre, uint4 *pre2) {
    const int V = wvec<W>::N, lane = threadIdx.x % 32;
    const W *r0 = gn_row<W>(a, t.i, t.d0);
    const W *r1 = gn_row<W>(a, MODE == GN_PAIR ? 1 : t.i, t.d1 >= 0 ? t.d1 : t.d0);
#pragma unroll
    for (int p = 0; p < GEMV_PRE; p++) {
        const int64_t k = (int64_t)lane * V + (int64_t)p * 32 * V;
        const bool in = live && k < a.N;
        pre[p] = in ? __ldg((const uint4 *)(r0 + k)) : make_uint4(0, 0, 0, 0);
        if (MODE != GN_PLAIN)
            pre2[p] = in && t.d1 >= 0 ? __ldg((const uint4 *)(r1 + k)) : make_uint4(0, 0, 0, 0);
    }
}

static_assert(GN_THREADS == 256, "norm_sumsq256 plays 64, 256 or 512 threads on 256");

/* ys[0 .. N) = rmsnorm(x + d) as add_rmsnorm writes it (x + d first, so
 * x and d are read once; __fmul_rn: as the unfused kernel rounds them) */
__device__ __forceinline__ void gn_stage(const gemv_norm_args &a, float *ys) {
    const int64_t N = a.N;
    for (int64_t i = 4 * threadIdx.x; i < N; i += 4 * GN_THREADS) {
        float4 s = *(const float4 *)(a.x + i);
        if (a.d) {
            const float4 dv = *(const float4 *)(a.d + i);
            s = make_float4(s.x + dv.x, s.y + dv.y, s.z + dv.z, s.w + dv.w);
        }
        *(float4 *)(ys + i) = s;
    }
    __syncthreads();
    /* norm_sumsq256's barrier: every read of x + d is done before y replaces
     * it (parts: the barrier above; each thread reads back what it wrote) */
    const float inv =
        norm_inv(a.parts ? parts_sum(a.parts) : norm_sumsq256([&](int64_t i) { return ys[i]; }, N),
                 N, a.neps);
    for (int64_t i = threadIdx.x; i < N; i += GN_THREADS) {
        const float v = __fmul_rn(ys[i], inv);
        ys[i] = a.nw ? __fmul_rn(v, cuda_load_f32(a.nwdt, a.nw, i) + a.noff) : v;
    }
    __syncthreads();
}

/* A unit's outputs from its lanes' partial sums (every lane calls it):
 * gemv_kernel's warp tree and bias add; GN_ROPE: then rope_kv's rotation
 * and destination (q in y[0], k and v in cache row crow) */
template <int MODE>
__device__ __forceinline__ void gn_out(const gemv_norm_args &a, const gn_unit &t, float acc,
                                       float acc2, int64_t base) {
    const int lane = threadIdx.x % 32;
    const void *bias = t.i == 0 ? a.bias[0] : t.i == 1 ? a.bias[1] : a.bias[2];
    const nmlx_dtype bdt = t.i == 0 ? a.bdt[0] : t.i == 1 ? a.bdt[1] : a.bdt[2];
    float g = warp_sum(acc) + (bias ? cuda_load_f32(bdt, bias, t.d0) : 0.0f);
    if (MODE == GN_PAIR) {
        const float b2 = a.bias[1] ? cuda_load_f32(a.bdt[1], a.bias[1], t.d0) : 0.0f;
        g = cuda_act1((nmlx_act)a.pair_act, g) * (warp_sum(acc2) + b2);
        if (lane == 0) a.y[0][t.d0] = g;
        return;
    }
    if (MODE == GN_PLAIN) {
        if (lane == 0) (t.i == 0 ? a.y[0] : t.i == 1 ? a.y[1] : a.y[2])[t.d0] = g;
        return;
    }
    const bool two = t.d1 >= 0; /* warp-uniform: every lane shuffles */
    float g2 = two ? warp_sum(acc2) + (bias ? cuda_load_f32(bdt, bias, t.d1) : 0.0f) : 0.0f;
    if (lane) return;
    const int64_t HD = a.r.HD, h = t.d0 / HD, e = t.d0 - h * HD; /* e < half where two */
    if (two) cuda_rope_pair(g, g2, (double)(a.r.pos0 + base), a.r.freqs[e], a.r.mscale, &g, &g2);
    float *dst = t.i == 0 ? a.y[0] + h * HD
                          : (t.i == 1 ? a.r.kc : a.r.vc) + (h * a.r.cap + a.r.row0 + base) * HD;
    dst[e] = g;
    if (two) dst[e + a.r.half] = g2;
}

template <typename W, int MODE>
__global__ void __launch_bounds__(GN_THREADS) gemv_norm_kernel(gemv_norm_args a) {
    cuda_pdl_trigger();
    extern __shared__ __align__(16) unsigned char smem[];
    float *ys = (float *)smem; /* y = rmsnorm(x + d) */
    const int lane = threadIdx.x % 32;
    const int V = wvec<W>::N;
    const int64_t N = a.N, U = a.units, TW = (int64_t)gridDim.x * GN_WARPS;
    int64_t u = (int64_t)blockIdx.x * GN_WARPS + threadIdx.x / 32;
    gn_unit t = gn_unit_of<MODE>(a, u < U ? u : U - 1);
    uint4 pre[GEMV_PRE], pre2[GEMV_PRE];
    gn_prefetch<W, MODE>(a, t, u < U, pre, pre2);
    cuda_pdl_wait(); /* launched early (cuda_launch_pdl): x and d are ready from here */
    gn_stage(a, ys);
    bool last = false; /* this block is the last to have read x */
    if (threadIdx.x == 0) {
        __threadfence();
        last = atomicAdd(a.done, 1u) == gridDim.x - 1;
    }
    const int64_t base = MODE == GN_ROPE && a.r.step ? *a.r.step : 0;
    for (; u < U; u += TW) {
        const gn_unit c = t;
        const bool two = MODE == GN_PAIR || (MODE == GN_ROPE && c.d1 >= 0);
        const W *r0 = gn_row<W>(a, c.i, c.d0);
        const W *r1 = gn_row<W>(a, MODE == GN_PAIR ? 1 : c.i, two ? c.d1 : c.d0);
        float acc = 0, acc2 = 0;
        int64_t k = (int64_t)lane * V;
#pragma unroll
        for (int p = 0; p < GEMV_PRE; p++, k += 32 * V) {
            if (k < N) {
                gemv_chunk<W, 1>(&acc, pre[p], ys, N, k);
                if (MODE != GN_PLAIN && two) gemv_chunk<W, 1>(&acc2, pre2[p], ys, N, k);
            }
        }
#pragma unroll 4
        for (; k < N; k += 32 * V) {
            gemv_chunk<W, 1>(&acc, __ldg((const uint4 *)(r0 + k)), ys, N, k);
            if (MODE != GN_PLAIN && two)
                gemv_chunk<W, 1>(&acc2, __ldg((const uint4 *)(r1 + k)), ys, N, k);
        }
        if (u + TW < U) { /* the next unit's first loads go out before this one's tree */
            t = gn_unit_of<MODE>(a, u + TW);
            gn_prefetch<W, MODE>(a, t, true, pre, pre2);
        }
        gn_out<MODE>(a, c, acc, acc2, base);
    }
    /* the last block (every other has staged: none reads x any more) writes
     * x += d and y, and puts the counter back to 0 for the next launch */
    if (!__syncthreads_or(last)) return;
    __threadfence();
    for (int64_t i = 4 * threadIdx.x; i < N; i += 4 * GN_THREADS) {
        if (a.d) {
            const float4 xv = *(const float4 *)(a.x + i), dv = *(const float4 *)(a.d + i);
            *(float4 *)(a.x + i) = make_float4(xv.x + dv.x, xv.y + dv.y, xv.z + dv.z, xv.w + dv.w);
        }
        *(float4 *)(a.yn + i) = *(const float4 *)(ys + i);
    }
    if (threadIdx.x == 0) *a.done = 0;
}

#endif
