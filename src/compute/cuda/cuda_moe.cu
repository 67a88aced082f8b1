/* The experts of a MoE block in a few launches (backend.h moe_experts).
 * The generic path (ported/switch_layers.c + shared/moe.c) issues, per
 * (token, slot) pair, row copies, per-expert matmuls, a scale and an add:
 * thousands of tiny launches a decode step of a 48-layer, top-8 model.
 *
 * Decode (up to 64 (token, slot) pairs, or more where a cost model says
 * so: prefer_small; experts of one format):
 *  1. one pinned copy of idx and scores to the device;
 *  2. moe_gate_up_kernel: a warp per (pair, hidden row i) reads row i of
 *     the pair's expert's gate and up weights (expert id from device
 *     memory, weight pointers from a per-layer device table), both sums
 *     from one pass over x, + biases, then the activation (silu(g) * u, or
 *     gpt-oss's clipped SwiGLU): h[p, i];
 *  3. moe_down_kernel: a warp per (pair, 2 rows of down): ys[p, d] =
 *     score[p] * (down_e(h[p])[d] + bias);
 *  4. moe_sum_kernel: out[t, d] = ys[t*k] + ys[t*k + 1] + ... in slot order
 *     (deterministic: no atomics).
 *  Sums: f32, the quantized mat-vec's per-chunk form (s * sum q x + b *
 *  sum x, cuda_quant.cu qgemv_kernel) or a dense dot; formats: MLX affine
 *  2/3/4/5/6/8-bit, any group size (a multiple of 32), F32/F16/BF16
 *  scales, MXFP4, dense F32/F16/BF16. Routed on the host (moe_experts),
 *  the staging copy waits for the host (the router's logits were
 *  downloaded just before, which ended the step's graph capture; see
 *  cuda_graph.cu). moe_routed (backend.h) routes on the device instead:
 *  each gate/up block routes its token itself (moe_route_warp; the first
 *  block of a token writes idx and scores for down: one launch fewer a
 *  layer; NMLX_CUDA_MOE_ROUTE=kernel: moe_route_kernel before them) and
 *  nothing waits, so standard models record MoE decode steps for
 *  replay (H100, tg128: Qwen3-30B-A3B 4-bit 212 -> 298 tok/s; GPT-OSS-20B
 *  MXFP4, whose steps are not recorded, 295 -> 330, with the session's
 *  other changes; bench/cuda/README.md session 24).
 *
 * Prefill (more pairs, or experts whose format is not uniform): pairs
 * sorted by expert on the host (nmlx_switch_gather_sort), then one gather
 * of x rows into expert order; for quantized experts (affine 2..8-bit or
 * MXFP4, groups of 32..128) one grouped launch for gate and up over every
 * (used expert, tile of up to 32 rows) (cuda_moe_rows.cu), one activation
 * over all rows, one grouped launch for down, and one kernel that sums
 * each token's k slots with their scores in slot order. Other experts
 * (dense, mixed formats): per used expert the backend's matmuls over its
 * contiguous rows (gate/up as one matmul_multi) in place of each grouped
 * launch.
 *
 * NMLX_CUDA_MOE=0: the op declines (the generic path runs), for A/B runs;
 * NMLX_CUDA_MOE=sorted: always the prefill form. */
/* cuda_internal.h first: it includes the C headers with C linkage */
#include "compute/cuda/cuda_internal.h"
#include "compute/cuda/cuda_backend.h"
#include "compute/cuda/cuda_qdecode.h"

extern "C" {
#include "ported/switch_layers.h"
}

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { MOE_SMALL_PAIRS = 64, MOE_WARPS = 4, MOE_TABLES_MAX = 4096 };
static const double MOE_EXPERT_LAUNCH_BYTES = 48e6; /* prefer_small */

/* One switch linear's table. The key (its weight array) may be reused by
 * another model's linear after a free: the first and last experts'
 * pointers and the shape must match too. */
typedef struct moe_table {
    const nmlx_weight *key;
    int64_t n, rows, cols;
    uint32_t fmt;         /* fmt_of(expert 0): a reused address with another format rebuilds */
    moe_ptrs first, last; /* host view of experts 0 and n - 1 */
    bool ok;              /* uniform and supported by the decode kernels */
    moe_lin lin;
} moe_table;

struct cuda_moe_state {
    moe_table *tabs;
    size_t n_tabs, cap_tabs;
    int32_t *host, *dev; /* staging: [idx P][scores P][order P][inv P] (scores as f32 bits) */
    size_t cap_words;
    int32_t *route; /* moe_routed's device idx [cap] and scores [cap] (f32) */
    size_t route_cap;
    int32_t *route_host; /* pinned: the same, downloaded for the prefill form */
    int32_t *sorted;     /* the device sort's order [P], inverse [P], tasks [3 tasks] */
    size_t sorted_cap;   /* in words */
    int mode; /* 0: off, 1: auto, 2: always sorted, 3: the decode form where it applies */
};

/* ---- the sums ---- */

__device__ __forceinline__ float moe_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* acc[r] += this lane's part of row rows[r] of tab[r] . x (x of length
 * N), the R rows read in one pass over x. BITS == 0: dense weights of
 * dtype SC (SC_F32 / SC_F16 / SC_BF16), element by element. Else packed
 * codes in 8-input pieces (lane l takes pieces l, l + 32, ...), the
 * group's scale and bias applied to each piece's sums as qgemv_kernel. */
template <int BITS, int SC, int R>
__device__ __forceinline__ void moe_dot(const moe_ptrs *const *p, const int64_t *rows, int64_t N,
                                        int gshift, const float *x, bool xvec, float *acc) {
    const int lane = threadIdx.x & 31;
    if constexpr (BITS == 0) {
        for (int64_t k = lane; k < N; k += 32) {
            const float xv = __ldg(x + k);
#pragma unroll
            for (int r = 0; r < R; r++) {
                const int64_t o = rows[r] * N + k;
                float wv;
                if constexpr (SC == SC_F32)
                    wv = __ldg((const float *)p[r]->w + o);
                else
                    wv = sc_f32<SC>(__ldg((const uint16_t *)p[r]->w + o));
                acc[r] = fmaf(wv, xv, acc[r]);
            }
        }
    } else {
        constexpr bool MX = SC == SC_E8M0;
        const int K8 = (int)(N / 8), G = (int)(N >> (gshift + 3));
        const uint8_t *wr[R];
        const typename sc_raw<SC>::t *sr[R], *br[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            wr[r] = (const uint8_t *)p[r]->w + rows[r] * (N * BITS / 8);
            sr[r] = (const typename sc_raw<SC>::t *)p[r]->s + rows[r] * G;
            br[r] = MX ? sr[r] : (const typename sc_raw<SC>::t *)p[r]->b + rows[r] * G;
        }
#pragma unroll 2
        for (int k = lane; k < K8; k += 32) {
            const int g = k >> gshift;
            uint64_t v[R];
            typename sc_raw<SC>::t sv[R], bv[R];
#pragma unroll
            for (int r = 0; r < R; r++) {
                v[r] = load8<BITS>(wr[r], k);
                sv[r] = __ldg(sr[r] + g);
                if (!MX) bv[r] = __ldg(br[r] + g);
            }
            float xv[8];
            const float xs = load_x8<MX>(x, k, xvec, xv);
#pragma unroll
            for (int r = 0; r < R; r++) {
                float q[8];
                decode8<BITS, MX>(v[r], q);
                float dot = 0.0f;
#pragma unroll
                for (int i = 0; i < 8; i++)
                    dot = fmaf(q[i], xv[i], dot);
                if (MX)
                    acc[r] = fmaf(sc_f32<SC>(sv[r]), dot * 16384.0f, acc[r]); /* fp4 2^-14 back */
                else
                    acc[r] = fmaf(sc_f32<SC>(sv[r]), dot, fmaf(sc_f32<SC>(bv[r]), xs, acc[r]));
            }
        }
    }
}

/* ---- routing on the device (moe_routed) ---- */

enum { MOE_ROUTE_MAX_E = 1024 };  /* 32 experts a lane: one bit each marks the chosen */
enum { MOE_ROUTE_PAIRS = 65535 }; /* the decode form's grid */

/* One warp routes the token of logits l [E] as shared/moe.c nmlx_moe_route:
 * the first `rounds` experts of its top k into chosen[] (shared), by rounds
 * of a warp argmax (the larger logit, ties to the lower expert: the host's
 * insertion order; NaN taken as -inf, so valid experts always come out).
 * With idx (rounds = k), lane 0 then forms the scores in double in the
 * host's order (exp(l - max) per expert in ex[] (shared), summed
 * sequentially): the host's values to the last bit of exp, into idx [k]
 * and scores [k]. routing 1: softmax then top k (norm: over the k), 2: top
 * k then softmax over them. */
__device__ __forceinline__ void moe_route_warp(const float *l, int E, int k, int rounds,
                                               int routing, bool norm, int *chosen, double *ex,
                                               int32_t *idx, float *scores) {
    const int lane = threadIdx.x & 31;
    uint32_t taken = 0; /* bit i: expert lane + 32 i is chosen */
    for (int j = 0; j < rounds; j++) {
        float bv = -INFINITY;
        int bi = INT_MAX;
        for (int i = 0, e = lane; e < E; i++, e += 32) {
            float v = l[e];
            if (v != v) v = -INFINITY;
            if (!(taken >> i & 1u) && (v > bv || (v == bv && e < bi))) bv = v, bi = e;
        }
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
        }
        if ((bi & 31) == lane) taken |= 1u << (bi >> 5);
        if (lane == 0) chosen[j] = bi;
    }
    __syncwarp();
    if (!idx) return;
    const double mx = (double)l[chosen[0]];
    const bool all = routing == 1 && !norm; /* the softmax over every expert */
    if (all)
        for (int e = lane; e < E; e += 32)
            ex[e] = exp((double)l[e] - mx);
    __syncwarp();
    if (lane != 0) return;
    double denom = 0.0;
    if (all)
        for (int e = 0; e < E; e++)
            denom += ex[e];
    else
        for (int j = 0; j < k; j++)
            denom += exp((double)l[chosen[j]] - mx);
    for (int j = 0; j < k; j++) {
        idx[j] = chosen[j];
        scores[j] = (float)(exp((double)l[chosen[j]] - mx) / denom);
    }
}

/* idx, scores [T, k] from logits [T, E]: a warp a token (blockIdx.x). */
__global__ void moe_route_kernel(const float *logits, int E, int k, int routing, bool norm,
                                 int32_t *idx, float *scores) {
    __shared__ double ex[MOE_ROUTE_MAX_E];
    __shared__ int chosen[32];
    const int64_t t = blockIdx.x;
    moe_route_warp(logits + t * E, E, k, k, routing, norm, chosen, ex, idx + t * k, scores + t * k);
}

/* The routing a moe_gate_up_kernel block does itself (one launch fewer a
 * decode layer): the router's logits [T, E], and idx / scores [T, k] that
 * the blocks of x 0 and slot 0 write for the down kernel. */
struct moe_route_args {
    const float *logits;
    int E, routing;
    bool norm;
    int32_t *idx;
    float *scores;
};

/* ---- decode kernels ---- */

/* h[p, i] = act(gate_e[i] . x[t] + gb, up_e[i] . x[t] + ub), e = idx[p],
 * t = p / k; a warp per (pair, i). clipped: gpt-oss's SwiGLU. ROUTE: e from
 * the block's own routing of token t (warp 0, the first slot + 1 rounds;
 * every round at block x 0 of slot 0, which writes the token's idx and
 * scores), not from idx. */
template <int BITS, int SC, bool ROUTE>
__global__ void __launch_bounds__(32 * MOE_WARPS)
    moe_gate_up_kernel(moe_lin gl, moe_lin ul, const float *x, const int32_t *idx, int k, float *h,
                       bool clipped, float alpha, float limit, bool xvec, moe_route_args ra) {
    const int64_t i = (int64_t)blockIdx.x * MOE_WARPS + threadIdx.x / 32, I = gl.rows;
    const int p = blockIdx.y;
    int e;
    if constexpr (ROUTE) {
        __shared__ double ex[MOE_ROUTE_MAX_E];
        __shared__ int chosen[32];
        const int t = p / k, j = p % k;
        const bool writer = blockIdx.x == 0 && j == 0;
        if (threadIdx.x < 32)
            moe_route_warp(ra.logits + (int64_t)t * ra.E, ra.E, k, writer ? k : j + 1, ra.routing,
                           ra.norm, chosen, ex, writer ? ra.idx + (int64_t)t * k : nullptr,
                           writer ? ra.scores + (int64_t)t * k : nullptr);
        __syncthreads();
        e = chosen[j];
    } else {
        e = idx[p];
    }
    if (i >= I) return;
    const int64_t N = gl.cols;
    const moe_ptrs *ptr[2] = {gl.tab + e, ul.tab + e};
    const int64_t rows[2] = {i, i};
    float acc[2] = {0.0f, 0.0f};
    moe_dot<BITS, SC, 2>(ptr, rows, N, gl.gshift, x + (int64_t)(p / k) * N, xvec, acc);
    float g = moe_warp_sum(acc[0]), u = moe_warp_sum(acc[1]);
    if ((threadIdx.x & 31) != 0) return;
    if (gl.has_bias) g = g + cuda_load_f32(gl.bias_dt, ptr[0]->bias, i);
    if (ul.has_bias) u = u + cuda_load_f32(ul.bias_dt, ptr[1]->bias, i);
    h[(int64_t)p * I + i] =
        clipped ? cuda_swiglu_clipped1(g, u, alpha, limit) : cuda_act1(NMLX_ACT_SILU, g) * u;
}

/* ys[p, d] = score[p] * (down_e[d] . h[p] + bias), e = idx[p]; a warp per
 * (pair, 2 rows d). */
template <int BITS, int SC>
__global__ void __launch_bounds__(32 * MOE_WARPS)
    moe_down_kernel(moe_lin dl, const float *h, const int32_t *idx, const float *scores, float *ys,
                    bool xvec) {
    const int64_t d0 = ((int64_t)blockIdx.x * MOE_WARPS + threadIdx.x / 32) * 2, D = dl.rows;
    if (d0 >= D) return;
    const int p = blockIdx.y, e = idx[p];
    const int64_t N = dl.cols;
    const moe_ptrs *ptr[2] = {dl.tab + e, dl.tab + e};
    const int64_t rows[2] = {d0, d0 + 1 < D ? d0 + 1 : d0};
    float acc[2] = {0.0f, 0.0f};
    moe_dot<BITS, SC, 2>(ptr, rows, N, dl.gshift, h + (int64_t)p * N, xvec, acc);
    const float s = scores[p];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float y = moe_warp_sum(acc[r]);
        if ((threadIdx.x & 31) != 0 || d0 + r >= D) continue;
        if (dl.has_bias) y = y + cuda_load_f32(dl.bias_dt, ptr[0]->bias, d0 + r);
        ys[(int64_t)p * D + d0 + r] = __fmul_rn(y, s); /* scale, as its own op */
    }
}

/* out[t, d] = ys[t k] + ys[t k + 1] + ... (slot order), [T, D] */
__global__ void moe_sum_kernel(const float *ys, float *out, int64_t T, int64_t D, int k) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < T * D;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = i / D, d = i % D;
        const float *y = ys + t * k * D + d;
        float o = y[0];
        for (int j = 1; j < k; j++)
            o = __fadd_rn(o, y[(int64_t)j * D]);
        out[i] = o;
    }
}

/* ---- prefill kernels ---- */

/* xs[s] = x[order[s] / k], [P, D] */
__global__ void moe_gather_kernel(const float *x, const int32_t *order, int k, float *xs, int64_t P,
                                  int64_t D) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < P * D;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t s = i / D, d = i % D;
        xs[i] = x[(int64_t)(order[s] / k) * D + d];
    }
}

/* out[t, d] = sum_j scores[t k + j] * ys[inv[t k + j], d] in slot order:
 * each product rounded, then added (the generic path's scale and add). */
__global__ void moe_scatter_sum_kernel(const float *ys, const int32_t *inv, const float *scores,
                                       float *out, int64_t T, int64_t D, int k) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < T * D;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = i / D, d = i % D;
        float o = __fmul_rn(ys[(int64_t)inv[t * k] * D + d], scores[t * k]);
        for (int j = 1; j < k; j++)
            o = __fadd_rn(o, __fmul_rn(ys[(int64_t)inv[t * k + j] * D + d], scores[t * k + j]));
        out[i] = o;
    }
}

static unsigned moe_grid(int64_t n) {
    int64_t b = (n + 255) / 256;
    return (unsigned)(b < 1 ? 1 : b > 65535 ? 65535 : b);
}

/* ---- state ---- */

static cuda_moe_state *moe_state(nmlx_backend *be) {
    cuda_impl *c = (cuda_impl *)be->impl;
    if (!c->moe) {
        c->moe = (cuda_moe_state *)nmlx_calloc(1, sizeof *c->moe);
        if (!c->moe) return NULL;
        const char *e = getenv("NMLX_CUDA_MOE");
        /* on by default since its tests passed on a GPU (H200: test_cuda_moe
         * 4974 checks, the MoE fixtures 41); NMLX_CUDA_MOE=0 takes the
         * generic path, sorted forces the prefill form */
        c->moe->mode = !e ? 1 : !strcmp(e, "0") ? 0 : !strcmp(e, "sorted") ? 2 : 1;
    }
    return c->moe;
}

void nmlx_cuda_moe_release(cuda_impl *c) {
    cuda_moe_state *m = c->moe;
    if (!m) return;
    for (size_t i = 0; i < m->n_tabs; i++)
        if (m->tabs[i].lin.tab) cudaFree((void *)m->tabs[i].lin.tab);
    nmlx_free(m->tabs);
    if (m->host) cudaFreeHost(m->host);
    if (m->dev) cudaFree(m->dev);
    if (m->route) cudaFree(m->route);
    if (m->route_host) cudaFreeHost(m->route_host);
    if (m->sorted) cudaFree(m->sorted);
    nmlx_free(m);
    c->moe = NULL;
}

/* calls that ran each form, all backends of the process (tests print them) */
static long moe_small_calls, moe_sorted_calls, moe_routed_calls, moe_devsort_calls;
extern "C" long nmlx_cuda_moe_devsort_calls(void) { return moe_devsort_calls; }

extern "C" void nmlx_cuda_moe_stats(long *small, long *sorted) {
    *small = moe_small_calls;
    *sorted = moe_sorted_calls;
}

extern "C" long nmlx_cuda_moe_routed_calls(void) { return moe_routed_calls; }

extern "C" void nmlx_backend_cuda_set_moe(nmlx_backend *be, int mode) {
    cuda_moe_state *m = moe_state(be);
    if (m) m->mode = mode < 0 ? 0 : mode > 3 ? 3 : mode;
}

/* The format the decode kernels take for weight w (false: none). */
static bool lin_format(const nmlx_weight *w, int *bits, int *sc, int *gshift) {
    *gshift = 0;
    if (w->mode == NMLX_QUANT_NONE) {
        *bits = 0;
        switch (w->w.dtype) {
        case NMLX_DT_F32: *sc = SC_F32; return true;
        case NMLX_DT_F16: *sc = SC_F16; return true;
        case NMLX_DT_BF16: *sc = SC_BF16; return true;
        default: return false;
        }
    }
    const int gs = w->group_size;
    if (gs < 32 || gs % 32 || w->cols % gs || !w->w.data || ((uintptr_t)w->w.data & 3))
        return false;
    while ((8 << *gshift) < gs)
        (*gshift)++;
    if ((8 << *gshift) != gs) return false; /* group size not a power of two */
    *bits = w->bits;
    if (w->mode == NMLX_QUANT_MXFP4) {
        *sc = SC_E8M0;
        return w->bits == 4;
    }
    if (w->mode != NMLX_QUANT_AFFINE) return false;
    switch (w->scales.dtype) {
    case NMLX_DT_F32: *sc = SC_F32; break;
    case NMLX_DT_F16: *sc = SC_F16; break;
    case NMLX_DT_BF16: *sc = SC_BF16; break;
    default: return false;
    }
    if (w->biases.dtype != w->scales.dtype) return false;
    return *bits == 2 || *bits == 3 || *bits == 4 || *bits == 5 || *bits == 6 || *bits == 8;
}

static bool same_format(const nmlx_weight *a, const nmlx_weight *b) {
    return a->mode == b->mode && a->bits == b->bits && a->group_size == b->group_size &&
           a->rows == b->rows && a->cols == b->cols && a->w.dtype == b->w.dtype &&
           (a->mode == NMLX_QUANT_NONE || a->scales.dtype == b->scales.dtype) &&
           (a->mode != NMLX_QUANT_AFFINE || a->biases.dtype == b->biases.dtype);
}

/* The decode kernels' view of l, built once (a device pointer table);
 * NULL when its experts do not share one supported format. */
/* Expert e's pointers in l (host view). */
static moe_ptrs ptrs_of(const nmlx_switch_linear *l, int64_t e) {
    const nmlx_weight *w = &l->w[e];
    moe_ptrs p;
    p.w = w->w.data;
    p.s = w->mode != NMLX_QUANT_NONE ? w->scales.data : NULL;
    p.b = w->mode == NMLX_QUANT_AFFINE ? w->biases.data : NULL;
    p.bias = l->bias ? l->bias[e].data : NULL;
    return p;
}

/* expert 0's format in one word: mode, bits, group size, weight, scale and
 * bias dtypes */
static uint32_t fmt_of(const nmlx_switch_linear *l) {
    const nmlx_weight *w = &l->w[0];
    return (uint32_t)w->mode | (uint32_t)w->bits << 4 | (uint32_t)w->group_size << 8 |
           (uint32_t)w->w.dtype << 20 | (uint32_t)w->scales.dtype << 24 |
           (uint32_t)(l->bias ? l->bias[0].dtype + 1 : 0) << 28;
}

static bool same_ptrs(const moe_ptrs *a, const moe_ptrs *b) {
    return a->w == b->w && a->s == b->s && a->b == b->b && a->bias == b->bias;
}

/* The decode kernels' view of l, built once (a device pointer table);
 * NULL when its experts do not share one supported format. */
static const moe_lin *lin_of(nmlx_backend *be, cuda_moe_state *m, const nmlx_switch_linear *l) {
    const int64_t E = l->n_experts;
    if (E <= 0) return NULL;
    const moe_ptrs first = ptrs_of(l, 0), last = ptrs_of(l, E - 1);
    moe_table *t = NULL;
    for (size_t i = 0; i < m->n_tabs && !t; i++) {
        moe_table *c = &m->tabs[i];
        if (c->key != l->w) continue;
        if (c->n == E && c->rows == l->w[0].rows && c->cols == l->w[0].cols &&
            c->fmt == fmt_of(l) && same_ptrs(&c->first, &first) && same_ptrs(&c->last, &last))
            return c->ok ? &c->lin : NULL;
        t = c; /* a freed linear's array, reused: rebuild */
        if (c->lin.tab) {
            cudaStreamSynchronize(cuda_host_of(be)->stream);
            cudaFree((void *)c->lin.tab);
        }
    }
    if (!t) {
        if (m->n_tabs == m->cap_tabs) {
            if (m->cap_tabs >= MOE_TABLES_MAX) return NULL;
            size_t cap = m->cap_tabs ? 2 * m->cap_tabs : 64;
            moe_table *nt = (moe_table *)nmlx_realloc(m->tabs, cap * sizeof *nt);
            if (!nt) return NULL;
            m->tabs = nt;
            m->cap_tabs = cap;
        }
        t = &m->tabs[m->n_tabs++];
    }
    memset(t, 0, sizeof *t);
    t->key = l->w;
    t->n = E;
    t->rows = l->w[0].rows;
    t->cols = l->w[0].cols;
    t->fmt = fmt_of(l);
    t->first = first;
    t->last = last;
    int bits = 0, sc = 0, gshift = 0;
    bool ok = lin_format(&l->w[0], &bits, &sc, &gshift);
    const nmlx_dtype bdt = l->bias ? l->bias[0].dtype : NMLX_DT_F32;
    for (int64_t e = 0; ok && e < E; e++) {
        int b2, s2, g2;
        ok = same_format(&l->w[0], &l->w[e]) && lin_format(&l->w[e], &b2, &s2, &g2);
        if (ok && l->bias) ok = l->bias[e].data && l->bias[e].dtype == bdt;
    }
    if (ok && (bdt != NMLX_DT_F32 && bdt != NMLX_DT_F16 && bdt != NMLX_DT_BF16)) ok = false;
    if (!ok) return NULL;
    moe_ptrs *h = (moe_ptrs *)nmlx_calloc((size_t)E, sizeof *h);
    if (!h) return NULL;
    for (int64_t e = 0; e < E; e++)
        h[e] = ptrs_of(l, e);
    cuda_impl *c = cuda_host_of(be);
    moe_ptrs *d = NULL;
    cudaError_t err = cudaMalloc((void **)&d, (size_t)E * sizeof *d);
    if (err == cudaSuccess)
        err = cudaMemcpyAsync(d, h, (size_t)E * sizeof *d, cudaMemcpyHostToDevice, c->stream);
    if (err == cudaSuccess) err = cudaStreamSynchronize(c->stream);
    nmlx_free(h);
    if (err != cudaSuccess) {
        cudaGetLastError();
        if (d) cudaFree(d);
        return NULL;
    }
    t->ok = true;
    bool w16 = true;
    for (int64_t e = 0; e < E; e++)
        w16 = w16 && (uintptr_t)l->w[e].w.data % 16 == 0;
    t->lin = (moe_lin){d, l->w[0].rows, l->w[0].cols, bits, sc, gshift, bdt, l->bias != NULL, w16};
    return &t->lin;
}

/* The staging buffers for `words` 4-byte words (host pinned and device). */
static bool stage_reserve(nmlx_backend *be, cuda_moe_state *m, size_t words) {
    cuda_impl *c = cuda_host_of(be);
    cudaStreamSynchronize(c->stream); /* the last staging copy is done with m->host */
    if (words <= m->cap_words) return true;
    if (m->host) cudaFreeHost(m->host);
    if (m->dev) cudaFree(m->dev);
    m->host = m->dev = NULL;
    m->cap_words = 0;
    if (cudaMallocHost((void **)&m->host, words * 4) != cudaSuccess ||
        cudaMalloc((void **)&m->dev, words * 4) != cudaSuccess) {
        cudaGetLastError();
        if (m->host) cudaFreeHost(m->host);
        m->host = NULL;
        return false;
    }
    m->cap_words = words;
    return true;
}

/* ---- the decode form ---- */

template <int BITS, int SC>
static void launch_gate_up(cudaStream_t s, const moe_lin &gl, const moe_lin &ul, const float *x,
                           const int32_t *idx, int k, float *h, int P, const nmlx_switch_glu *g,
                           const moe_route_args *ra) {
    const bool xvec = BITS && (uintptr_t)x % 16 == 0;
    dim3 grid((unsigned)((gl.rows + MOE_WARPS - 1) / MOE_WARPS), (unsigned)P);
    const bool clipped = g->act == NMLX_SWITCH_SWIGLU_CLIPPED;
    if (ra)
        moe_gate_up_kernel<BITS, SC, true><<<grid, 32 * MOE_WARPS, 0, s>>>(
            gl, ul, x, idx, k, h, clipped, g->alpha, g->limit, xvec, *ra);
    else
        moe_gate_up_kernel<BITS, SC, false><<<grid, 32 * MOE_WARPS, 0, s>>>(
            gl, ul, x, idx, k, h, clipped, g->alpha, g->limit, xvec, moe_route_args{});
}

template <int BITS, int SC>
static void launch_down(cudaStream_t s, const moe_lin &dl, const float *h, const int32_t *idx,
                        const float *scores, float *ys, int P) {
    const bool xvec = BITS && (uintptr_t)h % 16 == 0 && dl.cols % 4 == 0;
    dim3 grid((unsigned)((dl.rows + 2 * MOE_WARPS - 1) / (2 * MOE_WARPS)), (unsigned)P);
    moe_down_kernel<BITS, SC><<<grid, 32 * MOE_WARPS, 0, s>>>(dl, h, idx, scores, ys, xvec);
}

/* One launcher of format (bits, sc): F(BITS, SC) instantiated for each. */
#define MOE_DISPATCH(bits, sc, F)                                                                  \
    do {                                                                                           \
        if ((bits) == 0) {                                                                         \
            if ((sc) == SC_F32)                                                                    \
                F(0, SC_F32);                                                                      \
            else if ((sc) == SC_F16)                                                               \
                F(0, SC_F16);                                                                      \
            else                                                                                   \
                F(0, SC_BF16);                                                                     \
        } else if ((sc) == SC_E8M0) {                                                              \
            F(4, SC_E8M0);                                                                         \
        } else {                                                                                   \
            switch (bits) {                                                                        \
            case 2: MOE_DISPATCH_SC(2, sc, F); break;                                              \
            case 3: MOE_DISPATCH_SC(3, sc, F); break;                                              \
            case 4: MOE_DISPATCH_SC(4, sc, F); break;                                              \
            case 5: MOE_DISPATCH_SC(5, sc, F); break;                                              \
            case 6: MOE_DISPATCH_SC(6, sc, F); break;                                              \
            default: MOE_DISPATCH_SC(8, sc, F); break;                                             \
            }                                                                                      \
        }                                                                                          \
    } while (0)
#define MOE_DISPATCH_SC(B, sc, F)                                                                  \
    do {                                                                                           \
        if ((sc) == SC_F32)                                                                        \
            F(B, SC_F32);                                                                          \
        else if ((sc) == SC_F16)                                                                   \
            F(B, SC_F16);                                                                          \
        else                                                                                       \
            F(B, SC_BF16);                                                                         \
    } while (0)

/* The decode form's three kernels, routing already on the device (didx,
 * dsc [T * k]), or done by the gate/up kernel's blocks themselves (ra: the
 * router's logits in, didx / dsc written for down): no allocation, no host
 * wait, so a recorded step holds them. */
static void launch_small(nmlx_backend *be, const moe_lin *gl, const moe_lin *ul, const moe_lin *dl,
                         const nmlx_switch_glu *g, const float *x, const int32_t *didx,
                         const float *dsc, int64_t T, int64_t k, nmlx_switch_buffers *b, float *out,
                         const moe_route_args *ra) {
    cudaStream_t s = cuda_of(be)->stream;
    const int Pi = (int)(T * k), ki = (int)k;
#define GATE_UP(B, S) launch_gate_up<B, S>(s, *gl, *ul, x, didx, ki, b->gate, Pi, g, ra)
    MOE_DISPATCH(gl->bits, gl->sc, GATE_UP);
#undef GATE_UP
#define DOWN(B, S) launch_down<B, S>(s, *dl, b->gate, didx, dsc, b->ys, Pi)
    MOE_DISPATCH(dl->bits, dl->sc, DOWN);
#undef DOWN
    moe_sum_kernel<<<moe_grid(T * g->in), 256, 0, s>>>(b->ys, out, T, g->in, ki);
    nmlx_cuda_note(be, cudaGetLastError());
}

/* The three linears' tables where gate and up share one format and the
 * shapes chain (the decode form's kernels and the grouped prefill take
 * them); false: the per-expert prefill form. Copies: a later lin_of may
 * move the tables. */
static bool lins_of(nmlx_backend *be, cuda_moe_state *m, const nmlx_switch_glu *g, moe_lin *l) {
    const moe_lin *pg = lin_of(be, m, &g->gate);
    if (!pg) return false;
    l[0] = *pg;
    const moe_lin *pu = lin_of(be, m, &g->up);
    if (!pu) return false;
    l[1] = *pu;
    const moe_lin *pd = lin_of(be, m, &g->down);
    if (!pd) return false;
    l[2] = *pd;
    return l[0].bits == l[1].bits && l[0].sc == l[1].sc && l[0].gshift == l[1].gshift &&
           l[0].rows == l[1].rows && l[0].cols == l[1].cols && l[0].rows == g->hidden &&
           l[0].cols == g->in && l[2].cols == l[0].rows && l[2].rows == l[0].cols;
}

static bool run_small(nmlx_backend *be, cuda_moe_state *m, const nmlx_switch_glu *g,
                      const moe_lin *l, const float *x, const int32_t *idx, const float *scores,
                      int64_t T, int64_t k, nmlx_switch_buffers *b, float *out) {
    const int64_t P = T * k;
    if (!stage_reserve(be, m, (size_t)(2 * P))) return false;
    memcpy(m->host, idx, (size_t)P * 4);
    memcpy(m->host + P, scores, (size_t)P * 4);
    nmlx_cuda_note(be, cudaMemcpyAsync(m->dev, m->host, (size_t)(2 * P) * 4, cudaMemcpyHostToDevice,
                                       cuda_of(be)->stream));
    launch_small(be, &l[0], &l[1], &l[2], g, x, m->dev, (const float *)(m->dev + P), T, k, b, out,
                 NULL);
    moe_small_calls++;
    return true;
}

/* ---- the prefill form ---- */

/* The grouped kernels' tasks (expert, first row, rows) into t: each used
 * expert's sorted rows in pieces of at most `most`, in expert order; their
 * count (at most min(P, E) + P / most). */
static int make_tasks(const nmlx_switch_buffers *b, int64_t E, int64_t most, int32_t *t) {
    int n = 0;
    for (int64_t e = 0; e < E; e++)
        for (int64_t r = b->start[e]; r < b->start[e + 1]; r += most) {
            const int64_t left = b->start[e + 1] - r;
            t[3 * n] = (int32_t)e, t[3 * n + 1] = (int32_t)r;
            t[3 * n + 2] = (int32_t)(left < most ? left : most);
            n++;
        }
    return n;
}

/* l: the tables where every linear takes a grouped kernel (one launch for
 * gate and up, one for down): qmm, the tensor-core tile (cuda_moe_qmm.cu),
 * else the few-rows one (cuda_moe_rows.cu); NULL: a matmul per used expert. */
static bool run_sorted(nmlx_backend *be, cuda_moe_state *m, const nmlx_switch_glu *g,
                       const moe_lin *l, bool qmm, const float *x, const int32_t *idx,
                       const float *scores, int64_t T, int64_t k, nmlx_switch_buffers *b,
                       float *out) {
    const int64_t P = T * k, D = g->in, I = g->hidden, E = g->gate.n_experts;
    nmlx_switch_gather_sort(b, idx, P);
    int64_t used = 0;
    for (int64_t e = 0; e < E; e++)
        used += b->start[e + 1] > b->start[e];
    qmm = qmm && l;
    const int most = qmm ? nmlx_cuda_moe_qmm_rows(P, used) : NMLX_CUDA_MOE_TASK_ROWS;
    const int64_t tasks_max = l ? used + P / most + 1 : 0;
    if (tasks_max > 65535) l = NULL, qmm = false; /* the grid's y (never near: 4M pairs) */
    if (!stage_reserve(be, m, (size_t)(3 * P + 3 * tasks_max))) return false;
    int32_t *hs = m->host; /* [scores P][order P][inv P][tasks] */
    memcpy(hs, scores, (size_t)P * 4);
    memcpy(hs + P, b->order, (size_t)P * 4);
    for (int64_t s = 0; s < P; s++)
        hs[2 * P + b->order[s]] = (int32_t)s;
    const int ntask = l ? make_tasks(b, E, most, hs + 3 * P) : 0;
    cudaStream_t s = cuda_of(be)->stream;
    nmlx_cuda_note(be, cudaMemcpyAsync(m->dev, hs, (size_t)(3 * P + 3 * ntask) * 4,
                                       cudaMemcpyHostToDevice, s));
    const float *dsc = (const float *)m->dev;
    const int32_t *dorder = m->dev + P, *dinv = m->dev + 2 * P, *dtask = m->dev + 3 * P;
    /* the tensor-core tile gathers x in its prep; a grouped kernel that
     * declines leaves the per-expert matmuls (qmm's tasks may be 64 rows) */
    if (qmm && !nmlx_cuda_moe_qmm(be, &l[0], b->gate, &l[1], b->up, x, dorder, (int)k, P, dtask,
                                  ntask, most))
        l = NULL, qmm = false;
    if (!qmm) {
        moe_gather_kernel<<<moe_grid(P * D), 256, 0, s>>>(x, dorder, (int)k, b->xs, P, D);
        nmlx_cuda_note(be, cudaGetLastError());
    }
    if (!qmm &&
        (!l || !nmlx_cuda_moe_rows(be, &l[0], b->gate, &l[1], b->up, b->xs, P, dtask, ntask)))
        for (int64_t e = 0; e < E; e++) {
            const int64_t s0 = b->start[e], n = b->start[e + 1] - s0;
            if (n == 0) continue;
            const nmlx_weight *ws[2] = {&g->gate.w[e], &g->up.w[e]};
            const nmlx_tensor *bs[2] = {g->gate.bias ? &g->gate.bias[e] : NULL,
                                        g->up.bias ? &g->up.bias[e] : NULL};
            float *ys[2] = {b->gate + s0 * I, b->up + s0 * I};
            nmlx_cuda_matmul_multi(be, 2, ws, bs, b->xs + s0 * D, ys, n);
        }
    if (g->act == NMLX_SWITCH_SWIGLU_CLIPPED)
        nmlx_cuda_swiglu_clipped(be, b->gate, b->up, b->gate, P * I, g->alpha, g->limit);
    else
        nmlx_cuda_act_mul(be, NMLX_ACT_SILU, b->gate, b->up, b->gate, P * I);
    const bool down_done =
        qmm ? nmlx_cuda_moe_qmm(be, &l[2], b->ys, NULL, NULL, b->gate, NULL, 1, P, dtask, ntask,
                                most)
        : l ? nmlx_cuda_moe_rows(be, &l[2], b->ys, NULL, NULL, b->gate, P, dtask, ntask)
            : false;
    if (!down_done)
        for (int64_t e = 0; e < g->down.n_experts; e++) {
            const int64_t s0 = b->start[e], n = b->start[e + 1] - s0;
            if (n == 0) continue;
            nmlx_cuda_matmul(be, &g->down.w[e], g->down.bias ? &g->down.bias[e] : NULL,
                             b->gate + s0 * I, b->ys + s0 * D, n);
        }
    s = cuda_of(be)->stream;
    moe_scatter_sum_kernel<<<moe_grid(T * D), 256, 0, s>>>(b->ys, dinv, dsc, out, T, D, (int)k);
    nmlx_cuda_note(be, cudaGetLastError());
    moe_sorted_calls++;
    return true;
}

/* Bytes of one expert weight (codes and group scales / biases). */
static double weight_bytes(const nmlx_weight *w) {
    const double n = (double)w->rows * (double)w->cols;
    if (w->mode == NMLX_QUANT_NONE) return n * (double)nmlx_dtype_size(w->w.dtype);
    const double groups = w->group_size > 0 ? n / w->group_size : 0;
    const double per_group = w->mode == NMLX_QUANT_AFFINE
                                 ? 2.0 * (double)nmlx_dtype_size(w->scales.dtype)
                                 : 1.0; /* E8M0 */
    return n * w->bits / 8.0 + groups * per_group;
}

/* Whether P pairs take the decode form (mode 1). That form reads each
 * pair's expert weights (shared between pairs only through L2); the
 * prefill form reads each used expert once. Grouped (quantized experts):
 * the decode form up to MOE_SMALL_PAIRS, where a pair's expert is mostly
 * its own, the prefill form past it (not yet measured between 64 and a
 * few hundred pairs). Per-expert matmuls (dense experts) cost about 6
 * launches an expert (gate/up, down: split + tensor-core tile each, mostly
 * empty tiles at a few rows). Cost model, not yet measured: the decode form
 * while P * (bytes of a pair's three weights) <= used experts *
 * MOE_EXPERT_LAUNCH_BYTES (48 MB: 6 launches of ~3 us at ~2.7 TB/s), and
 * always up to MOE_SMALL_PAIRS (a dense bf16 Qwen3-30B-A3B, 9.4 MB a
 * pair, 128 experts: up to ~650 pairs). NMLX_CUDA_MOE_SMALL=N: the decode
 * form up to N pairs instead. */
static long small_fixed(void) {
    static long fixed = -2; /* -2: not read yet; -1: the cost model */
    if (fixed == -2) {
        const char *e = getenv("NMLX_CUDA_MOE_SMALL");
        fixed = e && *e ? atol(e) : -1;
    }
    return fixed;
}

static bool prefer_small(const nmlx_switch_glu *g, const int32_t *idx, int64_t P, bool grouped) {
    const long fixed = small_fixed();
    if (fixed >= 0) return P <= fixed;
    if (P <= MOE_SMALL_PAIRS) return true;
    if (grouped) return false; /* each used expert read once, in ~7 launches a layer */
    const double pair =
        weight_bytes(&g->gate.w[0]) + weight_bytes(&g->up.w[0]) + weight_bytes(&g->down.w[0]);
    const int64_t E = g->gate.n_experts;
    int64_t used = P < E ? P : E;
    if (E <= 4096) { /* the experts the pairs use */
        uint64_t seen[64] = {0};
        used = 0;
        for (int64_t p = 0; p < P; p++) {
            const uint64_t bit = 1ull << (idx[p] & 63);
            if (!(seen[idx[p] >> 6] & bit)) seen[idx[p] >> 6] |= bit, used++;
        }
    }
    return (double)P * pair <= (double)used * MOE_EXPERT_LAUNCH_BYTES;
}

bool nmlx_cuda_moe_experts(nmlx_backend *be, const struct nmlx_switch_glu *g, const float *x,
                           const int32_t *idx, const float *scores, int64_t T, int64_t k,
                           struct nmlx_switch_buffers *b, float *out) {
    cuda_moe_state *m = moe_state(be);
    if (!m || !m->mode || T <= 0 || k <= 0 || T * k > b->max_pairs ||
        g->gate.n_experts != b->n_experts || T * k > INT32_MAX)
        return false;
    moe_lin l[3];
    const bool tables = lins_of(be, m, g, l);
    const bool qmm = tables && nmlx_cuda_moe_qmm_ok(be, &l[0]) && nmlx_cuda_moe_qmm_ok(be, &l[2]);
    const bool grouped =
        qmm || (tables && nmlx_cuda_moe_rows_ok(be, &l[0]) && nmlx_cuda_moe_rows_ok(be, &l[2]));
    if (tables && (m->mode == 3 || (m->mode == 1 && prefer_small(g, idx, T * k, grouped))) &&
        T * k <= 65535 && run_small(be, m, g, l, x, idx, scores, T, k, b, out))
        return true;
    return run_sorted(be, m, g, grouped ? l : NULL, qmm, x, idx, scores, T, k, b, out);
}

/* moe_routed's device buffers, allocated once for the most pairs it takes
 * (512 KB) and never moved: a recorded decode step (step_graph) holds
 * their address. */
static bool route_reserve(nmlx_backend *be, cuda_moe_state *m) {
    if (m->route) return true;
    cuda_host_of(be); /* a capture in progress ends: no allocation inside it */
    if (cudaMalloc((void **)&m->route, 2 * (size_t)MOE_ROUTE_PAIRS * 4) != cudaSuccess) {
        (void)cudaGetLastError();
        m->route = NULL;
        return false;
    }
    m->route_cap = MOE_ROUTE_PAIRS;
    return true;
}

/* NMLX_CUDA_MOE_ROUTE=kernel: the decode form routes in a kernel of its
 * own before gate/up (for A/B runs); default: in the gate/up kernel */
static bool route_fused(void) {
    static int fused = -1;
    if (fused < 0) {
        const char *e = getenv("NMLX_CUDA_MOE_ROUTE");
        fused = !(e && !strcmp(e, "kernel"));
    }
    return fused != 0;
}

/* NMLX_CUDA_MOE_SORT=host: a routed prefill chunk downloads idx and scores
 * for the host's sort (for A/B runs); default: sorted on the device */
static bool sort_on_device(void) {
    static int dev = -1;
    if (dev < 0) {
        const char *e = getenv("NMLX_CUDA_MOE_SORT");
        dev = !(e && !strcmp(e, "host"));
    }
    return dev != 0;
}
extern "C" bool nmlx_cuda_moe_sorts_on_device(void) { return sort_on_device(); }

/* The device sort's buffer for `words` words; no wait unless it grows. */
static bool sorted_reserve(nmlx_backend *be, cuda_moe_state *m, size_t words) {
    if (words <= m->sorted_cap) return true;
    cudaStreamSynchronize(cuda_host_of(be)->stream); /* the old one may still be read */
    if (m->sorted) cudaFree(m->sorted);
    m->sorted_cap = 0;
    if (cudaMalloc((void **)&m->sorted, words * 4) != cudaSuccess) {
        (void)cudaGetLastError();
        m->sorted = NULL;
        return false;
    }
    m->sorted_cap = words;
    return true;
}

/* The prefill form from idx and scores on the device (moe_routed): sorted
 * there too (cuda_moe_sort.cu), then the grouped kernels, the activation and
 * the score sum, with nothing crossing to the host. Only where every linear
 * takes a grouped kernel (they run over the sort's task table; the
 * per-expert matmuls need the host's expert ranges). False: nothing that
 * matters written (the caller downloads idx and scores and runs the host
 * sort instead). */
static bool run_sorted_dev(nmlx_backend *be, cuda_moe_state *m, const nmlx_switch_glu *g,
                           const float *x, const int32_t *didx, const float *dsc, int64_t T,
                           int64_t k, nmlx_switch_buffers *b, float *out) {
    const int64_t P = T * k, D = g->in, I = g->hidden, E = g->gate.n_experts;
    moe_lin l[3];
    if (!sort_on_device() || !nmlx_cuda_moe_sort_ok(P, E) || g->down.n_experts != E ||
        !lins_of(be, m, g, l))
        return false;
    const bool qmm = nmlx_cuda_moe_qmm_ok(be, &l[0]) && nmlx_cuda_moe_qmm_ok(be, &l[2]);
    if (!qmm && !(nmlx_cuda_moe_rows_ok(be, &l[0]) && nmlx_cuda_moe_rows_ok(be, &l[2])))
        return false;
    /* the experts used are not known here: at most min(P, E) */
    const int64_t used = P < E ? P : E;
    const int most = qmm ? nmlx_cuda_moe_qmm_rows(P, used) : NMLX_CUDA_MOE_TASK_ROWS;
    const int64_t tasks = used + P / most + 1;
    if (tasks > 65535 || !sorted_reserve(be, m, (size_t)(2 * P + 3 * tasks))) return false;
    int32_t *dorder = m->sorted, *dinv = m->sorted + P, *dtask = m->sorted + 2 * P;
    if (!nmlx_cuda_moe_sort(be, didx, P, E, most, (int)tasks, dorder, dinv, dtask)) return false;
    cudaStream_t s = cuda_of(be)->stream;
    bool ok;
    if (qmm) {
        ok = nmlx_cuda_moe_qmm(be, &l[0], b->gate, &l[1], b->up, x, dorder, (int)k, P, dtask,
                               (int)tasks, most);
    } else {
        moe_gather_kernel<<<moe_grid(P * D), 256, 0, s>>>(x, dorder, (int)k, b->xs, P, D);
        nmlx_cuda_note(be, cudaGetLastError());
        ok = nmlx_cuda_moe_rows(be, &l[0], b->gate, &l[1], b->up, b->xs, P, dtask, (int)tasks);
    }
    if (!ok) return false;
    if (g->act == NMLX_SWITCH_SWIGLU_CLIPPED)
        nmlx_cuda_swiglu_clipped(be, b->gate, b->up, b->gate, P * I, g->alpha, g->limit);
    else
        nmlx_cuda_act_mul(be, NMLX_ACT_SILU, b->gate, b->up, b->gate, P * I);
    ok = qmm ? nmlx_cuda_moe_qmm(be, &l[2], b->ys, NULL, NULL, b->gate, NULL, 1, P, dtask,
                                 (int)tasks, most)
             : nmlx_cuda_moe_rows(be, &l[2], b->ys, NULL, NULL, b->gate, P, dtask, (int)tasks);
    if (!ok) return false;
    s = cuda_of(be)->stream;
    moe_scatter_sum_kernel<<<moe_grid(T * D), 256, 0, s>>>(b->ys, dinv, dsc, out, T, D, (int)k);
    nmlx_cuda_note(be, cudaGetLastError());
    moe_sorted_calls++;
    moe_devsort_calls++;
    return true;
}

/* The routing on the device. Up to the decode form's pairs (mode 1: up to
 * MOE_SMALL_PAIRS or NMLX_CUDA_MOE_SMALL; mode 3: any) the decode form
 * reads idx and scores where the route kernel wrote them: the router's
 * logits never cross to the host, nothing waits for the stream and a
 * decode step stays one graph (the host-routed form's download ended the
 * step's capture at the first MoE layer). Past them (mode 1, a prefill
 * chunk) idx and scores are downloaded ([T, k], not the [T, E] logits) for
 * the prefill form's sort: the host no longer routes while the GPU waits
 * (0.4-0.9 ms a 512-token chunk of a 128-expert layer). False where it
 * does not apply (mode 0 or 2, more experts or slots than the kernel
 * takes, more pairs than its buffers): the caller routes on the host. */
bool nmlx_cuda_moe_routed(nmlx_backend *be, const struct nmlx_switch_glu *g, const float *x,
                          const float *logits, int routing, bool norm, int64_t T, int64_t k,
                          struct nmlx_switch_buffers *b, float *out) {
    cuda_moe_state *m = moe_state(be);
    const int64_t E = g->gate.n_experts, P = T * k;
    if (!m || (m->mode != 1 && m->mode != 3) || (routing != 1 && routing != 2) || T <= 0 ||
        k <= 0 || k > 32 || k > E || E > MOE_ROUTE_MAX_E || E != b->n_experts || P > b->max_pairs ||
        P > MOE_ROUTE_PAIRS)
        return false;
    const long fixed = small_fixed();
    const bool small = m->mode == 3 || P <= (fixed >= 0 ? fixed : (long)MOE_SMALL_PAIRS);
    moe_lin l[3];
    if (small && !lins_of(be, m, g, l)) return false;
    if (!route_reserve(be, m)) return false;
    /* a step captured anew (and updated) each token, not recorded for
     * replay (step_graph: e.g. gpt-oss's rotating caches), ends here: the
     * MoE steps' ~15 kernels a layer cost more to capture than the launches
     * they save (H100 tg128, every step captured: Qwen3-30B-A3B 4-bit 232
     * tok/s, GPT-OSS-20B 297-302; NMLX_CUDA_GRAPH=0: 263 / 325) */
    if (((cuda_impl *)be->impl)->capturing && !((cuda_impl *)be->impl)->pos_dev) cuda_host_of(be);
    int32_t *didx = m->route;
    float *dsc = (float *)(m->route + m->route_cap);
    cudaStream_t s = cuda_of(be)->stream;
    if (small && route_fused()) { /* the gate/up kernel's blocks route */
        const moe_route_args ra = {logits, (int)E, routing, norm, didx, dsc};
        launch_small(be, &l[0], &l[1], &l[2], g, x, didx, dsc, T, k, b, out, &ra);
        moe_small_calls++;
        moe_routed_calls++;
        return true;
    }
    moe_route_kernel<<<(unsigned)T, 32, 0, s>>>(logits, (int)E, (int)k, routing, norm, didx, dsc);
    nmlx_cuda_note(be, cudaGetLastError());
    if (!small && run_sorted_dev(be, m, g, x, didx, dsc, T, k, b, out)) {
        moe_routed_calls++;
        return true;
    }
    if (!small && !m->route_host &&
        cudaMallocHost((void **)&m->route_host, 2 * (size_t)MOE_ROUTE_PAIRS * 4) != cudaSuccess) {
        (void)cudaGetLastError();
        m->route_host = NULL;
        return false; /* routed on the host again: out is the caller's to fill */
    }
    if (!small) {
        cuda_impl *c = cuda_host_of(be);
        int32_t *hidx = m->route_host;
        float *hsc = (float *)(m->route_host + MOE_ROUTE_PAIRS);
        cudaError_t e =
            cudaMemcpyAsync(hidx, didx, (size_t)P * 4, cudaMemcpyDeviceToHost, c->stream);
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(hsc, dsc, (size_t)P * 4, cudaMemcpyDeviceToHost, c->stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
        nmlx_cuda_note(be, e);
        if (e != cudaSuccess) return false;
        moe_routed_calls++;
        if (nmlx_cuda_moe_experts(be, g, x, hidx, hsc, T, k, b, out)) return true;
        /* declined after routing: out is the caller's to fill (host path) */
        moe_routed_calls--;
        return false;
    }
    launch_small(be, &l[0], &l[1], &l[2], g, x, didx, dsc, T, k, b, out, NULL);
    moe_small_calls++;
    moe_routed_calls++;
    return true;
}
