/* y[T, D] = x[T, N] @ W[D, N]^T (+ bias) on the GPU.
 *  - decode (T <= GEMV_MAX_T: one token, or one token each of a batch of
 *    sequences): a bandwidth-bound mat-vec, one warp per output row reading
 *    it once for the T rows of x, 16-byte weight loads, f32 accumulation
 *    (same math as the CPU kernels; a row's result does not depend on T);
 *  - prefill (T > GEMV_MAX_T): cuBLAS. F32 weights: SGEMM (full f32). BF16/F16
 *    weights: x is rounded to the weight's type and cublasGemmEx multiplies
 *    on the tensor cores with f32 accumulation and f32 output (as PyTorch
 *    runs a bf16 model); the bias is added by a second kernel. Up to 64 rows
 *    (a large batched decode step) x is split into hi + lo instead, both
 *    multiplied in one GEMM (gemm_split): f32-accurate, weights read once.
 * Quantized weights go to cuda_quant.cu. */
#include "compute/cuda/cuda_internal.h"

#include <stdint.h>
#include <stdlib.h>

/* GEMV_MAX_T: up to this many rows of x (a batched decode step) run as the
 * mat-vec, so each row keeps the f32 arithmetic of a lone decode step. */
enum { GEMV_WARPS = 4, GEMV_MAX_T = 8 };

template <typename W> struct wvec;
/* 16 bytes of weights as 8 (bf16/f16) or 4 (f32) floats */
template <> struct wvec<__nv_bfloat16> {
    enum { N = 8 };
    static __device__ __forceinline__ void load(const void *p, float *f) {
        uint4 u = __ldg((const uint4 *)p);
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
    static __device__ __forceinline__ void load(const void *p, float *f) {
        uint4 u = __ldg((const uint4 *)p);
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
    static __device__ __forceinline__ void load(const void *p, float *f) {
        float4 v = __ldg((const float4 *)p);
        f[0] = v.x;
        f[1] = v.y;
        f[2] = v.z;
        f[3] = v.w;
    }
};

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* One warp per row d: y[t, d] = W[d, :] . x[t, :] (+ bias[d]) for the NT
 * rows of x, the weight row read once for all of them. Each row's sum runs
 * in the same order whatever NT is, so a row of a batched decode (NT > 1)
 * equals that token decoded alone (NT = 1) bit for bit. vec: every row
 * start, x and N are 16-byte aligned; else the scalar loop. */
template <typename W, int NT>
__global__ void gemv_kernel(const W *w, nmlx_dtype wdt, const float *x, float *y, int64_t D,
                            int64_t N, const void *bias, nmlx_dtype bdt, bool vec) {
    int64_t d = (int64_t)blockIdx.x * GEMV_WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    if (d >= D) return;
    const W *row = w + d * N;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0;
    if (vec) {
        const int V = wvec<W>::N;
#pragma unroll 4
        for (int64_t k = (int64_t)lane * V; k < N; k += 32 * V) {
            float f[V];
            wvec<W>::load(row + k, f);
#pragma unroll
            for (int t = 0; t < NT; t++)
#pragma unroll
                for (int i = 0; i < V; i += 4) {
                    float4 xv = *(const float4 *)(x + t * N + k + i);
                    acc[t] += f[i] * xv.x + f[i + 1] * xv.y + f[i + 2] * xv.z + f[i + 3] * xv.w;
                }
        }
    } else {
        for (int64_t k = lane; k < N; k += 32) {
            float f = cuda_load_f32(wdt, row, k);
#pragma unroll
            for (int t = 0; t < NT; t++) acc[t] += f * x[t * N + k];
        }
    }
    float b = bias ? cuda_load_f32(bdt, bias, d) : 0.0f;
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float a = warp_sum(acc[t]);
        if (lane == 0) y[t * D + d] = a + b;
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
        if (dt == NMLX_DT_BF16) ((__nv_bfloat16 *)dst)[i] = __float2bfloat16_rn(src[i]);
        else ((__half *)dst)[i] = __float2half_rn(src[i]);
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

template <int NT>
static void gemv_nt(cudaStream_t s, const nmlx_weight *w, const float *x, float *y, const void *b,
                    nmlx_dtype bdt, bool vec) {
    int64_t D = w->rows, N = w->cols;
    unsigned grid = (unsigned)((D + GEMV_WARPS - 1) / GEMV_WARPS);
    switch (w->w.dtype) {
    case NMLX_DT_BF16:
        gemv_kernel<__nv_bfloat16, NT><<<grid, 32 * GEMV_WARPS, 0, s>>>(
            (const __nv_bfloat16 *)w->w.data, w->w.dtype, x, y, D, N, b, bdt, vec);
        break;
    case NMLX_DT_F16:
        gemv_kernel<__half, NT><<<grid, 32 * GEMV_WARPS, 0, s>>>(
            (const __half *)w->w.data, w->w.dtype, x, y, D, N, b, bdt, vec);
        break;
    default:
        gemv_kernel<float, NT><<<grid, 32 * GEMV_WARPS, 0, s>>>(
            (const float *)w->w.data, w->w.dtype, x, y, D, N, b, bdt, vec);
        break;
    }
}

/* T <= GEMV_MAX_T rows (a decode step of one sequence, or one token each of
 * a batch of sequences). */
static void gemv(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias, const float *x,
                 float *y, int64_t T) {
    cudaStream_t s = cuda_of(be)->stream;
    int64_t N = w->cols;
    size_t es = nmlx_dtype_size(w->w.dtype);
    bool vec = ((uintptr_t)w->w.data % 16 == 0) && ((uintptr_t)x % 16 == 0) &&
               ((size_t)N * es) % 16 == 0 && N % 8 == 0;
    const void *b = bias ? bias->data : NULL;
    nmlx_dtype bdt = bias ? bias->dtype : NMLX_DT_F32;
    switch (T) {
    case 1: gemv_nt<1>(s, w, x, y, b, bdt, vec); break;
    case 2: gemv_nt<2>(s, w, x, y, b, bdt, vec); break;
    case 3: gemv_nt<3>(s, w, x, y, b, bdt, vec); break;
    case 4: gemv_nt<4>(s, w, x, y, b, bdt, vec); break;
    case 5: gemv_nt<5>(s, w, x, y, b, bdt, vec); break;
    case 6: gemv_nt<6>(s, w, x, y, b, bdt, vec); break;
    case 7: gemv_nt<7>(s, w, x, y, b, bdt, vec); break;
    default: gemv_nt<8>(s, w, x, y, b, bdt, vec); break;
    }
    nmlx_cuda_note(be, cudaGetLastError());
}

/* Grows a device scratch to `need` bytes (contents not kept). */
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
    cublasStatus_t st = cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)D, (int)(2 * T),
                                     (int)N, &one, w->w.data, dt, (int)N, c->act16, dt, (int)N,
                                     &zero, c->y2, CUDA_R_32F, (int)D, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT);
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
                          w->w.data, dt, (int)N, c->act16, dt, (int)N, &zero, y, CUDA_R_32F,
                          (int)D, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    }
    if (st != CUBLAS_STATUS_SUCCESS) nmlx_cuda_note(be, cudaErrorUnknown);
    if (bias)
        bias_kernel<<<grid_of(T * D), 256, 0, c->stream>>>(y, bias->data, bias->dtype, T, D);
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
    if (T <= GEMV_MAX_T) gemv(be, w, bias, x, y, T);
    else gemm(be, w, bias, x, y, T);
}
