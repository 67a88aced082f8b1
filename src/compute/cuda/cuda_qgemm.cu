/* Quantized mat-mat through cuBLAS (the default; NMLX_CUDA_QMM=mma or bf16
 * selects qmm_kernel in cuda_quant.cu instead): y[T, D] = x[T, N] @ W[D, N]^T
 * (+ bias) for the T above the mat-vec range (prefill, batched decode of
 * more than 8 sessions).
 *
 * The weight is dequantized a chunk of rows at a time (NMLX_CUDA_QMM_ROWS,
 * default up to 8192 rows and 32M elements) into a scratch the backend owns
 * (never a copy of the whole weight), then one cublasGemmEx per chunk
 * multiplies it on the tensor cores (f16 inputs, f32 accumulate and output).
 * Scaling, in every form: each token t is scaled by 2^-e_t (max|x_t| =
 * m 2^e_t, m in [0.5, 1)) and each weight row d by 2^-e_d from a bound of
 * its values (|s| qmax + |b| over its groups): exact, and no f16 overflow or
 * underflow whatever the ranges. y = GEMM * 2^e_d * 2^e_t (+ bias).
 * Forms (NMLX_CUDA_QMM):
 *  - unset or "gemm1" (the default): x and W = s q + b (f32) rounded once
 *    to f16, one GEMM: ~2^-11 relative per operand, finer than the bf16
 *    activations MLX computes with and within issue 9's contract for
 *    quantized checkpoints (about 5e-4 of max|y|); 4-bit and narrower codes
 *    with bf16/f16 scales, and MXFP4, are exact in f16, so only x rounds.
 *  - "gemm" (exact; precision "f32" takes it whatever the setting): x and W
 *    each as f16 hi + lo; one GemmEx multiplies hi(W) by [hi(x) lo(x)] (2T
 *    columns: the chunk is read once for both), a second lo(W) by hi(x);
 *    lo(W) lo(x) (~2^-22) is dropped: ~1e-6 relative to the f32 reference.
 *    W's lo half is often exactly zero (see above): the first call on a
 *    weight records (one stream sync) whether any lo of any chunk was
 *    nonzero; later calls on a weight found exact skip the lo writes and the
 *    second GEMM, with the same result bit for bit (that product was 0).
 *  - "gemm16": x as hi + lo, W hi only (a variant to measure).
 *  - "fused" (opt-in): cuda_qmm_fused.cu, the codes decoded inside one
 *    tensor-core kernel, only x rounded to f16 (4/8-bit affine, N a
 *    multiple of 64); what it declines runs gemm1 here.
 * x is split once per matmul_multi (q/k/v, gate/up read one x).
 * Scratch allocation failure: false (the caller runs qmm_kernel). */
#ifndef NMLX_QGEMM_EMU /* tests/cuda/qgemm_emu.cpp: the kernels on the CPU */
#include "compute/cuda/cuda_backend.h"
#include "compute/cuda/cuda_internal.h"
#endif
#include "compute/cuda/cuda_qdecode.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { QG_THREADS = 256 };

/* 2^e with the f32 value m = f 2^e, f in [0.5, 1); 0 when m is 0 or not
 * finite (no rescale). e is kept within +-100 so 2^+-e stays a normal f32. */
__device__ __forceinline__ int qg_exp(float m) {
    int e = 0;
    if (m > 0.0f && isfinite(m)) frexpf(m, &e);
    return e < -100 ? -100 : e > 100 ? 100 : e;
}

__device__ __forceinline__ float qg_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* One block per token t: ix[t] = 2^e (max|x_t| = f 2^e), and x_t 2^-e as f16
 * hi [T, N] then, with lo, the remainders [T, N] (lo = x 2^-e - hi,
 * rounded). scale = false (test hook): no rescale. vec: x rows 16-byte
 * aligned (N a multiple of 4): float4 loads, 8-byte stores. */
__global__ void qg_xsplit_kernel(const float *x, int64_t T, int64_t N, bool scale, bool lo,
                                 bool vec, __half *xhl, float *ix) {
    __shared__ float part[QG_THREADS / 32];
    const int64_t t = blockIdx.x;
    const float *xr = x + t * N;
    float m = 0.0f;
    if (vec)
        for (int64_t k = threadIdx.x; k < N / 4; k += blockDim.x) {
            const float4 v = __ldg((const float4 *)xr + k);
            m = fmaxf(m, fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w))));
        }
    else
        for (int64_t k = threadIdx.x; k < N; k += blockDim.x)
            m = fmaxf(m, fabsf(xr[k]));
    m = qg_warp_max(m);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x / 32] = m;
    __syncthreads();
    m = 0.0f;
    for (int i = 0; i < QG_THREADS / 32; i++)
        m = fmaxf(m, part[i]);
    const int e = scale ? qg_exp(m) : 0;
    const float sc = ldexpf(1.0f, -e);
    if (threadIdx.x == 0) ix[t] = ldexpf(1.0f, e);
    __half *hr = xhl + t * N, *lr = xhl + (T + t) * N;
    if (vec) {
        for (int64_t k = threadIdx.x; k < N / 4; k += blockDim.x) {
            const float4 v = __ldg((const float4 *)xr + k);
            const float f[4] = {v.x * sc, v.y * sc, v.z * sc, v.w * sc};
            __align__(8) __half h[4];
            __align__(8) __half l[4];
#pragma unroll
            for (int j = 0; j < 4; j++) {
                h[j] = __float2half_rn(f[j]);
                l[j] = __float2half_rn(f[j] - __half2float(h[j]));
            }
            *(uint2 *)(hr + 4 * k) = *(const uint2 *)h;
            if (lo) *(uint2 *)(lr + 4 * k) = *(const uint2 *)l;
        }
        return;
    }
    for (int64_t k = threadIdx.x; k < N; k += blockDim.x) {
        const float v = xr[k] * sc;
        const __half h = __float2half_rn(v);
        hr[k] = h;
        if (lo) lr[k] = __float2half_rn(v - __half2float(h));
    }
}

/* One warp per weight row r (d0 + r; one launch covers every row of the
 * call): a bound B of its values, |s| qmax + |b| over its groups; rs[r] =
 * 2^-e, ir[r] = 2^e with B = f 2^e, so every W rs is below 1 in magnitude. */
template <bool MX>
__global__ void qg_rowscale_kernel(const void *scales, const void *biases, nmlx_dtype sdt,
                                   int64_t G, float qmax, int64_t d0, int64_t n, float *rs,
                                   float *ir) {
    const int64_t r = (int64_t)blockIdx.x * (QG_THREADS / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (r >= n) return;
    float m = 0.0f;
    for (int64_t g = lane; g < G; g += 32) {
        float s, b;
        group_sb<MX>(scales, biases, sdt, (d0 + r) * G + g, &s, &b);
        m = fmaxf(m, fabsf(s) * qmax + fabsf(b));
    }
    m = qg_warp_max(m);
    if (lane == 0) {
        const int e = qg_exp(m);
        rs[r] = ldexpf(1.0f, -e);
        ir[r] = ldexpf(1.0f, e);
    }
}

/* Rows [d0, d0 + n) of W, row r scaled by rs[r], as f16 hi [n, N] and (LO)
 * lo [n, N]. A thread takes 8 inputs (BITS bytes of codes, one group) of a
 * row and writes 16 bytes of each: consecutive threads, consecutive bytes;
 * blockIdx.y walks the rows (no index division), gridDim.x covers N / 8.
 * gshift = log2(group_size / 8). gemm1 (the default) writes hi only: LO
 * false leaves out the lo conversions and their nonzero check (8 of the ~11
 * PTX instructions an input took when one kernel did both). */
template <int BITS, bool MX, bool LO>
__global__ void __launch_bounds__(QG_THREADS)
    qg_dequant_kernel(const uint32_t *w, const void *scales, const void *biases, nmlx_dtype sdt,
                      int gshift, int64_t N, int64_t d0, int64_t n, const float *rs, __half *wh,
                      __half *wl, int *nz) {
    const int64_t K8 = N / 8, G = N >> (gshift + 3);
    int any = 0; /* a nonzero lo seen (reported when nz is given) */
    for (int64_t r = blockIdx.y; r < n; r += gridDim.y) {
        const int64_t d = d0 + r;
        const uint8_t *row = (const uint8_t *)w + d * (N * BITS / 8);
        const float sc = rs[r];
        for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < K8;
             k += (int64_t)gridDim.x * blockDim.x) {
            const uint64_t v = load8<BITS>(row, (int)k);
            float s, b;
            group_sb<MX>(scales, biases, sdt, d * G + (k >> gshift), &s, &b);
            float q[8];
            decode8<BITS, MX>(v, q);
            __align__(16) __half2 h[4];
            __align__(16) __half2 l[4];
#pragma unroll
            for (int j = 0; j < 4; j++) {
                /* as the CPU reference: s q + b in f32 (MXFP4: the E2M1 value
                 * exactly, times a power of two), then the exact row rescale */
                const float f0 = (MX ? s * (q[2 * j] * 16384.0f) : s * q[2 * j] + b) * sc;
                const float f1 = (MX ? s * (q[2 * j + 1] * 16384.0f) : s * q[2 * j + 1] + b) * sc;
                h[j] = __floats2half2_rn(f0, f1); /* .x = f0: the lower address */
                if (LO) {
                    const float2 hf = __half22float2(h[j]);
                    l[j] = __floats2half2_rn(f0 - hf.x, f1 - hf.y);
                    const float2 lf = __half22float2(l[j]);
                    any |= (lf.x != 0.0f) | (lf.y != 0.0f);
                }
            }
            *(uint4 *)(wh + r * N + 8 * k) = *(const uint4 *)h;
            if (LO) *(uint4 *)(wl + r * N + 8 * k) = *(const uint4 *)l;
        }
    }
    if (LO && nz && __syncthreads_or(any) && threadIdx.x == 0) atomicOr(nz, 1);
}

/* One output as the join writes it: v ir ix (+ the bias of row d) */
__device__ __forceinline__ float qg_out(float v, float ir, float ix, const void *lb,
                                        nmlx_dtype lbdt, int64_t d) {
    return v * ir * ix + (lb ? cuda_load_f32(lbdt, lb, d) : 0.0f);
}

/* f(t, r) for every token t < T and row r < n: blockIdx.y walks the tokens,
 * x the rows (no index division an output; the loops cover grids smaller
 * than the work) */
template <class F> __device__ __forceinline__ void qg_each(int64_t T, int64_t n, F f) {
    for (int64_t t = blockIdx.y; t < T; t += gridDim.y)
        for (int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; r < n;
             r += (int64_t)gridDim.x * blockDim.x)
            f(t, r);
}

/* y[t, d0 + r] = (c[t, r] (+ c[T + t, r] with xlo) (+ cl[t, r])) ir[r] ix[t]
 * (+ bias[d0 + r]); c column-major [n, 2T] ([n, T] without xlo), cl [n, T]
 * or NULL (the GEMMs' outputs). */
__global__ void qg_join_kernel(const float *c, const float *cl, bool xlo, int64_t n, int64_t T,
                               const float *ix, const float *ir, float *y, int64_t D, int64_t d0,
                               const void *lb, nmlx_dtype lbdt) {
    qg_each(T, n, [&](int64_t t, int64_t r) {
        const int64_t i = t * n + r;
        float v = xlo ? c[i] + c[T * n + i] : c[i];
        if (cl) v += cl[i];
        y[t * D + d0 + r] = qg_out(v, ir[r], ix[t], lb, lbdt, d0 + r);
    });
}

/* gate/up in one (gemm1): gate[t, d0 + r] = act(g) u, g and u each as
 * qg_join_kernel writes it from cg / cu [n, T] (the gate's and the up
 * weight's GEMM outputs, row factors irg / iru): act_mul's arithmetic on
 * the same values, so the unfused ops' bits; up is never written. */
__global__ void qg_join_act_kernel(nmlx_act act, const float *cg, const float *cu, int64_t n,
                                   int64_t T, const float *ix, const float *irg, const float *iru,
                                   float *y, int64_t D, int64_t d0, const void *bg, nmlx_dtype bgdt,
                                   const void *bu, nmlx_dtype budt) {
    qg_each(T, n, [&](int64_t t, int64_t r) {
        const int64_t i = t * n + r;
        const float g = qg_out(cg[i], irg[r], ix[t], bg, bgdt, d0 + r);
        const float u = qg_out(cu[i], iru[r], ix[t], bu, budt, d0 + r);
        y[t * D + d0 + r] = cuda_act1(act, g) * u;
    });
}

/* The grid of a [rows, cols] kernel above: x over cols (QG_THREADS a
 * block), y over rows (at most 65535 each; the kernels loop past it) */
static unsigned qg_dim(int64_t v) { return (unsigned)(v < 1 ? 1 : v < 65535 ? v : 65535); }
static dim3 qg_grid2(int64_t rows, int64_t cols) {
    return dim3(qg_dim((cols + QG_THREADS - 1) / QG_THREADS), qg_dim(rows));
}

#ifndef NMLX_QGEMM_EMU /* the host side */
/* ---- settings ---- */

static int qgemm_mode_v = -1; /* -1: not read from the environment yet */
static int64_t qgemm_rows_v = -1;

/* 0: off; else QG_ON plus the variant bits */
enum { QG_ON = 1, QG_NO_WLO = 2, QG_NO_XSCALE = 4, QG_NO_SKIP = 8, QG_NO_XLO = 16, QG_FUSED = 32 };

/* NMLX_CUDA_QMM: unset or "gemm1" = this path, one f16 GEMM (the
 * default), "gemm" = its exact form, "gemm16" = x split, W not; "fused" =
 * cuda_qmm_fused.cu where it applies, else gemm1; "mma" or "bf16" =
 * qmm_kernel (cuda_quant.cu; bf16: with x rounded to bf16). */
static int qgemm_mode(void) {
    if (qgemm_mode_v < 0) {
        const char *e = getenv("NMLX_CUDA_QMM");
        qgemm_mode_v = !e || !*e || !strcmp(e, "gemm1") ? QG_ON | QG_NO_WLO | QG_NO_XLO
                       : !strcmp(e, "gemm")             ? QG_ON
                       : !strcmp(e, "gemm16")           ? QG_ON | QG_NO_WLO
                       : !strcmp(e, "fused")            ? QG_ON | QG_NO_WLO | QG_NO_XLO | QG_FUSED
                                                        : 0;
    }
    return qgemm_mode_v;
}

extern "C" void nmlx_cuda_set_qmm_gemm(int mode) { qgemm_mode_v = mode < 0 ? 0 : mode; }

extern "C" void nmlx_cuda_set_qmm_rows(int64_t rows) { qgemm_rows_v = rows < 0 ? 0 : rows; }

/* Rows per chunk: NMLX_CUDA_QMM_ROWS, else up to 8192 rows and 32M weight
 * elements (128 MB of f16 hi + lo), and at most 32M floats of GEMM output. */
static int64_t qgemm_rows(int64_t D, int64_t N, int64_t cols) {
    if (qgemm_rows_v < 0) {
        const char *e = getenv("NMLX_CUDA_QMM_ROWS");
        qgemm_rows_v = e ? atoll(e) : 0;
        if (qgemm_rows_v < 0) qgemm_rows_v = 0;
    }
    int64_t rc = qgemm_rows_v;
    if (!rc) {
        rc = 8192;
        if (rc * N > (32 << 20)) rc = (32 << 20) / N;
        if (rc * cols > (32 << 20)) rc = (32 << 20) / cols;
        if (rc > 64) rc &= ~(int64_t)63;
        if (rc < 1) rc = 1;
    }
    return rc < D ? rc : D;
}

/* The backend's scratch grown to need bytes; false (error cleared, nothing
 * noted: the caller falls back) when cudaMalloc fails. Also the fused
 * kernel's (cuda_qmm_fused.cu). */
bool nmlx_cuda_qg_reserve(nmlx_backend *be, size_t need) {
    cuda_impl *c = cuda_of(be);
    if (need <= c->qg_bytes) return true;
    c = cuda_host_of(be); /* no allocation inside a graph capture */
    cudaStreamSynchronize(c->stream);
    c->qg_x = NULL; /* the split x goes with the old scratch */
    if (c->qg) cudaFree(c->qg);
    c->qg = NULL;
    c->qg_bytes = 0;
    if (cudaMalloc(&c->qg, need) != cudaSuccess) {
        c->qg = NULL;
        (void)cudaGetLastError();
        return false;
    }
    c->qg_bytes = need;
    return true;
}

static size_t qg_align(size_t b) { return (b + 255) & ~(size_t)255; }

template <int BITS, bool MX>
static void qg_dequant(cudaStream_t s, const nmlx_weight *w, int gshift, int64_t d0, int64_t n,
                       const float *rs, __half *wh, __half *wl, int *nz) {
    const int64_t N = w->cols;
    const dim3 grid = qg_grid2(n, N / 8);
    if (wl)
        qg_dequant_kernel<BITS, MX, true><<<grid, QG_THREADS, 0, s>>>(
            (const uint32_t *)w->w.data, w->scales.data, w->biases.data, w->scales.dtype, gshift, N,
            d0, n, rs, wh, wl, nz);
    else
        qg_dequant_kernel<BITS, MX, false><<<grid, QG_THREADS, 0, s>>>(
            (const uint32_t *)w->w.data, w->scales.data, w->biases.data, w->scales.dtype, gshift, N,
            d0, n, rs, wh, NULL, NULL);
}

/* ---- weights whose lo half is zero ---- */

struct cuda_qg_seen {
    const void *w; /* the prepared codes (device) */
    int64_t rows, cols;
    bool exact; /* every lo was zero */
};

/* An open-addressing table (cap a power of two, at most half full): a MoE
 * model has a weight view per expert, 10^4 and more of them. */
static size_t qg_slot(const cuda_impl *c, const void *p) {
    uint64_t h = (uint64_t)(uintptr_t)p * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 20) & (c->cap_qg_seen - 1);
}

static cuda_qg_seen *qg_find(cuda_impl *c, const nmlx_weight *w) {
    if (!c->cap_qg_seen) return NULL;
    for (size_t i = qg_slot(c, w->w.data);; i = (i + 1) & (c->cap_qg_seen - 1)) {
        cuda_qg_seen *e = &c->qg_seen[i];
        if (!e->w) return NULL;
        if (e->w == w->w.data && e->rows == w->rows && e->cols == w->cols) return e;
    }
}

/* Adds (or updates) a record; false when memory fails (nothing recorded). */
static bool qg_put(cuda_impl *c, const cuda_qg_seen *rec) {
    if (2 * (c->n_qg_seen + 1) > c->cap_qg_seen) {
        const size_t cap = c->cap_qg_seen ? 2 * c->cap_qg_seen : 64;
        cuda_qg_seen *t = (cuda_qg_seen *)calloc(cap, sizeof *t);
        if (!t) return false;
        cuda_qg_seen *old = c->qg_seen;
        const size_t ocap = c->cap_qg_seen;
        c->qg_seen = t;
        c->cap_qg_seen = cap;
        c->n_qg_seen = 0;
        for (size_t i = 0; i < ocap; i++)
            if (old[i].w) qg_put(c, &old[i]);
        free(old);
    }
    size_t i = qg_slot(c, rec->w);
    while (c->qg_seen[i].w && !(c->qg_seen[i].w == rec->w && c->qg_seen[i].rows == rec->rows &&
                                c->qg_seen[i].cols == rec->cols))
        i = (i + 1) & (c->cap_qg_seen - 1);
    if (!c->qg_seen[i].w) c->n_qg_seen++;
    c->qg_seen[i] = *rec;
    return true;
}

/* After a first call's launches: waits for them and records whether any lo
 * was nonzero (nothing recorded when memory fails: the next call checks
 * again). */
static void qg_record(nmlx_backend *be, const nmlx_weight *w) {
    cuda_impl *c = cuda_host_of(be);
    int flag = 1;
    cudaMemcpyAsync(&flag, c->qg_flag, sizeof flag, cudaMemcpyDeviceToHost, c->stream);
    if (cudaStreamSynchronize(c->stream) != cudaSuccess) {
        nmlx_cuda_note(be, cudaGetLastError());
        return;
    }
    const cuda_qg_seen rec = {w->w.data, w->rows, w->cols, flag == 0};
    qg_put(c, &rec);
}

extern "C" void nmlx_cuda_qgemm_seen(nmlx_backend *be, long *exact, long *inexact) {
    const cuda_impl *c = (const cuda_impl *)be->impl;
    *exact = *inexact = 0;
    for (size_t i = 0; i < c->cap_qg_seen; i++)
        if (c->qg_seen[i].w) ++*(c->qg_seen[i].exact ? exact : inexact);
}

/* The dequantization of rows [d0, d0 + n) of w into wh (+ wl) */
static void qg_dequant_any(cudaStream_t s, const nmlx_weight *w, int gshift, int64_t d0, int64_t n,
                           const float *rs, __half *wh, __half *wl, int *nz) {
    if (w->mode == NMLX_QUANT_MXFP4) {
        qg_dequant<4, true>(s, w, gshift, d0, n, rs, wh, wl, nz);
        return;
    }
    switch (w->bits) {
    case 2: qg_dequant<2, false>(s, w, gshift, d0, n, rs, wh, wl, nz); break;
    case 3: qg_dequant<3, false>(s, w, gshift, d0, n, rs, wh, wl, nz); break;
    case 4: qg_dequant<4, false>(s, w, gshift, d0, n, rs, wh, wl, nz); break;
    case 5: qg_dequant<5, false>(s, w, gshift, d0, n, rs, wh, wl, nz); break;
    case 6: qg_dequant<6, false>(s, w, gshift, d0, n, rs, wh, wl, nz); break;
    default: qg_dequant<8, false>(s, w, gshift, d0, n, rs, wh, wl, nz); break;
    }
}

/* The row factors of every row of w (qg_rowscale_kernel) */
static void qg_rowscale(cudaStream_t s, const nmlx_weight *w, float *rs, float *ir) {
    const bool mx = w->mode == NMLX_QUANT_MXFP4;
    const int64_t D = w->rows, G = w->cols / w->group_size;
    const float qmax = mx ? 6.0f : (float)((1 << w->bits) - 1);
    const unsigned rgrid = (unsigned)((D + QG_THREADS / 32 - 1) / (QG_THREADS / 32));
    if (mx)
        qg_rowscale_kernel<true><<<rgrid, QG_THREADS, 0, s>>>(
            w->scales.data, w->biases.data, w->scales.dtype, G, qmax, 0, D, rs, ir);
    else
        qg_rowscale_kernel<false><<<rgrid, QG_THREADS, 0, s>>>(
            w->scales.data, w->biases.data, w->scales.dtype, G, qmax, 0, D, rs, ir);
}

static bool qg_bits_ok(const nmlx_weight *w) {
    return w->mode == NMLX_QUANT_MXFP4 || w->bits == 2 || w->bits == 3 || w->bits == 4 ||
           w->bits == 5 || w->bits == 6 || w->bits == 8;
}

/* One weight (u NULL: y = x W^T + bias) or, gemm1 only, a gate/up pair
 * of one shape (y = act(x G^T + bias) * (x U^T + ubias)): per chunk of
 * rows the gate's dequantization and GEMM, then the up weight's into the
 * same W scratch (stream order), then one join of both. Each GEMM is the
 * one a lone call makes on that chunk, so the pair's outputs are the
 * unfused ops' (the matmuls, then act_mul) bit for bit. */
static bool qgemm_run(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                      const nmlx_weight *u, const nmlx_tensor *ubias, nmlx_act act, const float *x,
                      float *y, int64_t T) {
    int mode = qgemm_mode();
    if (!mode) return false;
    /* precision "f32": the exact form whatever variant was asked for */
    if (((cuda_impl *)be->impl)->f32_x) mode &= ~(QG_NO_WLO | QG_NO_XLO | QG_FUSED);
    /* the pair: gemm1 (one GEMM a weight, no lo halves) only */
    if (u && (mode & (QG_FUSED | QG_NO_WLO | QG_NO_XLO)) != (QG_NO_WLO | QG_NO_XLO)) return false;
    /* NMLX_CUDA_QMM=fused: the fused kernel where it applies */
    if (!u && (mode & QG_FUSED) && nmlx_cuda_qmm_fused(be, w, bias, x, y, T)) return true;
    bool wlo = !(mode & QG_NO_WLO), first = false;
    const bool xlo = !(mode & QG_NO_XLO);
    if (wlo && !(mode & QG_NO_SKIP)) {
        cuda_impl *c0 = (cuda_impl *)be->impl;
        const cuda_qg_seen *seen = qg_find(c0, w);
        if (seen)
            wlo = !seen->exact;
        else {
            if (!c0->qg_flag) {
                cuda_host_of(be);
                if (cudaMalloc(&c0->qg_flag, sizeof(int)) != cudaSuccess) {
                    c0->qg_flag = NULL;
                    (void)cudaGetLastError();
                }
            }
            first = c0->qg_flag != NULL;
        }
    }
    if (!qg_bits_ok(w) || (u && !qg_bits_ok(u))) return false;
    const int64_t D = w->rows, N = w->cols;
    /* the chunk size does not depend on wlo or the pair: the same GEMMs either way */
    const int64_t cols = (wlo ? 3 : 2) * T, rc = qgemm_rows(D, N, 3 * T);
    /* the pair's second GEMM output, 256-byte aligned after the first */
    const int64_t cu_off = (rc * T + 63) & ~(int64_t)63;
    /* scratch: x hi + lo, ix [T], rs / ir [D] (a pair: twice), W hi (+ lo) [rc, N], out
     * [rc, cols] (a pair: two [rc, T]) */
    const int nw = u ? 2 : 1;
    const size_t o_ix = qg_align((size_t)(2 * T * N) * 2), o_rs = o_ix + qg_align((size_t)T * 4),
                 o_ir = o_rs + nw * qg_align((size_t)D * 4),
                 o_wh = o_ir + nw * qg_align((size_t)D * 4),
                 o_wl = o_wh + qg_align((size_t)(rc * N) * 2),
                 o_c = o_wl + (wlo ? qg_align((size_t)(rc * N) * 2) : 0),
                 c_floats = u ? (size_t)(cu_off + rc * T) : (size_t)(rc * cols),
                 need = o_c + (c_floats + 4) * 4;
    if (!nmlx_cuda_qg_reserve(be, need)) return false;
    cuda_impl *c = cuda_of(be);
    cudaStream_t s = c->stream;
    char *base = (char *)c->qg;
    __half *xhl = (__half *)base, *wh = (__half *)(base + o_wh),
           *wl = wlo ? (__half *)(base + o_wl) : NULL;
    float *ix = (float *)(base + o_ix), *rs = (float *)(base + o_rs), *ir = (float *)(base + o_ir),
          *cb = (float *)(base + o_c);
    float *rs2 = rs + qg_align((size_t)D * 4) / 4, *ir2 = ir + qg_align((size_t)D * 4) / 4;
    int *nz = first ? c->qg_flag : NULL;
    if (nz) cudaMemsetAsync(nz, 0, sizeof(int), s);
    /* x split once for the weights of a matmul_multi: the same x, shape and form */
    const int xform = (xlo ? 1 : 0) | (mode & QG_NO_XSCALE ? 2 : 0);
    if (!(c->qg_x_share && c->qg_x == x && c->qg_x_t == T && c->qg_x_n == N &&
          c->qg_x_form == xform)) {
        const bool vec = (uintptr_t)x % 16 == 0 && N % 4 == 0;
        qg_xsplit_kernel<<<(unsigned)T, QG_THREADS, 0, s>>>(x, T, N, !(mode & QG_NO_XSCALE), xlo,
                                                            vec, xhl, ix);
        c->qg_x = x, c->qg_x_t = T, c->qg_x_n = N, c->qg_x_form = xform;
    }
    int gshift = 0;
    while ((8 << gshift) < w->group_size)
        gshift++;
    int ushift = 0;
    while (u && (8 << ushift) < u->group_size)
        ushift++;
    const void *lb = bias ? bias->data : NULL, *ub = ubias ? ubias->data : NULL;
    const nmlx_dtype lbdt = bias ? bias->dtype : NMLX_DT_F32,
                     ubdt = ubias ? ubias->dtype : NMLX_DT_F32;
    const float one = 1.0f, zero = 0.0f;
    qg_rowscale(s, w, rs, ir);
    if (u) qg_rowscale(s, u, rs2, ir2);
    for (int64_t d0 = 0; d0 < D; d0 += rc) {
        const int64_t n = D - d0 < rc ? D - d0 : rc;
        qg_dequant_any(s, w, gshift, d0, n, rs + d0, wh, wl, nz);
        /* column-major: C[n, 2T] = Wh^T' [n, N] x [xh xl] [N, 2T] (as the dense
         * path in cuda_matmul.cu), then Cl[n, T] = Wl x xh (16-byte aligned) */
        float *cl = wlo ? cb + ((2 * T * n + 3) & ~(int64_t)3) : NULL;
        cublasStatus_t st =
            cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)((xlo ? 2 : 1) * T),
                         (int)N, &one, wh, CUDA_R_16F, (int)N, xhl, CUDA_R_16F, (int)N, &zero, cb,
                         CUDA_R_32F, (int)n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (st == CUBLAS_STATUS_SUCCESS && wlo)
            st = cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)T, (int)N, &one, wl,
                              CUDA_R_16F, (int)N, xhl, CUDA_R_16F, (int)N, &zero, cl, CUDA_R_32F,
                              (int)n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        float *cu = cb + cu_off;
        if (u) {
            qg_dequant_any(s, u, ushift, d0, n, rs2 + d0, wh, NULL, NULL);
            if (st == CUBLAS_STATUS_SUCCESS)
                st = cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)T, (int)N, &one,
                                  wh, CUDA_R_16F, (int)N, xhl, CUDA_R_16F, (int)N, &zero, cu,
                                  CUDA_R_32F, (int)n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        }
        if (st != CUBLAS_STATUS_SUCCESS) nmlx_cuda_note(be, cudaErrorUnknown);
        if (u)
            qg_join_act_kernel<<<qg_grid2(T, n), QG_THREADS, 0, s>>>(
                act, cb, cu, n, T, ix, ir + d0, ir2 + d0, y, D, d0, lb, lbdt, ub, ubdt);
        else
            qg_join_kernel<<<qg_grid2(T, n), QG_THREADS, 0, s>>>(cb, cl, xlo, n, T, ix, ir + d0, y,
                                                                 D, d0, lb, lbdt);
    }
    nmlx_cuda_note(be, cudaGetLastError());
    if (first) qg_record(be, w);
    return true;
}

bool nmlx_cuda_qgemm(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                     const float *x, float *y, int64_t T) {
    return qgemm_run(be, w, bias, NULL, NULL, NMLX_ACT_SILU, x, y, T);
}

static int qgemm_act_v = -1; /* -1: not read from the environment yet */
static unsigned long long qgemm_act_calls;

extern "C" void nmlx_cuda_set_qmm_act(int on) { qgemm_act_v = on < 0 ? -1 : on != 0; }
extern "C" unsigned long long nmlx_cuda_qmm_act_calls(void) { return qgemm_act_calls; }

bool nmlx_cuda_qgemm_act(nmlx_backend *be, nmlx_act act, const nmlx_weight *g, const nmlx_weight *u,
                         const nmlx_tensor *bg, const nmlx_tensor *bu, const float *x, float *gate,
                         int64_t T) {
    /* on by default since session 20 (H100 pp512: +11-13% on the 4-bit and
     * 8-bit shapes); NMLX_CUDA_QMM_ACT=0 turns it off */
    if (qgemm_act_v < 0) {
        const char *e = getenv("NMLX_CUDA_QMM_ACT");
        qgemm_act_v = !(e && !strcmp(e, "0"));
    }
    if (!qgemm_act_v) return false;
    if (g->rows != u->rows || g->cols != u->cols || g->mode != u->mode) return false;
    const bool done = qgemm_run(be, g, bg, u, bu, act, x, gate, T);
    qgemm_act_calls += done;
    return done;
}
#endif /* NMLX_QGEMM_EMU */
