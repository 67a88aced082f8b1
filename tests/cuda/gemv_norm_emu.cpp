/* cuda_matmul.cu's add_rmsnorm_matmul kernel for dense weights
 * (gemv_norm_kernel, cuda_gemv_dev.cuh) run on the CPU (no GPU needed; a
 * CPU ctest case, tests/gemv_norm_emu.cmake): the device code compiled as
 * host C++ on warp_emu.h (each CUDA thread of a block a fiber, barriers and
 * warp shuffles as on the GPU), without FMA contraction so that the two
 * kernels' float operations compare as written.
 *
 * Per case (bf16 / f16 / f32 weights; one weight, q/k/v-like three, gate/up
 * pairs with each activation, q/k/v with rope_kv folded in (rot == HD or
 * none, positions by value or from a recorded step); widths for each of
 * add_rmsnorm's 64 / 256 / 512 norm threads, a lane's chunks running past
 * the row; biases or none, a norm weight with offset or none; grids of one
 * block, a few (warps loop over many units) and one warp a unit; blocks in
 * shuffled order, so the last one to count differs), run twice on one
 * counter:
 *  - x == x + d and y == add_rmsnorm's y bit for bit (its sum order,
 *    simulated here), the counter back at 0;
 *  - every output equal bit for bit to gemv_kernel<W, 1> (the unfused
 *    mat-vec, emulated too) run on that y, then rope_kv's rotation and
 *    cache rows (cuda_rope_pair) where rope is folded: q, and both whole
 *    caches (NaN but for row0 of each KV head);
 *  - weight, bias, norm weight and x / d loads inside their buffers.
 * Run: test_gemv_norm_emu [quick]   (exit 0: every case passed; ctest
 * runs quick: no grid of a warp a unit, ~1/3 of the time) */
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

extern "C" {
#include "compute/backend.h"
}

/* the kernels' `extern __shared__ smem[]` */
#define WARP_EMU_SMEM smem
#define WARP_EMU_SMEM_BYTES (72 * 1024)
#include "warp_emu.h"

/* cuda_fp16.h / cuda_bf16.h's, as far as the kernels use them */
struct alignas(4) __half2 {
    __half x, y;
};
inline float2 __half22float2(__half2 h) {
    return make_float2(__half2float(h.x), __half2float(h.y));
}
struct alignas(2) __nv_bfloat16 {
    unsigned short x;
};
#include "emu_helpers.h" /* cuda_internal.h's helpers */
typedef struct cuda_rope_fold {
    float *kc, *vc;
    int64_t HD, cap, row0, pos0, half;
    const float *freqs;
    float mscale;
    const int64_t *step;
} cuda_rope_fold;

/* in warp_emu.h's namespace: the kernel's `extern __shared__ smem[]` is its array */
namespace {
#include "compute/cuda/cuda_gemv_dev.cuh"
} // namespace

static int failures, cases;

/* add_rmsnorm's sum of squares: NT threads (cuda_norm_threads), thread t
 * over t, t + NT, ...; each warp's xor tree, then one over the warps' sums */
static double ref_sumsq(const std::vector<float> &s, int64_t N) {
    const int NT = N >= 1024 ? 512 : N >= 256 ? 256 : 64;
    std::vector<double> th((size_t)NT, 0.0);
    for (int t = 0; t < NT; t++)
        for (int64_t i = t; i < N; i += NT)
            th[t] += (double)s[i] * s[i];
    auto tree = [](double *v) {
        for (int o = 16; o > 0; o >>= 1) {
            double n[32];
            for (int l = 0; l < 32; l++)
                n[l] = v[l] + v[l ^ o];
            memcpy(v, n, sizeof n);
        }
        return v[0];
    };
    double part[32] = {0};
    for (int w = 0; w < NT / 32; w++)
        part[w] = tree(&th[(size_t)w * 32]);
    return tree(part);
}

/* weight elements of W as stored (bf16 / f16 bits or f32) */
template <typename W> struct welem {
    typedef uint16_t S;
    static const nmlx_dtype dt = NMLX_DT_BF16;
    static constexpr const char *name = "bf16";
    static S of(float f) { return f2bf(f); }
};
template <> struct welem<__half> {
    typedef uint16_t S;
    static const nmlx_dtype dt = NMLX_DT_F16;
    static constexpr const char *name = "f16";
    static S of(float f) { return d2h(f); }
};
template <> struct welem<float> {
    typedef float S;
    static const nmlx_dtype dt = NMLX_DT_F32;
    static constexpr const char *name = "f32";
    static S of(float f) { return f; }
};

struct rope_case {
    int64_t H, KVH, HD, cap, row0, pos0;
    bool rot, stepped;
    float mscale;
};

static int differ(const float *p, const float *q, size_t n) {
    int k = 0;
    for (size_t i = 0; i < n; i++)
        k += f2u(p[i]) != f2u(q[i]);
    return k;
}

/* mode GN_PLAIN (rows: one to three weights), GN_PAIR (act, two of one
 * height) or GN_ROPE (rc: q/k/v of its heads); grid 0: one block, 1: three,
 * 2: a warp a unit */
template <typename W>
static void run(int mode, int64_t N, std::vector<int64_t> rows, bool bias, bool normw, float off,
                int act, const rope_case &rc, int grid_sel) {
    cases++;
    typedef typename welem<W>::S S;
    const int n = (int)rows.size();
    emu_regions.clear();
    std::vector<std::vector<S>> w((size_t)n);
    std::vector<std::vector<float>> b((size_t)n);
    for (int i = 0; i < n; i++) {
        w[i].resize((size_t)(rows[i] * N));
        for (auto &v : w[i])
            v = welem<W>::of(emu_urand(-1, 1));
        b[i].resize((size_t)rows[i]);
        for (auto &v : b[i])
            v = emu_urand(-1, 1);
        emu_regions.push_back({w[i].data(), w[i].size() * sizeof(S), "weight"});
        emu_regions.push_back({b[i].data(), b[i].size() * 4, "bias"});
    }
    std::vector<float> x0((size_t)N), d((size_t)N), nw((size_t)N);
    for (int64_t i = 0; i < N; i++)
        x0[i] = emu_urand(-3, 3), d[i] = emu_urand(-3, 3), nw[i] = emu_urand(-1.5f, 1.5f);
    const float eps = 1e-5f;

    /* the unfused sequence: add_rmsnorm, gemv_kernel<W, 1> on its y, rope_kv */
    std::vector<float> s((size_t)N), yref((size_t)N);
    for (int64_t i = 0; i < N; i++)
        s[i] = x0[i] + d[i];
    const float inv = (float)(1.0 / sqrt(ref_sumsq(s, N) / (double)N + eps));
    for (int64_t i = 0; i < N; i++) {
        const float u = s[i] * inv;
        yref[i] = normw ? u * (nw[i] + off) : u;
    }
    emu_regions.push_back({yref.data(), (size_t)N * 4, "y (unfused)"});
    std::vector<std::vector<float>> yr((size_t)n);
    gemv_args g = {};
    g.n = n, g.pair_act = mode == GN_PAIR ? act : -1, g.wdt = welem<W>::dt;
    g.x = yref.data(), g.N = N, g.vec = true;
    int64_t all = 0;
    for (int i = 0; i < n; i++) {
        yr[i].assign((size_t)rows[i], NAN);
        g.w[i] = w[i].data(), g.bias[i] = bias ? b[i].data() : NULL, g.bdt[i] = NMLX_DT_F32;
        g.y[i] = yr[i].data(), g.D[i] = rows[i];
        all += rows[i];
    }
    if (mode == GN_PAIR)
        emu_launch(dim3((unsigned)((rows[0] + 3) / 4)), 32 * GEMV_WARPS, 0,
                   [&] { gemv_kernel<W, 1, true>(g); });
    else
        emu_launch(dim3((unsigned)((all + 3) / 4)), 32 * GEMV_WARPS, 0,
                   [&] { gemv_kernel<W, 1, false>(g); });
    const int64_t HD = rc.HD, half = rc.rot ? HD / 2 : 0;
    std::vector<float> fr((size_t)(HD / 2 + 1));
    for (int64_t i = 0; i < HD / 2; i++)
        fr[i] = (float)pow(10000.0, -2.0 * (double)i / (double)HD);
    const size_t nc = (size_t)(rc.KVH * rc.cap * HD);
    std::vector<float> kcr(nc, NAN), vcr(nc, NAN), qr;
    if (mode == GN_ROPE) { /* rope_kv_head: pairs (i, i + half) rotated, the rest copied */
        qr = yr[0];
        std::vector<float> kr = yr[1];
        auto rotate = [&](std::vector<float> &dst, const std::vector<float> &src, int64_t heads) {
            for (int64_t h = 0; h < heads; h++)
                for (int64_t i = 0; i < half; i++)
                    cuda_rope_pair(src[h * HD + i], src[h * HD + i + half], (double)rc.pos0, fr[i],
                                   rc.mscale, &dst[h * HD + i], &dst[h * HD + i + half]);
        };
        rotate(qr, yr[0], rc.H);
        rotate(kr, yr[1], rc.KVH);
        for (int64_t h = 0; h < rc.KVH; h++)
            for (int64_t i = 0; i < HD; i++) {
                kcr[(h * rc.cap + rc.row0) * HD + i] = kr[h * HD + i];
                vcr[(h * rc.cap + rc.row0) * HD + i] = yr[2][h * HD + i];
            }
    }

    /* the fused kernel, as nmlx_cuda_gemv_norm sets it up */
    std::vector<float> x, yn;
    std::vector<std::vector<float>> ys((size_t)n);
    std::vector<float> kc, vc;
    unsigned done = 0;
    int64_t step = 1000; /* a recorded step's position: pos0 and row0 its deltas */
    gemv_norm_args a = {};
    a.n = n, a.pair_act = act, a.N = N;
    a.d = d.data(), a.nw = normw ? nw.data() : NULL, a.nwdt = NMLX_DT_F32;
    a.noff = off, a.neps = eps, a.done = &done;
    for (int i = 0; i < n; i++)
        a.w[i] = w[i].data(), a.bias[i] = bias ? b[i].data() : NULL, a.bdt[i] = NMLX_DT_F32;
    if (mode == GN_PAIR)
        a.units = rows[0];
    else
        for (int i = 0; i < n; i++) {
            a.u0[i] = a.units;
            a.units += mode == GN_ROPE && i < 2 && half ? rows[i] / 2 : rows[i];
        }
    if (mode == GN_ROPE) {
        a.r.HD = HD, a.r.cap = rc.cap, a.r.row0 = rc.row0, a.r.pos0 = rc.pos0, a.r.half = half;
        a.r.freqs = rc.rot ? fr.data() : NULL, a.r.mscale = rc.mscale;
        if (rc.stepped) a.r.step = &step, a.r.row0 -= step, a.r.pos0 -= step;
    }
    emu_regions.push_back({d.data(), (size_t)N * 4, "d"});
    emu_regions.push_back({nw.data(), (size_t)N * 4, "norm weight"});
    emu_regions.push_back({fr.data(), fr.size() * 4, "freqs"});
    emu_regions.push_back({&step, sizeof step, "step"});
    const int64_t most = (a.units + GN_WARPS - 1) / GN_WARPS;
    const int64_t grid = grid_sel == 0 ? 1 : grid_sel == 1 ? (most < 3 ? most : 3) : most;
    const size_t smem_bytes = (size_t)N * 4;
    int bad = 0;
    for (int rep = 0; rep < 2; rep++) { /* twice on one counter */
        x = x0, yn.assign((size_t)N, NAN), kc.assign(nc, NAN), vc.assign(nc, NAN);
        for (int i = 0; i < n; i++)
            ys[i].assign((size_t)rows[i], NAN), a.y[i] = ys[i].data();
        a.x = x.data(), a.yn = yn.data(), a.r.kc = kc.data(), a.r.vc = vc.data();
        emu_regions.push_back({x.data(), (size_t)N * 4, "x"});
        emu_launch_shuffled(dim3((unsigned)grid), GN_THREADS, smem_bytes, emu_next32, [&] {
            if (mode == GN_PAIR)
                gemv_norm_kernel<W, GN_PAIR>(a);
            else if (mode == GN_ROPE)
                gemv_norm_kernel<W, GN_ROPE>(a);
            else
                gemv_norm_kernel<W, GN_PLAIN>(a);
        });
        emu_regions.pop_back();
        bad += (done != 0) + differ(x.data(), s.data(), (size_t)N);
    }
    const int by = differ(yn.data(), yref.data(), (size_t)N);
    int bo = 0;
    if (mode == GN_ROPE)
        bo = differ(ys[0].data(), qr.data(), qr.size()) + differ(kc.data(), kcr.data(), nc) +
             differ(vc.data(), vcr.data(), nc);
    else
        for (int i = 0; i < (mode == GN_PAIR ? 1 : n); i++)
            bo += differ(ys[i].data(), yr[i].data(), (size_t)rows[i]);
    if (bad || by || bo) {
        failures++;
        printf("FAIL mode %d %s N=%lld n=%d grid=%lld bias=%d norm w=%d: x or counter %d, y %d, "
               "outputs %d differ\n",
               mode, welem<W>::name, (long long)N, n, (long long)grid, bias, normw, bad, by, bo);
    }
}

/* The residual fold for dense weights: gemv_kernel with rsum (backend.h
 * matmul_residual) adds W a (+ bias) into x, each row x + the plain
 * kernel's y bit for bit, rsum[0] its grid and the partials summing to the
 * squares of the new x (1e-12); gemv_norm_kernel with d NULL on that x
 * (its own sum of squares: add_rmsnorm's y bit for bit; with the partials:
 * within 1e-6 of a double rmsnorm), x not written, and its outputs equal to
 * gemv_kernel's on the y it wrote, bit for bit. */
template <typename W> static void run_resid(int64_t Nin, int64_t D, std::vector<int64_t> rows) {
    cases++;
    typedef typename welem<W>::S S;
    emu_regions.clear();
    std::vector<S> wo((size_t)(D * Nin));
    for (auto &v : wo)
        v = welem<W>::of(emu_urand(-1, 1));
    std::vector<float> bo((size_t)D), act((size_t)Nin), x0((size_t)D), nw((size_t)D);
    for (auto &v : bo)
        v = emu_urand(-1, 1);
    for (auto &v : act)
        v = emu_urand(-2, 2);
    for (int64_t i = 0; i < D; i++)
        x0[i] = emu_urand(-3, 3), nw[i] = emu_urand(0.5f, 1.5f);
    std::vector<float> y((size_t)D, NAN), xe((size_t)D);
    gemv_args g = {};
    g.n = 1, g.pair_act = -1, g.wdt = welem<W>::dt, g.x = act.data(), g.N = Nin, g.vec = true;
    g.w[0] = wo.data(), g.bias[0] = bo.data(), g.bdt[0] = NMLX_DT_F32, g.y[0] = y.data(),
    g.D[0] = D;
    const unsigned pgrid = (unsigned)((D + GEMV_WARPS - 1) / GEMV_WARPS);
    emu_launch(dim3(pgrid), 32 * GEMV_WARPS, 0, [&] { gemv_kernel<W, 1, false>(g); });
    double ss_ref = 0;
    for (int64_t i = 0; i < D; i++)
        xe[i] = x0[i] + y[i], ss_ref += (double)xe[i] * xe[i];
    std::vector<float> x(x0);
    x.resize((size_t)D + 4, NAN);
    std::vector<double> rsum((size_t)pgrid + 1, NAN);
    g.y[0] = x.data(), g.rsum = rsum.data();
    emu_launch(dim3(pgrid), 32 * GEMV_WARPS, 0, [&] { gemv_kernel<W, 1, false>(g); });
    int bad = differ(x.data(), xe.data(), (size_t)D);
    for (int k = 0; k < 4; k++)
        bad += x[(size_t)D + k] == x[(size_t)D + k];
    double ss = 0;
    for (unsigned b = 0; b < pgrid; b++)
        ss += rsum[1 + b];
    bad += rsum[0] != (double)pgrid || !(fabs(ss - ss_ref) <= 1e-12 * ss_ref);
    /* the consumer: rows of D columns, one to three weights */
    const int n = (int)rows.size();
    std::vector<std::vector<S>> w((size_t)n);
    for (int i = 0; i < n; i++) {
        w[i].resize((size_t)(rows[i] * D));
        for (auto &v : w[i])
            v = welem<W>::of(emu_urand(-1, 1));
    }
    const float eps = 1e-5f;
    const double inv = 1.0 / sqrt(ss_ref / (double)D + eps);
    const float finv = (float)(1.0 / sqrt(ref_sumsq(xe, D) / (double)D + eps));
    for (int with_parts = 0; with_parts < 2; with_parts++) {
        std::vector<float> xc(xe), yn((size_t)D, NAN);
        std::vector<std::vector<float>> ys((size_t)n);
        unsigned done = 0;
        gemv_norm_args a = {};
        a.n = n, a.pair_act = -1, a.N = D, a.x = xc.data(), a.yn = yn.data(), a.d = NULL;
        a.parts = with_parts ? rsum.data() : NULL;
        a.nw = nw.data(), a.nwdt = NMLX_DT_F32, a.neps = eps, a.done = &done;
        for (int i = 0; i < n; i++) {
            ys[i].assign((size_t)rows[i], NAN);
            a.w[i] = w[i].data(), a.y[i] = ys[i].data(), a.bdt[i] = NMLX_DT_F32;
            a.u0[i] = a.units, a.units += rows[i];
        }
        const int64_t grid = (a.units + GN_WARPS - 1) / GN_WARPS < 3 ? 1 : 3;
        emu_launch_shuffled(dim3((unsigned)grid), GN_THREADS, (size_t)D * 4, emu_next32,
                            [&] { gemv_norm_kernel<W, GN_PLAIN>(a); });
        bad += (done != 0) + differ(xc.data(), xe.data(), (size_t)D);
        double yerr = 0, ymax = 0;
        int ybits = 0;
        for (int64_t i = 0; i < D; i++) {
            const double ref = (double)xe[i] * inv * nw[i];
            yerr = fmax(yerr, fabs(ref - yn[i])), ymax = fmax(ymax, fabs(ref));
            ybits += f2u(yn[i]) != f2u(__fmul_rn(__fmul_rn(xe[i], finv), nw[i]));
        }
        bad += !(yerr <= 1e-6 * ymax) + (with_parts ? 0 : ybits);
        /* the plain kernel on the y it wrote */
        std::vector<std::vector<float>> yp((size_t)n);
        gemv_args p = {};
        p.n = n, p.pair_act = -1, p.wdt = welem<W>::dt, p.x = yn.data(), p.N = D, p.vec = true;
        int64_t all = 0;
        for (int i = 0; i < n; i++) {
            yp[i].assign((size_t)rows[i], NAN);
            p.w[i] = w[i].data(), p.y[i] = yp[i].data(), p.D[i] = rows[i], p.bdt[i] = NMLX_DT_F32;
            all += rows[i];
        }
        emu_launch(dim3((unsigned)((all + 3) / 4)), 32 * GEMV_WARPS, 0,
                   [&] { gemv_kernel<W, 1, false>(p); });
        for (int i = 0; i < n; i++)
            bad += differ(ys[i].data(), yp[i].data(), (size_t)rows[i]);
    }
    if (bad) {
        failures++;
        printf("FAIL resid %s Nin=%lld D=%lld n=%d: %d mismatches (count %.0f, sum %.17g against "
               "%.17g)\n",
               welem<W>::name, (long long)Nin, (long long)D, n, bad, rsum[0], ss, ss_ref);
    }
}

int main(int argc, char **argv) {
    const bool quick = argc > 1 && !strcmp(argv[1], "quick");
    const rope_case none = {};
    for (int gs = 0; gs < 3; gs++) {
        if (quick && gs == 2) continue;
        /* 64 / 256 / 512 norm threads; N = 1032: a lane's chunks past the row */
        for (int64_t N : {64, 96, 264, 1032, 2048}) {
            run<__nv_bfloat16>(GN_PLAIN, N, {N, 40, 24}, gs & 1, true, 1.0f, -1, none, gs);
            run<float>(GN_PLAIN, N, {37}, true, false, 0.0f, -1, none, gs);
            run<__half>(GN_PLAIN, N, {19, 5}, gs != 2, true, 0.0f, -1, none, gs);
            run<__nv_bfloat16>(GN_PAIR, N, {77, 77}, gs != 1, true, 0.0f, NMLX_ACT_SILU, none, gs);
            run<float>(GN_PAIR, N, {50, 50}, true, true, 1.0f, NMLX_ACT_GELU_TANH, none, gs);
            run<__half>(GN_PAIR, N, {33, 33}, false, false, 0.0f, NMLX_ACT_GELU_ERF, none, gs);
        }
        /* H, KVH, HD, cap, row0, pos0, rot, stepped, mscale */
        const rope_case r1 = {4, 2, 64, 16, 5, 5, true, false, 1.0f};
        const rope_case r2 = {8, 2, 128, 300, 257, 100000, true, gs == 2, 1.1f};
        const rope_case r3 = {4, 2, 64, 8, 7, 7, false, gs == 1, 1.1f};
        const rope_case r4 = {8, 2, 128, 40, 39, 3, true, true, 1.25f};
        run<__nv_bfloat16>(GN_ROPE, 256, {256, 128, 128}, false, true, 0.0f, -1, r1, gs);
        run<float>(GN_ROPE, 512, {1024, 256, 256}, true, true, 0.0f, -1, r2, gs);
        run<__half>(GN_ROPE, 96, {256, 128, 128}, true, false, 1.0f, -1, r3, gs);
        run<__nv_bfloat16>(GN_ROPE, 1024, {1024, 256, 256}, false, true, 0.0f, -1, r4, gs);
    }
    /* the residual fold: 64, 256 and 512 norm threads, several blocks of rows */
    run_resid<__nv_bfloat16>(512, 1032, {61, 16, 27});
    run_resid<float>(96, 64, {37});
    run_resid<__half>(1024, 264, {19, 5});
    printf("gemv_norm_emu: %d cases, %d failed\n", cases, failures);
    return failures != 0;
}
