/* The sample op (backend.h): nmlx_sampler_sample (shared/sampling.c) on a
 * logits row in device memory, so one id a token crosses to the host. One
 * block of SAMPLE_THREADS threads does every step the host sampler does, in
 * its order and with its arithmetic (but the argmax at temperature 0):
 *   repetition penalty (distinct ids of the window: the first occurrence
 *   applies it), then at temperature 0 the argmax (first on ties: the
 *   multi-block kernel of the argmax op, cuda_kernels.cu); else
 *   x / T, top-k (the k-th largest value, found exactly by a radix select
 *   on the float bits), exp(x - max) and its sum, normalisation, min-p,
 *   top-p (renormalised, then the cut found by a radix select on the
 *   probabilities weighted by their mass, ties at the cut kept in id
 *   order), and the draw: r = u * total, the first id whose running sum
 *   passes r, u being the host generator's draw.
 * Where the host's result could differ: exp is computed in double and
 * rounded (the host's expf is correctly rounded but for rare cases), and
 * sums are taken in another order (double precision, per-thread runs of
 * consecutive ids, so close to the host's sequential order). An id can
 * differ only where r, a top-p cut or a min-p floor falls within rounding
 * of a boundary; tests/cuda/test_cuda_sample.c counts those cases. The
 * histograms' mass is accumulated in 2^-62 fixed point so the result does
 * not depend on the order atomics land in: the same seed gives the same
 * ids every run. */
#include "compute/cuda/cuda_internal.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

enum { SAMPLE_THREADS = 1024, BINS = 256 };

/* Everything the kernel needs from the parameters, by value. */
typedef struct sample_args {
    int n, n_pen, top_k, greedy;
    float inv_t, min_p, top_p, penalty;
    double u;
} sample_args;

#define FIXED_ONE 4611686018427387904.0 /* 2^62: mass in fixed point */

__device__ static unsigned long long to_fixed(double m) {
    return (unsigned long long)(m * FIXED_ONE + 0.5);
}

/* float -> unsigned with the same order (negatives below positives) */
__device__ static unsigned int order_key(float f) {
    unsigned int u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ static float key_float(unsigned int k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

/* Thread t's run of consecutive ids [*lo, *hi): the sums go in id order
 * within a run, runs in thread order (close to the host's order). */
__device__ static void run_of(int n, int *lo, int *hi) {
    int per = (n + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    *lo = min(n, (int)threadIdx.x * per);
    *hi = min(n, *lo + per);
}

__device__ static float block_max(float v) {
    __shared__ float part[32];
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int w = threadIdx.x / 32, l = threadIdx.x % 32;
    __syncthreads();
    if (l == 0) part[w] = v;
    __syncthreads();
    v = l < SAMPLE_THREADS / 32 ? part[l] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* The smallest (or largest, with mx) int over the block. */
__device__ static int block_min_int(int v, bool mx) {
    __shared__ int part[32];
    for (int o = 16; o > 0; o >>= 1) {
        int b = __shfl_xor_sync(0xffffffffu, v, o);
        v = mx ? max(v, b) : min(v, b);
    }
    int w = threadIdx.x / 32, l = threadIdx.x % 32;
    __syncthreads();
    if (l == 0) part[w] = v;
    __syncthreads();
    v = l < SAMPLE_THREADS / 32 ? part[l] : (mx ? INT_MIN : INT_MAX);
    for (int o = 16; o > 0; o >>= 1) {
        int b = __shfl_xor_sync(0xffffffffu, v, o);
        v = mx ? max(v, b) : min(v, b);
    }
    return v;
}

/* Exclusive prefix over threads of a per-thread value, in thread order:
 * warp 0's lanes each add up 32 threads' values in order, lane 0 the 32
 * sums in order (a fixed order: the same result every run). */
template <typename F> __device__ static F block_exclusive(F v, F *total) {
    enum { G = SAMPLE_THREADS / 32 };
    __shared__ F runs[SAMPLE_THREADS];
    __shared__ F base[33];
    runs[threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        F *mine = runs + threadIdx.x * G;
        F part = 0;
        for (int k = 0; k < G; k++)
            part += mine[k];
        base[threadIdx.x] = part;
        __syncwarp();
        if (threadIdx.x == 0) {
            F acc = 0;
            for (int l = 0; l < 32; l++) {
                F x = base[l];
                base[l] = acc;
                acc += x;
            }
            base[32] = acc;
        }
        __syncwarp();
        F acc = base[threadIdx.x];
        for (int k = 0; k < G; k++) {
            F x = mine[k];
            mine[k] = acc;
            acc += x;
        }
    }
    __syncthreads();
    F r = runs[threadIdx.x];
    if (total) *total = base[32];
    __syncthreads();
    return r;
}

/* The host's sum of w[0..n) in double, as close to its order as runs allow. */
__device__ static double block_sum_ordered(const float *w, int n) {
    int lo, hi;
    run_of(n, &lo, &hi);
    double s = 0.0, total = 0.0;
    for (int i = lo; i < hi; i++)
        s += (double)w[i];
    block_exclusive<double>(s, &total);
    return total;
}

/* Radix select from the top, 8 bits a pass. by_mass false: the k-th
 * largest value of w (order keys; need0 = k); true: among q = w[i] > 0
 * (raw bits), the value where the mass from the top first reaches need0
 * (2^-62 fixed point), with *above = the mass of the larger values and
 * *found = false if the whole mass falls short (rounding: keep all). Each
 * pass makes a histogram (counts or masses) of the keys under the prefix
 * so far, then warp 0 finds the bin where the running total from the top
 * reaches what is still needed: lanes add up 8 bins each, lane 0 walks the
 * 32 sums, then the 8 bins of the group it stops in. */
__device__ static unsigned int radix_top(const float *w, int n, bool by_mass,
                                         unsigned long long need0, unsigned long long *above,
                                         bool *found) {
    __shared__ unsigned long long hist[BINS], group[32], need;
    __shared__ unsigned int prefix, mask;
    __shared__ bool ok;
    if (threadIdx.x == 0) prefix = 0, mask = 0, need = need0, ok = true;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < BINS; b += SAMPLE_THREADS)
            hist[b] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < n; i += SAMPLE_THREADS) {
            float v = w[i];
            if (by_mass && !(v > 0.0f)) continue; /* the host's candidates are p > 0 */
            unsigned int key = by_mass ? __float_as_uint(v) : order_key(v);
            if ((key & mask) != prefix) continue;
            atomicAdd(&hist[(key >> shift) & (BINS - 1)], by_mass ? to_fixed((double)v) : 1ull);
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            int l = threadIdx.x;
            unsigned long long g = 0;
            for (int j = 0; j < 8; j++)
                g += hist[BINS - 1 - 8 * l - j];
            group[l] = g;
            __syncwarp();
            if (l == 0) {
                unsigned long long left = need;
                int d = -1;
                for (int gi = 0; gi < 32 && d < 0; gi++) {
                    if (group[gi] < left) {
                        left -= group[gi];
                        continue;
                    }
                    for (int j = 0; j < 8; j++) {
                        int b = BINS - 1 - 8 * gi - j;
                        if (hist[b] >= left) {
                            d = b;
                            break;
                        }
                        left -= hist[b];
                    }
                }
                if (d < 0) {
                    ok = false; /* the mass never reaches need0 (rounding): keep all */
                } else {
                    prefix |= (unsigned int)d << shift;
                    mask |= (unsigned int)(BINS - 1) << shift;
                    need = left;
                }
            }
        }
        __syncthreads();
        if (!ok) break;
    }
    unsigned int r = prefix;
    if (above) *above = need0 - need; /* what the larger values contributed */
    if (found) *found = ok;
    __syncthreads();
    return r;
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_kernel(const float *x, float *w, int *mark, const int32_t *pen, sample_args a,
                  int32_t *out) {
    const int n = a.n, T = SAMPLE_THREADS;
    __shared__ int keep_ties; /* top-p: how many ties at the cut stay */
    if (!a.greedy)            /* greedy: w is a copy of x already (cudaMemcpyAsync) */
        for (int i = threadIdx.x; i < n; i += T)
            w[i] = x[i];
    /* repetition penalty on each distinct id once: its first occurrence */
    for (int j = threadIdx.x; j < a.n_pen; j += T)
        if (pen[j] >= 0 && pen[j] < n) mark[pen[j]] = INT_MAX;
    __syncthreads();
    for (int j = threadIdx.x; j < a.n_pen; j += T)
        if (pen[j] >= 0 && pen[j] < n) atomicMin(&mark[pen[j]], j);
    __syncthreads();
    for (int j = threadIdx.x; j < a.n_pen; j += T) {
        int id = pen[j];
        if (id < 0 || id >= n || mark[id] != j) continue;
        float v = w[id];
        w[id] = v < 0 ? v * a.penalty : v / a.penalty;
    }
    __syncthreads();

    if (a.greedy) return; /* the argmax kernel takes the penalised row (nmlx_cuda_sample) */

    /* softmax(x / T) over the top k */
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < n; i += T) {
        float v = w[i] * a.inv_t;
        w[i] = v;
        mx = fmaxf(mx, v);
    }
    __syncthreads();
    mx = block_max(mx);
    float kth = -INFINITY;
    if (a.top_k > 0 && a.top_k < n)
        kth = key_float(radix_top(w, n, false, (unsigned long long)a.top_k, NULL, NULL));
    for (int i = threadIdx.x; i < n; i += T) {
        float v = w[i];
        w[i] = v < kth ? 0.0f : (float)exp((double)(v - mx)); /* rounds as the host's expf */
    }
    __syncthreads();
    float inv = (float)(1.0 / block_sum_ordered(w, n)), pmax = 0.0f;
    for (int i = threadIdx.x; i < n; i += T) {
        float v = w[i] * inv;
        w[i] = v;
        pmax = fmaxf(pmax, v);
    }
    __syncthreads();
    pmax = block_max(pmax);
    if (a.min_p > 0.0f) {
        float floor_p = a.min_p * pmax;
        for (int i = threadIdx.x; i < n; i += T)
            if (w[i] < floor_p) w[i] = 0.0f;
        __syncthreads();
    }
    if (a.top_p < 1.0f) {
        double mass = block_sum_ordered(w, n);
        for (int i = threadIdx.x; i < n; i += T)
            w[i] = (float)((double)w[i] / mass);
        __syncthreads();
        unsigned long long above = 0, target = to_fixed((double)a.top_p);
        bool found = false;
        float cut = __uint_as_float(radix_top(w, n, true, target, &above, &found));
        if (found) {
            /* the tied values at the cut, added one by one as the host's
             * sorted walk does, until the mass reaches top_p */
            int lo, hi, ties = 0;
            run_of(n, &lo, &hi);
            for (int i = lo; i < hi; i++)
                ties += w[i] == cut;
            int total = 0, before = block_exclusive<int>(ties, &total);
            if (threadIdx.x == 0) {
                unsigned long long acc = above, c = to_fixed((double)cut);
                int m = 0;
                while (m < total) {
                    acc += c;
                    m++;
                    if (acc >= target) break;
                }
                keep_ties = m;
            }
            __syncthreads();
            int rank = before;
            for (int i = lo; i < hi; i++) {
                float v = w[i];
                if (v > cut) continue;
                if (v == cut && rank++ < keep_ties) continue;
                w[i] = 0.0f;
            }
            __syncthreads();
        }
    }

    /* the draw: the first id whose running sum passes r = u * total */
    int lo, hi;
    run_of(n, &lo, &hi);
    double s = 0.0, total = 0.0;
    for (int i = lo; i < hi; i++)
        s += (double)w[i];
    double acc = block_exclusive<double>(s, &total), r = a.u * total;
    int hit = INT_MAX, last = -1;
    for (int i = lo; i < hi; i++) {
        float v = w[i];
        if (v <= 0.0f) continue;
        acc += (double)v;
        last = i;
        if (r < acc) {
            hit = i;
            break;
        }
    }
    hit = block_min_int(hit, false);
    last = block_min_int(last, true);
    if (threadIdx.x == 0) *out = hit != INT_MAX ? hit : last < 0 ? 0 : last;
}

/* Grows a device (or pinned host) buffer to at least `bytes`. */
static bool grow(nmlx_backend *be, void **p, size_t *cap, size_t bytes, bool host) {
    if (*cap >= bytes) return true;
    if (*p) host ? cudaFreeHost(*p) : cudaFree(*p);
    *p = NULL;
    *cap = 0;
    cudaError_t e = host ? cudaMallocHost(p, bytes) : cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); /* not sticky: the host samples instead */
        *p = NULL;
        return false;
    }
    *cap = bytes;
    return true;
}

int32_t nmlx_cuda_sample(nmlx_backend *be, const float *x, int64_t n, const nmlx_sampler_params *p,
                         const int32_t *history, size_t n_history, double u) {
    /* -1 = the host samples */
    cuda_impl *c = cuda_host_of(be); /* waits for the result: never part of a recorded step */
    if (n <= 0 || n > INT_MAX / 2) return -1;
    size_t from = n_history, n_pen = 0;
    if (p->repetition_penalty != 1.0f && p->repetition_context_size > 0) {
        size_t ctx = (size_t)p->repetition_context_size;
        from = n_history > ctx ? n_history - ctx : 0;
        n_pen = n_history - from;
    }
    if (n_pen > INT_MAX) return -1;
    /* work: the row's floats then one int per id (the penalty's marks) */
    size_t work = (size_t)n * (sizeof(float) + sizeof(int));
    if (!grow(be, &c->sample_work, &c->sample_work_bytes, work, false) ||
        !grow(be, (void **)&c->sample_ids_dev, &c->sample_ids_dev_bytes,
              (n_pen + 1) * sizeof(int32_t), false) ||
        !grow(be, (void **)&c->sample_ids_host, &c->sample_ids_host_bytes,
              (n_pen + 2) * sizeof(int32_t), true))
        return -1;
    if (n_pen) {
        memcpy(c->sample_ids_host, history + from, n_pen * sizeof(int32_t));
        nmlx_cuda_note(be,
                       cudaMemcpyAsync(c->sample_ids_dev, c->sample_ids_host,
                                       n_pen * sizeof(int32_t), cudaMemcpyHostToDevice, c->stream));
    }
    sample_args a;
    a.n = (int)n;
    a.n_pen = (int)n_pen;
    a.top_k = p->top_k;
    a.greedy = p->temperature <= 0.0f;
    a.inv_t = a.greedy ? 1.0f : 1.0f / p->temperature; /* the host's float */
    a.min_p = p->min_p;
    a.top_p = p->top_p;
    a.penalty = p->repetition_penalty;
    a.u = u;
    float *w = (float *)c->sample_work;
    int *mark = (int *)(w + n);
    int32_t *out = c->sample_ids_dev + n_pen, *host_out = c->sample_ids_host + n_pen + 1;
    if (a.greedy) { /* the penalised row's argmax, many blocks (cuda_kernels.cu) */
        if (!cuda_argmax_ready(c)) return -1;
        const float *row = x;
        if (n_pen) { /* the row copied by the copy engine, penalised by one block */
            nmlx_cuda_note(be, cudaMemcpyAsync(w, x, (size_t)n * sizeof(float),
                                               cudaMemcpyDeviceToDevice, c->stream));
            sample_kernel<<<1, SAMPLE_THREADS, 0, c->stream>>>(x, w, mark, c->sample_ids_dev, a,
                                                               out);
            nmlx_cuda_note(be, cudaGetLastError());
            row = w;
        }
        cuda_argmax_launch(be, c, row, (int)n, out);
    } else {
        sample_kernel<<<1, SAMPLE_THREADS, 0, c->stream>>>(x, w, mark, c->sample_ids_dev, a, out);
        nmlx_cuda_note(be, cudaGetLastError());
    }
    nmlx_cuda_note(
        be, cudaMemcpyAsync(host_out, out, sizeof(int32_t), cudaMemcpyDeviceToHost, c->stream));
    nmlx_cuda_note(be, cudaStreamSynchronize(c->stream));
    return *host_out;
}
