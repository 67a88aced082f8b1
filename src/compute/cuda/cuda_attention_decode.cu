/* Flash-decoding attention for decode: few query rows per KV head
 * (RQ = T * H / KVH <= 16), the cache [KVH, cap, HD] f32 (contract in
 * backend.h). The default for those shapes, in both the plain and the
 * recorded-step (graph) form; NMLX_CUDA_ATTN_DECODE=old (or
 * nmlx_cuda_set_attn_decode(0)) takes the one-block-per-head kernels of
 * cuda_attention.cu instead.
 *
 * One launch, grid (S, KVH) x 128 threads, S fixed by the GPU and the
 * shape (one wave: the blocks that fit resident, at most 4 an SM, S <=
 * DEC_MAX_S), never by n_kv: a recorded step replays it with q_pos / n_kv
 * read from device memory.
 *  - Keys any row sees: [j0, j1) (j0 = the first row's window start, j1 =
 *    min(q_pos + T, n_kv)). Block s takes the s-th run of `len` keys,
 *    len = ceil(N / S) rounded up to DEC_ALIGN (dec_chunk): nb <= S blocks
 *    have keys, the others return at once (no key at all: block 0 writes
 *    the zeros).
 *  - Every block serves all RQ query rows of its KV head (a key row is
 *    read once for the GQA group). A warp takes KPW = 32 / LPK keys at a
 *    time: LPK lanes a key, each lane DPL dims of it as float4 loads (K and
 *    V issued together), q from shared memory. Each lane group keeps its
 *    own online softmax (m, l) and P V accumulators o[R][DPL] in
 *    registers; at the end the groups, then the 4 warps (shared memory),
 *    merge, and the block writes its partial (m, l, o[HD]) per row.
 *  - nb == 1: that block writes the output itself, the merge below of its
 *    one partial in the merge's operations and order (the same bits,
 *    checked by attn_decode_emu): no partial, fence, count or merge.
 *  - nb > 1: __threadfence and an atomic count per KV head, by the nb
 *    blocks with keys only: the nb-th resets the count and merges the nb
 *    partials in block order (deterministic, whichever block is last): M =
 *    max(sink, m_s), out = sum_s e^(m_s - M) o_s / (e^(sink - M) + sum_s
 *    e^(m_s - M) l_s); rows that see no key get zeros, as the CPU.
 * (LPK, DPL) by head size and R (RQ rounded up to a power of two) so that
 * o[R][DPL] is 64 floats a lane (dec_pick); HD % 4 == 0, HD <= 256 (RQ <=
 * 8 at 256), K/V 16-byte aligned. Numerics: f32 throughout, as the other
 * kernels (the online softmax's rescaling: ~1e-7 relative to the CPU).
 *
 * The scratch (partials and the counts) is allocated once with the
 * backend (cuda_backend.cu, DEC_SCRATCH_BYTES) and never moves: recorded
 * graphs keep its address. S is cut to what fits.
 *
 * Predicted (H100, Llama-3.1-8B layer: 32 heads, 8 KV heads, HD 128, one
 * query; bench/cuda/bench_attn_decode.c, caches cycled over 32 layers so
 * the K/V come from DRAM): n_kv 64: old ~6 us, new ~4 us; 512: old ~16
 * us, new ~5 us; 2048: old ~60 us, new ~9 us; 8192: old ~230 us, new ~28
 * us (64 MB of K/V at ~2.5 TB/s). Measured (bench/cuda/README.md): 10.5,
 * 14.0, 20.4, 39.1 us; ncu, warm caches, a few dozen keys: 11.3 us.
 *
 * Short contexts: with 16-key runs a few blocks a KV head had keys, and
 * every one of the S (66 on an H100 for the 8B layer) fenced and counted
 * itself in; then the last block's merge loaded the partials: a chain of
 * dependent memory round trips (partial store, fence, atomic, the m / l
 * loads, the o loads, the store) for a few KB of K/V. Now the idle blocks
 * return at once, and a block with every key (n_kv <= 16; more where S
 * is small) writes the output itself after its K/V loads. A shortest run
 * of K keys a block (session 15's opt-in: fewer blocks at short contexts,
 * one block up to K keys) measured slower on an H100 (8B 4-bit decode
 * 356.5 tok/s at K = 64 against 367.0; bench_cuda_attn: the default
 * fastest at every length) and was removed.
 *
 * Inside a decode step (H100, session 22): an empty kernel launched in
 * this one's place costs ~1 us a layer, this kernel ~12 (ncu: 12.2 us for
 * the 8B layer at a few dozen keys, 9.9 cycles an issued instruction,
 * 12.8% occupancy, memory stalls the least): a block with keys is bound by
 * the latency of its instruction chain, not by its loads. Its index
 * arithmetic is therefore 32-bit (dec_div: 14 64-bit divisions in the
 * PTX of that instance before, 2 fallbacks now); the gain is to measure.
 *
 * One query a sequence (T = 1, HD <= 256, <= 8 query heads a KV head)
 * goes to the phased kernel (cuda_attention_phased.h) by default: the same
 * split, partials and merge (dec_merge), the work of a block in phases its
 * threads share instead of dec_block's per-warp chains.
 *
 * The file also compiles as host C++ (NMLX_ATTN_DECODE_EMU: no CUDA
 * headers, no launch code) for tests/cuda/attn_decode_emu.cpp, which runs
 * the kernel block by block on the CPU. */
#ifndef NMLX_ATTN_DECODE_EMU
#include "compute/cuda/cuda_backend.h"
#include "compute/cuda/cuda_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#define DEC_DYN_SMEM extern __shared__ float4 dec_sm[]
#endif

enum {
    DEC_WARPS = 4,
    DEC_THREADS = 32 * DEC_WARPS,
    DEC_ALIGN = 16,  /* a block's keys: a multiple of this */
    DEC_MAX_S = 128, /* blocks a KV head at most */
    DEC_MAX_RQ = 16,
    DEC_MAX_T = 16,
    DEC_BLOCKS_PER_SM = 4,
    DEC_MERGE = 8, /* partials the merge loads at once at most (dec_merge_few) */
};

/* a / b for 0 <= a, 0 < b: 32-bit where both fit (a 64-bit division is a
 * subroutine of dozens of instructions, and this kernel's blocks are bound
 * by their instructions' latency at short contexts: ncu, H100, session 22) */
static inline __host__ __device__ int64_t dec_div(int64_t a, int64_t b) {
    return (a | b) >> 31 ? a / b : (int64_t)((unsigned)a / (unsigned)b);
}

/* The keys of a block when N keys are split over S blocks (the host and
 * every block compute the same); nb = ceil(N / len) <= S. */
static inline __host__ __device__ int64_t dec_chunk(int64_t N, int S) {
    const int64_t per = dec_div(N + S - 1, S);
    return (per + DEC_ALIGN - 1) / DEC_ALIGN * DEC_ALIGN;
}

#ifndef DEC_BREAK
#define DEC_BREAK 0 /* tests/cuda/attn_decode_emu.cpp's deliberately broken builds: 1, 2, 3 */
#endif
#ifndef DEC_DIRECT
#define DEC_DIRECT                                                                                 \
    true /* attn_decode_emu turns it off: nb == 1 through the merge, for the bits                  \
          */
#endif

/* The instances: X(id, LPK, DPL, R). o[R][DPL] = 64 floats a lane, except
 * R < 4 (fewer rows than the head size allows). */
#define DEC_CONFIGS(X)                                                                             \
    X(0, 8, 8, 1)                                                                                  \
    X(1, 8, 8, 2)                                                                                  \
    X(2, 8, 8, 4)                                                                                  \
    X(3, 8, 8, 8)                                                                                  \
    X(4, 16, 4, 16)                                                                                \
    X(5, 8, 16, 1)                                                                                 \
    X(6, 8, 16, 2)                                                                                 \
    X(7, 8, 16, 4)                                                                                 \
    X(8, 16, 8, 8)                                                                                 \
    X(9, 32, 4, 16)                                                                                \
    X(10, 16, 16, 1)                                                                               \
    X(11, 16, 16, 2)                                                                               \
    X(12, 16, 16, 4)                                                                               \
    X(13, 32, 8, 8)

/* The instance for head size HD and RQ rows a KV head, or -1 (not taken). */
static inline int dec_pick(int64_t HD, int64_t RQ) {
    if (HD <= 0 || HD % 4 || HD > 256 || RQ < 1 || RQ > DEC_MAX_RQ) return -1;
    const int r = RQ <= 1 ? 0 : RQ <= 2 ? 1 : RQ <= 4 ? 2 : RQ <= 8 ? 3 : 4;
    if (HD <= 64) return r;
    if (HD <= 128) return 5 + r;
    return r < 4 ? 10 + r : -1;
}

/* Floats of the dynamic shared memory: q [R][HDC] during the key loop, the
 * warps' o [WARPS][R][HDC] after it, dec_merge_many's weights
 * [R][DEC_MAX_S] last. */
static inline __host__ __device__ int dec_smem_floats(int HDC, int R) {
    const int a = DEC_WARPS * R * HDC, b = R * DEC_MAX_S;
    return a > b ? a : b;
}

/* Row t's visible keys: [lo, hi] (empty when lo > hi). */
static inline __device__ void dec_visible(const nmlx_attn_args &a, int64_t q_pos, int64_t n_kv,
                                          int64_t t, int64_t *lo, int64_t *hi) {
    const int64_t qi = q_pos + t;
    *hi = qi < n_kv - 1 ? qi : n_kv - 1;
    int64_t l = a.window > 0 ? qi - a.window + 1 : 0;
    *lo = l < 0 ? 0 : l;
}

/* A launched-early kernel's start: let the next kernel launch, wait for the
 * one ahead (q and the cache are ready from here), then the query's
 * position and keys: a's, or in a recorded step deltas from *step */
static inline __device__ void dec_start(const nmlx_attn_args &a, const int64_t *step,
                                        int64_t *q_pos, int64_t *n_kv) {
    cuda_pdl_trigger();
    cuda_pdl_wait();
    const int64_t base = step ? *step : 0;
    *q_pos = a.q_pos + base;
    *n_kv = a.n_kv + base;
}

/* Warp-wide max and sum, xor 16, 8, 4, 2, 1 (every lane ends with the result) */
static inline __device__ float dec_warp_max(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}
static inline __device__ float dec_warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

#include "compute/cuda/cuda_attention_short.h"

/* A block that has every key writes the output itself: row h's weight f of
 * its one partial (max M, sum L) and the total Lt, as dec_merge_few
 * computes them from that partial (the sink as one more logit), so that
 * out = fmaf(f, o, 0) / Lt has the merge's bits. */
static inline __device__ void dec_one_partial(const nmlx_attn_args &a, int h, float M, float L,
                                              float *f, float *Lt) {
    const float sink = a.sinks ? a.sinks[h] : -INFINITY;
    const float Mt = fmaxf(sink, M);
    *f = M == -INFINITY ? 0.0f : expf(M - Mt);
    *Lt = fmaf(*f, L, 0.0f) + (a.sinks && Mt != -INFINITY ? expf(sink - Mt) : 0.0f);
}

/* The last block's merge of nb <= DEC_MERGE partials: a thread per 4 dims
 * of a row loads every partial's m, l and o at once (one memory round
 * trip), then M = the max over the sink and the m_s, out = sum_s e^(m_s -
 * M) o_s / (e^(sink - M) + sum_s e^(m_s - M) l_s) in partial order. One
 * partial: the direct output's arithmetic (the same bits). */
__device__ __forceinline__ void dec_merge_few(const nmlx_attn_args &a, int kvh, int RQ, int G,
                                              int nb, const float *po, const float *pml,
                                              size_t base, const int64_t *slo, const int64_t *shi) {
    const int tid = threadIdx.x, HD = (int)a.HD;
    const int C4 = RQ * HD / 4, stride = RQ * HD / 4; /* float4s: a row, a partial */
    for (int c = tid; c < C4; c += DEC_THREADS) {
        const int r = 4 * c / HD, d = 4 * c % HD;
        const int t = r / G, h = kvh * G + r % G;
        float4 y = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (slo[t] <= shi[t]) { /* else nothing visible: zero, as the CPU */
            const float4 *pp = (const float4 *)(po + (base + (size_t)r) * (size_t)HD + d);
            const float *pm = pml + 2 * (base + (size_t)r);
            float ms[DEC_MERGE], ls[DEC_MERGE];
            float4 xs[DEC_MERGE];
#pragma unroll
            for (int i = 0; i < DEC_MERGE; i++) {
                ms[i] = -INFINITY, ls[i] = 0.0f, xs[i] = y;
                if (i < nb) {
                    ms[i] = __ldcg(pm + 2 * (size_t)i * RQ);
                    ls[i] = __ldcg(pm + 2 * (size_t)i * RQ + 1);
                    xs[i] = __ldcg(pp + (size_t)i * (size_t)stride);
                }
            }
            const float sink = a.sinks ? a.sinks[h] : -INFINITY;
            float M = sink, L = 0.0f;
#pragma unroll
            for (int i = 0; i < DEC_MERGE; i++)
                M = fmaxf(M, ms[i]);
            float4 acc = y;
#pragma unroll
            for (int i = 0; i < DEC_MERGE; i++) {
                if (i >= nb) break;
                const float f = ms[i] == -INFINITY ? 0.0f : expf(ms[i] - M);
                L = fmaf(f, ls[i], L);
                acc.x = fmaf(f, xs[i].x, acc.x);
                acc.y = fmaf(f, xs[i].y, acc.y);
                acc.z = fmaf(f, xs[i].z, acc.z);
                acc.w = fmaf(f, xs[i].w, acc.w);
            }
            L += a.sinks && M != -INFINITY ? expf(sink - M) : 0.0f;
            if (L > 0.0f) y = make_float4(acc.x / L, acc.y / L, acc.z / L, acc.w / L);
        }
        float *out = a.out + ((int64_t)t * a.H + h) * HD + d;
        out[0] = y.x, out[1] = y.y, out[2] = y.z, out[3] = y.w;
    }
}

/* The last block's merge of more partials: a warp a row loads every m and l
 * at once and writes the weights e^(m_s - M) (cw) and the row's sum (rl);
 * then a thread per 4 dims of a row adds the o_s, 8 loads in flight (fewer
 * registers than dec_merge_few's all at once, and its loads do not wait
 * for each other's maxima). */
__device__ __forceinline__ void dec_merge_many(const nmlx_attn_args &a, int kvh, int RQ, int G,
                                               int nb, const float *po, const float *pml,
                                               size_t base, float *cw, float *rl,
                                               const int64_t *slo, const int64_t *shi) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, HD = (int)a.HD;
    for (int r = warp; r < RQ; r += DEC_WARPS) {
        const int h = kvh * G + r % G;
        float ms[DEC_MAX_S / 32], ls[DEC_MAX_S / 32];
#pragma unroll
        for (int k = 0; k < DEC_MAX_S / 32; k++) {
            const int sp = lane + 32 * k;
            ms[k] = -INFINITY, ls[k] = 0.0f;
            if (sp < nb) {
                const size_t x = 2 * (base + (size_t)sp * RQ + r);
                ms[k] = __ldcg(&pml[x]);
                ls[k] = __ldcg(&pml[x + 1]);
            }
        }
        float M = a.sinks ? a.sinks[h] : -INFINITY;
#pragma unroll
        for (int k = 0; k < DEC_MAX_S / 32; k++)
            M = fmaxf(M, ms[k]);
        M = dec_warp_max(M);
        float L = 0.0f;
#pragma unroll
        for (int k = 0; k < DEC_MAX_S / 32; k++) {
            const int sp = lane + 32 * k;
            const float f = ms[k] == -INFINITY ? 0.0f : expf(ms[k] - M);
            if (sp < nb) cw[r * DEC_MAX_S + sp] = f;
            L = fmaf(f, ls[k], L);
        }
        L = dec_warp_sum(L);
        if (lane == 0) rl[r] = L + (a.sinks && M != -INFINITY ? expf(a.sinks[h] - M) : 0.0f);
    }
    __syncthreads();
    const int C4 = RQ * HD / 4, stride = RQ * HD / 4; /* float4s: a row, a partial */
    for (int c = tid; c < C4; c += DEC_THREADS) {
        const int r = 4 * c / HD, d = 4 * c % HD;
        const int t = r / G, h = kvh * G + r % G;
        float4 y = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (slo[t] <= shi[t]) { /* else nothing visible: zero, as the CPU */
            const float4 *pp = (const float4 *)(po + (base + (size_t)r) * (size_t)HD + d);
            float4 acc = y;
#pragma unroll 8
            for (int sp = 0; sp < nb; sp++) {
                const float w = cw[r * DEC_MAX_S + sp];
                const float4 x = __ldcg(pp + (size_t)sp * (size_t)stride);
                acc.x = fmaf(w, x.x, acc.x);
                acc.y = fmaf(w, x.y, acc.y);
                acc.z = fmaf(w, x.z, acc.z);
                acc.w = fmaf(w, x.w, acc.w);
            }
            const float L = rl[r];
            if (L > 0.0f) y = make_float4(acc.x / L, acc.y / L, acc.z / L, acc.w / L);
        }
        float *out = a.out + ((int64_t)t * a.H + h) * HD + d;
        out[0] = y.x, out[1] = y.y, out[2] = y.z, out[3] = y.w;
    }
}

/* The end of a block with keys that wrote its partial (po, pml, as
 * dec_block documents): counts itself in, and the last of the nb blocks
 * of KV head kvh merges the partials into a.out (see the top): in one
 * round trip up to DEC_MERGE partials (dec_merge_few, session 23: 6.4
 * against 7.1 us at 100 keys on the 8B layer), else in two
 * (dec_merge_many: 15.2 against 18.3 us at 2048). cw: R * DEC_MAX_S
 * floats, rl: R, last: one int, slo / shi: the rows' visible keys
 * (dec_visible), all shared. */
__device__ __forceinline__ void dec_merge(const nmlx_attn_args &a, int kvh, int S, int RQ, int G,
                                          int nb, const float *po, const float *pml, unsigned *cnt,
                                          float *cw, float *rl, int *last_, const int64_t *slo,
                                          const int64_t *shi) {
    const int tid = threadIdx.x;
    int &last = *last_;
    /* Only the nb blocks with keys count themselves in, so the last is the
     * nb-th: it sees every partial (each block's writes are fenced before
     * its count) and puts the count back to 0 for the next launch, whatever
     * that launch's nb (a replayed graph at another n_kv). Counting all S
     * blocks instead would cost the idle ones a fence and an atomic each on
     * the same word, for nothing. */
    __threadfence();
    __syncthreads();
    if (tid == 0) {
        const unsigned prev = atomicAdd(&cnt[kvh], 1u);
#if DEC_BREAK == 3 /* test hook (attn_decode_emu): counted to S, as if every block came */
        last = prev == (unsigned)S - 1u;
#else
        last = prev == (unsigned)nb - 1u;
#endif
#if DEC_BREAK != 2               /* test hook (attn_decode_emu): the count not put back */
        if (last) cnt[kvh] = 0u; /* for the next launch */
#endif
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    const size_t base = (size_t)kvh * (size_t)S * (size_t)RQ; /* block 0's row 0 */
    if (nb <= DEC_MERGE)
        dec_merge_few(a, kvh, RQ, G, nb, po, pml, base, slo, shi);
    else
        dec_merge_many(a, kvh, RQ, G, nb, po, pml, base, cw, rl, slo, shi);
}

/* Block (s, kvh) = (blockIdx.x, blockIdx.y) of one query's (or step's)
 * attention, a's q_pos / n_kv being q_pos / n_kv here.
 * po[((kvh * S + s) * RQ + r) * HD + d]: block s's unnormalised output of
 * row r; pml[2 * ((kvh * S + s) * RQ + r)]: its max m and sum l; cnt[kvh]:
 * blocks of KV head kvh done (0 between launches). */
template <int LPK, int DPL, int R>
__device__ __forceinline__ void dec_block(const nmlx_attn_args &a, int64_t q_pos, int64_t n_kv,
                                          int S, float *po, float *pml, unsigned *cnt) {
    constexpr int KPW = 32 / LPK, NV = DPL / 4, HDC = LPK * DPL, KB = DEC_WARPS * KPW;
    static_assert(LPK * KPW == 32 && DPL % 4 == 0, "lane split");
    DEC_DYN_SMEM;
    float *sm = (float *)dec_sm;
    __shared__ int64_t slo[DEC_MAX_T], shi[DEC_MAX_T];
    __shared__ float wm[DEC_WARPS * R], wl[DEC_WARPS * R], rl[R];
    __shared__ int last;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int grp = lane / LPK, lig = lane % LPK;
    /* index arithmetic in 32 bits (HD <= 256, RQ <= 16, T <= 16): no 64-bit
     * division on the way (see dec_div) */
    const int HD = (int)a.HD, G = (int)a.H / (int)a.KVH, RQ = (int)a.T * G;
    const int s = (int)blockIdx.x;
    const int kvh = (int)blockIdx.y;
    int64_t j0, j1;
    {
        int64_t lo, hi;
        dec_visible(a, q_pos, n_kv, 0, &lo, &hi);
        j0 = lo;
        j1 = q_pos + a.T < n_kv ? q_pos + a.T : n_kv;
    }
    const int64_t N = j1 > j0 ? j1 - j0 : 0;
    const int64_t len = N > 0 ? dec_chunk(N, S) : 1;
    const int nb = (int)dec_div(N + len - 1, len);
    /* blocks past the keys: nothing to write or read, and not counted in
     * (the count below goes to nb, which every block of this KV head
     * computes alike); no key at all (nb == 0): block 0 stays and writes
     * the zeros through the direct path (its run is empty) */
    if (s >= (nb > 0 ? nb : 1)) return;
    /* one block has every key: it writes the output itself (no partial,
     * fence, count or merge) */
    const bool direct = nb == 0 || (nb == 1 && DEC_DIRECT);
    if (tid < a.T) dec_visible(a, q_pos, n_kv, tid, &slo[tid], &shi[tid]);
    const size_t row0 = ((size_t)kvh * (size_t)S + (size_t)s) * (size_t)RQ;

    {                                  /* the block's run of keys */
        const bool uniform = a.T == 1; /* one query: every key of [j0, j1) visible to all rows */
        const int64_t kb0 = j0 + (int64_t)s * len, kb1 = kb0 + len < j1 ? kb0 + len : j1;
        const float *kbase = a.k + kvh * a.cap * HD, *vbase = a.v + kvh * a.cap * HD;
        /* lane group grp's key of the run at jb: K and V dims of this lane
         * (zeros past the run or HD) */
        float4 kv[NV], vv[NV];
        auto load = [&](int64_t jb) {
            const int64_t j = jb + grp;
#pragma unroll
            for (int i = 0; i < NV; i++) {
                const int d4 = i * LPK + lig;
                if (j < kb1 && 4 * d4 < HD) {
                    kv[i] = *((const float4 *)(kbase + j * HD) + d4);
                    vv[i] = *((const float4 *)(vbase + j * HD) + d4);
                } else {
                    kv[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                    vv[i] = kv[i];
                }
            }
        };
        int64_t jb = kb0 + (int64_t)warp * KPW;
        load(jb); /* in flight while q is staged */

        /* q rows of the group, zero past HD (all loads issued at once) */
#pragma unroll
        for (int k = 0; k < (R * HDC + DEC_THREADS - 1) / DEC_THREADS; k++) {
            const int i = tid + k * DEC_THREADS;
            if (i < R * HDC) {
                const int r = i / HDC, d = i % HDC;
                float x = 0.0f;
                if (r < RQ && d < HD) {
                    const int t = r / G, h = kvh * G + r % G;
                    x = a.q[((int64_t)t * a.H + h) * HD + d];
                }
                sm[i] = x;
            }
        }
        __syncthreads();
        const float4 *qs = (const float4 *)sm;
        float m[R], l[R], o[R][DPL];
#pragma unroll
        for (int r = 0; r < R; r++) {
            m[r] = -INFINITY;
            l[r] = 0.0f;
#pragma unroll
            for (int c = 0; c < DPL; c++)
                o[r][c] = 0.0f;
        }
        for (; jb < kb1; jb += KB) {
            const int64_t j = jb + grp;
            const bool valid = j < kb1;
#pragma unroll
            for (int r = 0; r < R; r++) {
                if (r >= RQ) break; /* uniform over the block */
                float sc = 0.0f;
#pragma unroll
                for (int i = 0; i < NV; i++) {
                    const float4 qq = qs[r * (HDC / 4) + i * LPK + lig];
                    sc = fmaf(qq.x, kv[i].x, sc);
                    sc = fmaf(qq.y, kv[i].y, sc);
                    sc = fmaf(qq.z, kv[i].z, sc);
                    sc = fmaf(qq.w, kv[i].w, sc);
                }
#pragma unroll
                for (int off = LPK / 2; off > 0; off >>= 1)
                    sc += __shfl_xor_sync(0xffffffffu, sc, off);
                sc *= a.scale;
                if (a.softcap > 0) sc = tanhf(sc / a.softcap) * a.softcap;
                bool vis = valid;
                if (!uniform && vis) {
                    const int t = r / G;
                    vis = j >= slo[t] && j <= shi[t];
                }
                const float mn = vis ? fmaxf(m[r], sc) : m[r];
                const float alpha = mn == m[r] ? 1.0f : expf(m[r] - mn);
                const float p = vis ? expf(sc - mn) : 0.0f;
                l[r] = fmaf(l[r], alpha, p);
                m[r] = mn;
#pragma unroll
                for (int i = 0; i < NV; i++) {
                    o[r][4 * i + 0] = fmaf(p, vv[i].x, o[r][4 * i + 0] * alpha);
                    o[r][4 * i + 1] = fmaf(p, vv[i].y, o[r][4 * i + 1] * alpha);
                    o[r][4 * i + 2] = fmaf(p, vv[i].z, o[r][4 * i + 2] * alpha);
                    o[r][4 * i + 3] = fmaf(p, vv[i].w, o[r][4 * i + 3] * alpha);
                }
            }
            if (jb + KB < kb1) load(jb + KB); /* the next run (the registers are free) */
        }
        /* the warp's lane groups merge (every group ends with the sums) */
#pragma unroll
        for (int r = 0; r < R; r++) {
            if (r >= RQ) break;
            float M = m[r];
#pragma unroll
            for (int off = LPK; off < 32; off <<= 1)
                M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, off));
            const float f = m[r] == -INFINITY ? 0.0f : expf(m[r] - M);
            float L = l[r] * f;
#pragma unroll
            for (int off = LPK; off < 32; off <<= 1)
                L += __shfl_xor_sync(0xffffffffu, L, off);
#pragma unroll
            for (int c = 0; c < DPL; c++) {
                float x = o[r][c] * f;
#pragma unroll
                for (int off = LPK; off < 32; off <<= 1)
                    x += __shfl_xor_sync(0xffffffffu, x, off);
                o[r][c] = x;
            }
            m[r] = M;
            l[r] = L;
        }
        __syncthreads(); /* every warp is done with q: its space takes the warps' o */
        float *wo = sm;  /* [WARPS][R][HDC] */
        if (grp == 0) {
#pragma unroll
            for (int r = 0; r < R; r++) {
                if (r >= RQ) break;
#pragma unroll
                for (int i = 0; i < NV; i++) {
                    const int d = 4 * (i * LPK + lig);
#pragma unroll
                    for (int c = 0; c < 4; c++)
                        wo[(warp * R + r) * HDC + d + c] = o[r][4 * i + c];
                }
                if (lane == 0) wm[warp * R + r] = m[r], wl[warp * R + r] = l[r];
            }
        }
        __syncthreads();
        /* the block's partial: the warps merged, thread per (row, dim) */
        for (int i = tid; i < RQ * HD; i += DEC_THREADS) {
            const int r = i / HD, d = i % HD;
            float M = -INFINITY;
#pragma unroll
            for (int w = 0; w < DEC_WARPS; w++)
                M = fmaxf(M, wm[w * R + r]);
            float acc = 0.0f, L = 0.0f;
#pragma unroll
            for (int w = 0; w < DEC_WARPS; w++) {
                const float mw = wm[w * R + r];
                const float f = mw == -INFINITY ? 0.0f : expf(mw - M);
                acc = fmaf(f, wo[(w * R + r) * HDC + d], acc);
                L = fmaf(f, wl[w * R + r], L);
            }
            if (!direct) {
                po[(row0 + (size_t)r) * (size_t)HD + (size_t)d] = acc;
                if (d == 0) pml[2 * (row0 + (size_t)r)] = M, pml[2 * (row0 + (size_t)r) + 1] = L;
                continue;
            }
            /* nb == 1: the merge below of this one partial, its operations
             * in its order (the same bits): the sink as one more logit */
            const int t = r / G, h = kvh * G + r % G;
            float y = 0.0f;
            if (slo[t] <= shi[t]) { /* else nothing visible: zero, as the CPU */
                float f, Lt;
                dec_one_partial(a, h, M, L, &f, &Lt);
#if DEC_BREAK == 1 /* test hook (attn_decode_emu): not normalised */
                y = fmaf(f, acc, 0.0f), (void)Lt;
#else
                if (Lt > 0.0f) y = fmaf(f, acc, 0.0f) / Lt;
#endif
            }
            a.out[((int64_t)t * a.H + h) * HD + d] = y;
        }
    }
    if (direct) return;
    dec_merge(a, kvh, S, RQ, G, nb, po, pml, cnt, sm, rl, &last, slo, shi);
}

#include "compute/cuda/cuda_attention_phased.h"

/* One query or step: grid (S, KVH). step: the recorded step's position
 * (a's q_pos and n_kv are deltas from it), or NULL. */
template <int LPK, int DPL, int R>
__global__ void __launch_bounds__(DEC_THREADS)
    attn_decode_kernel(nmlx_attn_args a, const int64_t *step, int S, float *po, float *pml,
                       unsigned *cnt, int short_n) {
    int64_t q_pos, n_kv;
    dec_start(a, step, &q_pos, &n_kv); /* launched early (cuda_launch_pdl) */
    if (short_n > 0) { /* recorded with attn_short_kernel: it takes up to short_n keys */
        int64_t lo;
        if (short_keys(q_pos, n_kv, a.window, &lo) <= short_n) return;
    }
    dec_block<LPK, DPL, R>(a, q_pos, n_kv, S, po, pml, cnt);
}

/* Batched decode (attention_rows): one query a row, each row its own cache,
 * position and window, passed by value; grid (S, KVH, rows). Row r runs
 * the one-query blocks on its own slices of the partials and counts. */
enum { DEC_ROWS = 32 };
typedef struct dec_rows {
    const float *k[DEC_ROWS], *v[DEC_ROWS];
    int64_t cap[DEC_ROWS], q_pos[DEC_ROWS], n_kv[DEC_ROWS], window[DEC_ROWS];
} dec_rows;

/* Row r's one-query arguments (T = 1: RQ = H / KVH rows a KV head) */
static inline __device__ nmlx_attn_args dec_row_args(const nmlx_attn_args &a, const dec_rows &rows,
                                                     int r) {
    const size_t row = (size_t)(a.H * a.HD);
    nmlx_attn_args one = a;
    one.q = a.q + r * row;
    one.out = a.out + r * row;
    one.T = 1;
    one.k = rows.k[r];
    one.v = rows.v[r];
    one.cap = rows.cap[r];
    one.window = rows.window[r];
    return one;
}

template <int LPK, int DPL, int R>
__global__ void __launch_bounds__(DEC_THREADS)
    attn_decode_rows_kernel(nmlx_attn_args a, dec_rows rows, int S, float *po, float *pml,
                            unsigned *cnt) {
    cuda_pdl_trigger();
    cuda_pdl_wait(); /* launched early (cuda_launch_pdl): q and the caches are ready from here */
    const int r = (int)blockIdx.z;
    const size_t parts = (size_t)(a.H * S);
    dec_block<LPK, DPL, R>(dec_row_args(a, rows, r), rows.q_pos[r], rows.n_kv[r], S,
                           po + r * parts * (size_t)a.HD, pml + 2 * r * parts, cnt + r * a.KVH);
}

/* The same through the phased kernel (its instances, at least `run` tiles
 * a block) */
template <int NC, int R>
__global__ void __launch_bounds__(DEC_THREADS, R <= 4 ? PH_MIN_BLOCKS : PH_MIN_BLOCKS - 1)
    attn_phased_rows_kernel(nmlx_attn_args a, dec_rows rows, int S, int run, float *po, float *pml,
                            unsigned *cnt) {
    cuda_pdl_trigger();
    cuda_pdl_wait();
    const int r = (int)blockIdx.z;
    const size_t parts = (size_t)(a.H * S);
    ph_block<NC, R>(dec_row_args(a, rows, r), rows.q_pos[r], rows.n_kv[r], S, run,
                    po + r * parts * (size_t)a.HD, pml + 2 * r * parts, cnt + r * a.KVH);
}

#ifndef NMLX_ATTN_DECODE_EMU
/* the scratch: partials (cut S to fit), then DEC_MAX_KVH counts */
enum { DEC_SCRATCH_BYTES = 4 << 20, DEC_MAX_KVH = 1024 };

static int dec_mode = -1; /* 1: this kernel for decode shapes; NMLX_CUDA_ATTN_DECODE=old: 0 */
static unsigned long long dec_launches, short_launches;
static int short_mode = -1; /* 1: attn_short_kernel where it applies (NMLX_CUDA_ATTN_SHORT=1) */
static int ph_mode = -1; /* 1: attn_phased_kernel where it applies (NMLX_CUDA_ATTN_PHASED=0: off) */
static int ph_run = 0;   /* its shortest run of tiles a block (NMLX_CUDA_ATTN_PHASED_RUN, 1) */
static unsigned long long ph_launches;

extern "C" void nmlx_cuda_set_attn_decode(int on) { dec_mode = on ? 1 : 0; }

extern "C" unsigned long long nmlx_cuda_attn_decode_launches(void) { return dec_launches; }

extern "C" void nmlx_cuda_set_attn_short(int on) { short_mode = on < 0 ? -1 : on ? 1 : 0; }

extern "C" unsigned long long nmlx_cuda_attn_short_launches(void) { return short_launches; }

extern "C" void nmlx_cuda_set_attn_phased(int on) { ph_mode = on < 0 ? -1 : on ? 1 : 0; }

extern "C" unsigned long long nmlx_cuda_attn_phased_launches(void) { return ph_launches; }

static bool ph_on(void) {
    if (ph_mode < 0) {
        const char *e = getenv("NMLX_CUDA_ATTN_PHASED");
        ph_mode = !(e && !strcmp(e, "0"));
    }
    return ph_mode == 1;
}

static int ph_run_tiles(void) {
    if (ph_run < 1) {
        const char *e = getenv("NMLX_CUDA_ATTN_PHASED_RUN");
        const int v = e ? atoi(e) : 1;
        ph_run = v < 1 ? 1 : v > 64 ? 64 : v;
    }
    return ph_run;
}

static bool short_on(void) {
    if (short_mode < 0) {
        const char *e = getenv("NMLX_CUDA_ATTN_SHORT");
        short_mode = e && !strcmp(e, "1");
    }
    return short_mode == 1;
}

/* attn_short_kernel for NV (short_pick: 1..4) */
static void short_launch(nmlx_backend *be, int nv, const nmlx_attn_args *a, const int64_t *step) {
    void (*const kernels[])(nmlx_attn_args, const int64_t *) = {
        attn_short_kernel<1>, attn_short_kernel<2>, attn_short_kernel<3>, attn_short_kernel<4>};
    nmlx_cuda_note(be, cuda_launch_pdl(kernels[nv - 1], dim3((unsigned)a->KVH), dim3(SHORT_THREADS),
                                       0, cuda_of(be)->stream, *a, step));
    short_launches++;
}

bool nmlx_cuda_attn_decode_on(void) {
    if (dec_mode < 0) {
        const char *e = getenv("NMLX_CUDA_ATTN_DECODE");
        dec_mode = !(e && (!strcmp(e, "old") || !strcmp(e, "0")));
    }
    return dec_mode == 1;
}

/* The scratch's layout for S blocks a KV head: po, then pml, then the
 * counts (KVH unsigned, at the end of the allocation). */
static size_t dec_need(const nmlx_attn_args *a, int64_t RQ, int S) {
    return (size_t)a->KVH * (size_t)S * (size_t)RQ * (size_t)(a->HD + 2) * sizeof(float);
}

/* resident blocks an SM of instance id (dec_occupancy, at the backend's start);
 * ph_occ: attn_phased_kernel's */
static int dec_occ[32], ph_occ[16];

/* dec_occ of every instance (outside any capture; loads the kernels) */
static void dec_occupancy(void) {
#define DEC_OCC(ID, LPK, DPL, R)                                                                   \
    if (!dec_occ[ID] &&                                                                            \
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(                                             \
            &dec_occ[ID], attn_decode_kernel<LPK, DPL, R>, DEC_THREADS,                            \
            (size_t)dec_smem_floats(LPK * DPL, R) * sizeof(float)) != cudaSuccess) {               \
        cudaGetLastError();                                                                        \
        dec_occ[ID] = 2;                                                                           \
    }
    DEC_CONFIGS(DEC_OCC)
#undef DEC_OCC
#define PH_OCC(ID, NC, R)                                                                          \
    if (!ph_occ[ID] &&                                                                             \
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&ph_occ[ID], attn_phased_kernel<NC, R>,      \
                                                      DEC_THREADS, 0) != cudaSuccess) {            \
        cudaGetLastError();                                                                        \
        ph_occ[ID] = 2;                                                                            \
    }
    PH_CONFIGS(PH_OCC)
#undef PH_OCC
}

bool nmlx_cuda_dec_scratch_init(cuda_impl *c) {
    dec_occupancy();
    int sms = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c->device) != cudaSuccess ||
        sms <= 0) {
        cudaGetLastError();
        return false;
    }
    const size_t bytes = DEC_SCRATCH_BYTES + DEC_MAX_KVH * sizeof(unsigned);
    if (cudaMalloc(&c->dec_part, bytes) != cudaSuccess) {
        cudaGetLastError();
        c->dec_part = NULL;
        return false;
    }
    if (cudaMemsetAsync((char *)c->dec_part + DEC_SCRATCH_BYTES, 0, DEC_MAX_KVH * sizeof(unsigned),
                        c->stream) != cudaSuccess) {
        cudaGetLastError();
        cudaFree(c->dec_part);
        c->dec_part = NULL;
        return false;
    }
    c->dec_sms = sms;
    return true;
}

/* Most blocks a KV head: DEC_MAX_S, or fewer where NMLX_CUDA_ATTN_MAX_S says
 * (an A/B of a smaller grid: fewer idle blocks at short contexts, fewer
 * blocks sharing a long one's keys) */
static int dec_max_s(void) {
    static int v = 0;
    if (!v) {
        const char *e = getenv("NMLX_CUDA_ATTN_MAX_S");
        const int x = e ? atoi(e) : DEC_MAX_S;
        v = x < 1 ? 1 : x > DEC_MAX_S ? (int)DEC_MAX_S : x;
    }
    return v;
}

/* Blocks a KV head for this shape: a full wave (occ blocks an SM, at most
 * DEC_BLOCKS_PER_SM), cut to DEC_MAX_S and to the scratch; 0: does not fit. */
static int dec_splits(const cuda_impl *c, const nmlx_attn_args *a, int64_t RQ, int occ) {
    if (occ < 1) occ = 1;
    if (occ > DEC_BLOCKS_PER_SM) occ = DEC_BLOCKS_PER_SM;
    const int64_t want = ((int64_t)occ * c->dec_sms + a->KVH - 1) / a->KVH;
    int S = (int)(want < (int64_t)dec_max_s() ? want : (int64_t)dec_max_s());
    if (S < 1) S = 1;
    const size_t per = dec_need(a, RQ, 1);
    const size_t fit = per ? DEC_SCRATCH_BYTES / per : 0;
    if ((size_t)S > fit) S = (int)fit;
    return S;
}

/* The flash-decoding kernel where it applies (see the top); false: the
 * caller runs another kernel. step: the recorded step's position (a's
 * q_pos and n_kv are deltas from it), or NULL. */
bool nmlx_cuda_attention_decode(nmlx_backend *be, const nmlx_attn_args *a, const int64_t *step) {
    if (!nmlx_cuda_attn_decode_on()) return false;
    cuda_impl *c = (cuda_impl *)be->impl;
    if (!c->dec_part || a->KVH <= 0 || a->KVH > DEC_MAX_KVH || a->T > DEC_MAX_T) return false;
    const int64_t G = a->H / a->KVH, RQ = a->T * G;
    if (G < 1 || G * a->KVH != a->H) return false;
    const int id = dec_pick(a->HD, RQ);
    if (id < 0) return false;
    if (((uintptr_t)a->k | (uintptr_t)a->v) % 16 != 0) return false;
    float *po = (float *)c->dec_part;
    unsigned *cnt = (unsigned *)((char *)c->dec_part + DEC_SCRATCH_BYTES);
    cudaStream_t st = cuda_of(be)->stream;
    /* one query: the phased kernel (cuda_attention_phased.h) unless the
     * opt-in short-context kernel is on */
    const int pid = !short_on() && ph_on() ? ph_pick(a->T, a->HD, G) : -1;
    if (pid >= 0) {
        const int S = dec_splits(c, a, RQ, ph_occ[pid]), run = ph_run_tiles();
        if (S < 1) return false;
        float *pml = po + (size_t)a->KVH * (size_t)S * (size_t)RQ * (size_t)a->HD;
        switch (pid) {
#define PH_LAUNCH(ID, NC, R)                                                                       \
    case ID:                                                                                       \
        nmlx_cuda_note(be, cuda_launch_pdl(attn_phased_kernel<NC, R>,                              \
                                           dim3((unsigned)S, (unsigned)a->KVH), dim3(DEC_THREADS), \
                                           0, st, *a, step, S, run, po, pml, cnt));                \
        break;
            PH_CONFIGS(PH_LAUNCH)
#undef PH_LAUNCH
        default: return false;
        }
        ph_launches++;
        dec_launches++;
        nmlx_cuda_note(be, cudaGetLastError());
        return true;
    }
    /* short contexts (cuda_attention_short.h): that kernel alone where the
     * keys are known here; in a recorded step, it and the split kernel, each
     * returning where the other applies */
    const int nv = short_on() ? short_pick(a->T, a->HD, G) : 0;
    int short_n = 0;
    if (nv) {
        int64_t lo;
        const int64_t n = short_keys(a->q_pos, a->n_kv, a->window, &lo);
        if (step || n <= SHORT_MAX) short_launch(be, nv, a, step);
        if (!step && n <= SHORT_MAX) {
            dec_launches++;
            nmlx_cuda_note(be, cudaGetLastError());
            return true;
        }
        if (step) short_n = SHORT_MAX;
    }
    switch (id) {
#define DEC_LAUNCH(ID, LPK, DPL, R)                                                                \
    case ID: {                                                                                     \
        const size_t shm = (size_t)dec_smem_floats(LPK * DPL, R) * sizeof(float);                  \
        const int S = dec_splits(c, a, RQ, dec_occ[ID]);                                           \
        if (S < 1) return false;                                                                   \
        float *pml = po + (size_t)a->KVH * (size_t)S * (size_t)RQ * (size_t)a->HD;                 \
        nmlx_cuda_note(be, cuda_launch_pdl(attn_decode_kernel<LPK, DPL, R>,                        \
                                           dim3((unsigned)S, (unsigned)a->KVH), dim3(DEC_THREADS), \
                                           shm, st, *a, step, S, po, pml, cnt, short_n));          \
        break;                                                                                     \
    }
        DEC_CONFIGS(DEC_LAUNCH)
#undef DEC_LAUNCH
    default: return false;
    }
    dec_launches++;
    nmlx_cuda_note(be, cudaGetLastError());
    return true;
}

/* Blocks a KV head for a launch of n rows (one query each): the rows' KV
 * heads together fill a wave, cut to DEC_MAX_S and to the scratch; 0: does
 * not fit. */
static int dec_rows_splits(const cuda_impl *c, const nmlx_attn_args *a, int64_t G, int64_t n,
                           int occ) {
    if (occ < 1) occ = 1;
    if (occ > DEC_BLOCKS_PER_SM) occ = DEC_BLOCKS_PER_SM;
    const int64_t heads = n * a->KVH, want = ((int64_t)occ * c->dec_sms + heads - 1) / heads;
    int S = (int)(want < (int64_t)DEC_MAX_S ? want : (int64_t)DEC_MAX_S);
    if (S < 1) S = 1;
    const size_t per = (size_t)n * dec_need(a, G, 1);
    const size_t fit = per ? DEC_SCRATCH_BYTES / per : 0;
    if ((size_t)S > fit) S = (int)fit;
    return S;
}

/* One launch of the rows form: the phased kernel's instance pid, else
 * dec_block's instance id */
static cudaError_t dec_rows_launch(int pid, int id, dim3 grid, cudaStream_t st,
                                   const nmlx_attn_args &ar, const dec_rows &br, int S, float *po,
                                   float *pml, unsigned *cnt) {
    switch (pid) {
#define PH_ROWS_LAUNCH(ID, NC, R_)                                                                 \
    case ID:                                                                                       \
        return cuda_launch_pdl_batch(attn_phased_rows_kernel<NC, R_>, grid, dim3(DEC_THREADS), 0,  \
                                     st, ar, br, S, ph_run_tiles(), po, pml, cnt);
        PH_CONFIGS(PH_ROWS_LAUNCH)
#undef PH_ROWS_LAUNCH
    default: break;
    }
    switch (id) {
#define DEC_ROWS_LAUNCH(ID, LPK, DPL, R_)                                                          \
    case ID:                                                                                       \
        return cuda_launch_pdl_batch(                                                              \
            attn_decode_rows_kernel<LPK, DPL, R_>, grid, dim3(DEC_THREADS),                        \
            (size_t)dec_smem_floats(LPK * DPL, R_) * sizeof(float), st, ar, br, S, po, pml, cnt);
        DEC_CONFIGS(DEC_ROWS_LAUNCH)
#undef DEC_ROWS_LAUNCH
    default: return cudaErrorInvalidValue;
    }
}

/* Batched decode (attention_rows, one query a row) through the phased
 * kernel or dec_block's where each row alone would take it: DEC_ROWS rows
 * a launch (fewer where their counts would not fit). false: nothing
 * launched, the caller runs another kernel. A row's result equals its
 * one-query call's to rounding (the keys split over other blocks). */
bool nmlx_cuda_attention_decode_rows(nmlx_backend *be, const nmlx_attn_args *a,
                                     const nmlx_attn_row *rows, int64_t R) {
    if (!nmlx_cuda_attn_decode_on()) return false;
    cuda_impl *c = (cuda_impl *)be->impl;
    if (!c->dec_part || R <= 0 || a->KVH <= 0 || a->KVH > DEC_MAX_KVH) return false;
    const int64_t G = a->H / a->KVH;
    if (G < 1 || G * a->KVH != a->H) return false;
    const int id = dec_pick(a->HD, G), pid = ph_on() ? ph_pick(1, a->HD, G) : -1;
    if (id < 0) return false;
    for (int64_t r = 0; r < R; r++)
        if (((uintptr_t)rows[r].k | (uintptr_t)rows[r].v) % 16 != 0) return false;
    int64_t per = DEC_MAX_KVH / a->KVH; /* rows a launch */
    if (per > DEC_ROWS) per = DEC_ROWS;
    const int64_t row = a->H * a->HD;
    const int occ = pid >= 0 ? ph_occ[pid] : dec_occ[id];
    float *po = (float *)c->dec_part;
    unsigned *cnt = (unsigned *)((char *)c->dec_part + DEC_SCRATCH_BYTES);
    cudaStream_t st = cuda_of(be)->stream;
    if (dec_rows_splits(c, a, G, R < per ? R : per, occ) < 1) return false;
    for (int64_t r0 = 0; r0 < R; r0 += per) {
        const int64_t n = R - r0 < per ? R - r0 : per;
        const int S = dec_rows_splits(c, a, G, n, occ);
        dec_rows br = {};
        for (int64_t i = 0; i < n; i++) {
            const nmlx_attn_row *x = &rows[r0 + i];
            br.k[i] = x->k, br.v[i] = x->v, br.cap[i] = x->cap;
            br.q_pos[i] = x->q_pos, br.n_kv[i] = x->n_kv, br.window[i] = x->window;
        }
        nmlx_attn_args ar = *a;
        ar.q = a->q + r0 * row, ar.out = a->out + r0 * row, ar.T = 1;
        float *pml = po + (size_t)n * (size_t)a->H * (size_t)S * (size_t)a->HD;
        nmlx_cuda_note(be,
                       dec_rows_launch(pid, id, dim3((unsigned)S, (unsigned)a->KVH, (unsigned)n),
                                       st, ar, br, S, po, pml, cnt));
        dec_launches++;
        if (pid >= 0) ph_launches++;
    }
    nmlx_cuda_note(be, cudaGetLastError());
    return true;
}

/* Test hook (cuda_backend.h): a recorded step with one attention call,
 * replayed at other positions. */
extern "C" nmlx_status nmlx_cuda_attention_graph_test(nmlx_backend *be, const nmlx_attn_args *a,
                                                      const int64_t *pos, int n,
                                                      float *const *outs) {
    cuda_impl *c = cuda_host_of(be);
    if (n <= 0) return NMLX_OK;
    int64_t *dpos = NULL;
    cudaGraph_t g = NULL;
    cudaGraphExec_t ge = NULL;
    const size_t bytes = (size_t)(a->T * a->H * a->HD) * sizeof(float);
    cudaError_t e = cudaMalloc((void **)&dpos, sizeof(int64_t));
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    if (e == cudaSuccess) e = cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal);
    if (e == cudaSuccess) {
        int64_t *saved = c->step_dev;
        const bool saved_pos = c->pos_dev;
        const int64_t saved_base = c->step_pos;
        c->step_dev = dpos;
        c->pos_dev = true;
        c->step_pos = pos[0];
        c->capturing = true; /* cuda_of does not start another capture */
        nmlx_cuda_attention(be, a);
        c->capturing = false;
        c->step_dev = saved;
        c->pos_dev = saved_pos;
        c->step_pos = saved_base;
        e = cudaStreamEndCapture(c->stream, &g);
    }
    if (e == cudaSuccess) e = cudaGraphInstantiate(&ge, g, 0);
    for (int i = 0; i < n && e == cudaSuccess; i++) {
        e = cudaMemcpyAsync(dpos, &pos[i], sizeof(int64_t), cudaMemcpyHostToDevice, c->stream);
        if (e == cudaSuccess) e = cudaGraphLaunch(ge, c->stream);
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(outs[i], a->out, bytes, cudaMemcpyDeviceToDevice, c->stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream); /* pos[i] is read */
    }
    if (ge) cudaGraphExecDestroy(ge);
    if (g) cudaGraphDestroy(g);
    if (dpos) cudaFree(dpos);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return nmlx_fail(NMLX_ERR_INTERNAL, "attention graph test: %s", cudaGetErrorString(e));
    }
    return NMLX_OK;
}
#endif
