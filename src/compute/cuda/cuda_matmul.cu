/* y[T, D] = x[T, N] @ W[D, N]^T (+ bias) on the GPU.
 *  - decode (T <= GEMV_MAX_T: one token, or one token each of a batch of
 *    sequences): a bandwidth-bound mat-vec, one warp per output row reading
 *    it once for the T rows of x, 16-byte weight loads, f32 accumulation
 *    (same math as the CPU kernels; a row's result does not depend on T).
 *    Weights that read one x (q/k/v, gate/up with its activation) share a
 *    launch, and a lane's first loads go out before the kernel ahead ends
 *    (programmatic dependent launch). One token's residual add + RMSNorm
 *    (and rope_kv for q/k/v) can be folded in (add_rmsnorm_matmul,
 *    gemv_norm_kernel); the device code is in cuda_gemv_dev.cuh;
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

#include "compute/cuda/cuda_gemv_dev.cuh" /* gemv_kernel, gemv_norm_kernel */

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
 * a batch of sequences); rsum (one weight, one row, no pair): ys[0] is the
 * residual stream, added into (gemv_args.rsum). false (nothing launched):
 * the weights differ in dtype or width, are quantized, or are too many. */
static bool gemv_multi(nmlx_backend *be, int n, const nmlx_weight *const *ws,
                       const nmlx_tensor *const *biases, const float *x, float *const *ys,
                       int64_t T, int pair_act, double *rsum = NULL) {
    if (n < 1 || n > GEMV_MULTI || T < 1 || T > GEMV_MAX_T) return false;
    if (rsum && (n != 1 || T != 1 || pair_act >= 0)) return false;
    gemv_args a = {};
    a.rsum = rsum;
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

bool nmlx_cuda_gemv_resid(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                          const float *x, float *resid, double *rsum) {
    /* rsum's room: a block of GEMV_WARPS rows each */
    if (!rsum || (w->rows + GEMV_WARPS - 1) / GEMV_WARPS > NMLX_Q16_RSUM_CAP) return false;
    return gemv_multi(be, 1, &w, &bias, x, &resid, 1, -1, rsum);
}

bool nmlx_cuda_gemv_act(nmlx_backend *be, nmlx_act act, const nmlx_weight *g, const nmlx_weight *u,
                        const nmlx_tensor *bg, const nmlx_tensor *bu, const float *x, float *out,
                        int64_t T) {
    const nmlx_weight *ws[2] = {g, u};
    const nmlx_tensor *bs[2] = {bg, bu};
    float *ys[2] = {out, NULL};
    return gemv_multi(be, 2, ws, bs, x, ys, T, (int)act);
}

/* ---- add_rmsnorm_matmul for dense weights: gemv_norm_kernel's launch
 * (the design: cuda_gemv_dev.cuh) ---- */

/* One wave: min(a unit a warp, GN_BPS or as many blocks as fit a
 * multiprocessor). The blocks that fit, by shared memory size, are queried
 * once per kernel outside a graph capture; in one, GN_BPS is taken unasked
 * (blocks past what fits wait for a second wave: still right, no block
 * waits on another). */
template <typename W, int MODE>
static cudaError_t gn_launch(cudaStream_t st, const gemv_norm_args &a) {
    auto kern = gemv_norm_kernel<W, MODE>;
    const size_t sm = (size_t)a.N * sizeof(float);
    static size_t set = 0; /* per instantiation: the shared memory opted in to */
    if (sm > 48 * 1024 && sm > set) {
        cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm);
        set = sm;
    }
    const int occ = nmlx_cuda_resident_blocks((const void *)kern, GN_THREADS, sm, st, GN_BPS);
    const int64_t b = occ < GN_BPS ? occ : GN_BPS;
    int64_t grid = (a.units + GN_WARPS - 1) / GN_WARPS;
    if (grid > b * nmlx_cuda_sm_count()) grid = b * nmlx_cuda_sm_count();
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
    a.parts = nrm->parts;
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
