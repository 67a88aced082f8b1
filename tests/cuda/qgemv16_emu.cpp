/* cuda_qgemv16.cu's kernels run on the CPU (no GPU needed; a CPU ctest
 * case, tests/qgemv16_emu.cmake): the device code (cuda_qgemv16_dev.cuh)
 * is compiled as host C++ with NMLX_QGEMV16_EMU on warp_emu.h (each CUDA
 * thread of a block a fiber, __syncthreads a barrier of the block's 256,
 * __shfl_xor_sync a warp's exchange); dp2a is applied as the PTX ISA
 * defines it. Shared memory is poisoned (0xff) before each block and must
 * not be written past the launch's size.
 *
 * Checked per case (affine 4/8-bit x group 32/64/128 x F32/F16/BF16 scales;
 * one weight, three of different heights (q/k/v), gate/up pairs with each
 * activation; N from fewer pieces than a warp's lanes to several steps a
 * lane, not a multiple of 32 pieces; a linear bias or none; x with zero,
 * tiny and large 16-input blocks):
 *  - v2 (rings of DEP 2/4/8 in registers and 8/16 through cp.async, the
 *    latter deferred to its wait_group; two rows a unit; grids of 1 block,
 *    a few, and one warp a unit) equals v1 bit for bit, every output
 *    written once (y starts NaN, guards after it stay NaN);
 *  - v1 within 2e-4 of max|y| of a double reference from the MLX layout
 *    (codes, s q + b per group), as test_cuda_ops bounds it on the GPU
 *    (gate/up pairs 2e-3, as test_cuda_fused): the shims are right.
 * Run: test_qgemv16_emu [quick]   (exit 0: every case passed; ctest runs
 * quick: group 64 only, grids of 3 blocks and one warp a unit, no DEP 4;
 * the full run, a few minutes on 2 cores: every group size, 1 block too) */
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

extern "C" {
#include "compute/backend.h"
}

/* the kernels' `extern __shared__ smem[]`, of an H100 SM's 228 KiB at most */
#define WARP_EMU_SMEM smem
#define WARP_EMU_SMEM_BYTES (228 * 1024)
#include "warp_emu.h"

#include "emu_helpers.h" /* cuda_internal.h's helpers */

namespace {
/* dp2a.lo / .hi: the two signed int16 of a times bytes 0,1 / 2,3 of b */
inline int dp2a_lo(int a, unsigned b, int c) {
    return c + (int)(int16_t)(a & 0xffff) * (int)(b & 0xff) +
           (int)(int16_t)((unsigned)a >> 16) * (int)((b >> 8) & 0xff);
}
inline int dp2a_hi(int a, unsigned b, int c) {
    return c + (int)(int16_t)(a & 0xffff) * (int)((b >> 16) & 0xff) +
           (int)(int16_t)((unsigned)a >> 16) * (int)(b >> 24);
}
inline void q16_cp16(void *dst, const void *src, int bytes) {
    if ((bytes != 0 && bytes != 16) || (uintptr_t)src % 16) {
        fprintf(stderr, "cp.async: bad source %p or size %d\n", src, bytes);
        abort();
    }
    emu_cp_async16(dst, src, bytes);
}
inline void q16_commit() { emu_cp_commit(); }
template <int N> inline void q16_wait() { emu_cp_wait<N>(); }
inline uint4 ld_stream(const uint4 *p) {
    emu_check_load(p, 16, 16);
    return *p;
}
} // namespace

#include "compute/cuda/cuda_qgemv16_dev.cuh"

/* rsum's room in the tests (cuda_qgemv16.h NMLX_Q16_RSUM_CAP on the GPU) */
enum { NMLX_RSUM_TEST_CAP = 4096 };

/* one host weight [D, N], its arrays kept as the kernel reads them */
struct hweight {
    int64_t D;
    std::vector<uint4> w;
    std::vector<unsigned char> s, b; /* scales, biases of dtype sc */
    std::vector<float> lb;           /* linear bias (f32) or empty */
    std::vector<float> y;            /* D outputs + 4 guards */
};

static double sc_val(int sc, const std::vector<unsigned char> &v, int64_t i) {
    if (sc == SCF32) {
        float f;
        memcpy(&f, &v[i * 4], 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, &v[i * 2], 2);
    return sc == SCF16 ? h2d(h) : (double)__uint_as_float((uint32_t)h << 16);
}

static hweight make_weight(int bits, int gs, int sc, int64_t D, int64_t N, bool lbias) {
    hweight h;
    h.D = D;
    const int64_t pieces = N * bits / 128, G = N / gs, es = sc == SCF32 ? 4 : 2;
    h.w.resize((size_t)(D * pieces));
    for (auto &p : h.w)
        p = uint4{emu_next32(), emu_next32(), emu_next32(), emu_next32()};
    h.s.resize((size_t)(D * G * es));
    h.b.resize((size_t)(D * G * es));
    for (int64_t i = 0; i < D * G; i++) {
        /* f16-exact values: k / 1024 */
        const float s = (float)(1 + emu_next32() % 64) / 1024.0f / (float)((1 << bits) - 1);
        const float b = -(float)(emu_next32() % 32) / 1024.0f;
        if (sc == SCF32) {
            memcpy(&h.s[i * 4], &s, 4), memcpy(&h.b[i * 4], &b, 4);
        } else {
            const uint16_t sv = sc == SCF16 ? d2h(s) : f2bf(s), bv = sc == SCF16 ? d2h(b) : f2bf(b);
            memcpy(&h.s[i * 2], &sv, 2), memcpy(&h.b[i * 2], &bv, 2);
        }
    }
    if (lbias)
        for (int64_t i = 0; i < D; i++)
            h.lb.push_back(emu_urand(-1, 1));
    h.y.assign((size_t)D + 4, NAN);
    return h;
}

/* row d of W times x in double, from the MLX layout */
static double ref_dot(const hweight &h, int bits, int gs, int sc, int64_t N, const float *x,
                      int64_t d) {
    const uint32_t *w = (const uint32_t *)h.w.data() + d * (N * bits / 32);
    const int64_t G = N / gs;
    double acc = 0;
    for (int64_t k = 0; k < N; k++) {
        const unsigned q =
            bits == 4 ? (w[k / 8] >> (4 * (k % 8))) & 15 : (w[k / 4] >> (8 * (k % 4))) & 255;
        const double s = sc_val(sc, h.s, d * G + k / gs), b = sc_val(sc, h.b, d * G + k / gs);
        acc += (s * q + b) * (double)x[k];
    }
    return acc + (h.lb.empty() ? 0.0 : h.lb[d]);
}

static double act_d(nmlx_act a, double g) {
    switch (a) {
    case NMLX_ACT_SILU: return g / (1 + exp(-g));
    case NMLX_ACT_GELU_TANH:
        return 0.5 * g * (1 + tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)));
    case NMLX_ACT_GELU_ERF: return 0.5 * g * erfc(-g / sqrt(2.0));
    }
    return g;
}

static int failures, cases;
static double worst_ref;

static void fill_args(q16_args &a, std::vector<hweight> &ws, const float *x, int64_t N, int bits,
                      int gs, nmlx_act act) {
    memset(&a, 0, sizeof a);
    a.n = (int)ws.size();
    a.act = act;
    a.x = x;
    a.N = N;
    const int in = 128 / bits;
    while ((in << a.gshift) < gs)
        a.gshift++;
    for (int i = 0; i < a.n; i++) {
        a.m[i].w = ws[i].w.data();
        a.m[i].scales = ws[i].s.data();
        a.m[i].biases = ws[i].b.data();
        a.m[i].lbias = ws[i].lb.empty() ? nullptr : ws[i].lb.data();
        a.m[i].lbdt = NMLX_DT_F32;
        a.m[i].y = ws[i].y.data();
        a.m[i].D = ws[i].D;
    }
}

/* NORM's arguments: x the residual (x += d), y = rmsnorm(x + d) with the
 * bf16 norm weight nw into yn, the blocks' counter done */
static void set_norm(q16_args &a, float *x, const float *d, float *yn, unsigned *done,
                     const uint16_t *nw, float noff, float neps) {
    a.xw = x, a.d = d, a.yn = yn, a.done = done;
    a.nw = nw, a.nwdt = NMLX_DT_BF16, a.noff = noff, a.neps = neps;
}

template <int BITS, int SC, bool PAIR>
static void run_v1(std::vector<hweight> &ws, const float *x, int64_t N, int gs, nmlx_act act) {
    q16_args a;
    fill_args(a, ws, x, N, BITS, gs, act);
    int64_t rows = 0;
    for (auto &h : ws)
        rows += h.D;
    const int R = BITS == 4 && rows >= 16384 ? 4 : 2; /* as qgemv16_run */
    q16_v1_tiles(a, R, PAIR);
    if (R == 4)
        emu_launch(a.tiles, Q16_THREADS, q16_smem(N),
                   [&] { qgemv16_kernel<BITS, SC, 4, PAIR, false>(a); });
    else
        emu_launch(a.tiles, Q16_THREADS, q16_smem(N),
                   [&] { qgemv16_kernel<BITS, SC, 2, PAIR, false>(a); });
}

template <int BITS, int SC, bool PAIR, int DEP, bool ASYNC = false, int RR = 1>
static void run_v2(std::vector<hweight> &ws, const float *x, int64_t N, int gs, nmlx_act act,
                   unsigned grid) {
    q16_args a;
    fill_args(a, ws, x, N, BITS, gs, act);
    q16_v2_units(a, PAIR, RR);
    constexpr int RU = PAIR ? 2 : RR;
    const size_t sm = q16_smem(N) + (ASYNC ? q16_ring_bytes<RU, DEP>() : 0);
    emu_launch(grid, Q16_THREADS, sm, [&] { qgemv16v2_kernel<BITS, SC, PAIR, DEP, ASYNC, RR>(a); });
}

/* n weights (PAIR: gate, up) of heights Ds over N inputs */
template <int BITS, int SC, bool PAIR>
static void run_case(int gs, int64_t N, std::vector<int64_t> Ds, bool lbias, nmlx_act act,
                     bool quick) {
    cases++;
    std::vector<float> x((size_t)N);
    for (int64_t b = 0; b < N / 16; b++) { /* per 16 inputs: ordinary, zero, tiny, large */
        const int kind = (int)(emu_next32() % 8);
        const float mag = kind == 0 ? 0.0f : kind == 1 ? 1e-6f : kind == 2 ? 1e3f : 1.0f;
        for (int i = 0; i < 16; i++)
            x[(size_t)(b * 16 + i)] = mag * emu_urand(-2, 2);
    }
    std::vector<hweight> ws;
    for (int64_t D : Ds)
        ws.push_back(make_weight(BITS, gs, SC, D, N, lbias));
    run_v1<BITS, SC, PAIR>(ws, x.data(), N, gs, act);
    const int outs = PAIR ? 1 : (int)ws.size();
    std::vector<std::vector<float>> y1;
    for (int i = 0; i < outs; i++)
        y1.push_back(ws[i].y);
    /* v1 against the double reference */
    for (int i = 0; i < outs; i++) {
        double mx = 0, err = 0;
        std::vector<double> r((size_t)ws[i].D);
        for (int64_t d = 0; d < ws[i].D; d++) {
            r[d] = ref_dot(ws[i], BITS, gs, SC, N, x.data(), d);
            if (PAIR) r[d] = act_d(act, r[d]) * ref_dot(ws[1], BITS, gs, SC, N, x.data(), d);
            mx = fmax(mx, fabs(r[d]));
        }
        for (int64_t d = 0; d < ws[i].D; d++)
            err = fmax(err, fabs((double)y1[i][d] - r[d]));
        const double rel = mx > 0 ? err / mx : err, bound = PAIR ? 2e-3 : 2e-4;
        worst_ref = fmax(worst_ref, rel);
        if (!(rel <= bound)) {
            failures++;
            printf("FAIL v1 vs reference: %d-bit g%d sc%d N=%lld D=%lld pair=%d: %.3e > %.0e\n",
                   BITS, gs, SC, (long long)N, (long long)ws[i].D, PAIR, rel, bound);
        }
    }
    int64_t units = 0;
    for (auto &h : ws)
        units += h.D;
    if (PAIR) units = ws[0].D;
    const unsigned full = (unsigned)((units + Q16_WARPS - 1) / Q16_WARPS);
    /* 1 block, 3 (several units a warp), one warp a unit (not for the
     * 16384-row case: 2049 blocks) */
    const unsigned grids[3] = {1, full > 3 ? 3u : 1u, full};
    const int ng = full > 1000 ? 2 : 3;
    for (int gi = quick ? 1 : 0; gi < ng; gi++)
        /* DEP 2, 4, 8 in registers; 8, 16 cp.async; two rows a unit: 4 in
         * registers, 8 cp.async (not PAIR) */
        for (int vi = 0; vi < 7; vi++) {
            const int dep = vi < 3 ? 2 << vi : vi < 5 ? 8 << (vi - 3) : vi == 5 ? 4 : 8;
            const bool async = vi == 3 || vi == 4 || vi == 6;
            const int rr = vi >= 5 ? 2 : 1;
            if (PAIR && (vi == 2 || vi == 4 || rr == 2)) continue; /* not instantiated */
            if (quick && vi == 1) continue;
            for (auto &h : ws)
                h.y.assign((size_t)h.D + 4, NAN);
            if (vi == 0)
                run_v2<BITS, SC, PAIR, 2>(ws, x.data(), N, gs, act, grids[gi]);
            else if (vi == 1)
                run_v2<BITS, SC, PAIR, 4>(ws, x.data(), N, gs, act, grids[gi]);
            else if (vi == 3)
                run_v2<BITS, SC, PAIR, 8, true>(ws, x.data(), N, gs, act, grids[gi]);
            else if constexpr (!PAIR) {
                if (vi == 2)
                    run_v2<BITS, SC, PAIR, 8>(ws, x.data(), N, gs, act, grids[gi]);
                else if (vi == 4)
                    run_v2<BITS, SC, PAIR, 16, true>(ws, x.data(), N, gs, act, grids[gi]);
                else if (vi == 5)
                    run_v2<BITS, SC, PAIR, 4, false, 2>(ws, x.data(), N, gs, act, grids[gi]);
                else
                    run_v2<BITS, SC, PAIR, 8, true, 2>(ws, x.data(), N, gs, act, grids[gi]);
            }
            for (int i = 0; i < outs; i++) {
                int differ = 0, unwritten = 0;
                for (int64_t d = 0; d < ws[i].D; d++) {
                    if (ws[i].y[d] != ws[i].y[d]) unwritten++;
                    if (f2u(ws[i].y[d]) != f2u(y1[i][d])) differ++;
                }
                int guards = 0;
                for (int g = 0; g < 4; g++)
                    guards += ws[i].y[(size_t)ws[i].D + g] == ws[i].y[(size_t)ws[i].D + g];
                if (differ || guards) {
                    failures++;
                    printf("FAIL v2 DEP %d%s rows %d grid %u: %d-bit g%d sc%d N=%lld D=%lld "
                           "(weight %d) "
                           "pair=%d: %d outputs differ from v1 (%d unwritten), %d guards written\n",
                           dep, async ? " async" : "", rr, grids[gi], BITS, gs, SC, (long long)N,
                           (long long)ws[i].D, i, PAIR, differ, unwritten, guards);
                }
            }
        }
}

/* NORM (add_rmsnorm_matmul, kernel v1): x is the residual, the kernel
 * stages rmsnorm(x + d) and the last block writes x + d and y. The counter
 * must be back at 0, x + d exact, y against a double rmsnorm, and the plain
 * v1 kernel run on the y it wrote must give the same outputs bit for bit
 * (the fused op equals add_rmsnorm + mat-vec). Run twice in a row on the
 * same counter (a recorded graph's replay): the same bits. */
template <int BITS, int SC, bool PAIR>
static void run_norm_case(int gs, int64_t N, std::vector<int64_t> Ds, nmlx_act act) {
    cases++;
    std::vector<float> x0((size_t)N), d((size_t)N);
    std::vector<uint16_t> nw((size_t)N); /* bf16 norm weight */
    for (int64_t i = 0; i < N; i++) {
        x0[i] = emu_urand(-3, 3);
        d[i] = emu_urand(-1, 1);
        nw[i] = f2bf(emu_urand(0.5, 1.5));
    }
    const float noff = 0.25f, neps = 1e-5f;
    std::vector<hweight> ws;
    for (int64_t D : Ds)
        ws.push_back(make_weight(BITS, gs, SC, D, N, true));
    const int outs = PAIR ? 1 : (int)ws.size();
    unsigned done = 0;
    struct result {
        std::vector<float> x, yn;
        std::vector<std::vector<float>> y;
    };
    auto run = [&]() {
        result r;
        r.x = x0;
        r.yn.assign((size_t)N, NAN);
        for (auto &h : ws)
            h.y.assign((size_t)h.D + 4, NAN);
        q16_args a;
        fill_args(a, ws, r.x.data(), N, BITS, gs, act);
        set_norm(a, r.x.data(), d.data(), r.yn.data(), &done, nw.data(), noff, neps);
        int64_t rows = 0;
        for (auto &h : ws)
            rows += h.D;
        const int R = BITS == 4 && rows >= 16384 ? 4 : 2;
        q16_v1_tiles(a, R, PAIR);
        if (R == 4)
            emu_launch(a.tiles, Q16_THREADS, q16_smem(N),
                       [&] { qgemv16_kernel<BITS, SC, 4, PAIR, true>(a); });
        else
            emu_launch(a.tiles, Q16_THREADS, q16_smem(N),
                       [&] { qgemv16_kernel<BITS, SC, 2, PAIR, true>(a); });
        for (int i = 0; i < outs; i++)
            r.y.push_back(ws[i].y);
        return r;
    };
    const result r1 = run();
    const unsigned done1 = done;
    const result r1b = run(); /* again: the counter must have been reset */
    auto same = [](const std::vector<float> &p, const std::vector<float> &q, size_t n) {
        int bad = 0;
        for (size_t i = 0; i < n; i++)
            bad += f2u(p[i]) != f2u(q[i]);
        return bad;
    };
    int bad = (int)(done1 != 0) + (int)(done != 0);
    bad += same(r1.x, r1b.x, (size_t)N) + same(r1.yn, r1b.yn, (size_t)N);
    for (int i = 0; i < outs; i++) {
        bad += same(r1.y[i], r1b.y[i], (size_t)ws[i].D + 4);
        for (int g = 0; g < 4; g++) /* guards after y stay NaN */
            bad += r1.y[i][(size_t)ws[i].D + g] == r1.y[i][(size_t)ws[i].D + g];
    }
    /* x + d, and y against a double rmsnorm */
    double ss = 0, yerr = 0, ymax = 0;
    for (int64_t i = 0; i < N; i++) {
        const float s = x0[i] + d[i];
        bad += f2u(r1.x[i]) != f2u(s);
        ss += (double)s * s;
    }
    const double inv = 1.0 / sqrt(ss / (double)N + neps);
    for (int64_t i = 0; i < N; i++) {
        const double ref =
            (double)(x0[i] + d[i]) * inv * ((double)__uint_as_float((uint32_t)nw[i] << 16) + noff);
        yerr = fmax(yerr, fabs(ref - r1.yn[i]));
        ymax = fmax(ymax, fabs(ref));
    }
    const bool yok = yerr <= 1e-6 * ymax;
    /* the plain kernel on that y: the same outputs (fused == unfused) */
    run_v1<BITS, SC, PAIR>(ws, r1.yn.data(), N, gs, act);
    for (int i = 0; i < outs; i++)
        bad += same(ws[i].y, r1.y[i], (size_t)ws[i].D);
    if (bad || !yok) {
        failures++;
        printf("FAIL NORM v1: %d-bit g%d sc%d N=%lld pair=%d: %d mismatches "
               "(counter %u / %u), y error %.2e of max %.2e\n",
               BITS, gs, SC, (long long)N, PAIR, bad, done1, done, yerr, ymax);
    }
    /* NORM on v2 (its default configuration: 4 loads a lane, two rows a
     * unit or gate/up pairs), grids of 1 and 3 blocks and one warp a unit:
     * v1's bits, twice on one counter */
    int64_t units = 0;
    for (auto &h : ws)
        units += PAIR ? 0 : (h.D + 1) / 2;
    if (PAIR) units = ws[0].D;
    const unsigned grids[3] = {1, 3, (unsigned)((units + Q16_WARPS - 1) / Q16_WARPS)};
    for (unsigned grid : grids)
        for (int rep = 0; rep < 2; rep++) {
            result r2;
            r2.x = x0;
            r2.yn.assign((size_t)N, NAN);
            for (auto &h : ws)
                h.y.assign((size_t)h.D + 4, NAN);
            q16_args a;
            fill_args(a, ws, r2.x.data(), N, BITS, gs, act);
            set_norm(a, r2.x.data(), d.data(), r2.yn.data(), &done, nw.data(), noff, neps);
            q16_v2_units(a, PAIR, PAIR ? 1 : 2);
            emu_launch(grid, Q16_THREADS, q16_smem(N),
                       [&] { qgemv16v2_kernel<BITS, SC, PAIR, 4, false, PAIR ? 1 : 2, true>(a); });
            int bad2 = (int)(done != 0);
            bad2 += same(r2.x, r1.x, (size_t)N) + same(r2.yn, r1.yn, (size_t)N);
            for (int i = 0; i < outs; i++)
                bad2 += same(ws[i].y, r1.y[i], (size_t)ws[i].D + 4);
            if (bad2) {
                failures++;
                printf("FAIL NORM v2 grid %u run %d: %d-bit g%d sc%d N=%lld pair=%d: %d "
                       "mismatches with v1 (counter %u)\n",
                       grid, rep, BITS, gs, SC, (long long)N, PAIR, bad2, done);
            }
        }
}

/* rope_kv folded into the q/k/v launch (v2, two rows a unit, with and
 * without NORM): q (weight 0's y) rotated, k rotated and v copied into
 * cache row crow of each KV head, equal bit for bit to the plain kernel's
 * q, k, v followed by rope_kv's arithmetic (cuda_rope_pair) and the copies;
 * every other cache row and k's and v's y untouched; positions by value
 * and as deltas from a device step (a recorded graph). */
template <int BITS, int SC>
static void run_rope_case(int gs, int64_t N, int64_t H, int64_t KVH, int64_t HD, bool rot,
                          bool norm, bool step) {
    cases++;
    const int64_t cap = 7, crow = 5, pos = 1000 + (int64_t)(emu_next32() % 3000);
    const float mscale = rot ? 1.125f : 1.0f;
    std::vector<float> x((size_t)N), d((size_t)N), freqs((size_t)HD / 2);
    std::vector<uint16_t> nw((size_t)N);
    for (int64_t i = 0; i < N; i++) {
        x[i] = emu_urand(-3, 3), d[i] = emu_urand(-1, 1);
        nw[i] = f2bf(emu_urand(0.5, 1.5));
    }
    for (int64_t i = 0; i < HD / 2; i++)
        freqs[i] = (float)pow(10000.0, -2.0 * (double)i / (double)HD);
    std::vector<hweight> ws;
    ws.push_back(make_weight(BITS, gs, SC, H * HD, N, true));
    ws.push_back(make_weight(BITS, gs, SC, KVH * HD, N, true));
    ws.push_back(make_weight(BITS, gs, SC, KVH * HD, N, false));
    /* expected: the plain kernel on rmsnorm(x + d) (NORM v1) or on x */
    std::vector<float> xr = x, yn((size_t)N, NAN);
    unsigned done = 0;
    q16_args a;
    fill_args(a, ws, xr.data(), N, BITS, gs, NMLX_ACT_SILU);
    if (norm) {
        set_norm(a, xr.data(), d.data(), yn.data(), &done, nw.data(), 0.0f, 1e-5f);
    }
    q16_v1_tiles(a, 2, false);
    if (norm)
        emu_launch(a.tiles, Q16_THREADS, q16_smem(N),
                   [&] { qgemv16_kernel<BITS, SC, 2, false, true>(a); });
    else
        emu_launch(a.tiles, Q16_THREADS, q16_smem(N),
                   [&] { qgemv16_kernel<BITS, SC, 2, false, false>(a); });
    const std::vector<float> xe = xr, yne = yn;
    std::vector<float> qe = ws[0].y, kc((size_t)(KVH * cap * HD), NAN), vc = kc;
    std::vector<float> kce = kc, vce = vc;
    for (int64_t h = 0; h < H + KVH; h++) {
        float *src = h < H ? &qe[h * HD] : &ws[1].y[(h - H) * HD];
        float *dst = h < H ? src : &kce[((h - H) * cap + crow) * HD];
        for (int64_t i = 0; i < HD; i++)
            if (!rot) dst[i] = src[i];
        if (rot)
            for (int64_t i = 0; i < HD / 2; i++) {
                float o0, o1;
                cuda_rope_pair(src[i], src[i + HD / 2], (double)pos, freqs[i], mscale, &o0, &o1);
                dst[i] = o0, dst[i + HD / 2] = o1;
            }
    }
    for (int64_t h = 0; h < KVH; h++)
        for (int64_t i = 0; i < HD; i++)
            vce[(h * cap + crow) * HD + i] = ws[2].y[h * HD + i];
    /* the fold */
    xr = x, yn.assign((size_t)N, NAN);
    for (auto &hw : ws)
        hw.y.assign((size_t)hw.D + 4, NAN);
    fill_args(a, ws, xr.data(), N, BITS, gs, NMLX_ACT_SILU);
    if (norm) {
        set_norm(a, xr.data(), d.data(), yn.data(), &done, nw.data(), 0.0f, 1e-5f);
    }
    a.m[0].fold = Q16_Q, a.m[1].fold = Q16_K, a.m[2].fold = Q16_V;
    const int64_t base = 977; /* a recorded step: positions as deltas */
    a.rope = q16_rope{kc.data(),
                      vc.data(),
                      HD,
                      cap,
                      crow,
                      pos,
                      rot ? HD / 2 : 0,
                      rot ? freqs.data() : nullptr,
                      mscale,
                      step ? &base : nullptr};
    if (step) a.rope.row0 -= base, a.rope.pos0 -= base;
    q16_v2_units(a, false, 2);
    const unsigned grid = 1 + emu_next32() % 4;
    if (norm)
        emu_launch(grid, Q16_THREADS, q16_smem(N),
                   [&] { qgemv16v2_kernel<BITS, SC, false, 4, false, 2, true>(a); });
    else
        emu_launch(grid, Q16_THREADS, q16_smem(N),
                   [&] { qgemv16v2_kernel<BITS, SC, false, 4, false, 2>(a); });
    auto differ = [](const float *p, const float *q, size_t n) {
        int bad = 0;
        for (size_t i = 0; i < n; i++)
            bad += f2u(p[i]) != f2u(q[i]);
        return bad;
    };
    int bad = differ(ws[0].y.data(), qe.data(), qe.size()); /* q and its guards */
    bad += differ(kc.data(), kce.data(), kc.size()) + differ(vc.data(), vce.data(), vc.size());
    for (int i = 1; i < 3; i++)
        for (float v : ws[i].y)
            bad += v == v; /* k's and v's y never written */
    if (norm)
        bad += differ(xr.data(), xe.data(), (size_t)N) + differ(yn.data(), yne.data(), (size_t)N);
    if (bad) {
        failures++;
        printf("FAIL rope fold: %d-bit g%d sc%d N=%lld H=%lld KVH=%lld HD=%lld rot=%d norm=%d "
               "step=%d grid %u: %d mismatches\n",
               BITS, gs, SC, (long long)N, (long long)H, (long long)KVH, (long long)HD, rot, norm,
               step, grid, bad);
    }
}

/* The residual fold (backend.h matmul_residual, then add_rmsnorm_matmul
 * with d NULL). Producer (Q16_R, kernels v1 and v2 at DEP 4 with two rows a
 * unit and DEP 8 with one, grids of 1 and 3 blocks and one warp a unit): x
 * += W a must equal x + the plain v1 kernel's y bit for bit (the unfused
 * add), every row once; rsum[0] the grid, and its partials summing to the
 * squares of the new x (double, 1e-12). Consumer (NORM, v2's default form
 * and v1; q/k/v-like weights of D columns): with the producer's partials
 * and with none (its own pass over x), x not written, y = rmsnorm(x)
 * within 1e-6 of a double reference, and the outputs equal the plain
 * kernel's on the y it wrote, bit for bit (fused == unfused). */
template <int BITS, int SC>
static void run_resid_case(int gs, int64_t N, int64_t D, std::vector<int64_t> Ds) {
    cases++;
    std::vector<float> act((size_t)N), x0((size_t)D);
    for (auto &v : act)
        v = emu_urand(-2, 2);
    for (auto &v : x0)
        v = emu_urand(-3, 3);
    std::vector<hweight> wo = {make_weight(BITS, gs, SC, D, N, true)};
    run_v1<BITS, SC, false>(wo, act.data(), N, gs, NMLX_ACT_SILU);
    std::vector<float> xe((size_t)D); /* the unfused add */
    double ss_ref = 0;
    for (int64_t i = 0; i < D; i++) {
        xe[i] = x0[i] + wo[0].y[i];
        ss_ref += (double)xe[i] * xe[i];
    }
    int bad = 0;
    std::vector<double> parts;
    for (int form = 0; form < 3; form++) { /* v1, v2 d4 r2, v2 d8 r1 */
        const unsigned full = (unsigned)((D + Q16_WARPS - 1) / Q16_WARPS);
        const unsigned grids[3] = {1, 3, full};
        for (int gi = form == 0 ? 2 : 0; gi < 3; gi++) {
            std::vector<float> x(x0);
            x.resize((size_t)D + 4, NAN); /* guards */
            std::vector<double> rsum((size_t)NMLX_RSUM_TEST_CAP + 1, NAN);
            q16_args a;
            fill_args(a, wo, act.data(), N, BITS, gs, NMLX_ACT_SILU);
            a.m[0].y = x.data();
            a.m[0].fold = Q16_R;
            a.rsum = rsum.data();
            unsigned grid = grids[gi];
            if (form == 0) {
                q16_v1_tiles(a, 2, false);
                grid = a.tiles;
                emu_launch(grid, Q16_THREADS, q16_smem(N),
                           [&] { qgemv16_kernel<BITS, SC, 2, false, false>(a); });
            } else if (form == 1) {
                q16_v2_units(a, false, 2);
                emu_launch(grid, Q16_THREADS, q16_smem(N),
                           [&] { qgemv16v2_kernel<BITS, SC, false, 4, false, 2>(a); });
            } else {
                q16_v2_units(a, false, 1);
                emu_launch(grid, Q16_THREADS, q16_smem(N),
                           [&] { qgemv16v2_kernel<BITS, SC, false, 8, false, 1>(a); });
            }
            int diff = 0;
            for (int64_t i = 0; i < D; i++)
                diff += f2u(x[i]) != f2u(xe[i]);
            for (int g = 0; g < 4; g++)
                diff += x[(size_t)D + g] == x[(size_t)D + g];
            double ss = 0;
            const bool count_ok = rsum[0] == (double)grid;
            for (unsigned b = 0; count_ok && b < grid; b++)
                ss += rsum[1 + b];
            const bool ss_ok = count_ok && fabs(ss - ss_ref) <= 1e-12 * ss_ref;
            if (diff || !ss_ok) {
                bad++;
                printf("FAIL resid producer form %d grid %u: %d-bit g%d sc%d N=%lld D=%lld: %d "
                       "rows differ from x + y, count %.0f, sum %.17g against %.17g\n",
                       form, grid, BITS, gs, SC, (long long)N, (long long)D, diff, rsum[0], ss,
                       ss_ref);
            }
            if (form == 1 && gi == 1) parts = rsum;
        }
    }
    /* the consumer on x = xe (N = D columns) */
    std::vector<uint16_t> nw((size_t)D);
    for (auto &v : nw)
        v = f2bf(emu_urand(0.5, 1.5));
    const float noff = 0.0f, neps = 1e-6f;
    std::vector<hweight> ws;
    for (int64_t Dc : Ds)
        ws.push_back(make_weight(BITS, gs, SC, Dc, D, false));
    const double inv = 1.0 / sqrt(ss_ref / (double)D + neps);
    for (int with_parts = 0; with_parts < 2; with_parts++)
        for (int v2 = 0; v2 < 2; v2++) {
            std::vector<float> x(xe), yn((size_t)D, NAN);
            for (auto &h : ws)
                h.y.assign((size_t)h.D + 4, NAN);
            unsigned done = 0;
            q16_args a;
            fill_args(a, ws, x.data(), D, BITS, gs, NMLX_ACT_SILU);
            set_norm(a, x.data(), nullptr, yn.data(), &done, nw.data(), noff, neps);
            a.parts = with_parts ? parts.data() : nullptr;
            if (v2) {
                q16_v2_units(a, false, 2);
                emu_launch(3, Q16_THREADS, q16_smem(D),
                           [&] { qgemv16v2_kernel<BITS, SC, false, 4, false, 2, true>(a); });
            } else {
                q16_v1_tiles(a, 2, false);
                emu_launch(a.tiles, Q16_THREADS, q16_smem(D),
                           [&] { qgemv16_kernel<BITS, SC, 2, false, true>(a); });
            }
            int b2 = (int)(done != 0);
            for (int64_t i = 0; i < D; i++)
                b2 += f2u(x[i]) != f2u(xe[i]); /* x not written */
            double yerr = 0, ymax = 0;
            for (int64_t i = 0; i < D; i++) {
                const double ref =
                    (double)xe[i] * inv * ((double)__uint_as_float((uint32_t)nw[i] << 16) + noff);
                yerr = fmax(yerr, fabs(ref - yn[i]));
                ymax = fmax(ymax, fabs(ref));
            }
            std::vector<std::vector<float>> yf;
            for (auto &h : ws)
                yf.push_back(h.y);
            run_v1<BITS, SC, false>(ws, yn.data(), D, gs, NMLX_ACT_SILU);
            for (size_t i = 0; i < ws.size(); i++)
                for (int64_t r = 0; r < ws[i].D; r++)
                    b2 += f2u(ws[i].y[r]) != f2u(yf[i][r]);
            if (b2 || !(yerr <= 1e-6 * ymax)) {
                bad++;
                printf("FAIL resid consumer %s parts=%d: %d-bit g%d sc%d D=%lld: %d mismatches, "
                       "y error %.2e of max %.2e\n",
                       v2 ? "v2" : "v1", with_parts, BITS, gs, SC, (long long)D, b2, yerr, ymax);
            }
        }
    failures += bad != 0;
}

template <int BITS, int SC> static void run_fmt(int gs, bool quick, bool one = false) {
    const int in = 128 / BITS;
    /* pieces a row: fewer than 32, not a multiple of 32, several steps a lane */
    const int64_t Ns[3] = {(int64_t)gs * 3,
                           (int64_t)in * 45 > gs ? ((int64_t)in * 45 + gs - 1) / gs * gs : gs,
                           (int64_t)in * 100 / gs * gs};
    for (int ni = 0; ni < 3; ni++) {
        const int64_t N = Ns[ni] < gs ? gs : Ns[ni];
        if (one && ni != 2) continue; /* one weight, several steps a lane; a pair */
        run_case<BITS, SC, false>(gs, N, {37 + ni}, ni != 1, NMLX_ACT_SILU, quick);
        if (one) {
            run_case<BITS, SC, true>(gs, N, {45, 45}, true, NMLX_ACT_GELU_TANH, quick);
            continue;
        }
        if (quick && ni != 1) continue;
        run_case<BITS, SC, false>(gs, N, {61, 16, 27}, ni == 1, NMLX_ACT_SILU, quick);
        run_case<BITS, SC, true>(gs, N, {45, 45}, ni == 2, (nmlx_act)(ni % 3), quick);
    }
}

int main(int argc, char **argv) {
    const bool quick = argc > 1 && !strcmp(argv[1], "quick");
    /* quick (the ctest case): group 64, every N form for 4-bit BF16 and
     * 8-bit F16, one weight and a pair in the other formats; grids of 3
     * blocks and one warp a unit, DEP 2 and 8 */
    if (quick) {
        run_fmt<4, SCBF16>(64, true);
        run_fmt<8, SCF16>(64, true);
        run_fmt<4, SCF32>(64, true, true);
        run_fmt<4, SCF16>(64, true, true);
        run_fmt<8, SCF32>(64, true, true);
        run_fmt<8, SCBF16>(64, true, true);
    } else
        for (int gi = 0; gi < 3; gi++) {
            const int gs = 32 << gi;
            run_fmt<4, SCF32>(gs, gi != 1);
            run_fmt<4, SCF16>(gs, true);
            run_fmt<4, SCBF16>(gs, false);
            run_fmt<8, SCF32>(gs, true);
            run_fmt<8, SCF16>(gs, gi != 0);
            run_fmt<8, SCBF16>(gs, false);
        }
    /* v1's 4-rows-a-warp form (>= 16384 rows, 4-bit) against v2 */
    run_case<4, SCBF16, false>(64, 128, {16389}, true, NMLX_ACT_SILU, true);
    /* NORM (kernel v1): q/k/v (three weights), a gate/up pair; N of 2 and
     * of 5 steps a lane */
    run_norm_case<4, SCBF16, false>(64, 1024, {61, 16, 27}, NMLX_ACT_SILU);
    run_norm_case<4, SCBF16, false>(64, 2560, {61, 16, 27}, NMLX_ACT_SILU);
    run_norm_case<4, SCBF16, true>(64, 1024, {45, 45}, NMLX_ACT_SILU);
    run_norm_case<8, SCF16, false>(32, 1024, {33, 9}, NMLX_ACT_SILU);
    run_norm_case<8, SCF32, true>(128, 640, {20, 20}, NMLX_ACT_GELU_TANH);
    /* rope_kv folded in: GQA shapes, RoPE or none, with and without NORM,
     * positions by value and from a recorded step */
    for (int v = 0; v < 8; v++) {
        const bool rot = v & 1, norm = v & 2, step = v & 4;
        run_rope_case<4, SCBF16>(64, 512, 4, 2, 32, rot, norm, step);
        run_rope_case<8, SCF16>(64, 256, 6, 2, 16, rot, norm, step);
    }
    run_rope_case<4, SCF32>(32, 1024, 8, 8, 128, true, true, false);
    /* the residual fold: an o-like producer (N -> D) and q/k/v-like consumers */
    run_resid_case<4, SCBF16>(64, 512, 1024, {61, 16, 27});
    run_resid_case<8, SCF16>(32, 768, 512, {40});
    run_resid_case<4, SCF32>(128, 1024, 2560, {33, 9});
    printf("%d cases, %d failures; v1 worst error against the double reference %.2e of max|y|\n",
           cases, failures, worst_ref);
    return failures ? 1 : 0;
}
