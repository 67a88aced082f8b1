/* Decode attention for one query (T = 1) in phases: the default for those
 * shapes (head size <= 256, a multiple of 4; <= 8 query heads a KV head).
 * Included by cuda_attention_decode.cu, whose split of the keys over S
 * blocks a KV head, partials and last-block merge (dec_merge) it shares;
 * its emulation (tests/cuda/attn_decode_emu.cpp) runs it on the CPU too.
 *
 * Why: inside a decode step (H100, session 22) dec_block costs ~10 us a
 * layer at a few dozen keys, bound by the latency of each warp's long
 * chain of dependent instructions (ncu: 9.9 cycles an issued
 * instruction, memory stalls the least), not by its loads. Its lane groups
 * each keep a whole online softmax and a 64-float P V accumulator, so a
 * warp runs every row's score, rescale and update key by key, then merges
 * its 4 groups' accumulators with 2 shuffles a float, then the 4 warps'.
 *
 * Here the block's 128 threads share each phase of a tile of C keys, so
 * every thread's part is short and the rows are independent chains:
 *  - scores: TPK threads a key, each FK = 8 float4 of it against every
 *    row's q (shared memory), added over the TPK lanes (shfl_xor) into
 *    sp[key][row];
 *  - softmax: a warp a row (two at 8 rows): the tile's max, p = e^(s - M),
 *    the row's running max M, sum L and rescale alpha (registers of that
 *    warp; alpha through shared memory);
 *  - P V: a thread a (float4 column, slice of VK = 8 keys), its keys' V in
 *    registers, acc[row] = alpha acc[row] + sum p V;
 * then the slices' sums added in slice order (shared memory). The next
 * tile's K is loaded during the softmax and P V, its V during the next
 * scores. C = 1024 / NC keys a tile for NC float4 columns (the head padded
 * to 64 / 128 / 256: C = 64 / 32 / 16), so every thread holds 8 float4 of
 * K and 8 of V whatever the head size.
 *
 * A block's run of keys: dec_chunk's split in whole tiles (at least
 * `run` tiles: NMLX_CUDA_ATTN_PHASED_RUN, default 1); one block with every
 * key writes the output itself, else the blocks write partials (m, l, o)
 * and the last merges them (dec_merge), as dec_block. f32 throughout; the
 * online softmax rescales per tile, not per key (~1e-7 relative to the
 * CPU). */
#ifndef NMLX_CUDA_ATTENTION_PHASED_H
#define NMLX_CUDA_ATTENTION_PHASED_H

/* The tile for NC float4 columns: C keys, TPK threads a key in the scores
 * (FK float4 each), KS slices of VK keys in P V */
template <int NC> struct ph_shape {
    static constexpr int C = 1024 / NC, TPK = DEC_THREADS / C, FK = NC / TPK;
    static constexpr int KS = DEC_THREADS / NC, VK = C / KS;
    static_assert(FK == 8 && VK == 8 && TPK <= 32 && C % DEC_WARPS == 0, "tile shape");
};

/* PH_MIN_BLOCKS: resident blocks an SM the kernels are compiled for up to
 * 4 rows, one fewer at 8 (at most 128 and 168 registers a thread: one
 * register more than 128 made the 8B instance 3 blocks an SM, S 50 instead
 * of 66 on an H100) */
enum { PH_MAX_G = 8, PH_MIN_BLOCKS = 4 };

/* The instances: X(id, NC, R), R rows (the group rounded up to a power of
 * two) */
#define PH_CONFIGS(X)                                                                              \
    X(0, 16, 1)                                                                                    \
    X(1, 16, 2)                                                                                    \
    X(2, 16, 4)                                                                                    \
    X(3, 16, 8)                                                                                    \
    X(4, 32, 1)                                                                                    \
    X(5, 32, 2)                                                                                    \
    X(6, 32, 4)                                                                                    \
    X(7, 32, 8)                                                                                    \
    X(8, 64, 1)                                                                                    \
    X(9, 64, 2)                                                                                    \
    X(10, 64, 4)                                                                                   \
    X(11, 64, 8)

/* The instance for T queries, head size HD and G query heads a KV head, or
 * -1 (not taken) */
static inline int ph_pick(int64_t T, int64_t HD, int64_t G) {
    if (T != 1 || HD <= 0 || HD % 4 || HD > 256 || G < 1 || G > PH_MAX_G) return -1;
    const int r = G <= 1 ? 0 : G <= 2 ? 1 : G <= 4 ? 2 : 3;
    return (HD <= 64 ? 0 : HD <= 128 ? 4 : 8) + r;
}

/* keys a tile of instance id (the host's split of the keys) */
static inline int ph_tile_keys(int id) { return 1024 / (id < 4 ? 16 : id < 8 ? 32 : 64); }

/* A block's run of keys: N keys over S blocks in whole tiles of C, at
 * least `run` tiles (the host and every block compute the same) */
static inline __host__ __device__ int64_t ph_chunk(int64_t N, int S, int C, int run) {
    const int64_t per = dec_div(N + S - 1, S);
    const int64_t len = dec_div(per + C - 1, C) * C;
    return len > (int64_t)run * C ? len : (int64_t)run * C;
}

/* Block (s, kvh) = (blockIdx.x, blockIdx.y) of one query at q_pos over
 * n_kv keys; po / pml / cnt as dec_block's (RQ = G rows a block). */
template <int NC, int R>
__device__ __forceinline__ void ph_block(const nmlx_attn_args &a, int64_t q_pos, int64_t n_kv,
                                         int S, int run, float *po, float *pml, unsigned *cnt) {
    using P = ph_shape<NC>;
    constexpr int C = P::C, TPK = P::TPK, FK = P::FK, KS = P::KS, VK = P::VK;
    constexpr int RW = (R + DEC_WARPS - 1) / DEC_WARPS, KL = (C + 31) / 32;
    __shared__ float4 sq[R * NC];        /* q rows, zero past HD and G */
    __shared__ float4 sred[KS * R * NC]; /* P V slices' sums [KS][R][NC] */
    __shared__ float4 sp4[(C * R + 3) / 4];
    __shared__ float salpha[R], smax[R], ssum[R], rl[R], cw[R * DEC_MAX_S];
    __shared__ int64_t slo[1], shi[1];
    __shared__ int last;
    float *sp = (float *)sp4; /* a tile's scores, then p: [C][R] */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    /* index arithmetic in 32 bits, as dec_block's */
    const int HD = (int)a.HD, HD4 = HD / 4, G = (int)a.H / (int)a.KVH;
    const int s = (int)blockIdx.x, kvh = (int)blockIdx.y;
    int64_t j0, jh; /* visible keys: [j0, jh] */
    dec_visible(a, q_pos, n_kv, 0, &j0, &jh);
    const int64_t N = jh >= j0 ? jh - j0 + 1 : 0;
    const int64_t len = N > 0 ? ph_chunk(N, S, C, run) : 1;
    const int nb = (int)dec_div(N + len - 1, len);
    /* as dec_block: blocks past the keys return, block 0 stays when there
     * is no key (its run is empty: it writes the zeros) */
    if (s >= (nb > 0 ? nb : 1)) return;
    const bool direct = nb == 0 || (nb == 1 && DEC_DIRECT);
    if (tid == 0) slo[0] = j0, shi[0] = jh;
    const int64_t kb0 = j0 + (int64_t)s * len, kb1 = kb0 + len < jh + 1 ? kb0 + len : jh + 1;
    const float *kbase = a.k + kvh * a.cap * HD, *vbase = a.v + kvh * a.cap * HD;
    const int key = tid / TPK, sub = tid % TPK; /* the scores' part */
    const int col = tid % NC, slice = tid / NC; /* P V's part */
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float4 kr[FK], vr[VK];
    auto load_k = [&](int64_t t0) {
        const int64_t j = t0 + key;
#pragma unroll
        for (int i = 0; i < FK; i++) {
            const int f = sub + TPK * i;
            kr[i] = j < kb1 && f < HD4 ? *((const float4 *)(kbase + j * HD) + f) : zero;
        }
    };
    auto load_v = [&](int64_t t0) {
#pragma unroll
        for (int v = 0; v < VK; v++) {
            const int64_t j = t0 + slice * VK + v;
            vr[v] = j < kb1 && col < HD4 ? *((const float4 *)(vbase + j * HD) + col) : zero;
        }
    };
    load_k(kb0); /* in flight while q is staged */
    load_v(kb0);
    for (int i = tid; i < R * NC; i += DEC_THREADS) {
        const int r = i / NC, f = i % NC;
        float4 x = zero;
        if (r < G && f < HD4) {
            const float *qr = a.q + (int64_t)(kvh * G + r) * HD + 4 * f;
            x = make_float4(qr[0], qr[1], qr[2], qr[3]);
        }
        sq[i] = x;
    }
    float mrow[RW], lrow[RW]; /* the softmax warp's rows: running max and sum */
#pragma unroll
    for (int j = 0; j < RW; j++)
        mrow[j] = -INFINITY, lrow[j] = 0.0f;
    float4 acc[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        acc[r] = zero;
    __syncthreads();

    for (int64_t t0 = kb0; t0 < kb1; t0 += C) {
        const bool more = t0 + C < kb1; /* uniform over the block */
        /* scores: every row an independent chain (rows past G: q is zero) */
        float sc[R];
#pragma unroll
        for (int r = 0; r < R; r++)
            sc[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < FK; i++) {
            const int f = sub + TPK * i;
#pragma unroll
            for (int r = 0; r < R; r++) {
                const float4 q4 = sq[r * NC + f];
                sc[r] = fmaf(q4.x, kr[i].x, sc[r]);
                sc[r] = fmaf(q4.y, kr[i].y, sc[r]);
                sc[r] = fmaf(q4.z, kr[i].z, sc[r]);
                sc[r] = fmaf(q4.w, kr[i].w, sc[r]);
            }
        }
        if (more) load_k(t0 + C); /* the next tile's keys, in flight from here */
#pragma unroll
        for (int off = TPK / 2; off > 0; off >>= 1)
#pragma unroll
            for (int r = 0; r < R; r++)
                sc[r] += __shfl_xor_sync(0xffffffffu, sc[r], off);
        if (sub == 0) {
            const bool valid = t0 + key < kb1;
#pragma unroll
            for (int r = 0; r < R; r++) {
                float x = sc[r] * a.scale;
                if (a.softcap > 0) x = tanhf(x / a.softcap) * a.softcap;
                sp[key * R + r] = valid ? x : -INFINITY;
            }
        }
        __syncthreads();
        /* softmax: warp w has rows w (and w + 4); every tile has a visible
         * key, so its max is finite */
#pragma unroll
        for (int j = 0; j < RW; j++) {
            const int r = warp + DEC_WARPS * j;
            if (r >= R) break; /* uniform over the warp */
            float x[KL], mt = -INFINITY;
#pragma unroll
            for (int u = 0; u < KL; u++) {
                const int k = lane + 32 * u;
                x[u] = k < C ? sp[k * R + r] : -INFINITY;
                mt = fmaxf(mt, x[u]);
            }
            mt = dec_warp_max(mt);
            const float mn = fmaxf(mrow[j], mt);
            const float alpha = mrow[j] == -INFINITY ? 0.0f : expf(mrow[j] - mn);
            float ps = 0.0f;
#pragma unroll
            for (int u = 0; u < KL; u++) {
                const int k = lane + 32 * u;
                const float p = expf(x[u] - mn);
                if (k < C) sp[k * R + r] = p;
                ps += p;
            }
            ps = dec_warp_sum(ps);
            lrow[j] = fmaf(lrow[j], alpha, ps);
            mrow[j] = mn;
            if (lane == 0) salpha[r] = alpha;
        }
        __syncthreads();
        /* P V: this thread's column over its slice's keys */
#pragma unroll
        for (int r = 0; r < R; r++) {
            const float al = salpha[r];
            acc[r] = make_float4(acc[r].x * al, acc[r].y * al, acc[r].z * al, acc[r].w * al);
        }
#pragma unroll
        for (int v = 0; v < VK; v++) {
            const int k = slice * VK + v;
            float p[R];
            if constexpr (R >= 4) {
#pragma unroll
                for (int u = 0; u < R / 4; u++) {
                    const float4 t = sp4[k * (R / 4) + u];
                    p[4 * u] = t.x, p[4 * u + 1] = t.y, p[4 * u + 2] = t.z, p[4 * u + 3] = t.w;
                }
            } else {
#pragma unroll
                for (int r = 0; r < R; r++)
                    p[r] = sp[k * R + r];
            }
#pragma unroll
            for (int r = 0; r < R; r++) {
                acc[r].x = fmaf(p[r], vr[v].x, acc[r].x);
                acc[r].y = fmaf(p[r], vr[v].y, acc[r].y);
                acc[r].z = fmaf(p[r], vr[v].z, acc[r].z);
                acc[r].w = fmaf(p[r], vr[v].w, acc[r].w);
            }
        }
        if (more) {
            load_v(t0 + C);
            __syncthreads(); /* sp and salpha are the next tile's */
        }
    }

    /* the slices' sums and the rows' max and sum, then a thread a float4
     * of a row: the block's partial, or (one block) the output */
#pragma unroll
    for (int r = 0; r < R; r++)
        sred[(slice * R + r) * NC + col] = acc[r];
#pragma unroll
    for (int j = 0; j < RW; j++) {
        const int r = warp + DEC_WARPS * j;
        if (r < R && lane == 0) smax[r] = mrow[j], ssum[r] = lrow[j];
    }
    __syncthreads();
    const size_t row0 = ((size_t)kvh * (size_t)S + (size_t)s) * (size_t)G;
    for (int i = tid; i < G * NC; i += DEC_THREADS) {
        const int r = i / NC, c = i % NC;
        if (c >= HD4) continue;
        float4 y = sred[r * NC + c];
#pragma unroll
        for (int sl = 1; sl < KS; sl++) {
            const float4 t = sred[(sl * R + r) * NC + c];
            y = make_float4(y.x + t.x, y.y + t.y, y.z + t.z, y.w + t.w);
        }
        const float M = smax[r], L = ssum[r];
        if (!direct) {
            *((float4 *)(po + (row0 + (size_t)r) * (size_t)HD) + c) = y;
            if (c == 0) pml[2 * (row0 + (size_t)r)] = M, pml[2 * (row0 + (size_t)r) + 1] = L;
            continue;
        }
        /* one block: dec_merge's arithmetic on this one partial (the same
         * bits, as dec_block's direct output) */
        const int h = kvh * G + r;
        float4 o = zero;
        if (N > 0) { /* else nothing visible: zero, as the CPU */
            float f, Lt;
            dec_one_partial(a, h, M, L, &f, &Lt);
#if DEC_BREAK == 5 /* test hook (attn_decode_emu): not normalised */
            (void)Lt, o = make_float4(fmaf(f, y.x, 0.0f), fmaf(f, y.y, 0.0f), fmaf(f, y.z, 0.0f),
                                      fmaf(f, y.w, 0.0f));
#else
            if (Lt > 0.0f)
                o = make_float4(fmaf(f, y.x, 0.0f) / Lt, fmaf(f, y.y, 0.0f) / Lt,
                                fmaf(f, y.z, 0.0f) / Lt, fmaf(f, y.w, 0.0f) / Lt);
#endif
        }
        float *out = a.out + (int64_t)h * HD + 4 * c;
        out[0] = o.x, out[1] = o.y, out[2] = o.z, out[3] = o.w;
    }
    if (direct) return;
    dec_merge(a, kvh, S, G, G, nb, po, pml, cnt, cw, rl, &last, slo, shi);
}

/* One query: grid (S, KVH); step as attn_decode_kernel's */
template <int NC, int R>
__global__ void __launch_bounds__(DEC_THREADS, R <= 4 ? PH_MIN_BLOCKS : PH_MIN_BLOCKS - 1)
    attn_phased_kernel(nmlx_attn_args a, const int64_t *step, int S, int run, float *po, float *pml,
                       unsigned *cnt) {
    int64_t q_pos, n_kv;
    dec_start(a, step, &q_pos, &n_kv); /* launched early (cuda_launch_pdl) */
    ph_block<NC, R>(a, q_pos, n_kv, S, run, po, pml, cnt);
}

#endif
