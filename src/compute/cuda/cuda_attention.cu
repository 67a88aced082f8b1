/* Scaled dot-product attention over a [KVH, cap, HD] cache (contract in
 * backend.h), a simple correct kernel: one block per (query t, head h),
 * keys in tiles of TILE with an online softmax (running max m, sum l), so
 * it needs no scratch (a->scratch is unused). Each warp scores keys of the
 * tile (lanes split HD); each thread then accumulates its output dims.
 * HD <= 4 * THREADS. A flash-style kernel (several queries per block,
 * K/V tiles in shared memory) is the next step for long prefills. */
#include "compute/cuda/cuda_internal.h"

#include <math.h>

enum { THREADS = 128, TILE = 64, MAX_DPT = 4 /* output dims per thread */ };

/* Query t, head h of a (attention and attention_rows share it, so a
 * batched row equals the same query attended alone bit for bit). */
__device__ __forceinline__ void attend(const nmlx_attn_args &a, int64_t t, int64_t h) {
    extern __shared__ float sh[]; /* q[HD], p[TILE] */
    float *q = sh, *p = sh + a.HD;
    const int64_t HD = a.HD, group = a.H / a.KVH;
    const int64_t kvh = h / (group > 0 ? group : 1);
    const float *kb = a.k + kvh * a.cap * HD, *vb = a.v + kvh * a.cap * HD;
    float *out = a.out + (t * a.H + h) * HD;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    int64_t qi = a.q_pos + t;
    int64_t hi = qi < a.n_kv - 1 ? qi : a.n_kv - 1; /* inclusive */
    int64_t lo = a.window > 0 ? qi - a.window + 1 : 0;
    if (lo < 0) lo = 0;
    if (lo > hi) { /* nothing visible: zero output, as the CPU */
        for (int64_t d = tid; d < HD; d += THREADS) out[d] = 0.0f;
        return;
    }
    for (int64_t d = tid; d < HD; d += THREADS) q[d] = a.q[(t * a.H + h) * HD + d];
    float acc[MAX_DPT] = {0, 0, 0, 0};
    float m = a.sinks ? a.sinks[h] : -INFINITY;
    float l = a.sinks ? 1.0f : 0.0f;
    __syncthreads();
    for (int64_t j0 = lo; j0 <= hi; j0 += TILE) {
        int n = (int)(hi - j0 + 1 < TILE ? hi - j0 + 1 : TILE);
        for (int j = warp; j < n; j += THREADS / 32) {
            const float *kr = kb + (j0 + j) * HD;
            float s = 0;
            for (int64_t d = lane; d < HD; d += 32) s += q[d] * kr[d];
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (lane == 0) {
                s *= a.scale;
                if (a.softcap > 0) s = tanhf(s / a.softcap) * a.softcap;
                p[j] = s;
            }
        }
        __syncthreads();
        float tmax = -INFINITY;
        for (int j = 0; j < n; j++) tmax = fmaxf(tmax, p[j]);
        float mn = fmaxf(m, tmax);
        float alpha = m == -INFINITY ? 0.0f : expf(m - mn);
        __syncthreads(); /* every thread has read the raw scores */
        if (tid < n) p[tid] = expf(p[tid] - mn);
        __syncthreads();
        float ps = 0;
        for (int j = 0; j < n; j++) ps += p[j];
        l = l * alpha + ps;
        m = mn;
#pragma unroll
        for (int k = 0; k < MAX_DPT; k++) {
            int64_t d = tid + (int64_t)k * THREADS;
            if (d < HD) {
                float s = acc[k] * alpha;
                for (int j = 0; j < n; j++) s += p[j] * vb[(j0 + j) * HD + d];
                acc[k] = s;
            }
        }
        __syncthreads(); /* p is rewritten by the next tile */
    }
    float inv = l > 0 ? 1.0f / l : 0.0f;
#pragma unroll
    for (int k = 0; k < MAX_DPT; k++) {
        int64_t d = tid + (int64_t)k * THREADS;
        if (d < HD) out[d] = acc[k] * inv;
    }
}

__global__ void attention_kernel(nmlx_attn_args a) {
    attend(a, blockIdx.x / a.H, blockIdx.x % a.H);
}

/* attention_rows: the rows' caches passed by value, ATTN_ROWS rows a launch;
 * block (row r, head h) runs a with row r's fields, as a one-query call. */
enum { ATTN_ROWS = 32 };
typedef struct attn_rows {
    const float *k[ATTN_ROWS], *v[ATTN_ROWS];
    int64_t cap[ATTN_ROWS], q_pos[ATTN_ROWS], n_kv[ATTN_ROWS], window[ATTN_ROWS];
} attn_rows;

__global__ void attention_rows_kernel(nmlx_attn_args a, attn_rows rows) {
    const int64_t r = blockIdx.x / a.H, h = blockIdx.x % a.H;
    nmlx_attn_args one = a;
    one.q = a.q + r * a.H * a.HD;
    one.out = a.out + r * a.H * a.HD;
    one.T = 1;
    one.k = rows.k[r];
    one.v = rows.v[r];
    one.cap = rows.cap[r];
    one.q_pos = rows.q_pos[r];
    one.n_kv = rows.n_kv[r];
    one.window = rows.window[r];
    attend(one, 0, h);
}

void nmlx_cuda_attention(nmlx_backend *be, const nmlx_attn_args *a) {
    if (a->T <= 0 || a->H <= 0 || a->HD <= 0) return;
    if (a->HD > MAX_DPT * THREADS) { /* no model has such heads; refuse loudly */
        nmlx_cuda_note(be, cudaErrorInvalidValue);
        return;
    }
    size_t shmem = (size_t)(a->HD + TILE) * sizeof(float);
    attention_kernel<<<(unsigned)(a->T * a->H), THREADS, shmem, cuda_of(be)->stream>>>(*a);
    nmlx_cuda_note(be, cudaGetLastError());
}

void nmlx_cuda_attention_rows(nmlx_backend *be, const nmlx_attn_args *a,
                              const nmlx_attn_row *rows, int64_t R) {
    if (R <= 0 || a->H <= 0 || a->HD <= 0) return;
    if (a->HD > MAX_DPT * THREADS) {
        nmlx_cuda_note(be, cudaErrorInvalidValue);
        return;
    }
    int64_t row = a->H * a->HD;
    if (cuda_of(be)->rows_off) { /* NMLX_CUDA_ROWS=0: one attention call per row */
        for (int64_t r = 0; r < R; r++) {
            nmlx_attn_args one = *a;
            one.q = a->q + r * row;
            one.out = a->out + r * row;
            one.T = 1;
            one.k = rows[r].k;
            one.v = rows[r].v;
            one.cap = rows[r].cap;
            one.q_pos = rows[r].q_pos;
            one.n_kv = rows[r].n_kv;
            one.window = rows[r].window;
            nmlx_cuda_attention(be, &one);
        }
        return;
    }
    cudaStream_t s = cuda_of(be)->stream;
    size_t shmem = (size_t)(a->HD + TILE) * sizeof(float);
    for (int64_t r0 = 0; r0 < R; r0 += ATTN_ROWS) {
        int64_t n = R - r0 < (int64_t)ATTN_ROWS ? R - r0 : (int64_t)ATTN_ROWS;
        attn_rows br = {};
        for (int64_t i = 0; i < n; i++) {
            const nmlx_attn_row *x = &rows[r0 + i];
            br.k[i] = x->k;
            br.v[i] = x->v;
            br.cap[i] = x->cap;
            br.q_pos[i] = x->q_pos;
            br.n_kv[i] = x->n_kv;
            br.window[i] = x->window;
        }
        nmlx_attn_args ar = *a;
        ar.q = a->q + r0 * row;
        ar.out = a->out + r0 * row;
        attention_rows_kernel<<<(unsigned)(n * a->H), THREADS, shmem, s>>>(ar, br);
    }
    nmlx_cuda_note(be, cudaGetLastError());
}
