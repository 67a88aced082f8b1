/* Decode mat-vec for MLX affine 4-bit and 8-bit weights on int16
 * activations: y_i[D_i] = W_i[D_i, N] x[N] for one to three weights that
 * read the same x (q/k/v, gate/up) in one launch.
 *
 * Why int16: the f32 form (cuda_quant.cu qgemv_kernel) spends ~3
 * instructions a weight (byte permute, subtract, FMA); at the H200's
 * 4.3 TB/s of 4-bit codes that is close to the SMs' whole issue rate. Here
 * x is rounded per 16 inputs to int16 (step max|x| / 32767: 2^-16 of the
 * block's largest value, where bf16 keeps 2^-9) and each instruction
 * `dp2a` multiplies two int16 x by two code bytes into an int32 sum: codes
 * need only a mask and a shift (4-bit) or nothing (8-bit). Per group the
 * sums take the scales:
 *   sum_k W[d,k] x[k] = s * sum_blocks dx_b * (sum q x16) + b * sum_k x[k]
 * with sum x taken in f32 from the unrounded x. Measured error on random
 * data up to ~5e-5 of max|y| (the f32 kernel ~5e-7; bf16 x ~2e-3):
 * tests/cuda/test_cuda_ops.c bounds it at 2e-4.
 *
 * A block takes Q16_WARPS * R rows (a tile). It first writes x to shared
 * memory as int16 (4-bit: each 8 inputs reordered x0 x2 x4 x6 x1 x3 x5 x7,
 * so the low and high nibbles of a code word meet their x pairs without
 * shuffles), one f32 step and one f32 sum per 16 inputs. Then each warp
 * takes R rows; lane l reads 16-byte pieces of codes l, l + 32, ...
 * (coalesced) and the matching x from shared memory (pieces stored
 * swizzled: no bank conflicts).
 *
 * PAIR (backend.h gate_up_act): two weights of one shape, gate and up; a
 * warp's R rows are R / 2 gate rows and the same up rows, interleaved, each
 * summed as above, and lane 0 writes act(gate) * up (y of weight 0) instead
 * of both: the act_mul launch and a pass over gate and up saved.
 *
 * NORM (backend.h add_rmsnorm_matmul, one decode token): x is the residual
 * stream and the block stages rmsnorm(x + d) instead of x, the add_rmsnorm
 * launch saved. Each block first sums the squares of x + d (N floats, from
 * L1/L2) in the order of add_rmsnorm's kernel (norm_sumsq), so its staged
 * values are the f32 y that add_rmsnorm writes, bit for bit. x + d and y
 * must still be written once, but every block reads x while it stages:
 * after staging, thread 0 counts its block done on a device counter
 * (fence, then atomicAdd); the block that counts last has seen every other
 * block finish reading x, so it alone writes x + d and y (at its end,
 * recomputed from the unchanged x and d) and resets the counter to 0 for
 * the next launch (no host work: a recorded graph replays it).
 *
 * Two kernels (cuda_qgemv16_dev.cuh), the same arithmetic: v1, as above,
 * and v2, the default (NMLX_CUDA_QGEMV16=v1 keeps v1; NORM runs on v2 in
 * v2's default configuration, on v1 otherwise).
 *
 * ROPE (add_rmsnorm_matmul's rope: q/k/v of one token, v2 with two rows a
 * unit): rope_kv folded into the q/k/v launch, its launch saved. A unit of
 * q or k is the RoPE pair (i, i + HD / 2) of one head instead of two
 * consecutive rows; lane 0 adds the biases, rotates the pair with
 * cuda_rope_pair (rope_kv's arithmetic) and writes q's pair to q's y, k's
 * to the cache row; v's units are copied to the cache. Each row's sum is
 * the one v2 gives without the fold (a row's steps and tree do not depend
 * on its unit), so q, k and v equal mat-vec + rope_kv bit for bit
 * (qgemv16_emu). Positions in a recorded step: deltas from *step.
 * v1's costs: a block stages all of x (N floats from L2, a barrier) with
 * one 16-byte load a lane in flight, then streams 2-4 rows a warp with two
 * steps of loads in flight; the grid is many short blocks (896 for 14336
 * rows), so staging recurs per block and the loads of one block's rows
 * wait for it, and per multiprocessor few bytes are in flight.
 * v2: a persistent grid (BPS blocks a multiprocessor, all resident: x staged
 * once a block), each warp taking units (one row; PAIR: a gate row and its
 * up row) w, w + TW, ... of all the weights' rows; lane l reads pieces l,
 * l + 32, ... of a row, exactly v1's order, so every sum, the warp's
 * shuffle tree and the outputs are v1's bit for bit (test_cuda_ops and
 * tests/cuda/qgemv16_emu.cpp check it). A lane's steps over its units are
 * one stream with a ring of DEP slots in registers (codes, raw scale and
 * bias): the first DEP steps are loaded before x is staged (the staging's
 * L2 latency overlaps the DRAM reads), then step p is consumed and step
 * p + DEP loaded into its slot, across row ends: DEP x 16 bytes a lane (PAIR
 * x2) always in flight, 64 KB a multiprocessor at DEP 8 and 2 blocks (the
 * H200 needs ~35 KB at 4.3 TB/s x ~1 us). Codes are loaded with
 * L1::no_allocate (read once), keeping L1 for scales. The grid is one wave,
 * so no block waits on another's staging, and rows split evenly (one
 * row a unit: 4096 rows over 2112 warps leave 3% idle). Not done: a
 * pre-converted x in global memory (an extra launch per mat-vec, ~1 us in a
 * graph, for staging v2 already overlaps), split-K (one wave of
 * persistent warps fills the GPU without it at D = 4096).
 * The ring's bytes in flight are bounded by registers (6 a slot: codes,
 * scale, bias; DEP 8 ~113 registers, 2 blocks a multiprocessor). ASYNC
 * (config "a"): the codes go through cp.async (a commit group a step,
 * wait_group DEP - 1 before a step is read; each lane reads only its own
 * 16 bytes) into a ring in shared memory after x (DEP x 512 bytes a warp,
 * PAIR x2), registers holding only the raw scales: DEP 16, 128 KB a
 * multiprocessor in flight at 2 blocks.
 * RR (config suffix r2, not PAIR): two rows of one weight a unit, each x
 * piece read from shared memory once for both (x traffic a code byte
 * halved: at RR 1 a 4-bit step reads 2 KB of x for 512 bytes of codes, ~50%
 * of shared memory bandwidth at the H200's rate; ASYNC adds the ring's
 * write and read).
 * Tunables: DEP (registers 2, 4, 8, PAIR / RR 2 2, 4: 8 x 2 spills; ASYNC
 * 8, 16, PAIR / RR 2 8), BPS (0 = as many as fit: ptxas gives DEP 8 ~113
 * registers -> 2 blocks, DEP 2 ~78 -> 3), RR; NMLX_CUDA_QGEMV16_CFG
 * (nmlx_cuda_set_qgemv16_cfg), default d8b2,d4b2; bench_cuda_quant 200
 * q16 sweeps them.
 * Predicted H200 times (bench_cuda_quant, launch included; v1 measured):
 *   q4g64 4096x4096 7.9 -> ~5.0 us; q/k/v 6144x4096 -> ~6.3 us; gate/up
 *   2x14336x4096 -> ~20 us; 4096x14336 18.0 -> ~11 us; 128256x4096 106 ->
 *   ~85 us; q8g64 4096x4096 11.2 -> ~7 us (an 8-bit LM head, which v1
 *   leaves to the f32 kernel, ~150 us). An 8B q4 token's mat-vecs ~1.45 ms
 *   (from ~2.2). */
#include "compute/cuda/cuda_internal.h"
#include "compute/cuda/cuda_backend.h"
#include "compute/cuda/cuda_qgemv16.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute/cuda/cuda_qgemv16_dev.cuh"

namespace {

template <int BITS, int SC, int R, bool PAIR, bool NORM>
void launch_r(cudaStream_t st, const q16_args &a) {
    const size_t sm = (size_t)a.N * 2 + (size_t)(a.N / 16) * 8;
    if (sm > 48 * 1024) {
        static size_t set = 0; /* per instantiation: raise the opt-in once */
        if (sm > set) {
            cudaFuncSetAttribute(qgemv16_kernel<BITS, SC, R, PAIR, NORM>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm);
            set = sm;
        }
    }
    /* may start while the previous kernel ends: its first code loads go out before x is ready */
    cuda_launch_pdl(qgemv16_kernel<BITS, SC, R, PAIR, NORM>, dim3(a.tiles), dim3(Q16_THREADS), sm,
                    st, a);
}

template <int BITS, int SC, int R, bool PAIR> void launch_n(cudaStream_t st, const q16_args &a) {
    if (a.done)
        launch_r<BITS, SC, R, PAIR, true>(st, a);
    else
        launch_r<BITS, SC, R, PAIR, false>(st, a);
}

/* pair: a.n == 2, gate and up of one shape, tiles over the row pairs */
template <int BITS, int SC> void launch_sc(cudaStream_t st, q16_args &a, int R, bool pair) {
    q16_v1_tiles(a, R, pair);
    if (pair) {
        if (R == 4)
            launch_n<BITS, SC, 4, true>(st, a);
        else
            launch_n<BITS, SC, 2, true>(st, a);
        return;
    }
    if (R == 4)
        launch_n<BITS, SC, 4, false>(st, a);
    else
        launch_n<BITS, SC, 2, false>(st, a);
}

/* ---- v2 launches ---- */

/* one grid of min(blocks that give every unit a warp, bps (0: as many as
 * fit) blocks a multiprocessor) */
template <int BITS, int SC, bool PAIR, int DEP, bool ASYNC, int RR = 1, bool NORM = false>
void launch_v2(cudaStream_t st, const q16_args &a, int bps) {
    constexpr int RU = PAIR ? 2 : RR;
    auto kern = qgemv16v2_kernel<BITS, SC, PAIR, DEP, ASYNC, RR, NORM>;
    const size_t sm = q16_smem(a.N) + (ASYNC ? q16_ring_bytes<RU, DEP>() : 0);
    static size_t set = 0; /* per instantiation: the shared memory opted in to */
    if (sm > 48 * 1024 && sm > set) {
        cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm);
        set = sm;
    }
    /* in a capture: bps as asked, else 2 */
    const int occ =
        nmlx_cuda_resident_blocks((const void *)kern, Q16_THREADS, sm, st, bps > 0 ? bps : 2);
    const int b = bps > 0 && bps < occ ? bps : occ;
    int64_t grid = (a.units + Q16_WARPS - 1) / Q16_WARPS;
    if (grid > (int64_t)b * nmlx_cuda_sm_count()) grid = (int64_t)b * nmlx_cuda_sm_count();
    cuda_launch_pdl(kern, dim3((unsigned)grid), dim3(Q16_THREADS), sm, st, a); /* as launch_r */
}

template <int BITS, int SC, bool PAIR>
void launch_v2_dep(cudaStream_t st, const q16_args &a, int dep, bool async, int rr, int bps) {
    /* ASYNC's ring must fit beside x (a block may have 227 KB) */
    size_t ring = q16_ring_bytes<1, 8>();
    if (PAIR || rr == 2)
        ring = q16_ring_bytes<2, 8>();
    else if (dep > 8)
        ring = q16_ring_bytes<1, 16>();
    if (async && q16_smem(a.N) + ring > 200 * 1024) async = false, dep = 8;
    if (!PAIR && rr == 2) { /* two rows a unit: registers 2, 4 (8 as 4); cp.async 8 */
        if constexpr (!PAIR) {
            if (async)
                launch_v2<BITS, SC, false, 8, true, 2>(st, a, bps);
            else if (dep <= 2)
                launch_v2<BITS, SC, false, 2, false, 2>(st, a, bps);
            else
                launch_v2<BITS, SC, false, 4, false, 2>(st, a, bps);
        }
        return;
    }
    if (async) {
        if (PAIR || dep <= 8) /* PAIR: 8 x 2 slots (16 would be 128 KB a block) */
            launch_v2<BITS, SC, PAIR, 8, true>(st, a, bps);
        else if constexpr (!PAIR)
            launch_v2<BITS, SC, PAIR, 16, true>(st, a, bps);
    } else if (dep <= 2)
        launch_v2<BITS, SC, PAIR, 2, false>(st, a, bps);
    else if (PAIR || dep <= 4) /* PAIR: 8 x 2 loads a lane spill (ptxas -v) */
        launch_v2<BITS, SC, PAIR, 4, false>(st, a, bps);
    else if constexpr (!PAIR)
        launch_v2<BITS, SC, PAIR, 8, false>(st, a, bps);
}

template <int BITS, int SC>
void launch_v2_sc(cudaStream_t st, q16_args &a, bool pair, int dep, bool async, int rr, int bps) {
    q16_v2_units(a, pair, pair ? 1 : rr);
    if (pair)
        launch_v2_dep<BITS, SC, true>(st, a, dep, async, 1, bps);
    else
        launch_v2_dep<BITS, SC, false>(st, a, dep, async, rr, bps);
}

/* NORM on v2: the default configuration's kernels only (4 loads a lane;
 * two rows a unit, or gate/up pairs), see q16_norm_v2 */
template <int BITS, int SC> void launch_v2_norm(cudaStream_t st, q16_args &a, bool pair, int bps) {
    q16_v2_units(a, pair, pair ? 1 : 2);
    if (pair)
        launch_v2<BITS, SC, true, 4, false, 1, true>(st, a, bps);
    else
        launch_v2<BITS, SC, false, 4, false, 2, true>(st, a, bps);
}

} // namespace
bool nmlx_cuda_qgemv16_ok(const nmlx_weight *w) {
    if (w->mode != NMLX_QUANT_AFFINE || (w->bits != 4 && w->bits != 8)) return false;
    if (w->group_size < 32 || w->group_size % 32 || w->cols % w->group_size) return false;
    const nmlx_dtype sd = w->scales.dtype;
    if (sd != NMLX_DT_F32 && sd != NMLX_DT_F16 && sd != NMLX_DT_BF16) return false;
    if (w->biases.dtype != sd || (uintptr_t)w->w.data % 16) return false;
    /* x staged whole in shared memory (the H100/H200 give a block 227 KB) */
    return (size_t)w->cols * 2 + (size_t)(w->cols / 16) * 8 <= 200 * 1024;
}

/* Which kernel and its tunables: NMLX_CUDA_QGEMV16=v1 (else v2), and
 * NMLX_CUDA_QGEMV16_CFG = "d<DEP>b<BPS>" for both forms or
 * "d<DEP>b<BPS>,d<DEP>b<BPS>" (plain and multi-weight, then PAIR): DEP 2, 4
 * or 8 loads in flight a lane (x2 for PAIR), BPS blocks a multiprocessor
 * (0: as many as fit). Read once; the setters below override. */
struct q16_cfg {
    int ver, dep, bps, pdep, pbps;
    bool async, pasync; /* the ring in shared memory (cp.async) */
    int rr;             /* rows a unit (not PAIR): 1 or 2 */
    bool by_size;       /* the default: v1 where it measured faster (q16_v1_faster) */
};
static q16_cfg q16_cur;
static bool q16_ver_read, q16_cfg_read;

/* "d8b2" -> 8, 2 (registers); "a16b2" -> 16, 2 (cp.async); a suffix "r2":
 * two rows a unit (not PAIR); false if malformed */
static bool q16_parse1(const char *s, const char **end, int *dep, bool *async, int *bps, int *rr) {
    char *e = NULL;
    if (*s != 'd' && *s != 'a') return false;
    const bool as = *s == 'a';
    long d = strtol(s + 1, &e, 10);
    if (e == s + 1 || *e != 'b') return false;
    const char *bp = e + 1;
    long b = strtol(bp, &e, 10);
    if (e == bp || b < 0 || b > 32) return false;
    if (as ? d != 8 && d != 16 : d != 2 && d != 4 && d != 8) return false;
    int r = 1;
    if (*e == 'r') {
        if (e[1] != '1' && e[1] != '2') return false;
        r = e[1] - '0', e += 2;
    }
    *dep = (int)d, *async = as, *bps = (int)b, *rr = r, *end = e;
    return true;
}

static bool q16_parse(const char *s, q16_cfg *c) {
    q16_cfg t = *c;
    const char *e = NULL;
    int prr = 1; /* PAIR: always a row pair */
    if (!q16_parse1(s, &e, &t.dep, &t.async, &t.bps, &t.rr)) return false;
    t.pdep = t.dep, t.pbps = t.bps, t.pasync = t.async;
    if (*e == ',' && !q16_parse1(e + 1, &e, &t.pdep, &t.pasync, &t.pbps, &prr)) return false;
    if (*e) return false;
    *c = t;
    return true;
}

/* defaults (H100 sweep, bench/cuda/README.md session 13): 4 loads a lane
 * and two rows a unit (PAIR 4 x 2), 2 blocks a multiprocessor. v2 for every
 * weight where the kernels are launched early (PDL: v2's persistent blocks
 * put 4 loads a lane in flight before the kernel ahead ends; H100 session
 * 16: 8B / 1B 4-bit decode 403.9 / 1,386.4 tok/s against 397.8 / 1,307.4
 * with v1 for the small weights); without PDL, v1 for the small weights,
 * where v2 measured slower (q16_v1_faster). */
static void q16_cfg_default(q16_cfg *c) {
    c->dep = 4, c->bps = 2, c->pdep = 4, c->pbps = 2;
    c->async = c->pasync = false;
    c->rr = 2;
    c->by_size = !nmlx_cuda_pdl_on();
}

/* v1 measured faster (H100, 8B shapes): the q/k/v launch (4-bit 9.9 against
 * 11.0-13.1 us, 8-bit 13.6 against 14.4) and 4-bit weights under 32M codes
 * (4096x4096: 8.6 against 9.2-10.7 us); v2 wins on gate/up pairs (1.24x),
 * 4096x14336 (1.16x) and the LM head (1.30x). */
static bool q16_v1_faster(int n, bool pair, int bits, int64_t rows, int64_t N) {
    if (pair) return false;
    return n > 1 || (bits == 4 && rows * N < ((int64_t)32 << 20));
}

static q16_cfg q16_config(void) {
    if (!q16_ver_read) {
        const char *e = getenv("NMLX_CUDA_QGEMV16");
        q16_cur.ver = e && !strcmp(e, "v1") ? 1 : 2;
        q16_ver_read = true;
    }
    if (!q16_cfg_read) {
        q16_cfg_default(&q16_cur);
        const char *e = getenv("NMLX_CUDA_QGEMV16_CFG");
        if (e && *e && q16_parse(e, &q16_cur))
            q16_cur.by_size = false;
        else if (e && *e)
            fprintf(stderr,
                    "nmlx: NMLX_CUDA_QGEMV16_CFG=%s not understood "
                    "(d<2|4|8>b<n>[r2] or a<8|16>b<n>[r2][,...])\n",
                    e);
        q16_cfg_read = true;
    }
    return q16_cur;
}

extern "C" void nmlx_cuda_set_qgemv16_version(int v) {
    q16_cur.ver = v == 1 ? 1 : 2;
    q16_ver_read = v == 1 || v == 2;
}

extern "C" int nmlx_cuda_set_qgemv16_cfg(const char *spec) {
    if (!spec) {
        q16_cfg_read = false;
        return 0;
    }
    q16_config();
    q16_cfg c = q16_cur;
    q16_cfg_default(&c);
    if (!q16_parse(spec, &c)) return -1;
    q16_cur.dep = c.dep, q16_cur.bps = c.bps, q16_cur.pdep = c.pdep, q16_cur.pbps = c.pbps;
    q16_cur.async = c.async, q16_cur.pasync = c.pasync, q16_cur.rr = c.rr;
    q16_cur.by_size = false; /* a configuration asked for runs everywhere */
    return 0;
}

/* rope_kv folded into the q/k/v launch (a.rope, the weights' fold): one
 * token, no q/k norm, RoPE over the whole head or none; false where the
 * fold does not take r */
static bool q16_fold_rope(nmlx_backend *be, q16_args &a, const nmlx_weight *const *ws,
                          const nmlx_rope_kv_args *r) {
    const bool rot = r->rot >= 2 && r->freqs;
    if (r->T != 1 || r->qk_norm || r->HD <= 0 || r->HD % 2 || (rot && r->rot != r->HD))
        return false;
    if (ws[0]->rows != r->H * r->HD || ws[1]->rows != r->KVH * r->HD ||
        ws[2]->rows != r->KVH * r->HD)
        return false;
    a.m[0].fold = Q16_Q, a.m[1].fold = Q16_K, a.m[2].fold = Q16_V;
    q16_rope &f = a.rope;
    f.kc = r->k_cache, f.vc = r->v_cache;
    f.HD = r->HD, f.cap = r->cap, f.row0 = r->row0, f.pos0 = r->pos0;
    f.half = rot ? r->HD / 2 : 0;
    f.freqs = rot ? r->freqs : NULL;
    f.mscale = r->mscale;
    const cuda_impl *c = (const cuda_impl *)be->impl;
    if ((f.step = cuda_step_pos(c)) != NULL) f.pos0 -= c->step_pos, f.row0 -= c->step_pos;
    return true;
}

/* n weights (pair: gate and up, act) reading x (nrm != NULL: rmsnorm(x +
 * d), x = nrm->x; rope != NULL: q/k/v with rope_kv folded in); false if
 * they do not qualify */
static bool qgemv16_run(nmlx_backend *be, int n, const nmlx_weight *const *ws,
                        const nmlx_tensor *const *biases, const float *x, float *const *ys,
                        bool pair, nmlx_act act, const nmlx_cuda_norm_in *nrm,
                        const nmlx_rope_kv_args *rope = NULL, double *rsum = NULL) {
    if (n < 1 || n > Q16_MAXW || (uintptr_t)x % 16) return false;
    if (rsum && (n != 1 || pair || nrm || rope)) return false;
    const nmlx_weight *w0 = ws[0];
    for (int i = 0; i < n; i++) {
        const nmlx_weight *w = ws[i];
        if (!nmlx_cuda_qgemv16_ok(w) || w->bits != w0->bits || w->cols != w0->cols ||
            w->group_size != w0->group_size || w->scales.dtype != w0->scales.dtype)
            return false;
    }
    if (pair && (n != 2 || ws[1]->rows != w0->rows)) return false;
    if (nrm && (!nrm->done || nrm->D != w0->cols || ((uintptr_t)nrm->d | (uintptr_t)nrm->y) % 16))
        return false;
    /* rsum's room: v1 has ceil(D / (8 R)) blocks, v2 at most one a unit's 8 warps */
    if (rsum && w0->rows > (int64_t)8 * NMLX_Q16_RSUM_CAP) return false;
    q16_args a;
    memset(&a, 0, sizeof a);
    if (nrm) {
        a.xw = nrm->x, a.d = nrm->d, a.yn = nrm->y, a.done = nrm->done;
        a.nw = nrm->w ? nrm->w->data : NULL;
        a.nwdt = nrm->w ? nrm->w->dtype : NMLX_DT_F32;
        a.noff = nrm->w_offset, a.neps = nrm->eps;
        a.parts = nrm->parts;
    }
    if (rsum) {
        a.rsum = rsum;
        a.m[0].fold = Q16_R; /* y is x: updated in place */
    }
    a.n = n;
    a.act = act;
    a.x = x;
    a.N = w0->cols;
    const int in = 128 / w0->bits;
    a.gshift = 0;
    while ((in << a.gshift) < w0->group_size)
        a.gshift++;
    int64_t rows = 0;
    for (int i = 0; i < n; i++) {
        a.m[i].w = (const uint4 *)ws[i]->w.data;
        a.m[i].scales = ws[i]->scales.data;
        a.m[i].biases = ws[i]->biases.data;
        a.m[i].lbias = biases && biases[i] ? biases[i]->data : NULL;
        a.m[i].lbdt = biases && biases[i] ? biases[i]->dtype : NMLX_DT_F32;
        a.m[i].y = ys[i];
        a.m[i].D = ws[i]->rows;
        rows += ws[i]->rows;
    }
    cudaStream_t st = cuda_of(be)->stream;
    const nmlx_dtype sd = w0->scales.dtype;
    const int sc = sd == NMLX_DT_F32 ? SCF32 : sd == NMLX_DT_F16 ? SCF16 : SCBF16;
    const q16_cfg cf = q16_config();
    /* (a rope_kv fold takes v2 wherever v1 would be picked by size: it saves a launch) */
    const bool v2 =
        cf.ver == 2 && (rope || !(cf.by_size && q16_v1_faster(n, pair, w0->bits, rows, a.N)));
    /* NORM on v2 where the configuration is the default one (the kernels
     * instantiated with NORM); else v1's NORM */
    const bool norm_v2 =
        nrm && v2 && (pair ? !cf.pasync && cf.pdep == 4 : !cf.async && cf.dep == 4 && cf.rr == 2);
    if (rope &&
        (pair || n != 3 || !v2 || (nrm ? !norm_v2 : cf.rr != 2) || !q16_fold_rope(be, a, ws, rope)))
        return false; /* the fold runs on v2 with two rows a unit */
    if (norm_v2) {
        const int bps = pair ? cf.pbps : cf.bps;
        if (w0->bits == 4) {
            if (sc == SCF32)
                launch_v2_norm<4, SCF32>(st, a, pair, bps);
            else if (sc == SCF16)
                launch_v2_norm<4, SCF16>(st, a, pair, bps);
            else
                launch_v2_norm<4, SCBF16>(st, a, pair, bps);
        } else {
            if (sc == SCF32)
                launch_v2_norm<8, SCF32>(st, a, pair, bps);
            else if (sc == SCF16)
                launch_v2_norm<8, SCF16>(st, a, pair, bps);
            else
                launch_v2_norm<8, SCBF16>(st, a, pair, bps);
        }
        nmlx_cuda_note(be, cudaGetLastError());
        return true;
    }
    if (!nrm && v2) { /* v2 */
        const int dep = pair ? cf.pdep : cf.dep, bps = pair ? cf.pbps : cf.bps;
        const bool as = pair ? cf.pasync : cf.async;
        const int rr = pair ? 1 : cf.rr;
        if (w0->bits == 4) {
            if (sc == SCF32)
                launch_v2_sc<4, SCF32>(st, a, pair, dep, as, rr, bps);
            else if (sc == SCF16)
                launch_v2_sc<4, SCF16>(st, a, pair, dep, as, rr, bps);
            else
                launch_v2_sc<4, SCBF16>(st, a, pair, dep, as, rr, bps);
        } else {
            if (sc == SCF32)
                launch_v2_sc<8, SCF32>(st, a, pair, dep, as, rr, bps);
            else if (sc == SCF16)
                launch_v2_sc<8, SCF16>(st, a, pair, dep, as, rr, bps);
            else
                launch_v2_sc<8, SCBF16>(st, a, pair, dep, as, rr, bps);
        }
        nmlx_cuda_note(be, cudaGetLastError());
        return true;
    }
    /* v1, measured on an H200 (bench/cuda/README.md): 4 rows a warp pay off
     * for 4-bit from 16384 rows; an 8-bit LM head runs faster on the f32
     * kernel */
    if (w0->bits == 8 && n == 1 && rows >= 16384) return false;
    const int R = w0->bits == 4 && rows >= 16384 ? 4 : 2;
    if (w0->bits == 4) {
        if (sc == SCF32)
            launch_sc<4, SCF32>(st, a, R, pair);
        else if (sc == SCF16)
            launch_sc<4, SCF16>(st, a, R, pair);
        else
            launch_sc<4, SCBF16>(st, a, R, pair);
    } else {
        if (sc == SCF32)
            launch_sc<8, SCF32>(st, a, R, pair);
        else if (sc == SCF16)
            launch_sc<8, SCF16>(st, a, R, pair);
        else
            launch_sc<8, SCBF16>(st, a, R, pair);
    }
    nmlx_cuda_note(be, cudaGetLastError());
    return true;
}

bool nmlx_cuda_qgemv16(nmlx_backend *be, int n, const nmlx_weight *const *ws,
                       const nmlx_tensor *const *biases, const float *x, float *const *ys) {
    return qgemv16_run(be, n, ws, biases, x, ys, false, NMLX_ACT_SILU, NULL);
}

bool nmlx_cuda_qgemv16_act(nmlx_backend *be, nmlx_act act, const nmlx_weight *g,
                           const nmlx_weight *u, const nmlx_tensor *bg, const nmlx_tensor *bu,
                           const float *x, float *gate) {
    const nmlx_weight *ws[2] = {g, u};
    const nmlx_tensor *bs[2] = {bg, bu};
    float *ys[2] = {gate, NULL}; /* up's y is never written */
    return qgemv16_run(be, 2, ws, bs, x, ys, true, act, NULL);
}

bool nmlx_cuda_qgemv16_resid(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                             const float *a, float *x, double *rsum) {
    if (!rsum || !x || (uintptr_t)x % 16) return false;
    return qgemv16_run(be, 1, &w, &bias, a, &x, false, NMLX_ACT_SILU, NULL, NULL, rsum);
}

bool nmlx_cuda_qgemv16_norm(nmlx_backend *be, const nmlx_cuda_norm_in *nrm, int act, int n,
                            const nmlx_weight *const *ws, const nmlx_tensor *const *biases,
                            float *const *ys, const nmlx_rope_kv_args *rope) {
    if (act >= 0) {
        if (n != 2 || rope) return false;
        float *gate[2] = {ys[0], NULL}; /* up's y is never written */
        return qgemv16_run(be, 2, ws, biases, nrm->x, gate, true, (nmlx_act)act, nrm);
    }
    return qgemv16_run(be, n, ws, biases, nrm->x, ys, false, NMLX_ACT_SILU, nrm, rope);
}
