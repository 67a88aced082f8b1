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
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int w = threadIdx.x / 32, l = threadIdx.x % 32;
    __syncthreads();
    if (l == 0) part[w] = v;
    __syncthreads();
    int nw = blockDim.x / 32;
    v = l < nw ? part[l] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
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
    embed_kernel<<<(unsigned)T, ROW_THREADS, 0, c->stream>>>(
        table->w.data, table->w.dtype, c->ids_dev, table->rows, table->cols, scale, out);
    nmlx_cuda_note(be, cudaGetLastError());
}

/* ---- rmsnorm: one block per row; sum of squares in double as the CPU ---- */

/* Rows of up to K * blockDim inputs: the row is read once, all of a
 * thread's loads in flight together; same thread count and per-thread
 * order of the sum as rmsnorm_kernel, so the same bits. */
template <int K>
__global__ void __launch_bounds__(512)
    rmsnorm_regs_kernel(const float *x, const void *w, nmlx_dtype wdt, float w_offset, float eps,
                        float *y, int64_t D) {
    cuda_pdl_trigger();
    cuda_pdl_wait(); /* launched early (cuda_launch_pdl): x is ready from here */
    const float *xr = x + blockIdx.x * D;
    float *yr = y + blockIdx.x * D;
    const int tid = threadIdx.x, bd = blockDim.x;
    float v[K];
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int64_t i = tid + (int64_t)k * bd;
        v[k] = i < D ? xr[i] : 0.0f;
    }
    double ss = 0;
#pragma unroll
    for (int k = 0; k < K; k++)
        if (tid + (int64_t)k * bd < D) ss += (double)v[k] * v[k];
    ss = cuda_block_sum<double>(ss);
    const float inv = (float)(1.0 / sqrt(ss / (double)D + eps));
#pragma unroll
    for (int k = 0; k < K; k++) {
        const int64_t i = tid + (int64_t)k * bd;
        if (i < D) {
            const float u = v[k] * inv;
            yr[i] = w ? u * (cuda_load_f32(wdt, w, i) + w_offset) : u;
        }
    }
}

__global__ void rmsnorm_kernel(const float *x, const void *w, nmlx_dtype wdt, float w_offset,
                               float eps, float *y, int64_t D) {
    cuda_pdl_trigger();
    cuda_pdl_wait();
    const float *xr = x + blockIdx.x * D;
    float *yr = y + blockIdx.x * D;
    double ss = 0;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
        ss += (double)xr[i] * xr[i];
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
    const int th = cuda_norm_threads(D);
    const int64_t k = (D + th - 1) / th; /* inputs a thread */
    const void *wd = w ? w->data : NULL;
    const nmlx_dtype wdt = w ? w->dtype : NMLX_DT_F32;
    cudaStream_t s = cuda_of(be)->stream;
    const dim3 g((unsigned)R), b(th);
    cudaError_t e;
    if (k <= 2) /* q/k norms: HD 64-256 */
        e = cuda_launch_pdl(rmsnorm_regs_kernel<2>, g, b, 0, s, x, wd, wdt, w_offset, eps, y, D);
    else if (k <= 8)
        e = cuda_launch_pdl(rmsnorm_regs_kernel<8>, g, b, 0, s, x, wd, wdt, w_offset, eps, y, D);
    else if (k <= 16)
        e = cuda_launch_pdl(rmsnorm_regs_kernel<16>, g, b, 0, s, x, wd, wdt, w_offset, eps, y, D);
    else
        e = cuda_launch_pdl(rmsnorm_kernel, g, b, 0, s, x, wd, wdt, w_offset, eps, y, D);
    nmlx_cuda_note(be, e);
}

/* ---- rope: in place on x[T, H, HD]; angles in double as the CPU ---- */

/* One token's H heads at position p (rope and rope_rows share it, so a
 * batched row equals the same token rotated alone bit for bit). */
__device__ __forceinline__ void rope_token(float *xt, int64_t H, int64_t HD, int64_t half, double p,
                                           const float *freqs, float mscale) {
    for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
        const float f = freqs[i];
        for (int64_t h = 0; h < H; h++) {
            float *xh = xt + h * HD;
            cuda_rope_pair(xh[i], xh[i + half], p, f, mscale, &xh[i], &xh[i + half]);
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

void nmlx_cuda_rope_rows(nmlx_backend *be, float *x, int64_t R, int64_t H, int64_t HD, int64_t rot,
                         const int64_t *pos, const float *freqs, float mscale) {
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
        for (int64_t i = 0; i < n; i++)
            p.p[i] = pos[r0 + i];
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
    cuda_pdl_trigger();
    cuda_pdl_wait(); /* launched early: gate and up are ready from here */
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
    nmlx_cuda_note(be, cuda_launch_pdl_batch(act_mul_kernel, dim3(grid_for(n, ELEM_THREADS)),
                                             dim3(ELEM_THREADS), 0, cuda_of(be)->stream, act, gate,
                                             up, out, n));
}

void nmlx_cuda_act(nmlx_backend *be, nmlx_act act, float *x, int64_t n) {
    if (n <= 0) return;
    act_kernel<<<grid_for(n, ELEM_THREADS), ELEM_THREADS, 0, cuda_of(be)->stream>>>(act, x, n);
    nmlx_cuda_note(be, cudaGetLastError());
}

void nmlx_cuda_add(nmlx_backend *be, const float *a, const float *b, float *out, int64_t n) {
    cuda_of(be)->rsum_x = NULL; /* matmul_residual's sums may no longer describe out */
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
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        m = fmaxf(m, r[i]);
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
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        r[i] *= inv;
}

void nmlx_cuda_softmax(nmlx_backend *be, float *x, int64_t R, int64_t n) {
    if (R <= 0 || n <= 0) return;
    softmax_kernel<<<(unsigned)R, ROW_THREADS, 0, cuda_of(be)->stream>>>(x, n);
    nmlx_cuda_note(be, cudaGetLastError());
}

/* ---- argmax: the index of the largest of x[0..n), first on ties ----
 *
 * The host's nmlx_argmax (shared/sampling.c, and the CPU backend's op) keeps
 * best = 0 and moves it to i when x[i] > x[best]. So: -0 equals +0; a NaN
 * at i > 0 never wins; a NaN at 0 makes the answer 0 (nothing compares
 * greater than it); otherwise the first index of the largest non-NaN value.
 * Here that is a maximum of 64-bit keys, one per element: the float's bits
 * made monotone (-0 read as +0) above the index complemented (smaller index,
 * larger key), NaN key 0 (below every number; x[0] then decides). The
 * maximum of keys is associative and commutative: blocks and threads can
 * take them in any order and get the same index.
 *
 * One launch: each block reduces its slice (float4 loads where aligned: the
 * 0..3 elements before the first 16-byte boundary and the 0..3 after the
 * last one are read singly) and atomicMax-es its key into the state; the
 * last block to finish (an atomic count) takes the key, writes the index and
 * resets the state for the next launch. No allocation and no host wait:
 * cuda_argmax_launch can be part of a recorded graph once the state
 * exists (cuda_argmax_ready). */

enum { ARGMAX_THREADS = 256, ARGMAX_BLOCKS_PER_SM = 4 };

__device__ __forceinline__ unsigned long long argmax_key(float v, long long i) {
    if (v != v) return 0ull;
    unsigned u = __float_as_uint(v == 0.0f ? 0.0f : v);
    unsigned o = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)o << 32) | (unsigned)~(unsigned)i;
}

__device__ __forceinline__ unsigned long long key_max(unsigned long long a, unsigned long long b) {
    return a > b ? a : b;
}

/* head: elements before the first 16-byte boundary (< 4, <= n); nv: float4
 * count after them; the rest (< 4) follow. */
__global__ void __launch_bounds__(ARGMAX_THREADS)
    argmax_kernel(const float *x, int n, int head, int nv, cuda_argmax_state *st, int32_t *out) {
    int g = blockIdx.x * ARGMAX_THREADS + threadIdx.x, stride = gridDim.x * ARGMAX_THREADS;
    unsigned long long k = 0;
    if (g < head) k = argmax_key(x[g], g);
    const float4 *v4 = (const float4 *)(x + head);
#pragma unroll 4
    for (int j = g; j < nv; j += stride) {
        float4 f = v4[j];
        int i = head + 4 * j;
        k = key_max(k, argmax_key(f.x, i));
        k = key_max(k, argmax_key(f.y, i + 1));
        k = key_max(k, argmax_key(f.z, i + 2));
        k = key_max(k, argmax_key(f.w, i + 3));
    }
    int rest = head + 4 * nv;
    if (g < n - rest) k = key_max(k, argmax_key(x[rest + g], rest + g));
    for (int o = 16; o > 0; o >>= 1)
        k = key_max(k, __shfl_xor_sync(0xffffffffu, k, o));
    __shared__ unsigned long long part[ARGMAX_THREADS / 32];
    int w = threadIdx.x / 32, l = threadIdx.x % 32;
    if (l == 0) part[w] = k;
    __syncthreads();
    if (threadIdx.x != 0) return;
    for (int i = 1; i < ARGMAX_THREADS / 32; i++)
        k = key_max(k, part[i]);
    if (k) atomicMax(&st->best, k);
    __threadfence(); /* this block's key lands before its count */
    if (atomicAdd(&st->done, 1u) != gridDim.x - 1) return;
    __threadfence(); /* every block's key is in */
    unsigned long long best = atomicExch(&st->best, 0ull);
    atomicExch(&st->done, 0u); /* ready for the next launch (or graph replay) */
    float x0 = x[0];
    *out = (x0 != x0 || best == 0) ? 0 : (int32_t) ~(unsigned)best;
}

bool cuda_argmax_ready(cuda_impl *c) {
    if (c->argmax_state && c->argmax_host) return true;
    int sms = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c->device) != cudaSuccess ||
        sms < 1)
        sms = 1;
    bool ok = true;
    if (!c->argmax_state) { /* zeroed before its first launch, in stream order */
        cuda_argmax_state *st = NULL;
        ok = cudaMalloc((void **)&st, sizeof *st) == cudaSuccess &&
             cudaMemsetAsync(st, 0, sizeof *st, c->stream) == cudaSuccess;
        if (ok)
            c->argmax_state = st;
        else if (st)
            cudaFree(st);
    }
    if (ok && !c->argmax_host &&
        cudaMallocHost((void **)&c->argmax_host, sizeof(int32_t)) != cudaSuccess) {
        c->argmax_host = NULL;
        ok = false;
    }
    if (!ok) {
        (void)cudaGetLastError(); /* not sticky: the caller reports it */
        return false;
    }
    c->argmax_blocks = sms * ARGMAX_BLOCKS_PER_SM;
    return true;
}

void cuda_argmax_launch(nmlx_backend *be, cuda_impl *c, const float *x, int n, int32_t *out) {
    uintptr_t mis = (uintptr_t)x % 16;
    int head = mis ? (int)((16 - mis) / 4) : 0;
    if (head > n) head = n;
    int nv = (n - head) / 4;
    int64_t want = ((int64_t)nv + ARGMAX_THREADS - 1) / ARGMAX_THREADS;
    unsigned blocks = (unsigned)(want < 1 ? 1 : want < c->argmax_blocks ? want : c->argmax_blocks);
    argmax_kernel<<<blocks, ARGMAX_THREADS, 0, c->stream>>>(x, n, head, nv, c->argmax_state, out);
    nmlx_cuda_note(be, cudaGetLastError());
}

int32_t nmlx_cuda_argmax(nmlx_backend *be, const float *x, int64_t n) {
    cuda_impl *c = cuda_host_of(be); /* waits for the result: never part of a recorded step */
    if (n <= 0 || n > INT_MAX) return 0;
    if (!cuda_argmax_ready(c)) {
        nmlx_cuda_note(be, cudaErrorMemoryAllocation);
        return 0;
    }
    cuda_argmax_launch(be, c, x, (int)n, &c->argmax_state->out);
    nmlx_cuda_note(be, cudaMemcpyAsync(c->argmax_host, &c->argmax_state->out, sizeof(int32_t),
                                       cudaMemcpyDeviceToHost, c->stream));
    nmlx_cuda_note(be, cudaStreamSynchronize(c->stream));
    return *c->argmax_host;
}
