/* The family-specific ops of the CUDA backend (backend.h): gpt-oss's
 * clipped SwiGLU, Gemma 3n's Gaussian top-k, AltUp magnitude matching,
 * per-column scaling, AltUp predict / correct, and Llama 4's interleaved
 * RoPE. Arithmetic follows the CPU ops (cpu_moe_ops.c, cpu_gemma3n_ops.c,
 * llama4_attention.c): row statistics and AltUp coefficients in double, so
 * the two agree to rounding. Each op is one launch on the backend's stream.
 * tests/cuda/test_cuda_fixtures.c runs those families' fixtures on the GPU. */
#include "compute/cuda/cuda_internal.h"

#include <math.h>

enum {
    FAM_THREADS = 256,
    FAM_MAX_STREAMS = 16 /* AltUp K, as the CPU op (NMLX_ALTUP_MAX_INPUTS) */
};

static unsigned fam_grid(int64_t n) {
    int64_t b = (n + FAM_THREADS - 1) / FAM_THREADS;
    return (unsigned)(b < 65535 * 16 ? b : 65535 * 16);
}

/* Block-wide double sum (blockDim.x = FAM_THREADS); every thread gets it. */
static __device__ double fam_block_sum(double v) {
    __shared__ double part[32];
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    int w = threadIdx.x / 32, l = threadIdx.x % 32;
    __syncthreads(); /* part[] may still be read by a previous call */
    if (l == 0) part[w] = v;
    __syncthreads();
    v = l < (int)(blockDim.x / 32) ? part[l] : 0.0;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* ---- swiglu_clipped: out = g * sigmoid(alpha g) * (u + 1), g = min(gate,
 * limit), u = clamp(up, +-limit) ---- */

__global__ void swiglu_clipped_kernel(const float *gate, const float *up, float *out, int64_t n,
                                      float alpha, float limit) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        out[i] = cuda_swiglu_clipped1(gate[i], up[i], alpha, limit);
    }
}

void nmlx_cuda_swiglu_clipped(nmlx_backend *be, const float *gate, const float *up, float *out,
                              int64_t n, float alpha, float limit) {
    if (n <= 0) return;
    swiglu_clipped_kernel<<<fam_grid(n), FAM_THREADS, 0, cuda_of(be)->stream>>>(gate, up, out, n,
                                                                                alpha, limit);
    nmlx_cuda_note(be, cudaGetLastError());
}

/* ---- gaussian_topk: one block per row ---- */

__global__ void gaussian_topk_kernel(float *x, int64_t n, float mult) {
    float *r = x + blockIdx.x * n;
    double s = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        s += r[i];
    double mean = fam_block_sum(s) / (double)n;
    double sq = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        sq += (r[i] - mean) * (r[i] - mean);
    sq = fam_block_sum(sq);
    float cutoff = (float)(mean + sqrt(sq / (double)n) * mult);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        r[i] = r[i] > cutoff ? r[i] - cutoff : 0.0f;
}

void nmlx_cuda_gaussian_topk(nmlx_backend *be, float *x, int64_t R, int64_t n, float std_mult) {
    if (R <= 0 || n <= 0) return;
    gaussian_topk_kernel<<<(unsigned)R, FAM_THREADS, 0, cuda_of(be)->stream>>>(x, n, std_mult);
    nmlx_cuda_note(be, cudaGetLastError());
}

/* ---- rms_match: x[t] *= rms(ref[t]) / sqrt(max(ms(x[t]), eps)), one block per row ---- */

__global__ void rms_match_kernel(const float *ref, float *x, int64_t D, float eps) {
    const float *rr = ref + blockIdx.x * D;
    float *xr = x + blockIdx.x * D;
    double a = 0, b = 0;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
        a += (double)rr[i] * rr[i];
        b += (double)xr[i] * xr[i];
    }
    a = fam_block_sum(a) / (double)D;
    b = fam_block_sum(b) / (double)D;
    double f = sqrt(a) / sqrt(b > eps ? b : (double)eps);
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
        xr[i] = (float)(xr[i] * f);
}

void nmlx_cuda_rms_match(nmlx_backend *be, const float *ref, float *x, int64_t T, int64_t D,
                         float eps) {
    if (T <= 0 || D <= 0) return;
    rms_match_kernel<<<(unsigned)T, FAM_THREADS, 0, cuda_of(be)->stream>>>(ref, x, D, eps);
    nmlx_cuda_note(be, cudaGetLastError());
}

/* ---- mul_rows: x[r, i] *= w[i] ---- */

__global__ void mul_rows_kernel(float *x, const void *w, nmlx_dtype wdt, int64_t n, int64_t D) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        x[i] *= cuda_load_f32(wdt, w, i % D);
}

void nmlx_cuda_mul_rows(nmlx_backend *be, float *x, const nmlx_tensor *w, int64_t R, int64_t D) {
    int64_t n = R * D;
    if (n <= 0) return;
    mul_rows_kernel<<<fam_grid(n), FAM_THREADS, 0, cuda_of(be)->stream>>>(x, w->data, w->dtype, n,
                                                                          D);
    nmlx_cuda_note(be, cudaGetLastError());
}

/* ---- AltUp: grid (T, D / FAM_THREADS); each block computes token t's
 * coefficients in shared memory, then its threads take one column d each ---- */

/* c[r] = sum_k W[r, k] * tanh(router[k]) for rows r < rows of W [rows, K]
 * (clipped to +-clip when clip > 0), by the block's first `rows` threads. */
static __device__ void altup_coefs(const void *w, nmlx_dtype wdt, const float *router, int64_t rows,
                                   int64_t K, float clip, double *c) {
    for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
        double s = 0;
        for (int64_t k = 0; k < K; k++) {
            double v = cuda_load_f32(wdt, w, r * K + k);
            if (clip > 0) v = v < -clip ? -clip : (v > clip ? clip : v);
            s += v * tanh((double)router[k]);
        }
        c[r] = s;
    }
    __syncthreads();
}

__global__ void altup_predict_kernel(const float *x, int64_t stride, const float *router,
                                     const void *w, nmlx_dtype wdt, float *out, int64_t K,
                                     int64_t D) {
    __shared__ double c[FAM_MAX_STREAMS * FAM_MAX_STREAMS];
    int64_t t = blockIdx.x, d = blockIdx.y * (int64_t)blockDim.x + threadIdx.x;
    altup_coefs(w, wdt, router + t * K, K * K, K, 0.0f, c);
    if (d >= D) return;
    for (int64_t i = 0; i < K; i++) {
        double s = x[i * stride + t * D + d];
        for (int64_t k = 0; k < K; k++)
            s += c[i * K + k] * x[k * stride + t * D + d];
        out[i * stride + t * D + d] = (float)s;
    }
}

__global__ void altup_correct_kernel(float *p, int64_t stride, const float *act,
                                     const float *router, const void *w, nmlx_dtype wdt, float clip,
                                     int64_t active, int64_t K, int64_t D) {
    __shared__ double c[FAM_MAX_STREAMS];
    int64_t t = blockIdx.x, d = blockIdx.y * (int64_t)blockDim.x + threadIdx.x;
    altup_coefs(w, wdt, router + t * K, K, K, clip, c);
    if (d >= D) return;
    /* the innovation is read before any stream (the active one included) changes */
    double innov = (double)act[t * D + d] - p[active * stride + t * D + d];
    for (int64_t i = 0; i < K; i++) {
        float *q = p + i * stride + t * D + d;
        *q = (float)(*q + (c[i] + 1.0) * innov);
    }
}

static dim3 altup_grid(int64_t T, int64_t D) {
    return dim3((unsigned)T, (unsigned)((D + FAM_THREADS - 1) / FAM_THREADS));
}

void nmlx_cuda_altup_predict(nmlx_backend *be, const float *x, int64_t stride, const float *router,
                             const nmlx_tensor *coefs, float *out, int64_t K, int64_t T,
                             int64_t D) {
    if (K <= 0 || K > FAM_MAX_STREAMS || T <= 0 || D <= 0) return;
    altup_predict_kernel<<<altup_grid(T, D), FAM_THREADS, 0, cuda_of(be)->stream>>>(
        x, stride, router, coefs->data, coefs->dtype, out, K, D);
    nmlx_cuda_note(be, cudaGetLastError());
}

void nmlx_cuda_altup_correct(nmlx_backend *be, float *p, int64_t stride, const float *act,
                             const float *router, const nmlx_tensor *coefs, float clip,
                             int64_t active, int64_t K, int64_t T, int64_t D) {
    if (K <= 0 || K > FAM_MAX_STREAMS || active < 0 || active >= K || T <= 0 || D <= 0) return;
    altup_correct_kernel<<<altup_grid(T, D), FAM_THREADS, 0, cuda_of(be)->stream>>>(
        p, stride, act, router, coefs->data, coefs->dtype, clip, active, K, D);
    nmlx_cuda_note(be, cudaGetLastError());
}

/* ---- rope_interleaved: pairs (2j, 2j + 1) of x[T, H, HD], angle (pos0 +
 * t) * freqs[j] in double; one block per token ---- */

__global__ void rope_interleaved_kernel(float *x, int64_t H, int64_t HD, int64_t pos0,
                                        const float *freqs) {
    int64_t t = blockIdx.x;
    double p = (double)(pos0 + t);
    for (int64_t j = threadIdx.x; j < HD / 2; j += blockDim.x) {
        double ang = p * (double)freqs[j];
        float c = (float)cos(ang), s = (float)sin(ang);
        for (int64_t h = 0; h < H; h++) {
            float *xp = x + (t * H + h) * HD + 2 * j;
            float x0 = xp[0], x1 = xp[1];
            xp[0] = x0 * c - x1 * s;
            xp[1] = x1 * c + x0 * s;
        }
    }
}

void nmlx_cuda_rope_interleaved(nmlx_backend *be, float *x, int64_t T, int64_t H, int64_t HD,
                                int64_t pos0, const float *freqs) {
    if (T <= 0 || HD < 2) return;
    rope_interleaved_kernel<<<(unsigned)T, 64, 0, cuda_of(be)->stream>>>(x, H, HD, pos0, freqs);
    nmlx_cuda_note(be, cudaGetLastError());
}
