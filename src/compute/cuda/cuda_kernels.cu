/* Row and elementwise kernels of the CUDA backend: embed, rmsnorm, rope,
 * act_mul, act, add, scale, softmax, argmax. Shapes as in backend.h; each op is one
 * launch on the backend's stream. Arithmetic follows the CPU reference
 * kernels (kernels_portable.c) so the two agree to rounding. */
#include "compute/cuda/cuda_internal.h"

#include <limits.h>
#include <math.h>
#include <string.h>

enum { ROW_THREADS = 256, ELEM_THREADS = 256 };

static unsigned grid_for(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 65535 * 16 ? b : 65535 * 16);
}

__device__ float block_max(float v) {
    __shared__ float part[32];
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int w = threadIdx.x / 32, l = threadIdx.x % 32;
    __syncthreads();
    if (l == 0) part[w] = v;
    __syncthreads();
    int nw = blockDim.x / 32;
    v = l < nw ? part[l] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* ---- embed: out[t, :] = table[ids[t], :] * scale (zero row for bad ids) ---- */

__global__ void embed_kernel(const void *table, nmlx_dtype dt, const int32_t *ids, int64_t V,
                             int64_t D, float scale, float *out) {
    int64_t t = blockIdx.x;
    int32_t id = ids[t];
    float *o = out + t * D;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
        o[i] = (id >= 0 && id < V) ? cuda_load_f32(dt, table, (int64_t)id * D + i) * scale : 0.0f;
}

/* ids are host memory (the caller's tokens): staged through pinned memory so
 * the copy is asynchronous; the previous call's copy has finished by then,
 * since every forward ends with a download that waits for the stream. */
void nmlx_cuda_embed(nmlx_backend *be, const nmlx_weight *table, const int32_t *ids, int64_t T,
                     float scale, float *out) {
    cuda_impl *c = (cuda_impl *)be->impl;
    if (T == 1 && c->pos_dev) { /* a recorded step (cuda_graph.cu): its id is on the device */
        const int32_t *id = (const int32_t *)(c->step_dev + 1); /* low half (little-endian) */
        c = cuda_of(be);
        if (table->mode != NMLX_QUANT_NONE) {
            nmlx_cuda_qembed(be, table, id, 1, scale, out);
            return;
        }
        embed_kernel<<<1, ROW_THREADS, 0, c->stream>>>(table->w.data, table->w.dtype, id,
                                                       table->rows, table->cols, scale, out);
        nmlx_cuda_note(be, cudaGetLastError());
        return;
    }
    c = cuda_host_of(be);
    if (T <= 0) return;
    if ((size_t)T > c->ids_cap) {
        cudaStreamSynchronize(c->stream);
        if (c->ids_host) cudaFreeHost(c->ids_host);
        if (c->ids_dev) cudaFree(c->ids_dev);
        c->ids_host = NULL;
        c->ids_dev = NULL;
        c->ids_cap = 0;
        size_t cap = (size_t)T < 256 ? 256 : (size_t)T;
        cudaError_t e = cudaMallocHost((void **)&c->ids_host, cap * sizeof(int32_t));
        if (e == cudaSuccess) e = cudaMalloc((void **)&c->ids_dev, cap * sizeof(int32_t));
        nmlx_cuda_note(be, e);
        if (e != cudaSuccess) return;
        c->ids_cap = cap;
    }
    cudaStreamSynchronize(c->stream); /* the staging buffer may still be in flight */
    memcpy(c->ids_host, ids, (size_t)T * sizeof(int32_t));
    nmlx_cuda_note(be, cudaMemcpyAsync(c->ids_dev, c->ids_host, (size_t)T * sizeof(int32_t),
                                       cudaMemcpyHostToDevice, c->stream));
    if (table->mode != NMLX_QUANT_NONE) {
        nmlx_cuda_qembed(be, table, c->ids_dev, T, scale, out);
        return;
    }
    embed_kernel<<<(unsigned)T, ROW_THREADS, 0, c->stream>>>(table->w.data, table->w.dtype,
                                                             c->ids_dev, table->rows, table->cols,
                                                             scale, out);
    nmlx_cuda_note(be, cudaGetLastError());
}

/* ---- rmsnorm: one block per row; sum of squares in double as the CPU ---- */

__global__ void rmsnorm_kernel(const float *x, const void *w, nmlx_dtype wdt, float w_offset,
                               float eps, float *y, int64_t D) {
    const float *xr = x + blockIdx.x * D;
    float *yr = y + blockIdx.x * D;
    double ss = 0;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) ss += (double)xr[i] * xr[i];
    ss = cuda_block_sum<double>(ss);
    float inv = (float)(1.0 / sqrt(ss / (double)D + eps));
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
        float v = xr[i] * inv;
        yr[i] = w ? v * (cuda_load_f32(wdt, w, i) + w_offset) : v;
    }
}

void nmlx_cuda_rmsnorm(nmlx_backend *be, const float *x, const nmlx_tensor *w, float w_offset,
                       float eps, float *y, int64_t R, int64_t D) {
    if (R <= 0 || D <= 0) return;
    int threads = cuda_norm_threads(D);
    rmsnorm_kernel<<<(unsigned)R, threads, 0, cuda_of(be)->stream>>>(
        x, w ? w->data : NULL, w ? w->dtype : NMLX_DT_F32, w_offset, eps, y, D);
    nmlx_cuda_note(be, cudaGetLastError());
}

/* ---- rope: in place on x[T, H, HD]; angles in double as the CPU ---- */

/* One token's H heads at position p (rope and rope_rows share it, so a
 * batched row equals the same token rotated alone bit for bit). */
__device__ __forceinline__ void rope_token(float *xt, int64_t H, int64_t HD, int64_t half,
                                           double p, const float *freqs, float mscale) {
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
        double s, c;
        sincos(p * (double)freqs[i], &s, &c);
        float cf = (float)c, sf = (float)s;
        for (int64_t h = 0; h < H; h++) {
            float *xh = xt + h * HD;
            float x0 = xh[i], x1 = xh[i + half];
            xh[i] = (x0 * cf - x1 * sf) * mscale;
            xh[i + half] = (x1 * cf + x0 * sf) * mscale;
        }
    }
}

__global__ void rope_kernel(float *x, int64_t H, int64_t HD, int64_t half, int64_t pos0,
                            const float *freqs, float mscale) {
    int64_t t = blockIdx.x;
    rope_token(x + t * H * HD, H, HD, half, (double)(pos0 + t), freqs, mscale);
}

/* rope_rows: positions passed by value, ROPE_ROWS rows a launch */
enum { ROPE_ROWS = 128 };
typedef struct rope_pos {
    int64_t p[ROPE_ROWS];
} rope_pos;

__global__ void rope_rows_kernel(float *x, int64_t H, int64_t HD, int64_t half, rope_pos pos,
                                 const float *freqs, float mscale) {
    int64_t r = blockIdx.x;
    rope_token(x + r * H * HD, H, HD, half, (double)pos.p[r], freqs, mscale);
}

void nmlx_cuda_rope_rows(nmlx_backend *be, float *x, int64_t R, int64_t H, int64_t HD,
                         int64_t rot, const int64_t *pos, const float *freqs, float mscale) {
    if (R <= 0 || rot < 2) return;
    if (cuda_of(be)->rows_off) { /* NMLX_CUDA_ROWS=0: one rope call per row */
        for (int64_t r = 0; r < R; r++)
            nmlx_cuda_rope(be, x + r * H * HD, 1, H, HD, rot, pos[r], freqs, mscale);
        return;
    }
    cudaStream_t s = cuda_of(be)->stream;
    int64_t half = rot / 2;
    int threads = half >= 128 ? 128 : 64;
    for (int64_t r0 = 0; r0 < R; r0 += ROPE_ROWS) {
        int64_t n = R - r0 < (int64_t)ROPE_ROWS ? R - r0 : (int64_t)ROPE_ROWS;
        rope_pos p = {};
        for (int64_t i = 0; i < n; i++) p.p[i] = pos[r0 + i];
        rope_rows_kernel<<<(unsigned)n, threads, 0, s>>>(x + r0 * H * HD, H, HD, half, p, freqs,
                                                         mscale);
    }
    nmlx_cuda_note(be, cudaGetLastError());
}

void nmlx_cuda_rope(nmlx_backend *be, float *x, int64_t T, int64_t H, int64_t HD, int64_t rot,
                    int64_t pos0, const float *freqs, float mscale) {
    if (T <= 0 || rot < 2) return;
    int64_t half = rot / 2;
    int threads = half >= 128 ? 128 : 64;
    rope_kernel<<<(unsigned)T, threads, 0, cuda_of(be)->stream>>>(x, H, HD, half, pos0, freqs,
                                                                   mscale);
    nmlx_cuda_note(be, cudaGetLastError());
}

/* ---- elementwise ---- */

__global__ void act_mul_kernel(nmlx_act act, const float *g, const float *u, float *o, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        o[i] = cuda_act1(act, g[i]) * u[i];
}

__global__ void act_kernel(nmlx_act act, float *x, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        x[i] = cuda_act1(act, x[i]);
}

__global__ void add_kernel(const float *a, const float *b, float *o, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        o[i] = a[i] + b[i];
}

__global__ void scale_kernel(float *x, float s, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        x[i] *= s;
}

void nmlx_cuda_act_mul(nmlx_backend *be, nmlx_act act, const float *gate, const float *up,
                       float *out, int64_t n) {
    if (n <= 0) return;
    act_mul_kernel<<<grid_for(n, ELEM_THREADS), ELEM_THREADS, 0, cuda_of(be)->stream>>>(
        act, gate, up, out, n);
    nmlx_cuda_note(be, cudaGetLastError());
}

void nmlx_cuda_act(nmlx_backend *be, nmlx_act act, float *x, int64_t n) {
    if (n <= 0) return;
    act_kernel<<<grid_for(n, ELEM_THREADS), ELEM_THREADS, 0, cuda_of(be)->stream>>>(act, x, n);
    nmlx_cuda_note(be, cudaGetLastError());
}

void nmlx_cuda_add(nmlx_backend *be, const float *a, const float *b, float *out, int64_t n) {
    if (n <= 0) return;
    add_kernel<<<grid_for(n, ELEM_THREADS), ELEM_THREADS, 0, cuda_of(be)->stream>>>(a, b, out, n);
    nmlx_cuda_note(be, cudaGetLastError());
}

void nmlx_cuda_scale(nmlx_backend *be, float *x, float s, int64_t n) {
    if (n <= 0) return;
    scale_kernel<<<grid_for(n, ELEM_THREADS), ELEM_THREADS, 0, cuda_of(be)->stream>>>(x, s, n);
    nmlx_cuda_note(be, cudaGetLastError());
}

/* ---- softmax over rows, in place; one block per row ---- */

__global__ void softmax_kernel(float *x, int64_t n) {
    float *r = x + blockIdx.x * n;
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, r[i]);
    m = block_max(m);
    if (m == -INFINITY) m = 0;
    double sum = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        float e = expf(r[i] - m);
        r[i] = e;
        sum += e;
    }
    sum = cuda_block_sum<double>(sum);
    float inv = sum > 0 ? (float)(1.0 / sum) : 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) r[i] *= inv;
}

void nmlx_cuda_softmax(nmlx_backend *be, float *x, int64_t R, int64_t n) {
    if (R <= 0 || n <= 0) return;
    softmax_kernel<<<(unsigned)R, ROW_THREADS, 0, cuda_of(be)->stream>>>(x, n);
    nmlx_cuda_note(be, cudaGetLastError());
}

/* ---- argmax: the index of the largest of x[0..n), first on ties ---- */

enum { ARGMAX_THREADS = 1024 };

/* b beats a: larger, or equal and earlier (nmlx_argmax's order) */
__device__ void argmax_take(float &v, int &i, float bv, int bi) {
    if (bv > v || (bv == v && bi < i)) {
        v = bv;
        i = bi;
    }
}

/* One block: a greedy step's whole cost here is a few microseconds, against
 * the download of a 0.5 MB logits row it replaces. */
__global__ void argmax_kernel(const float *x, int n, int32_t *out) {
    __shared__ float pv[32];
    __shared__ int pi[32];
    float v = -INFINITY;
    int idx = INT_MAX;
    for (int i = threadIdx.x; i < n; i += blockDim.x) /* rising i: strict > keeps the first */
        if (x[i] > v || idx == INT_MAX) {
            v = x[i];
            idx = i;
        }
    for (int o = 16; o > 0; o >>= 1)
        argmax_take(v, idx, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, idx, o));
    int w = threadIdx.x / 32, l = threadIdx.x % 32;
    if (l == 0) {
        pv[w] = v;
        pi[w] = idx;
    }
    __syncthreads();
    if (w == 0) {
        int nw = blockDim.x / 32;
        v = l < nw ? pv[l] : -INFINITY;
        idx = l < nw ? pi[l] : INT_MAX;
        for (int o = 16; o > 0; o >>= 1)
            argmax_take(v, idx, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, idx, o));
        if (l == 0) *out = idx == INT_MAX ? 0 : idx;
    }
}

int32_t nmlx_cuda_argmax(nmlx_backend *be, const float *x, int64_t n) {
    cuda_impl *c = cuda_host_of(be); /* waits for the result: never part of a recorded step */
    if (n <= 0 || n > INT_MAX) return 0;
    if (!c->argmax_dev) {
        nmlx_cuda_note(be, cudaMalloc((void **)&c->argmax_dev, sizeof(int32_t)));
        nmlx_cuda_note(be, cudaMallocHost((void **)&c->argmax_host, sizeof(int32_t)));
        if (!c->argmax_dev || !c->argmax_host) return 0;
    }
    argmax_kernel<<<1, ARGMAX_THREADS, 0, c->stream>>>(x, (int)n, c->argmax_dev);
    nmlx_cuda_note(be, cudaGetLastError());
    nmlx_cuda_note(be, cudaMemcpyAsync(c->argmax_host, c->argmax_dev, sizeof(int32_t),
                                       cudaMemcpyDeviceToHost, c->stream));
    nmlx_cuda_note(be, cudaStreamSynchronize(c->stream));
    return *c->argmax_host;
}
