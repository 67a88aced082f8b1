/* The few-rows quantized mat-mat, v3 (NMLX_CUDA_QROWS=v3, opt-in; written
 * without a GPU, unmeasured): v2 (cuda_qrows2.h) with x and the group
 * scales staged in shared memory by the block itself. Same rules as
 * cuda_qrows2.h (no CUDA header: tests/cuda/qrows2_emu.cpp runs it on the
 * CPU); besides v2's primitives the includer provides
 *   unsigned char *qr3_smem()                   the dynamic shared memory
 *   qr2_u4  qr3_lds16(const unsigned char *p)   16-byte shared load
 *   float   qr3_ldsf(const unsigned char *p)    4-byte shared load
 *   void    qr3_sts16(unsigned char *p, qr2_u4) / qr3_stsf(unsigned char *p, float)
 * and the built-ins __shfl_xor_sync and __ldg on float / float4.
 *
 * Why (v2 on the H100, session 14: 4096x4096 4-bit at T = 8 18.3 us against
 * 8.6 for the one-token mat-vec; T = 2 as slow as T = 8, 8-bit as 4-bit;
 * 23% occupancy, 62% of cycles with no eligible warp): not the math, not
 * the bytes, but the chain of dependent round trips. v2's call is two
 * launches (qx_split_kernel writes x as bf16 hi + lo and chunk sums to
 * global, the kernel reads them back), and each of a warp's ~4-8 chunk
 * iterations issues its x and scale loads (L2, the scales often from
 * DRAM: each is read by one warp once) and waits for them before its
 * first mma: the codes are loaded one chunk ahead, but nothing else is.
 *
 * v3, what changes (the rest is v2's, line for line):
 *  - no qx_split launch: each block reads the f32 x of its T tokens over
 *    its split's K range and converts it into shared memory as bf16 hi +
 *    lo and the per-32-input chunk sums, with exactly qx_split_kernel's
 *    arithmetic (a thread per 8 inputs: hi = bf16(v), lo = bf16(v - hi),
 *    sum of the 4 pairs in order from 0, then the 4 threads of a chunk
 *    added by shfl_xor 1 then 2): the same bits, so v3's y equals v2's bit
 *    for bit under the same configuration (mt, wr, split: the same chunk
 *    order a warp, the same reductions), checked by qrows2_emu and
 *    test_cuda_qrows;
 *  - the group scales and biases of the block's rows over the piece's
 *    groups staged as f32 (the conversion of qr2_scale: exact, the same
 *    values), in the same pass: after one barrier a warp's chunk loop
 *    waits on nothing but its codes (the ring below) and shared
 *    memory;
 *  - the codes DEPTH chunks ahead (a register ring; DEPTH 4 where MT NT
 *    <= 2, e.g. T <= 8 at the default MT = 2; 2 at MT NT = 4; 1 past, as
 *    v2: the accumulators take the registers), the first DEPTH chunks'
 *    loads issued before the staging, so the weight stream's first DRAM
 *    round trips overlap it. In v2, 2-3 chunks ahead did not help (session
 *    14), but there each iteration also waited on its x and scale loads;
 *    here nothing else is loaded in the loop;
 *  - shared memory is bounded (QR3_SMEM_BUDGET, 2 blocks an SM): the
 *    split's K range is staged in pieces of pc chunks (pc a multiple of
 *    the warps sharing a row group, WK = 8 / wr, so that each warp's
 *    chunks stay v2's sequence: cb + wk, + WK, ...): barrier, stage the
 *    piece, barrier, its chunks; the code ring runs on across pieces.
 *    The pieces are balanced (qr3_pick_pc); at the defaults T <= 8 takes
 *    one or two (28672x4096 at T = 8: two of 64 chunks, 95 KB), T = 32
 *    several (4096x4096: 4 of 16 chunks, 2 a warp), T = 64 many (one
 *    block an SM at 255 registers, so a budget of 200 KB: 4096x14336, 2
 *    splits of 224 chunks, 14 pieces of 16);
 *  - the warps' sums (v2's red, NT x 4 KB) reuse the staging area after a
 *    barrier: the block's shared memory is max(staging, reduction).
 * Kept: v2's deterministic split-K (partials [S][T][D], the last block of
 * a row block adds them in order s = 0..S-1) and its split choice.
 *
 * Shared memory of a piece (pc chunks, T tokens, RB = 16 MT wr rows):
 *   hi [pc][T][32] bf16, lo [pc][T][32] bf16, xs [pc][T] f32,
 *   sc [pg][RB + 1] f32, bi [pg][RB + 1] f32 (pg = ((pc - 1) >> gshift) + 2)
 * B-fragment reads without bank conflicts: lane (g, c4) reads 16 bytes at
 * token 8j + g, inputs 8 c4..8 c4 + 7 of its chunk, i.e. byte (n 32 + 8 c4)
 * 2 of the chunk's [T][32] block; a 16-byte shared load runs as 4 phases
 * of 8 lanes, and the 8 lanes of a phase (g = 2p, 2p + 1, c4 = 0..3) read
 * tokens 2p, 2p + 1: 128 contiguous bytes, all 32 banks once (tokens past T
 * read token 0, as v2: the last, partial token tile may meet a 2-way
 * conflict). The chunk sums: the 4 lanes of a c4 read one word
 * (broadcast), 8 consecutive words. The scales: lanes g = 0..7 read rows g
 * (+ 8) of one group, consecutive words; the row stride RB + 1 keeps the
 * staging writes (consecutive threads: consecutive groups of a row)
 * conflict-free too. The staging writes of x: the 8 lanes of a phase
 * write tokens t, t + 1 of one chunk (threads: c4 fastest, then token,
 * then chunk), 128 contiguous bytes; the global reads behind them: 4 lanes
 * read a token's 128 bytes of a chunk (one line), 8 lines a warp.
 *
 * Predicted (H100, bench_cuda_quant's few-rows table: q4 g64 bf16 scales,
 * us a call, wall time of back-to-back calls at the default mt=2, wr=1,
 * bps=2; v2 measured 18.3 us at 4096x4096 T = 8, 17.4 at T = 2, the
 * one-token mat-vec 8.6). A call: one launch instead of two (~2-3 us
 * less: qx_split's launch and the dependency on it), then a block's time
 * is the staging (its T x K range x 4 bytes of x from L2: 64 KB at
 * 4096x4096, T = 8, S = 2; all blocks together 16 MB, ~2 us at the L2's
 * ~7 TB/s) overlapped with its first DEPTH chunks of codes, then the
 * loop, which waits only on the code ring (~1-2 DRAM latencies at
 * DEPTH 4 for 8 chunks a warp), then the split-K tail. So at T = 2..8
 * about the mat-vec's time plus the staging; at T = 32 the staging
 * dominates (4x the x bytes, in 2-3 pieces a block, not overlapped with
 * the loop, DEPTH 1) and the x bytes are not reduced (x from L2 once per
 * block of RB = 32 rows: 2x the code bytes at T = 8 over 28672 rows; wr = 2
 * or 4 halves or quarters that, the next session should sweep wr with v3):
 *                  4096x4096  6144x4096  28672x4096  4096x14336
 *   T = 2:            ~8         ~9         ~24         ~14
 *   T = 8:           ~9.5       ~11         ~28         ~17
 *   T = 32:          ~18        ~22         ~60         ~40
 * i.e. ~0.5x v2 at T = 2..8, ~0.8x at T = 32, and T = 2 cheaper than T =
 * 8 (less x to stage). If T = 8 does not fall under ~12 us at 4096x4096,
 * the round trips were not the cause: look at the split-K tail (the last
 * block reads S partials), the staging burst (double-buffer the pieces)
 * and the x traffic (wr). */
#ifndef NMLX_CUDA_QROWS3_H
#define NMLX_CUDA_QROWS3_H

#include "compute/cuda/cuda_qrows2.h"

#ifndef QR3_BREAK
#define QR3_BREAK 0 /* tests/cuda/qrows2_emu.cpp's deliberately broken builds: 1, 2 */
#endif

/* dynamic shared memory a block aims at: 2 blocks an SM (228 KB an SM on
 * sm_90, 1 KB of it reserved a block) */
enum { QR3_SMEM_BUDGET = 100 * 1024, QR3_SMEM_MAX = 227 * 1024 };

/* the budget of a form: twice where its registers keep one block an SM
 * anyway (MT NT > 8: __launch_bounds__ asks for 1), within the GPU's
 * opt-in limit a block */
__host__ __device__ inline int qr3_budget(int mt, int nt, int optin) {
    const int b = mt * nt <= 8 ? (int)QR3_SMEM_BUDGET : 2 * (int)QR3_SMEM_BUDGET;
    return b < optin ? b : optin;
}

/* the includer's primitives */
__device__ __forceinline__ unsigned char *qr3_smem();
__device__ __forceinline__ qr2_u4 qr3_lds16(const unsigned char *p);
__device__ __forceinline__ float qr3_ldsf(const unsigned char *p);
__device__ __forceinline__ void qr3_sts16(unsigned char *p, qr2_u4 v);
__device__ __forceinline__ void qr3_stsf(unsigned char *p, float v);

/* as qr2_args, with the f32 x in place of qx_split's output */
struct qr3_args {
    const uint8_t *w;
    const void *scales, *biases;
    int gshift;
    const float *x; /* [T, N] f32 (rows 128-byte multiples apart: N % 32 == 0) */
    int xvec;       /* x 16-byte aligned: float4 loads */
    float *y, *part;
    unsigned *cnt;
    const void *lbias;
    int lbdt;
    int T, S, wr;
    int pc; /* chunks a piece, a multiple of 8 / wr */
    int64_t D, N;
};

/* byte offsets of a piece's arrays in shared memory, and the total */
struct qr3_layout {
    int lo, xs, sc, bi, rbp, pg, bytes;
};

__host__ __device__ inline qr3_layout qr3_layout_of(int T, int pc, int rb, int gshift, int nt,
                                                    bool mx) {
    qr3_layout l;
    l.rbp = rb + 1;
    l.pg = ((pc - 1) >> gshift) + 2;
    l.lo = pc * T * 64;
    l.xs = 2 * l.lo;
    l.sc = l.xs + pc * T * 4;
    l.bi = l.sc + l.pg * l.rbp * 4;
    int n = mx ? l.bi : l.bi + l.pg * l.rbp * 4;
    const int red = QR2_WARPS * nt * 4 * 32 * 4; /* the warps' sums, after the loop */
    n = n > red ? n : red;
    l.bytes = (n + 15) & ~15;
    return l;
}

/* Chunks a piece: the split's most chunks (ceil(C / S)) rounded up to a
 * multiple of wk, in as few balanced pieces as keep the layout within
 * budget (never under wk chunks: at most ~80 KB, T = 64) */
__host__ __device__ inline int qr3_pick_pc(int T, int C, int S, int wr, int rb, int gshift, int nt,
                                           bool mx, int budget) {
    const int wk = QR2_WARPS / wr, kmax = (C + S - 1) / S;
    const int need = (kmax + wk - 1) / wk * wk;
    int most = need;
    while (most > wk && qr3_layout_of(T, most, rb, gshift, nt, mx).bytes > budget)
        most -= wk;
    const int pieces = (need + most - 1) / most;
    const int pc = (kmax + pieces - 1) / pieces;
    return (pc + wk - 1) / wk * wk;
}

/* Stage chunks [p0, p1) of x (tokens 0..T-1) as hi, lo, chunk sums, and the
 * scales (biases) of rows d0..d0+RB-1 (past D: row D - 1, as v2) over the
 * piece's groups. x: qx_split_kernel's arithmetic exactly (see above). */
template <int SC, int U>
__device__ __forceinline__ void qr3_stage(const qr3_args &a, unsigned char *sm, const qr3_layout &L,
                                          int p0, int p1, int64_t d0, int RB, int tid, int warp,
                                          int lane) {
    constexpr bool MX = SC == QR2_SC_E8M0;
    const int T = a.T, n8 = (p1 - p0) * T * 4;
    const int64_t N = a.N;
    for (int base = warp * 32; base < n8; base += U * QR2_THREADS) {
        float v[U][8];
        /* every load of the U pieces first */
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int i = base + u * QR2_THREADS + lane;
#pragma unroll
            for (int k = 0; k < 8; k++)
                v[u][k] = 0.0f;
            if (i < n8) {
                const int q = i >> 2, c4 = i & 3, t = q % T, cl = q / T;
                const float *p = a.x + (int64_t)t * N + (int64_t)(p0 + cl) * 32 + 8 * c4;
                if (a.xvec) {
                    const float4 x0 = __ldg((const float4 *)p), x1 = __ldg((const float4 *)p + 1);
                    v[u][0] = x0.x, v[u][1] = x0.y, v[u][2] = x0.z, v[u][3] = x0.w;
                    v[u][4] = x1.x, v[u][5] = x1.y, v[u][6] = x1.z, v[u][7] = x1.w;
                } else {
#pragma unroll
                    for (int k = 0; k < 8; k++)
                        v[u][k] = __ldg(p + k);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int i = base + u * QR2_THREADS + lane;
            float sum = 0.0f;
            uint32_t h[4], l[4];
#pragma unroll
            for (int j = 0; j < 4; j++) {
#if QR3_BREAK == 1 /* test hook (qrows2_emu): the chunk sum in another order (not v2's bits) */
                sum = (sum + v[u][2 * j]) + v[u][2 * j + 1];
#else
                sum += v[u][2 * j] + v[u][2 * j + 1];
#endif
                h[j] = qr2_pack_bf16(v[u][2 * j], v[u][2 * j + 1]);
                l[j] = qr2_pack_bf16(v[u][2 * j] - __uint_as_float(h[j] << 16),
                                     v[u][2 * j + 1] - __uint_as_float(h[j] & 0xffff0000u));
            }
            /* the 4 threads of a chunk are lanes 4m..4m+3 (base % 32 == 0) */
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            if (i < n8) {
                /* piece i = (cl T + t) 4 + c4: hi / lo at byte 16 i, the sum at word i / 4 */
                qr3_sts16(sm + 16 * i, qr2_u4{h[0], h[1], h[2], h[3]});
                qr3_sts16(sm + L.lo + 16 * i, qr2_u4{l[0], l[1], l[2], l[3]});
                if (!MX && (i & 3) == 0) qr3_stsf(sm + L.xs + 4 * (i >> 2), sum);
            }
        }
    }
    /* the scales (biases): consecutive threads, consecutive groups of a row */
    const int64_t D = a.D, G = N >> (a.gshift + 5);
    const int g0 = p0 >> a.gshift, ng = ((p1 - 1) >> a.gshift) - g0 + 1;
    for (int v = tid; v < ng * RB; v += QR2_THREADS) {
        const int gl = v % ng, r = v / ng;
        const int64_t d = d0 + r < D ? d0 + r : D - 1, si = d * G + g0 + gl;
        const int o = (gl * L.rbp + r) * 4;
        qr3_stsf(sm + L.sc + o, qr2_scale<SC>(a.scales, si));
        if (!MX) qr3_stsf(sm + L.bi + o, qr2_scale<SC>(a.biases, si));
    }
}

/* a lane's codes of one row and chunk: BITS bytes (<= 4: one register) */
template <int BITS> struct qr3_code { typedef uint64_t t; };
template <> struct qr3_code<2> { typedef uint32_t t; };
template <> struct qr3_code<3> { typedef uint32_t t; };
template <> struct qr3_code<4> { typedef uint32_t t; };

/* chunks of codes a warp has in flight ahead of the one it multiplies: as
 * many as the accumulators leave registers for (128 a thread) */
template <int MT, int NT> struct qr3_depth {
    static constexpr int v = MT * NT <= 2 ? 4 : MT * NT <= 4 ? 2 : 1;
};

/* The block: v2's (WR row groups of 16 MT rows, the 8 / WR warps of a
 * group taking the split's chunks in turn), x and scales from shared
 * memory, the codes DEPTH chunks ahead (v2: 1; v2's loop also waited on
 * its x and scale loads, which hid the codes' latency behind theirs). */
template <int BITS, int SC, int NT, int MT>
__global__ void __launch_bounds__(QR2_THREADS, MT *NT <= 8 ? 2 : 1)
    qrows3_kernel(const qr3_args a) {
    qr2_pdl();
    constexpr bool MX = SC == QR2_SC_E8M0;
    /* staging loads a thread in flight at once: fewer where the accumulators
     * take the registers */
    constexpr int U = MT * NT >= 16 ? 1 : MT * NT >= 8 ? 2 : 4;
    constexpr int DEPTH = qr3_depth<MT, NT>::v;
    typedef typename qr3_code<BITS>::t ct;
    __shared__ unsigned last_block;
    unsigned char *sm = qr3_smem();
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, c4 = lane & 3;
    const int T = a.T, S = a.S, sp = (int)blockIdx.y;
    const int WR = a.wr, WK = QR2_WARPS / WR, wr = warp % WR, wk = warp / WR;
    const int RB = 16 * MT * WR; /* weight rows a block */
    const int64_t D = a.D, d0 = (int64_t)blockIdx.x * RB, rowb = a.N * BITS / 8;
    const int64_t dw = d0 + 16 * MT * wr; /* this warp's rows */
    const int N = (int)a.N, C = N >> 5;
    const int cb = (int)((int64_t)C * sp / S), ce = (int)((int64_t)C * (sp + 1) / S);
    const qr3_layout L = qr3_layout_of(T, a.pc, RB, a.gshift, NT, MX);
    /* rows g and g + 8 of each m16 tile (past D: row D - 1, not stored), and
     * their offsets in a staged group's scales */
    int ra[MT], rb[MT], sa[MT], sb[MT];
#pragma unroll
    for (int i = 0; i < MT; i++) {
        const int64_t da = dw + 16 * i + g, db = da + 8;
        ra[i] = (int)(da < D ? da : D - 1), rb[i] = (int)(db < D ? db : D - 1);
        sa[i] = (16 * MT * wr + 16 * i + g) * 4, sb[i] = sa[i] + 32;
    }
    /* this lane's token in each group of 8 (B fragment: its 16 bytes of a
     * chunk's [T][32] block) and the two tokens of its sums (C fragment);
     * tokens past T read token 0, not stored */
    int xoff[NT], tc[NT][2];
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const int n = 8 * j + g;
        xoff[j] = (n < T ? n : 0) * 64 + 16 * c4;
        const int t0 = 8 * j + 2 * c4;
        tc[j][0] = (t0 < T ? t0 : 0) * 4;
        tc[j][1] = (t0 + 1 < T ? t0 + 1 : 0) * 4;
    }
    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                acc[i][j][e] = 0.0f;
    const float pk = MX ? 16384.0f : 1.0f; /* MXFP4: the codes' 2^-14 back (exact) */
    /* the warp's first DEPTH chunks' codes, in flight while the block
     * stages x (chunks past the split: chunk cb again, not used) */
    ct va[DEPTH][MT], vb[DEPTH][MT];
#pragma unroll
    for (int k = 0; k < DEPTH; k++) {
        const int ch = cb + wk + k * WK < ce ? cb + wk + k * WK : cb;
#pragma unroll
        for (int i = 0; i < MT; i++) {
            va[k][i] = cb < ce ? (ct)qr2_load8<BITS>(a.w + ra[i] * rowb, ch * 4 + c4) : 0;
            vb[k][i] = cb < ce ? (ct)qr2_load8<BITS>(a.w + rb[i] * rowb, ch * 4 + c4) : 0;
        }
    }
    for (int p0 = cb; p0 < ce; p0 += a.pc) {
        const int p1 = p0 + a.pc < ce ? p0 + a.pc : ce;
#if QR3_BREAK != 2 /* test hook (qrows2_emu): a piece staged over one still being read */
        if (p0 != cb) __syncthreads(); /* every warp done with the piece before */
#endif
        qr3_stage<SC, U>(a, sm, L, p0, p1, d0, RB, tid, warp, lane);
        __syncthreads();
        const int g0 = p0 >> a.gshift;
        /* the warp's chunks of the piece: v2's sequence (pc % WK == 0) */
        for (int ch = p0 + wk; ch < p1; ch += WK) {
            const int cl = ch - p0, gl = (ch >> a.gshift) - g0;
            /* the codes DEPTH chunks on (across pieces too), then the shared loads */
            ct na[MT], nb[MT];
            float fsa[MT], fsb[MT], fba[MT], fbb[MT];
            const int chn =
                ch + DEPTH * WK < ce ? ch + DEPTH * WK : ch; /* past: its own (cached) */
#pragma unroll
            for (int i = 0; i < MT; i++) {
                na[i] = (ct)qr2_load8<BITS>(a.w + ra[i] * rowb, chn * 4 + c4);
                nb[i] = (ct)qr2_load8<BITS>(a.w + rb[i] * rowb, chn * 4 + c4);
            }
            const unsigned char *ss = sm + L.sc + gl * L.rbp * 4, *bs = sm + L.bi + gl * L.rbp * 4;
#pragma unroll
            for (int i = 0; i < MT; i++) {
                fsa[i] = qr3_ldsf(ss + sa[i]);
                fsb[i] = qr3_ldsf(ss + sb[i]);
                fba[i] = MX ? 0.0f : qr3_ldsf(bs + sa[i]);
                fbb[i] = MX ? 0.0f : qr3_ldsf(bs + sb[i]);
            }
            qr2_u4 xh[NT], xl[NT];
            float s0[NT], s1[NT];
            const unsigned char *xc = sm + cl * T * 64, *sc = sm + L.xs + cl * T * 4;
#pragma unroll
            for (int j = 0; j < NT; j++) {
                xh[j] = qr3_lds16(xc + xoff[j]);
                xl[j] = qr3_lds16(xc + L.lo + xoff[j]);
                s0[j] = MX ? 0.0f : qr3_ldsf(sc + tc[j][0]);
                s1[j] = MX ? 0.0f : qr3_ldsf(sc + tc[j][1]);
            }
            /* v2's math, operation for operation */
#pragma unroll
            for (int i = 0; i < MT; i++) {
                uint32_t pa[4], pb[4];
                qr2_codes<BITS, MX>(va[0][i], pa);
                qr2_codes<BITS, MX>(vb[0][i], pb);
                const uint32_t a0[4] = {pa[0], pb[0], pa[1], pb[1]},
                               a1[4] = {pa[2], pb[2], pa[3], pb[3]};
#pragma unroll
                for (int j = 0; j < NT; j++) {
                    float p[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                    qr2_mma(p, a0, xh[j].x, xh[j].y);
                    qr2_mma(p, a0, xl[j].x, xl[j].y);
                    qr2_mma(p, a1, xh[j].z, xh[j].w);
                    qr2_mma(p, a1, xl[j].z, xl[j].w);
                    acc[i][j][0] = fmaf(fsa[i], p[0] * pk, fmaf(fba[i], s0[j], acc[i][j][0]));
                    acc[i][j][1] = fmaf(fsa[i], p[1] * pk, fmaf(fba[i], s1[j], acc[i][j][1]));
                    acc[i][j][2] = fmaf(fsb[i], p[2] * pk, fmaf(fbb[i], s0[j], acc[i][j][2]));
                    acc[i][j][3] = fmaf(fsb[i], p[3] * pk, fmaf(fbb[i], s1[j], acc[i][j][3]));
                }
            }
#pragma unroll
            for (int k = 0; k + 1 < DEPTH; k++)
#pragma unroll
                for (int i = 0; i < MT; i++)
                    va[k][i] = va[k + 1][i], vb[k][i] = vb[k + 1][i];
#pragma unroll
            for (int i = 0; i < MT; i++)
                va[DEPTH - 1][i] = na[i], vb[DEPTH - 1][i] = nb[i];
        }
    }
    /* the warps' sums in the staging area (every warp done with it), one
     * m16 tile at a time, added in wk order: v2's reduction */
    __syncthreads();
    float *red = (float *)sm; /* [QR2_WARPS][NT * 4][32] */
#pragma unroll
    for (int i = 0; i < MT; i++) {
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                qr3_stsf(sm + ((warp * NT * 4 + j * 4 + e) * 32 + lane) * 4, acc[i][j][e]);
        __syncthreads();
        for (int v = tid; v < WR * NT * 4 * 32; v += QR2_THREADS) {
            const int r = v / (NT * 4 * 32), e = (v >> 5) % (NT * 4), l = v & 31;
            const int j = e >> 2, k = e & 3;
            const int64_t d = d0 + 16 * MT * r + 16 * i + (l >> 2) + (k >= 2 ? 8 : 0);
            const int t = 8 * j + 2 * (l & 3) + (k & 1);
            if (d >= D || t >= T) continue;
            float s = 0.0f;
            for (int w = 0; w < WK; w++)
                s += qr3_ldsf((const unsigned char *)(red + ((w * WR + r) * NT * 4 + e) * 32 + l));
            if (S == 1)
                a.y[(int64_t)t * D + d] = s + qr2_bias(a, d);
            else
                a.part[((int64_t)sp * T + t) * D + d] = s;
        }
        __syncthreads();
    }
    if (S > 1) qr2_splitk_join(a, S, T, D, d0, RB, tid, last_block);
}

#endif
