/* y[T, D] = x[T, N] @ W[D, N]^T (+ bias) on the GPU.
 *  - decode (T <= GEMV_MAX_T: one token, or one token each of a batch of
 *    sequences): a bandwidth-bound mat-vec, one warp per output row reading
 *    it once for the T rows of x, 16-byte weight loads, f32 accumulation
 *    (same math as the CPU kernels; a row's result does not depend on T).
 *    Weights that read one x (q/k/v, gate/up with its activation) share a
 *    launch, and a lane's first loads go out before the kernel ahead ends
 *    (programmatic dependent launch);
 *  - prefill (T > GEMV_MAX_T): cuBLAS. F32 weights: SGEMM (full f32). BF16/F16
 *    weights: x is rounded to the weight's type and cublasGemmEx multiplies
 *    on the tensor cores with f32 accumulation and f32 output (as PyTorch
 *    runs a bf16 model); the bias is added by a second kernel. Up to 64 rows
 *    (a large batched decode step) x is split into hi + lo instead, both
 *    multiplied in one GEMM (gemm_split): f32-accurate, weights read once.
 * Quantized weights go to cuda_quant.cu. */
#include "compute/cuda/cuda_internal.h"
#include "compute/cuda/cuda_qgemv16.h" /* nmlx_cuda_norm_in */

#include <stdint.h>
#include <stdlib.h>

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
    if (!live) return;
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
        if (lane == 0) a.y[i][t * D + d] = g;
    }
}

/* y[t, d] += bias[d] */
__global__ void bias_kernel(float *y, const void *bias, nmlx_dtype bdt, int64_t T, int64_t D) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < T * D;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] += cuda_load_f32(bdt, bias, i % D);
}

/* dst[i] = (16-bit float of dtype dt) src[i], round to nearest even */
__global__ void to16_kernel(const float *src, void *dst, nmlx_dtype dt, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        if (dt == NMLX_DT_BF16)
            ((__nv_bfloat16 *)dst)[i] = __float2bfloat16_rn(src[i]);
        else
            ((__half *)dst)[i] = __float2half_rn(src[i]);
    }
}

/* x as 16-bit hi + lo (x - hi rounded again): hi [n] then lo [n], so one
 * GEMM over 2T columns multiplies both; hi + lo equals x to ~2^-16. */
__global__ void split16_kernel(const float *src, void *dst, nmlx_dtype dt, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float v = src[i];
        if (dt == NMLX_DT_BF16) {
            __nv_bfloat16 h = __float2bfloat16_rn(v);
            ((__nv_bfloat16 *)dst)[i] = h;
            ((__nv_bfloat16 *)dst)[n + i] = __float2bfloat16_rn(v - __bfloat162float(h));
        } else {
            __half h = __float2half_rn(v);
            ((__half *)dst)[i] = h;
            ((__half *)dst)[n + i] = __float2half_rn(v - __half2float(h));
        }
    }
}

/* y[i] = hi[i] + lo[i] (+ bias[i % D]) for the two halves of a split GEMM */
__global__ void join_kernel(const float *y2, float *y, const void *bias, nmlx_dtype bdt, int64_t n,
                            int64_t D) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = y2[i] + y2[n + i] + (bias ? cuda_load_f32(bdt, bias, i % D) : 0.0f);
}

static unsigned grid_of(int64_t n) {
    int64_t b = (n + 255) / 256;
    return (unsigned)(b < 1 << 20 ? b : 1 << 20);
}

template <typename W, int NT> static cudaError_t gemv_launch(cudaStream_t s, const gemv_args &a) {
    int64_t rows = a.pair_act >= 0 ? a.D[0] : 0;
    if (a.pair_act < 0)
        for (int i = 0; i < a.n; i++)
            rows += a.D[i];
    const dim3 grid((unsigned)((rows + GEMV_WARPS - 1) / GEMV_WARPS)), block(32 * GEMV_WARPS);
    if (a.pair_act >= 0) return cuda_launch_pdl(gemv_kernel<W, NT, true>, grid, block, 0, s, a);
    return cuda_launch_pdl(gemv_kernel<W, NT, false>, grid, block, 0, s, a);
}

template <int NT> static cudaError_t gemv_nt(cudaStream_t s, const gemv_args &a) {
    switch (a.wdt) {
    case NMLX_DT_BF16: return gemv_launch<__nv_bfloat16, NT>(s, a);
    case NMLX_DT_F16: return gemv_launch<__half, NT>(s, a);
    default: return gemv_launch<float, NT>(s, a);
    }
}

/* The mat-vec of n weights (or a gate/up pair, pair_act >= 0) for T <=
 * GEMV_MAX_T rows of x (a decode step of one sequence, or one token each of
 * a batch of sequences). false (nothing launched): the weights differ in
 * dtype or width, are quantized, or are too many. */
static bool gemv_multi(nmlx_backend *be, int n, const nmlx_weight *const *ws,
                       const nmlx_tensor *const *biases, const float *x, float *const *ys,
                       int64_t T, int pair_act) {
    if (n < 1 || n > GEMV_MULTI || T < 1 || T > GEMV_MAX_T) return false;
    gemv_args a = {};
    a.n = n;
    a.pair_act = pair_act;
    a.wdt = ws[0]->w.dtype;
    a.N = ws[0]->cols;
    a.x = x;
    const size_t es = nmlx_dtype_size(a.wdt);
    a.vec = ((uintptr_t)x % 16 == 0) && ((size_t)a.N * es) % 16 == 0 && a.N % 8 == 0;
    for (int i = 0; i < n; i++) {
        const nmlx_weight *w = ws[i];
        if (w->mode != NMLX_QUANT_NONE || w->w.dtype != a.wdt || w->cols != a.N || w->rows <= 0)
            return false;
        if (a.wdt != NMLX_DT_F32 && a.wdt != NMLX_DT_F16 && a.wdt != NMLX_DT_BF16) return false;
        if (pair_act >= 0 && w->rows != ws[0]->rows) return false;
        a.w[i] = w->w.data;
        a.D[i] = w->rows;
        a.y[i] = ys[i];
        a.bias[i] = biases && biases[i] ? biases[i]->data : NULL;
        a.bdt[i] = biases && biases[i] ? biases[i]->dtype : NMLX_DT_F32;
        a.vec = a.vec && (uintptr_t)w->w.data % 16 == 0;
    }
    cudaStream_t s = cuda_of(be)->stream;
    cudaError_t e;
    switch (T) {
    case 1: e = gemv_nt<1>(s, a); break;
    case 2: e = gemv_nt<2>(s, a); break;
    case 3: e = gemv_nt<3>(s, a); break;
    case 4: e = gemv_nt<4>(s, a); break;
    case 5: e = gemv_nt<5>(s, a); break;
    case 6: e = gemv_nt<6>(s, a); break;
    case 7: e = gemv_nt<7>(s, a); break;
    default: e = gemv_nt<8>(s, a); break;
    }
    nmlx_cuda_note(be, e);
    return true;
}

bool nmlx_cuda_gemv_multi(nmlx_backend *be, int n, const nmlx_weight *const *ws,
                          const nmlx_tensor *const *biases, const float *x, float *const *ys,
                          int64_t T) {
    return gemv_multi(be, n, ws, biases, x, ys, T, -1);
}

bool nmlx_cuda_gemv_act(nmlx_backend *be, nmlx_act act, const nmlx_weight *g, const nmlx_weight *u,
                        const nmlx_tensor *bg, const nmlx_tensor *bu, const float *x, float *out,
                        int64_t T) {
    const nmlx_weight *ws[2] = {g, u};
    const nmlx_tensor *bs[2] = {bg, bu};
    float *ys[2] = {out, NULL};
    return gemv_multi(be, 2, ws, bs, x, ys, T, (int)act);
}

/* ---- add_rmsnorm_matmul for dense weights (one decode token) ----
 * The residual add and the norm folded into the mat-vec, the add_rmsnorm
 * launch saved (and with rope, the rope_kv launch too). A persistent grid
 * (GN_BPS blocks a multiprocessor at most, one wave) whose warps take units
 * w, w + TW, ... (a unit: one row; a gate/up pair: row d of both; rope: the
 * rows (i, i + half) of one q or k head). Each block stages y =
 * rmsnorm(x + d) once in shared memory as f32, the values add_rmsnorm
 * writes bit for bit (its sum of squares in the order of add_rmsnorm's
 * kernel, gn_sumsq); each row is then summed exactly as gemv_kernel<W, 1>
 * sums it from y in global memory (the same lane chunks and gemv_chunk, the
 * same warp tree and bias add), so every output equals add_rmsnorm +
 * matmul_multi / gate_up_act (+ rope_kv, cuda_rope_pair) bit for bit.
 * x + d and y must still be written once, while every block reads x: after
 * staging, thread 0 counts its block on nrm->done (fence, atomicAdd); the
 * last block to count writes x + d and y at its end and puts the counter
 * back to 0 (the int16 mat-vec's protocol, cuda_qgemv16.cu). A warp's first
 * weight loads go out before the wait for the kernel ahead (PDL), and the
 * next unit's before the current unit's warp tree. */
enum { GN_WARPS = 8, GN_THREADS = 32 * GN_WARPS, GN_BPS = 4, GN_MAX_N = 16384 };
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
     * eps neps), y written to yn; done: the blocks' counter */
    float *x, *yn;
    const float *d;
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

/* The sum of squares of s (x + d, N inputs) as add_rmsnorm's kernels sum
 * it with NT = cuda_norm_threads(N) threads: virtual thread v adds
 * (double)s^2 over v, v + NT, ..., then cuda_block_sum's two shuffle trees.
 * With GN_THREADS (256), thread t is virtual threads t and (NT = 512)
 * t + 256; for NT = 64 threads from 64 on add nothing. Every thread gets
 * the sum. */
static_assert(GN_THREADS == 256, "gn_sumsq maps 64, 256 or 512 virtual threads onto 256");
__device__ __forceinline__ double gn_sumsq(const float *s, int64_t N) {
    __shared__ double part[16];
    const int NT = N >= 1024 ? 512 : N >= 256 ? 256 : 64;
    const int t = threadIdx.x, w = t / 32, l = t % 32;
    double s0 = 0, s1 = 0;
    if (t < NT)
        for (int64_t i = t; i < N; i += NT) {
            const float v = s[i];
            s0 += (double)v * v;
        }
    if (NT == 512)
        for (int64_t i = t + 256; i < N; i += NT) {
            const float v = s[i];
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

/* ys[0 .. N) = rmsnorm(x + d) as add_rmsnorm writes it (x + d first, so
 * x and d are read once; __fmul_rn: as the unfused kernel rounds them) */
__device__ __forceinline__ void gn_stage(const gemv_norm_args &a, float *ys) {
    const int64_t N = a.N;
    for (int64_t i = 4 * threadIdx.x; i < N; i += 4 * GN_THREADS) {
        const float4 xv = *(const float4 *)(a.x + i), dv = *(const float4 *)(a.d + i);
        *(float4 *)(ys + i) = make_float4(xv.x + dv.x, xv.y + dv.y, xv.z + dv.z, xv.w + dv.w);
    }
    __syncthreads();
    /* gn_sumsq's barrier: every read of x + d is done before y replaces it */
    const float inv = (float)(1.0 / sqrt(gn_sumsq(ys, N) / (double)N + a.neps));
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
    extern __shared__ float4 gn_smem[];
    float *ys = (float *)gn_smem; /* y = rmsnorm(x + d) */
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
        const float4 xv = *(const float4 *)(a.x + i), dv = *(const float4 *)(a.d + i);
        *(float4 *)(a.x + i) = make_float4(xv.x + dv.x, xv.y + dv.y, xv.z + dv.z, xv.w + dv.w);
        *(float4 *)(a.yn + i) = *(const float4 *)(ys + i);
    }
    if (threadIdx.x == 0) *a.done = 0;
}

/* multiprocessors of the current device (read once a device) */
static int gn_sm_count(void) {
    static int n[64];
    int dev = 0;
    cudaGetDevice(&dev);
    if (dev < 0 || dev >= 64) dev = 0;
    if (!n[dev]) {
        int v = 0;
        cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev);
        n[dev] = v > 0 ? v : 1;
    }
    return n[dev];
}

/* One wave: min(a unit a warp, GN_BPS or as many blocks as fit a
 * multiprocessor). The blocks that fit, by shared memory size, are queried
 * once per kernel outside a graph capture; in one, GN_BPS is taken unasked
 * (blocks past what fits wait for a second wave: still right, no block
 * waits on another). */
template <typename W, int MODE>
static cudaError_t gn_launch(cudaStream_t st, const gemv_norm_args &a) {
    auto kern = gemv_norm_kernel<W, MODE>;
    const size_t sm = (size_t)a.N * sizeof(float);
    static size_t set = 0; /* per instantiation: the opt-in, blocks a multiprocessor */
    static size_t occ_sm[4];
    static int occ_v[4];
    if (sm > 48 * 1024 && sm > set) {
        cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm);
        set = sm;
    }
    int occ = 0;
    for (int i = 0; i < 4 && !occ; i++)
        if (occ_sm[i] == sm) occ = occ_v[i];
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (!occ && cudaStreamIsCapturing(st, &cs) != cudaSuccess) {
        cudaGetLastError();
        cs = cudaStreamCaptureStatusActive;
    }
    if (!occ && cs != cudaStreamCaptureStatusNone) occ = GN_BPS;
    if (!occ) {
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, kern, GN_THREADS, sm) !=
                cudaSuccess ||
            occ < 1) {
            cudaGetLastError(); /* not the op's error: one block a multiprocessor then */
            occ = 1;
        }
        int i = 0;
        while (i < 3 && occ_sm[i])
            i++;
        occ_sm[i] = sm, occ_v[i] = occ; /* full: the last entry replaced */
    }
    const int64_t b = occ < GN_BPS ? occ : GN_BPS;
    int64_t grid = (a.units + GN_WARPS - 1) / GN_WARPS;
    if (grid > b * gn_sm_count()) grid = b * gn_sm_count();
    return cuda_launch_pdl(kern, dim3((unsigned)grid), dim3(GN_THREADS), sm, st, a);
}

template <int MODE>
static cudaError_t gn_dtype(cudaStream_t st, nmlx_dtype wdt, const gemv_norm_args &a) {
    switch (wdt) {
    case NMLX_DT_BF16: return gn_launch<__nv_bfloat16, MODE>(st, a);
    case NMLX_DT_F16: return gn_launch<__half, MODE>(st, a);
    default: return gn_launch<float, MODE>(st, a);
    }
}

/* rope's fold into a (GN_ROPE): q/k/v rows of H, KVH, KVH heads of HD, T
 * == 1, no q/k norm, the whole head rotated (rot == HD, even) or none;
 * false where it does not apply */
static bool gn_rope(const nmlx_rope_kv_args *r, const int64_t *D, float *const *ys,
                    gemv_norm_args *a) {
    const bool rot = r->rot >= 2 && r->freqs;
    if (r->T != 1 || r->qk_norm || r->HD <= 0 || r->q != ys[0]) return false;
    if (rot && (r->rot != r->HD || r->HD % 2)) return false;
    if (D[0] != r->H * r->HD || D[1] != r->KVH * r->HD || D[2] != r->KVH * r->HD) return false;
    cuda_rope_fold *f = &a->r;
    f->kc = r->k_cache, f->vc = r->v_cache;
    f->HD = r->HD, f->cap = r->cap, f->row0 = r->row0, f->pos0 = r->pos0;
    f->half = rot ? r->HD / 2 : 0;
    f->freqs = rot ? r->freqs : NULL;
    f->mscale = r->mscale;
    return true;
}

bool nmlx_cuda_gemv_norm(nmlx_backend *be, const nmlx_cuda_norm_in *nrm, int act, int n,
                         const nmlx_weight *const *ws, const nmlx_tensor *const *biases,
                         float *const *ys, const nmlx_rope_kv_args *rope) {
    const int64_t N = nrm->D;
    if (!nrm->done || n < 1 || n > GEMV_MULTI || N <= 0 || N > GN_MAX_N || N % 8) return false;
    if ((act >= 0 && (n != 2 || rope)) || (rope && n != 3)) return false;
    /* gemv_multi's vec case (y, rows 16-byte aligned), which the unfused op runs */
    if (((uintptr_t)nrm->x | (uintptr_t)nrm->d | (uintptr_t)nrm->y) % 16) return false;
    const nmlx_dtype wdt = ws[0]->w.dtype;
    if (wdt != NMLX_DT_F32 && wdt != NMLX_DT_F16 && wdt != NMLX_DT_BF16) return false;
    gemv_norm_args a = {};
    int64_t D[GEMV_MULTI] = {0, 0, 0};
    for (int i = 0; i < n; i++) {
        const nmlx_weight *w = ws[i];
        if (w->mode != NMLX_QUANT_NONE || w->w.dtype != wdt || w->cols != N || w->rows <= 0 ||
            (uintptr_t)w->w.data % 16 || (act >= 0 && w->rows != ws[0]->rows))
            return false;
        a.w[i] = w->w.data;
        a.y[i] = ys[i];
        a.bias[i] = biases && biases[i] ? biases[i]->data : NULL;
        a.bdt[i] = biases && biases[i] ? biases[i]->dtype : NMLX_DT_F32;
        D[i] = w->rows;
    }
    if (rope && !gn_rope(rope, D, ys, &a)) return false;
    a.n = n;
    a.pair_act = act;
    a.N = N;
    a.x = nrm->x, a.d = nrm->d, a.yn = nrm->y, a.done = nrm->done;
    a.nw = nrm->w ? nrm->w->data : NULL;
    a.nwdt = nrm->w ? nrm->w->dtype : NMLX_DT_F32;
    a.noff = nrm->w_offset, a.neps = nrm->eps;
    if (act >= 0) {
        a.units = D[0];
    } else {
        for (int i = 0; i < n; i++) {
            a.u0[i] = a.units;
            a.units += rope && i < 2 && a.r.half ? D[i] / 2 : D[i];
        }
    }
    cuda_impl *c = cuda_of(be);
    if (rope && (a.r.step = cuda_step_pos(c)) != NULL)
        a.r.pos0 -= c->step_pos, a.r.row0 -= c->step_pos;
    cudaError_t e;
    if (act >= 0)
        e = gn_dtype<GN_PAIR>(c->stream, wdt, a);
    else if (rope)
        e = gn_dtype<GN_ROPE>(c->stream, wdt, a);
    else
        e = gn_dtype<GN_PLAIN>(c->stream, wdt, a);
    nmlx_cuda_note(be, e);
    return true;
}

static bool reserve(nmlx_backend *be, void **buf, size_t *bytes, size_t need) {
    cuda_impl *c = (cuda_impl *)be->impl;
    if (need <= *bytes) return true;
    cuda_host_of(be); /* no allocation inside a graph capture */
    cudaStreamSynchronize(c->stream);
    if (*buf) cudaFree(*buf);
    *buf = NULL;
    *bytes = 0;
    cudaError_t e = cudaMalloc(buf, need);
    nmlx_cuda_note(be, e);
    if (e != cudaSuccess) return false;
    *bytes = need;
    return true;
}

/* Rows of x up to which 16-bit weights multiply x split into hi + lo
 * (gemm_split) instead of x rounded: NMLX_CUDA_GEMM_SPLIT_T, default 64
 * (batched decode sizes, where the GEMM is bound by the weight read and the
 * doubled tensor-core work is free); 0 = never. */
static int64_t gemm_split_t(void) {
    static int64_t t = -1;
    if (t < 0) {
        const char *e = getenv("NMLX_CUDA_GEMM_SPLIT_T");
        t = e ? atoll(e) : 64;
        if (t < 0) t = 0;
    }
    return t;
}

/* 16-bit weights, f32-accurate: one GemmEx over [hi; lo] (2T columns, each
 * weight read once) into a [2T, D] scratch, then y = hi part + lo part
 * (+ bias). Matches the f32 mat-vec to ~1e-5 instead of bf16 rounding. */
static void gemm_split(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                       const float *x, float *y, int64_t T) {
    cuda_impl *c = cuda_of(be);
    int64_t D = w->rows, N = w->cols;
    const float one = 1.0f, zero = 0.0f;
    if (!reserve(be, &c->act16, &c->act16_bytes, (size_t)(2 * T * N) * 2) ||
        !reserve(be, &c->y2, &c->y2_bytes, (size_t)(2 * T * D) * sizeof(float)))
        return;
    split16_kernel<<<grid_of(T * N), 256, 0, c->stream>>>(x, c->act16, w->w.dtype, T * N);
    cudaDataType dt = w->w.dtype == NMLX_DT_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    cublasStatus_t st =
        cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)D, (int)(2 * T), (int)N, &one,
                     w->w.data, dt, (int)N, c->act16, dt, (int)N, &zero, c->y2, CUDA_R_32F, (int)D,
                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS) nmlx_cuda_note(be, cudaErrorUnknown);
    join_kernel<<<grid_of(T * D), 256, 0, c->stream>>>((const float *)c->y2, y,
                                                       bias ? bias->data : NULL,
                                                       bias ? bias->dtype : NMLX_DT_F32, T * D, D);
    nmlx_cuda_note(be, cudaGetLastError());
}

/* Column-major view: y^T (D x T) = W^T' ... i.e. C[D, T] = op(A)[D, N] B[N, T]
 * with A = W stored as an N x D column-major matrix (lda N) transposed, B = x
 * as N x T (ldb N), C = y as D x T (ldc D). */
static void gemm(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias, const float *x,
                 float *y, int64_t T) {
    cuda_impl *c = cuda_of(be);
    int64_t D = w->rows, N = w->cols;
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t st;
    if (w->w.dtype == NMLX_DT_F32) {
        st = cublasSgemm(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)D, (int)T, (int)N, &one,
                         (const float *)w->w.data, (int)N, x, (int)N, &zero, y, (int)D);
    } else if (T <= gemm_split_t()) {
        gemm_split(be, w, bias, x, y, T);
        return;
    } else {
        size_t need = (size_t)(T * N) * 2;
        if (need > c->act16_bytes) {
            cuda_host_of(be); /* ends a graph capture: no sync inside one */
            cudaStreamSynchronize(c->stream);
            if (c->act16) cudaFree(c->act16);
            c->act16 = NULL;
            c->act16_bytes = 0;
            cudaError_t e = cudaMalloc(&c->act16, need);
            nmlx_cuda_note(be, e);
            if (e != cudaSuccess) return;
            c->act16_bytes = need;
        }
        to16_kernel<<<grid_of(T * N), 256, 0, c->stream>>>(x, c->act16, w->w.dtype, T * N);
        cudaDataType dt = w->w.dtype == NMLX_DT_BF16 ? CUDA_R_16BF : CUDA_R_16F;
        st = cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)D, (int)T, (int)N, &one,
                          w->w.data, dt, (int)N, c->act16, dt, (int)N, &zero, y, CUDA_R_32F, (int)D,
                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    }
    if (st != CUBLAS_STATUS_SUCCESS) nmlx_cuda_note(be, cudaErrorUnknown);
    if (bias) bias_kernel<<<grid_of(T * D), 256, 0, c->stream>>>(y, bias->data, bias->dtype, T, D);
    nmlx_cuda_note(be, cudaGetLastError());
}

/* Dense F32/F16/BF16 weights prepared on the device, or quantized ones
 * (cuda_quant.cu); any other dtype leaves y untouched. */
void nmlx_cuda_matmul(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                      const float *x, float *y, int64_t T) {
    if (T <= 0 || w->rows <= 0) return;
    nmlx_dtype dt = w->w.dtype;
    if (w->mode != NMLX_QUANT_NONE) {
        nmlx_cuda_qmatmul(be, w, bias, x, y, T);
        return;
    }
    if (dt != NMLX_DT_F32 && dt != NMLX_DT_F16 && dt != NMLX_DT_BF16) return;
    if (T <= GEMV_MAX_T && gemv_multi(be, 1, &w, &bias, x, &y, T, -1)) return;
    gemm(be, w, bias, x, y, T);
}
