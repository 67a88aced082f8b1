/* Scaled dot-product attention over a [KVH, cap, HD] cache (contract in
 * backend.h).
 *
 * Decode (T * H / KVH <= 16 query rows a KV head) takes the flash-decoding
 * kernel of cuda_attention_decode.cu where it applies (the default; plain
 * and recorded steps). Otherwise, or with NMLX_CUDA_ATTN_DECODE=old, the
 * kernels below.
 *
 * Split decode (opt-in): split over the keys.
 * attn_split_kernel: block (KV head, chunk of SPLIT_C keys) scores the
 * chunk's keys against every query row of that KV head (each key row is
 * read once for the whole GQA group) and writes, per row, its chunk max m,
 * sum l of exp(s - m) and the unnormalised output; attn_combine_kernel
 * rescales the chunks to the global max (the sinks join as one more
 * logit). An 8B model's 32 query heads make 8 KV-head blocks a chunk:
 * enough blocks to fill the GPU once the cache holds a few hundred keys.
 * Opt-in (NMLX_CUDA_ATTN_SPLIT=1): as written it is slower than the simple
 * kernel at 512-640 keys (Llama-3.1-8B 4-bit decode 140 against 168 tok/s
 * on an H200): each warp walks its keys one after another, a load latency
 * each. It is the seam for long contexts, kept correct by the tests.
 *
 * Batched decode (attention_rows) takes the flash-decoding kernel's rows
 * form (cuda_attention_decode.cu) where it applies; otherwise, or with
 * NMLX_CUDA_ATTN_DECODE=old, the simple kernel's code for every (row,
 * head) of the batch in one launch.
 *
 * Otherwise (prefill) a simple correct kernel: one block per (query t, head h),
 * keys in tiles of TILE with an online softmax (running max m, sum l), so
 * it needs no scratch (a->scratch is unused). Each warp scores keys of the
 * tile (lanes split HD); each thread then accumulates its output dims.
 * HD <= 4 * THREADS. The flash-style kernel (several queries per block,
 * K/V tiles in shared memory) is cuda_attention_tiled.cu, the default where
 * it applies (NMLX_CUDA_ATTN_TILED=0 turns it off); its tensor-core
 * version cuda_attention_mma.cu is tried first (NMLX_CUDA_ATTN_MMA=0: not). */
#include "compute/cuda/cuda_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { THREADS = 128, TILE = 64, MAX_DPT = 4 /* output dims per thread */ };

/* Query t, head h of a (attention_kernel and attention_rows_kernel share
 * it, so a batched row equals the same query through the simple kernel bit
 * for bit). */
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
        for (int64_t d = tid; d < HD; d += THREADS)
            out[d] = 0.0f;
        return;
    }
    for (int64_t d = tid; d < HD; d += THREADS)
        q[d] = a.q[(t * a.H + h) * HD + d];
    float acc[MAX_DPT] = {0, 0, 0, 0};
    float m = a.sinks ? a.sinks[h] : -INFINITY;
    float l = a.sinks ? 1.0f : 0.0f;
    __syncthreads();
    for (int64_t j0 = lo; j0 <= hi; j0 += TILE) {
        int n = (int)(hi - j0 + 1 < TILE ? hi - j0 + 1 : TILE);
        for (int j = warp; j < n; j += THREADS / 32) {
            const float *kr = kb + (j0 + j) * HD;
            float s = 0;
            for (int64_t d = lane; d < HD; d += 32)
                s += q[d] * kr[d];
            for (int o = 16; o > 0; o >>= 1)
                s += __shfl_xor_sync(0xffffffffu, s, o);
            if (lane == 0) {
                s *= a.scale;
                if (a.softcap > 0) s = tanhf(s / a.softcap) * a.softcap;
                p[j] = s;
            }
        }
        __syncthreads();
        float tmax = -INFINITY;
        for (int j = 0; j < n; j++)
            tmax = fmaxf(tmax, p[j]);
        float mn = fmaxf(m, tmax);
        float alpha = m == -INFINITY ? 0.0f : expf(m - mn);
        __syncthreads(); /* every thread has read the raw scores */
        if (tid < n) p[tid] = expf(p[tid] - mn);
        __syncthreads();
        float ps = 0;
        for (int j = 0; j < n; j++)
            ps += p[j];
        l = l * alpha + ps;
        m = mn;
#pragma unroll
        for (int k = 0; k < MAX_DPT; k++) {
            int64_t d = tid + (int64_t)k * THREADS;
            if (d < HD) {
                float s = acc[k] * alpha;
                for (int j = 0; j < n; j++)
                    s += p[j] * vb[(j0 + j) * HD + d];
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
    cuda_pdl_trigger();
    attend(a, blockIdx.x / a.H, blockIdx.x % a.H);
}

/* A recorded decode step (cuda_graph.cu): q_pos and n_kv are deltas from
 * the step's position in device memory. */
__global__ void attention_step_kernel(nmlx_attn_args a, const int64_t *step) {
    cuda_pdl_trigger();
    const int64_t base = *step;
    a.q_pos += base;
    a.n_kv += base;
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

enum { SPLIT_C = 64, SPLIT_ROWS = 16, SPLIT_THREADS = 128, SPLIT_DPT = 2, SPLIT_KD = 8 };

/* visible keys of query t: [lo, hi], empty when lo > hi */
__device__ __forceinline__ void visible(const nmlx_attn_args &a, int64_t t, int64_t *lo,
                                        int64_t *hi) {
    const int64_t qi = a.q_pos + t;
    *hi = qi < a.n_kv - 1 ? qi : a.n_kv - 1;
    *lo = a.window > 0 ? qi - a.window + 1 : 0;
    if (*lo < 0) *lo = 0;
}

/* part[((kvh * nsplit + sp) * RQ + r) * (HD + 2)]: m, l, acc[HD] */
__global__ void __launch_bounds__(SPLIT_THREADS)
    attn_split_kernel(nmlx_attn_args a, int64_t j_first, int nsplit, float *part) {
    extern __shared__ float sh[]; /* q[RQ][HD], s[RQ][SPLIT_C] */
    const int64_t HD = a.HD, G = a.H / a.KVH, RQ = a.T * G;
    float *q = sh, *sc = sh + RQ * HD;
    const int64_t kvh = blockIdx.x, sp = blockIdx.y;
    const int64_t j0 = j_first + sp * SPLIT_C;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const float *kb = a.k + kvh * a.cap * HD, *vb = a.v + kvh * a.cap * HD;
    for (int64_t i = tid; i < RQ * HD; i += SPLIT_THREADS) {
        const int64_t r = i / HD, d = i % HD, t = r / G, h = kvh * G + r % G;
        q[i] = a.q[(t * a.H + h) * HD + d];
    }
    __syncthreads();
    /* scores: a warp per key, lanes over HD; masked keys -> -inf */
    for (int j = warp; j < SPLIT_C; j += SPLIT_THREADS / 32) {
        const int64_t key = j0 + j;
        float kv[SPLIT_KD];
        const bool in_cache = key < a.n_kv;
#pragma unroll
        for (int i = 0; i < SPLIT_KD; i++) {
            const int64_t d = lane + 32 * i;
            kv[i] = in_cache && d < HD ? kb[key * HD + d] : 0.0f;
        }
        for (int64_t r = 0; r < RQ; r++) {
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < SPLIT_KD; i++) {
                const int64_t d = lane + 32 * i;
                if (d < HD) s = fmaf(q[r * HD + d], kv[i], s);
            }
            for (int o = 16; o > 0; o >>= 1)
                s += __shfl_xor_sync(0xffffffffu, s, o);
            if (lane == 0) {
                int64_t lo, hi;
                visible(a, r / G, &lo, &hi);
                s *= a.scale;
                if (a.softcap > 0) s = tanhf(s / a.softcap) * a.softcap;
                sc[r * SPLIT_C + j] = key >= lo && key <= hi ? s : -INFINITY;
            }
        }
    }
    __syncthreads();
    /* per row: chunk max, exp, sum (a warp per row, lanes over keys) */
    __shared__ float rm[SPLIT_ROWS], rl[SPLIT_ROWS];
    for (int64_t r = warp; r < RQ; r += SPLIT_THREADS / 32) {
        float m = -INFINITY;
        for (int j = lane; j < SPLIT_C; j += 32)
            m = fmaxf(m, sc[r * SPLIT_C + j]);
        for (int o = 16; o > 0; o >>= 1)
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        float l = 0.0f;
        for (int j = lane; j < SPLIT_C; j += 32) {
            const float s = sc[r * SPLIT_C + j];
            const float p = m == -INFINITY ? 0.0f : expf(s - m);
            sc[r * SPLIT_C + j] = p;
            l += p;
        }
        for (int o = 16; o > 0; o >>= 1)
            l += __shfl_xor_sync(0xffffffffu, l, o);
        if (lane == 0) rm[r] = m, rl[r] = l;
    }
    __syncthreads();
    /* unnormalised output: thread over dims, rows accumulated together */
    float acc[SPLIT_ROWS][SPLIT_DPT];
#pragma unroll
    for (int r = 0; r < SPLIT_ROWS; r++)
#pragma unroll
        for (int k = 0; k < SPLIT_DPT; k++)
            acc[r][k] = 0.0f;
    const int64_t n = a.n_kv - j0 < SPLIT_C ? a.n_kv - j0 : SPLIT_C;
    for (int64_t j = 0; j < n; j++) {
#pragma unroll
        for (int k = 0; k < SPLIT_DPT; k++) {
            const int64_t d = tid + (int64_t)k * SPLIT_THREADS;
            if (d >= HD) continue;
            const float v = vb[(j0 + j) * HD + d];
#pragma unroll
            for (int r = 0; r < SPLIT_ROWS; r++)
                if (r < RQ) acc[r][k] = fmaf(sc[r * SPLIT_C + j], v, acc[r][k]);
        }
    }
    float *base = part + ((kvh * nsplit + sp) * RQ) * (HD + 2);
#pragma unroll
    for (int r = 0; r < SPLIT_ROWS; r++) {
        if (r >= RQ) break;
        float *o = base + r * (HD + 2);
        if (tid == 0) o[0] = rm[r], o[1] = rl[r];
#pragma unroll
        for (int k = 0; k < SPLIT_DPT; k++) {
            const int64_t d = tid + (int64_t)k * SPLIT_THREADS;
            if (d < HD) o[2 + d] = acc[r][k];
        }
    }
}

/* block per (KV head, row); thread per output dim */
__global__ void attn_combine_kernel(nmlx_attn_args a, int nsplit, const float *part) {
    const int64_t HD = a.HD, G = a.H / a.KVH, RQ = a.T * G;
    const int64_t kvh = blockIdx.x / RQ, r = blockIdx.x % RQ, t = r / G, h = kvh * G + r % G;
    float M = a.sinks ? a.sinks[h] : -INFINITY;
    for (int sp = 0; sp < nsplit; sp++)
        M = fmaxf(M, part[((kvh * nsplit + sp) * RQ + r) * (HD + 2)]);
    float L = a.sinks ? expf(a.sinks[h] - M) : 0.0f;
    float *out = a.out + (t * a.H + h) * HD;
    for (int64_t d = threadIdx.x; d < HD; d += blockDim.x) {
        float acc = 0.0f, l = L;
        for (int sp = 0; sp < nsplit; sp++) {
            const float *o = part + ((kvh * nsplit + sp) * RQ + r) * (HD + 2);
            if (o[0] == -INFINITY) continue;
            const float w = expf(o[0] - M);
            acc = fmaf(o[2 + d], w, acc);
            l = fmaf(o[1], w, l);
        }
        out[d] = l > 0 ? acc / l : 0.0f;
    }
}

/* The split form when it applies: few query rows per KV head, heads up to
 * 256 (SPLIT_KD lanes' worth of a key row, SPLIT_DPT dims a thread). */
static bool attention_split(nmlx_backend *be, const nmlx_attn_args *a) {
    const int64_t G = a->KVH > 0 ? a->H / a->KVH : 0;
    if (G < 1 || a->KVH * G != a->H || a->T * G > SPLIT_ROWS || a->HD > 32 * SPLIT_KD ||
        a->HD > SPLIT_THREADS * SPLIT_DPT)
        return false;
    /* keys any query sees: [j_first, n_kv) */
    int64_t j_first = a->window > 0 ? a->q_pos - a->window + 1 : 0;
    if (j_first < 0) j_first = 0;
    if (j_first >= a->n_kv) return false; /* nothing visible: the simple kernel zeroes */
    const int nsplit = (int)((a->n_kv - j_first + SPLIT_C - 1) / SPLIT_C);
    const int64_t RQ = a->T * G;
    const size_t need = (size_t)nsplit * (size_t)(a->KVH * RQ * (a->HD + 2)) * sizeof(float);
    cuda_impl *c = (cuda_impl *)be->impl;
    if (need > c->attn_part_bytes) {
        cuda_host_of(be); /* no allocation inside a graph capture */
        cudaStreamSynchronize(c->stream);
        if (c->attn_part) cudaFree(c->attn_part);
        c->attn_part = NULL;
        c->attn_part_bytes = 0;
        const size_t want = need < (1u << 20) ? (1u << 20) : 2 * need;
        cudaError_t e = cudaMalloc(&c->attn_part, want);
        if (e != cudaSuccess) {
            cudaGetLastError();
            return false;
        }
        c->attn_part_bytes = want;
    }
    cudaStream_t st = cuda_of(be)->stream;
    const size_t shmem = (size_t)(RQ * a->HD + RQ * SPLIT_C) * sizeof(float);
    attn_split_kernel<<<dim3((unsigned)a->KVH, (unsigned)nsplit), SPLIT_THREADS, shmem, st>>>(
        *a, j_first, nsplit, (float *)c->attn_part);
    const unsigned th = a->HD < 128 ? 64 : 128;
    attn_combine_kernel<<<(unsigned)(a->KVH * RQ), th, 0, st>>>(*a, nsplit,
                                                                (const float *)c->attn_part);
    nmlx_cuda_note(be, cudaGetLastError());
    return true;
}

static int split_mode = -1; /* opt-in, NMLX_CUDA_ATTN_SPLIT=1: see the top */

extern "C" void nmlx_cuda_set_attn_split(int on) { split_mode = on ? 1 : 0; }

/* NMLX_CUDA_ATTN_EMPTY=pdl|nowait|plain (timing only; the output is not
 * written): attention replaced by an empty one-warp kernel, launched early
 * and waiting for the kernel ahead (pdl), launched early without waiting
 * (nowait), or launched plainly (plain); wide: launched early and waiting,
 * with the decode kernel's grid (4 blocks an SM) and 48 KB of shared memory
 * a block, so that its blocks hold the SMs until the kernel ahead ends, as
 * the decode kernel's do. Against NMLX_SKIP_OPS=attention (no launch at
 * all) it says what a kernel's place in the decode chain costs, apart from
 * its work (bench/cuda/README.md, session 21). */
__global__ void attn_empty_kernel(int wait) {
    cuda_pdl_trigger();
    if (wait) cuda_pdl_wait();
}

static int empty_mode = -1; /* 0 off, 1 pdl, 2 nowait, 3 plain, 4 wide */

static bool attention_empty(nmlx_backend *be, const nmlx_attn_args *a) {
    if (empty_mode < 0) {
        const char *e = getenv("NMLX_CUDA_ATTN_EMPTY");
        empty_mode = !e                     ? 0
                     : !strcmp(e, "pdl")    ? 1
                     : !strcmp(e, "nowait") ? 2
                     : !strcmp(e, "plain")  ? 3
                     : !strcmp(e, "wide")   ? 4
                                            : 0;
    }
    if (!empty_mode) return false;
    cudaStream_t st = cuda_of(be)->stream;
    if (empty_mode == 3)
        attn_empty_kernel<<<1, 32, 0, st>>>(1);
    else if (empty_mode == 4) {
        const cuda_impl *c = cuda_of(be);
        const int64_t kvh = a->KVH > 0 ? a->KVH : 1, sms = c->dec_sms > 0 ? c->dec_sms : 132;
        nmlx_cuda_note(be,
                       cuda_launch_pdl(attn_empty_kernel,
                                       dim3((unsigned)((4 * sms + kvh - 1) / kvh), (unsigned)kvh),
                                       dim3(128), 48u << 10, st, 1));
    } else
        nmlx_cuda_note(be, cuda_launch_pdl(attn_empty_kernel, dim3(1), dim3(32), 0, st,
                                           empty_mode == 1 ? 1 : 0));
    nmlx_cuda_note(be, cudaGetLastError());
    return true;
}

void nmlx_cuda_attention(nmlx_backend *be, const nmlx_attn_args *a) {
    if (a->T <= 0 || a->H <= 0 || a->HD <= 0) return;
    if (a->T == 1 && attention_empty(be, a)) return;
    if (a->HD > MAX_DPT * THREADS) { /* no model has such heads; refuse loudly */
        nmlx_cuda_note(be, cudaErrorInvalidValue);
        return;
    }
    if (split_mode < 0) {
        const char *e = getenv("NMLX_CUDA_ATTN_SPLIT");
        split_mode = e && !strcmp(e, "1");
    }
    size_t shmem = (size_t)(a->HD + TILE) * sizeof(float);
    cuda_impl *c = cuda_of(be);
    if (const int64_t *step = cuda_step_pos(c)) { /* the split grid depends on n_kv: not here */
        nmlx_attn_args d = *a;
        d.q_pos -= c->step_pos;
        d.n_kv -= c->step_pos;
        if (nmlx_cuda_attention_decode(be, &d, step)) return;
        attention_step_kernel<<<(unsigned)(a->T * a->H), THREADS, shmem, c->stream>>>(d, step);
        nmlx_cuda_note(be, cudaGetLastError());
        return;
    }
    if (nmlx_cuda_attention_decode(be, a, NULL)) return; /* few rows a KV head */
    if (split_mode && attention_split(be, a)) return;
    if (a->T > 1 && nmlx_cuda_attention_mma(be, a)) return; /* NMLX_CUDA_ATTN_MMA=0: off */
    if (a->T > 1 && nmlx_cuda_attention_tiled(be, a)) return;
    attention_kernel<<<(unsigned)(a->T * a->H), THREADS, shmem, cuda_of(be)->stream>>>(*a);
    nmlx_cuda_note(be, cudaGetLastError());
}

/* Batched decode: the flash-decoding kernel's rows form where it applies,
 * else the simple kernel for every (row, head) in one launch per ATTN_ROWS
 * rows. Either agrees with the per-row `attention` calls to rounding (bit
 * for bit with NMLX_CUDA_ATTN_DECODE=old and NMLX_CUDA_ATTN_SPLIT=0);
 * NMLX_CUDA_ROWS=0 makes one `attention` call per row instead. */
void nmlx_cuda_attention_rows(nmlx_backend *be, const nmlx_attn_args *a, const nmlx_attn_row *rows,
                              int64_t R) {
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
    if (nmlx_cuda_attention_decode_rows(be, a, rows, R)) return; /* flash-decoding */
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
