/* Prefill attention in tiles (flash-attention style, f32 on the CUDA
 * cores): a block takes TQ queries of one head and walks the keys they see
 * in tiles of TK, K and V tiles staged in shared memory once for all TQ
 * queries, an online softmax per query (running max m, sum l). The simple
 * kernel (cuda_attention.cu) reads every visible key row from memory once
 * per query and head: at T = 512 that is 16x to 32x the traffic of this
 * one, which reads each tile once per TQ queries.
 *
 * Threads: 8 per query (lanes q*8 .. q*8+7 of a warp): each scores keys
 * kg, kg + 8, kg + 16, kg + 24 of a tile (kg = its lane % 8) and owns the
 * output dims kg, kg + 8, ... (HD / 8 of them, <= TD_MAX). The 8 lanes of a
 * query combine max and sum with shuffles, so every thread of a query holds
 * the same m and l. Same contract as `attention` (backend.h): causal,
 * sliding window, soft-capping, sinks, GQA, zeros for a query that sees no
 * key. Runs prefills the tensor-core kernel (cuda_attention_mma.cu, the
 * default) does not take, or all of them with NMLX_CUDA_ATTN_MMA=0 (H200,
 * pp512: Llama-3.2-1B bf16 1.82x the simple kernel's tokens/s end to end,
 * 8B 1.27x); NMLX_CUDA_ATTN_TILED=0 turns it off. */
#include "compute/cuda/cuda_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

namespace {

enum { TQ = 32, TK = 32, LPQ = 8 /* lanes a query */, TT = TQ * LPQ, TD_MAX = 32 };

__global__ void __launch_bounds__(TT) attention_tiled_kernel(nmlx_attn_args a) {
    extern __shared__ float sh[];
    /* q, k and p rows padded by one float: the rows a warp reads at once
     * (4 queries, 8 keys) fall in different banks */
    const int HD = (int)a.HD, LD = HD + 1, PLD = TK + 1;
    float *qs = sh;            /* [TQ][HD + 1] */
    float *ks = qs + TQ * LD;  /* [TK][HD + 1] */
    float *vs = ks + TK * LD;  /* [TK][HD] */
    float *ps = vs + TK * HD;  /* [TQ][TK + 1] */
    const int tid = threadIdx.x, ql = tid / LPQ, kg = tid % LPQ;
    const int64_t t0 = (int64_t)blockIdx.x * TQ, h = blockIdx.y;
    const int64_t group = a.H / a.KVH, kvh = h / (group > 0 ? group : 1);
    const float *kb = a.k + kvh * a.cap * HD, *vb = a.v + kvh * a.cap * HD;
    const int64_t t = t0 + ql;
    const bool live = t < a.T;

    /* keys query t sees: [lo, hi]; the block's union [blo, bhi] */
    const int64_t qi = a.q_pos + t;
    int64_t hi = qi < a.n_kv - 1 ? qi : a.n_kv - 1;
    int64_t lo = a.window > 0 ? qi - a.window + 1 : 0;
    if (lo < 0) lo = 0;
    const int64_t tlast = (t0 + TQ - 1 < a.T - 1 ? t0 + TQ - 1 : a.T - 1);
    int64_t bhi = a.q_pos + tlast < a.n_kv - 1 ? a.q_pos + tlast : a.n_kv - 1;
    int64_t blo = a.window > 0 ? a.q_pos + t0 - a.window + 1 : 0;
    if (blo < 0) blo = 0;

    for (int i = tid; i < TQ * HD; i += TT) {
        const int64_t tq = t0 + i / HD;
        qs[(i / HD) * LD + i % HD] = tq < a.T ? a.q[(tq * a.H + h) * HD + i % HD] : 0.0f;
    }
    float acc[TD_MAX];
#pragma unroll
    for (int i = 0; i < TD_MAX; i++) acc[i] = 0.0f;
    float m = a.sinks ? a.sinks[h] : -INFINITY, l = a.sinks ? 1.0f : 0.0f;
    const float *qrow = qs + ql * LD;

    for (int64_t j0 = blo; j0 <= bhi; j0 += TK) {
        const int n = (int)(bhi - j0 + 1 < TK ? bhi - j0 + 1 : TK);
        __syncthreads(); /* the previous tile is consumed (and q staged, the first time) */
        for (int i = tid; i < TK * HD; i += TT) {
            const int j = i / HD, d = i % HD;
            const bool in = j < n;
            ks[j * LD + d] = in ? kb[(j0 + j) * HD + d] : 0.0f;
            vs[j * HD + d] = in ? vb[(j0 + j) * HD + d] : 0.0f;
        }
        __syncthreads();
        /* scores of keys kg + 8 i, masked to -inf outside [lo, hi] */
        float s[TK / LPQ], tmax = -INFINITY;
#pragma unroll
        for (int i = 0; i < TK / LPQ; i++) {
            const int j = kg + LPQ * i;
            const float *kr = ks + j * LD;
            float dot = 0.0f;
            for (int d = 0; d < HD; d++) dot = fmaf(qrow[d], kr[d], dot);
            dot *= a.scale;
            if (a.softcap > 0) dot = tanhf(dot / a.softcap) * a.softcap;
            const int64_t key = j0 + j;
            s[i] = live && j < n && key >= lo && key <= hi ? dot : -INFINITY;
            tmax = fmaxf(tmax, s[i]);
        }
        for (int o = LPQ / 2; o > 0; o >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
        const float mn = fmaxf(m, tmax);
        /* mn = -inf: nothing seen yet (no sink): keep everything at zero */
        const float alpha = m == -INFINITY ? 0.0f : expf(m - mn);
        float psum = 0.0f;
#pragma unroll
        for (int i = 0; i < TK / LPQ; i++) {
            const float p = mn == -INFINITY ? 0.0f : expf(s[i] - mn);
            ps[ql * PLD + kg + LPQ * i] = p;
            psum += p;
        }
        for (int o = LPQ / 2; o > 0; o >>= 1) psum += __shfl_xor_sync(0xffffffffu, psum, o);
        l = l * alpha + psum;
        m = mn;
        __syncwarp(); /* p of this query's 8 lanes (one warp) written */
        const float *pr = ps + ql * PLD;
#pragma unroll
        for (int i = 0; i < TD_MAX; i++) {
            const int d = kg + LPQ * i;
            if (d < HD) {
                float v = acc[i] * alpha;
                for (int j = 0; j < n; j++) v = fmaf(pr[j], vs[j * HD + d], v);
                acc[i] = v;
            }
        }
    }
    if (!live) return;
    float *out = a.out + (t * a.H + h) * HD;
    const float inv = lo <= hi && l > 0 ? 1.0f / l : 0.0f; /* no visible key: zeros */
#pragma unroll
    for (int i = 0; i < TD_MAX; i++) {
        const int d = kg + LPQ * i;
        if (d < HD) out[d] = acc[i] * inv;
    }
}

int tiled_mode = -1; /* NMLX_CUDA_ATTN_TILED=0 turns it off */

} // namespace

extern "C" void nmlx_cuda_set_attn_tiled(int on) { tiled_mode = on ? 1 : 0; }

bool nmlx_cuda_attention_tiled(nmlx_backend *be, const nmlx_attn_args *a) {
    if (tiled_mode < 0) {
        const char *e = getenv("NMLX_CUDA_ATTN_TILED");
        tiled_mode = !(e && !strcmp(e, "0"));
    }
    if (!tiled_mode || a->T < 2 || a->HD > LPQ * TD_MAX || a->KVH <= 0 || a->H % a->KVH)
        return false;
    const size_t shmem =
        (size_t)(TQ * (a->HD + 1) + TK * (a->HD + 1) + TK * a->HD + TQ * (TK + 1)) * sizeof(float);
    /* the opt-in above 48 KiB: a function attribute of each device, raised
     * once per size and device (GPUs past the 16th ask every time) */
    static size_t raised_on[16];
    const int dev = cuda_of(be)->device;
    size_t *raised = dev >= 0 && dev < 16 ? &raised_on[dev] : NULL;
    if (shmem > 48 * 1024 && (!raised || shmem > *raised)) {
        if (cudaFuncSetAttribute(attention_tiled_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)shmem) != cudaSuccess) {
            cudaGetLastError();
            return false;
        }
        if (raised) *raised = shmem;
    }
    const dim3 grid((unsigned)((a->T + TQ - 1) / TQ), (unsigned)a->H);
    attention_tiled_kernel<<<grid, TT, shmem, cuda_of(be)->stream>>>(*a);
    nmlx_cuda_note(be, cudaGetLastError());
    return true;
}
