/* Decode attention at short contexts: one query (T = 1), at most SHORT_MAX
 * visible keys, head size <= 128, a GQA group of <= 8 query heads. Included
 * by cuda_attention_decode.cu (device code only: its emulation,
 * tests/cuda/attn_decode_emu.cpp, runs it on the CPU too).
 *
 * Why it was written: NMLX_SKIP_OPS=attention (H100, session 21) showed what the
 * flash-decoding kernel costs inside a real decode step: 13.4 us a layer on
 * the 8B 4-bit, 11.4 on the 1B (tg128 after a 16-token prompt), 16% and 22%
 * of a token, while rope_kv, a launch of similar size, costs 0.7 us. The
 * split kernel's chain of dependent memory round trips (K/V, the partials'
 * stores and fence, the atomic count, the last block's loads of the
 * partials) is what a short context pays for, with a few KB of K/V.
 *
 * Here one block a KV head does everything with one round trip to memory:
 * right after the wait for the kernel ahead (q and the newest cache row),
 * every thread issues its loads of q, of its keys (K) and of its values
 * (V) at once; then, from registers and shared memory only:
 *  - scores: 8 lanes a key (NV float4 of the key a lane, q from shared
 *    memory), 4 keys a warp, 32 a round, SHORT_ROUNDS rounds; the dot
 *    added over the 8 lanes by shfl_xor 4, 2, 1; scale, softcap; into
 *    s[row][key];
 *  - softmax: a warp a query row: M = max(sink, scores), p = e^(s - M),
 *    L = sum p (+ e^(sink - M)); p back into s;
 *  - P V: a thread a (float4 column of the head, slice of the keys), its
 *    keys' V rows already in registers; the slices' sums added in slice
 *    order through shared memory; y = sum / L.
 * f32 throughout, a fixed order: deterministic; the split kernel's result
 * to rounding (its online softmax rescales; ~1e-7 relative).
 *
 * In a recorded step the number of keys is known on the device only: the
 * step records this kernel and the split kernel, and each returns at once
 * where the other applies (N <= SHORT_MAX: this one).
 *
 * Measured (H100, session 21): right the first time (test_cuda_ops 13,250
 * and test_cuda_fixtures 502 passed with it), and no faster inside a decode
 * step: tg128 after a 16-token prompt 385.1 / 1,228.2 tok/s (8B / 1B 4-bit)
 * against 384.3 / 1,225.4 with the split kernel. So the 11-13 us a layer
 * that attention costs there is not the split kernel's chain of round
 * trips: a one-trip kernel costs the same. Opt-in (NMLX_CUDA_ATTN_SHORT=1).
 * Session 22 found why (NMLX_CUDA_ATTN_EMPTY, ncu): an empty kernel in
 * attention's place costs ~1 us a layer, so the cost is the kernels' own
 * work, and both are bound by the latency of long instruction chains in
 * few warps (this one: 8 warps a KV head, every round, row and slice in
 * one thread's sequence), not by memory. */
#ifndef NMLX_CUDA_ATTENTION_SHORT_H
#define NMLX_CUDA_ATTENTION_SHORT_H

enum {
    SHORT_WARPS = 8,
    SHORT_THREADS = 32 * SHORT_WARPS,
    SHORT_LPK = 8,                         /* lanes a key (scores) */
    SHORT_KPR = SHORT_THREADS / SHORT_LPK, /* keys a round: 32 */
    SHORT_MAX = 128,                       /* keys at most */
    SHORT_ROUNDS = SHORT_MAX / SHORT_KPR,  /* 4 */
    SHORT_MAX_G = 8,                       /* query rows a KV head */
    SHORT_MAX_HD = 128,
    SHORT_RED = SHORT_THREADS * 4 * SHORT_MAX_G /* floats: the P V slices' sums */
};

/* NV (float4 a lane a key: HD <= 32 NV) where the kernel takes the shape,
 * else 0 */
static inline __host__ __device__ int short_pick(int64_t T, int64_t HD, int64_t G) {
    if (T != 1 || G < 1 || G > SHORT_MAX_G || HD <= 0 || HD % 4 || HD > SHORT_MAX_HD) return 0;
    return (int)((HD + 31) / 32);
}

/* float4 columns a thread row of the P V phase covers (a power of two >=
 * HD / 4, so that it divides the block) */
template <int NV> struct short_cols { static constexpr int v = NV == 1 ? 8 : NV == 2 ? 16 : 32; };

/* Keys one query at q_pos sees: [lo, lo + n), dec_visible's arithmetic
 * (row 0); the host, both kernels and the emulation count them with this */
static inline __host__ __device__ int64_t short_keys(int64_t q_pos, int64_t n_kv, int64_t window,
                                                     int64_t *lo) {
    const int64_t hi = q_pos < n_kv - 1 ? q_pos : n_kv - 1;
    int64_t l = window > 0 ? q_pos - window + 1 : 0;
    l = l < 0 ? 0 : l;
    *lo = l;
    return hi >= l ? hi - l + 1 : 0;
}

/* The block of KV head blockIdx.x; lo, N: its keys (N <= SHORT_MAX) */
template <int NV>
__device__ __forceinline__ void short_block(const nmlx_attn_args &a, int64_t lo, int64_t N) {
    constexpr int VC = short_cols<NV>::v, KS = SHORT_THREADS / VC, VK = SHORT_MAX / KS;
    /* float4 arrays: 16-byte aligned for the float4 accesses */
    __shared__ float4 sq4[SHORT_MAX_G * SHORT_MAX_HD / 4]; /* q rows */
    __shared__ float ss[SHORT_MAX_G * SHORT_MAX];          /* scores, then p */
    __shared__ float sl[SHORT_MAX_G];                      /* L a row */
    __shared__ float4 sred4[SHORT_RED / 4];                /* [KS][G][HD] */
    float *sq = (float *)sq4, *sred = (float *)sred4;
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int grp = lane / SHORT_LPK, lig = lane % SHORT_LPK;
    /* index arithmetic in 32 bits, as dec_block's */
    const int HD = (int)a.HD, G = (int)a.H / (int)a.KVH, kvh = (int)blockIdx.x;
    const float *kbase = a.k + (kvh * a.cap + lo) * HD, *vbase = a.v + (kvh * a.cap + lo) * HD;
    /* every load at once: q (into shared memory below), the keys, the values */
    float qv[(SHORT_MAX_G * SHORT_MAX_HD + SHORT_THREADS - 1) / SHORT_THREADS];
#pragma unroll
    for (int k = 0; k < (int)(sizeof qv / sizeof qv[0]); k++) {
        const int i = tid + k * SHORT_THREADS;
        qv[k] = i < G * HD ? a.q[(kvh * G) * HD + i] : 0.0f;
    }
    float4 kr[SHORT_ROUNDS][NV];
#pragma unroll
    for (int rd = 0; rd < SHORT_ROUNDS; rd++) {
        const int kk = rd * SHORT_KPR + warp * (32 / SHORT_LPK) + grp;
#pragma unroll
        for (int i = 0; i < NV; i++) {
            const int d4 = i * SHORT_LPK + lig;
            kr[rd][i] = kk < N && 4 * d4 < HD ? *((const float4 *)(kbase + kk * HD) + d4)
                                              : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
    }
    const int col = tid % VC, ks = tid / VC;
    const bool colv = 4 * col < HD;
    float4 vr[VK];
#pragma unroll
    for (int m = 0; m < VK; m++) {
        const int kk = ks + KS * m;
        vr[m] = kk < N && colv ? *((const float4 *)(vbase + kk * HD) + col)
                               : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll
    for (int k = 0; k < (int)(sizeof qv / sizeof qv[0]); k++) {
        const int i = tid + k * SHORT_THREADS;
        if (i < SHORT_MAX_G * SHORT_MAX_HD) sq[i] = qv[k];
    }
    __syncthreads();
    /* scores */
#pragma unroll
    for (int rd = 0; rd < SHORT_ROUNDS; rd++) {
        const int kk = rd * SHORT_KPR + warp * (32 / SHORT_LPK) + grp;
        for (int r = 0; r < G; r++) { /* uniform over the block */
            float sc = 0.0f;
#pragma unroll
            for (int i = 0; i < NV; i++) {
                const int d4 = i * SHORT_LPK + lig;
                if (4 * d4 >= HD) break; /* uniform over the lane's rounds */
                const float4 q4 = *(const float4 *)(sq + r * HD + 4 * d4);
                sc = fmaf(q4.x, kr[rd][i].x, sc);
                sc = fmaf(q4.y, kr[rd][i].y, sc);
                sc = fmaf(q4.z, kr[rd][i].z, sc);
                sc = fmaf(q4.w, kr[rd][i].w, sc);
            }
#pragma unroll
            for (int off = SHORT_LPK / 2; off > 0; off >>= 1)
                sc += __shfl_xor_sync(0xffffffffu, sc, off);
            sc *= a.scale;
            if (a.softcap > 0) sc = tanhf(sc / a.softcap) * a.softcap;
            if (lig == 0 && kk < N) ss[r * SHORT_MAX + kk] = sc;
        }
    }
    __syncthreads();
    /* softmax: warp r takes row r */
    for (int r = warp; r < G; r += SHORT_WARPS) {
        const float sink = a.sinks ? a.sinks[kvh * G + r] : -INFINITY;
        float M = sink;
#pragma unroll
        for (int m = 0; m < SHORT_MAX / 32; m++) {
            const int kk = lane + 32 * m;
            if (kk < N) M = fmaxf(M, ss[r * SHORT_MAX + kk]);
        }
        M = dec_warp_max(M);
        float L = 0.0f;
#pragma unroll
        for (int m = 0; m < SHORT_MAX / 32; m++) {
            const int kk = lane + 32 * m;
            if (kk < N) {
                const float p = expf(ss[r * SHORT_MAX + kk] - M);
                ss[r * SHORT_MAX + kk] = p;
                L += p;
            }
        }
        L = dec_warp_sum(L);
        if (lane == 0) sl[r] = L + (a.sinks && M != -INFINITY ? expf(sink - M) : 0.0f);
    }
    __syncthreads();
    /* P V: this thread's column over its slice of the keys */
    for (int r = 0; r < G; r++) {
        float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int m = 0; m < VK; m++) {
            const int kk = ks + KS * m;
            if (kk >= N) break;
            const float p = ss[r * SHORT_MAX + kk];
            acc.x = fmaf(p, vr[m].x, acc.x);
            acc.y = fmaf(p, vr[m].y, acc.y);
            acc.z = fmaf(p, vr[m].z, acc.z);
            acc.w = fmaf(p, vr[m].w, acc.w);
        }
        if (colv) *(float4 *)(sred + (ks * G + r) * HD + 4 * col) = acc;
    }
    __syncthreads();
    /* the slices added in order; rows that see no key get zeros, as the CPU */
    for (int i = tid; i < G * HD; i += SHORT_THREADS) {
        const int r = i / HD;
        float y = 0.0f;
        for (int k = 0; k < KS; k++)
            y += sred[k * G * HD + i];
        const float L = sl[r];
#if DEC_BREAK == 4 /* test hook (attn_decode_emu): not normalised */
        y = N > 0 ? y : 0.0f, (void)L;
#else
        y = N > 0 && L > 0.0f ? y / L : 0.0f;
#endif
        a.out[(kvh * G) * HD + i] = y;
    }
}

/* One query or step: grid (KVH). step: the recorded step's position (a's
 * q_pos and n_kv are deltas from it), or NULL. Returns at once where the
 * keys are more than SHORT_MAX (the split kernel, launched with it in a
 * recorded step, takes them). */
template <int NV>
__global__ void __launch_bounds__(SHORT_THREADS, 1)
    attn_short_kernel(nmlx_attn_args a, const int64_t *step) {
    int64_t q_pos, n_kv;
    dec_start(a, step, &q_pos, &n_kv); /* launched early (cuda_launch_pdl) */
    int64_t lo;
    const int64_t n = short_keys(q_pos, n_kv, a.window, &lo);
    if (n > SHORT_MAX) return;
    short_block<NV>(a, lo, n);
}

#endif
