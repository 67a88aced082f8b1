/* The sum of squares of a row of N values v(i) as add_rmsnorm's kernels
 * (cuda_fused.cu) sum it with NT = cuda_norm_threads(N) threads: virtual
 * thread u adds (double)v(i)^2 over i = u, u + NT, ..., then cuda_block_sum's
 * two shuffle trees. Here a block of 256 threads plays them: for NT = 512
 * thread t is virtual threads t and t + 256, for NT = 64 the threads from
 * 64 on add nothing. Every thread gets the sum; the norm-staging mat-vecs
 * (cuda_qgemv16_dev.cuh, cuda_gemv_dev.cuh) call it so that their staged y
 * is add_rmsnorm's bit for bit. A header with no CUDA one of its own: the
 * CPU emulations (tests/cuda/qgemv16_emu.cpp, gemv_norm_emu.cpp) include
 * it too. */
#ifndef NMLX_CUDA_NORM_SUMSQ_CUH
#define NMLX_CUDA_NORM_SUMSQ_CUH

#if defined(NMLX_QGEMV16_EMU) || defined(NMLX_GEMV_EMU)
/* warp_emu.h gives each fiber its own __shared__ array; blocks run one at a
 * time there, so a static is the block's */
#define NORM_SUMSQ_SHARED static
#else
#define NORM_SUMSQ_SHARED __shared__
#endif

template <typename V> __device__ __forceinline__ double norm_sumsq256(V v, int64_t N) {
    NORM_SUMSQ_SHARED double part[16];
    const int NT = N >= 1024 ? 512 : N >= 256 ? 256 : 64;
    const int t = threadIdx.x, w = t / 32, l = t % 32;
    double s0 = 0, s1 = 0;
    if (t < NT)
        for (int64_t i = t; i < N; i += NT) {
            const float x = v(i);
            s0 += (double)x * x;
        }
    if (NT == 512)
        for (int64_t i = t + 256; i < N; i += NT) {
            const float x = v(i);
            s1 += (double)x * x;
        }
    for (int o = 16; o > 0; o >>= 1) {
        s0 += __shfl_xor_sync(0xffffffffu, s0, o);
        s1 += __shfl_xor_sync(0xffffffffu, s1, o);
    }
    if (l == 0 && t < NT) part[w] = s0;
    if (l == 0 && NT == 512) part[w + 8] = s1;
    __syncthreads();
    double r = l < NT / 32 ? part[l] : 0.0;
    for (int o = 16; o > 0; o >>= 1)
        r += __shfl_xor_sync(0xffffffffu, r, o);
    return r;
}

/* The residual fold (backend.h matmul_residual, then add_rmsnorm_matmul
 * with d NULL): the producing mat-vec writes, per block, the sum of squares
 * of the x rows it updated (rsum[1 + block]; block 0 the count, rsum[0]),
 * and the norm-staging mat-vec adds them up instead of a pass over x. */

/* The block's sum (ss: lane 0 of each of its WARPS warps, in warp order) to
 * rsum. Every thread of the block calls it. */
template <int WARPS> __device__ __forceinline__ void resid_sum_out(double *rsum, double ss) {
    NORM_SUMSQ_SHARED double wss[WARPS];
    if ((threadIdx.x & 31) == 0) wss[threadIdx.x / 32] = ss;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < WARPS; w++)
            t += wss[w];
        rsum[1 + blockIdx.x] = t;
        if (blockIdx.x == 0) rsum[0] = (double)gridDim.x;
    }
}

/* Their total: a lane adds parts 1 + l, 1 + l + 32, ... in order, then the
 * warp's xor tree, so every warp of every block gets the same bits. Every
 * lane of the warp calls it. */
__device__ __forceinline__ double parts_sum(const double *parts) {
    const int n = (int)parts[0], lane = threadIdx.x & 31;
    double s = 0.0;
    for (int i = lane; i < n; i += 32)
        s += parts[1 + i];
    for (int o = 16; o > 0; o >>= 1)
        s += __shfl_xor_sync(0xffffffffu, s, o);
    return s;
}

/* 1 / rms as add_rmsnorm rounds it, from a sum of squares of N values */
__device__ __forceinline__ float norm_inv(double ss, int64_t N, float eps) {
    return (float)(1.0 / sqrt(ss / (double)N + eps));
}

#endif
