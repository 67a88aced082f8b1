/* cuda_qmm_fused.cu's kernels run on the CPU, for machines without a GPU
 * (as attn_mma_emu.cpp does for the attention kernel): the source is
 * compiled as host C++ (NMLX_QMM_EMU drops its PTX wrappers and launch
 * code) on warp_emu.h: each CUDA thread of a block is a fiber,
 * __syncthreads a barrier of the 256, and the warp-collective instructions
 * (mma.m16n8k16 f16, ldmatrix.x4) exchange the 32 lanes' operands through a
 * warp barrier and apply the PTX ISA's fragment layouts (f16 products exact,
 * sums in double then rounded to f32). cp.async is deferred: a thread's copies land
 * only when its cp.async.wait_group lets their group complete, so a tile
 * read before its wait shows. Shared memory is poisoned (0xff: f16 NaN)
 * before each block and must not be written past the launch's size;
 * ldmatrix and cp.async addresses are checked for alignment and bounds.
 *
 * Checked per case (affine 4/8-bit x group 32/64/128 x F32/F16/BF16 scales
 * x both tiles; T, D off the tiles; N from one 64-input tile, fewer than the
 * pipeline's stages, to several; a linear bias or none; x over 1e-3..1e3
 * with tiny and 100x rows):
 *  - tight: against a double reference of the kernel's own math (x rounded
 *    to f16 after its power-of-two token scale, group sums of those, s and b
 *    per group): within 1e-5 of the row's max|y| (f32 sums only). Any
 *    fragment, permutation, decode or pipeline bug is O(1) here.
 *  - contract: against the f32-x reference y = x (s q + b)^T + bias, within
 *    2e-3 of the row's max|y| (the bound test_cuda_qmm_fused.c applies on the
 *    GPU); the worst is printed (expected ~2^-11 scale: a few 1e-4).
 * The grouped form (the MoE prefill's experts, run_group): the same two
 * bounds on every row of every task, affine and MXFP4.
 * ctest runs `quick` (one scale dtype a format) where cuda_fp16.h is found
 * (tests/cuda_emu.cmake); by hand:
 *   g++ -std=c++20 -O2 -Wno-unknown-pragmas -DNMLX_QMM_EMU -Isrc -Iinclude \
 *       -isystem /usr/local/cuda/include tests/cuda/qmm_fused_emu.cpp -o /tmp/qmm_fused_emu
 *   /tmp/qmm_fused_emu [quick [grouped]]   (exit 0: every case within both bounds) */
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

/* the kernels' `extern __shared__ qf_sm[]`; __half from the toolkit */
#define WARP_EMU_CUDA_HEADERS
#define WARP_EMU_SMEM qf_sm
#include "warp_emu.h"

namespace {
void qf_cp16(void *smem, const void *gmem, int bytes) {
    if (bytes < 0 || bytes > 16 || (uintptr_t)gmem % (bytes == 16 ? 16 : 4)) {
        fprintf(stderr, "cp.async: bad source %p or size %d\n", gmem, bytes);
        abort();
    }
    emu_cp_async16(smem, gmem, bytes);
}
void qf_cp4(void *smem, const void *gmem, int bytes) {
    if ((bytes != 0 && bytes != 4) || (uintptr_t)gmem % 4 || (uintptr_t)smem % 4) {
        fprintf(stderr, "cp.async 4: bad source %p, destination %p or size %d\n", gmem, smem,
                bytes);
        abort();
    }
    emu_cp_async(smem, gmem, bytes, 4);
}
void qf_commit() { emu_cp_commit(); }
template <int N> void qf_wait() { emu_cp_wait<N>(); }
void qf_ldsm_x4(uint32_t *r, const uint16_t *p) { emu_ldmatrix_x4(r, p, false); }
void qf_mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    emu_mma_m16n8k16<EMU_F16>(c, a, b0, b1);
}
void qf_mma0(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    c[0] = c[1] = c[2] = c[3] = 0.0f;
    qf_mma(c, a, b0, b1);
}

/* f16x2 a * b + c on the bits (both halves), rounded to f16 */
uint32_t qf_hfma2(uint32_t a, uint32_t b, uint32_t c) {
    const uint32_t lo = d2h(h2d(a) * h2d(b) + h2d(c)),
                   hi = d2h(h2d(a >> 16) * h2d(b >> 16) + h2d(c >> 16));
    return lo | hi << 16;
}
} // namespace

#include "compute/cuda/cuda_qmm_fused.h"

/* storage of a value in dtype dt (QF_F32 / F16 / BF16) and back */
static void put(int dt, void *p, int64_t i, float v) {
    if (dt == QF_F32)
        ((float *)p)[i] = v;
    else
        ((uint16_t *)p)[i] = dt == QF_F16 ? d2h(v) : f2bf(v);
}
static double get(int dt, const void *p, int64_t i) {
    if (dt == QF_F32) return ((const float *)p)[i];
    if (dt == QF_F16) return h2d(((const uint16_t *)p)[i]);
    return bf2f(((const uint16_t *)p)[i]);
}

static int failures, cases;
static double worst_tight, worst_contract;

template <int BITS, int GS, int MT, int NT>
static void run_case(int sdt, int64_t T, int64_t D, int64_t N, bool bias, int lbdt) {
    typedef qf_cfg<BITS, GS, MT, NT> C;
    const int64_t G = N / GS, Tp = (T + 3) & ~(int64_t)3, RB = N * BITS / 8;
    /* x over 1e-3..1e3, every 7th row tiny, every 11th 100x */
    std::vector<float> x((size_t)(T * N));
    for (int64_t t = 0; t < T; t++)
        for (int64_t k = 0; k < N; k++) {
            float v = powf(10.0f, emu_urand(-3, 3)) * (emu_urand(0, 1) < 0.5f ? -1.0f : 1.0f);
            if (t % 7 == 3)
                v = emu_urand(-1e-5f, 1e-5f);
            else if (t % 11 == 5)
                v *= 100.0f;
            x[(size_t)(t * N + k)] = v;
        }
    /* a weight uniform in [-1, 1] quantized as nmlx convert does (s = range /
     * qmax, b = min, q = round((w - b) / s)), packed as MLX does (input k at
     * bits BITS (k % (32 / BITS)) of word k / (32 / BITS)) */
    const size_t ss = sdt == QF_F32 ? 4 : 2;
    std::vector<unsigned char> sc((size_t)(D * G) * ss), bi((size_t)(D * G) * ss),
        lb((size_t)D * (lbdt == QF_F32 ? 4 : 2));
    std::vector<uint32_t> wq((size_t)(D * RB / 4) + 4, 0);
    std::vector<int> q((size_t)(D * N));
    const int qmax = (1 << BITS) - 1;
    for (int64_t d = 0; d < D; d++)
        for (int64_t gi = 0; gi < G; gi++) {
            float wv[GS], lo = 1e30f, hi = -1e30f;
            for (int k = 0; k < GS; k++)
                wv[k] = emu_urand(-1, 1), lo = fminf(lo, wv[k]), hi = fmaxf(hi, wv[k]);
            put(sdt, sc.data(), d * G + gi, (hi - lo) / (float)qmax);
            put(sdt, bi.data(), d * G + gi, lo);
            const double s = get(sdt, sc.data(), d * G + gi), b = get(sdt, bi.data(), d * G + gi);
            for (int k = 0; k < GS; k++) {
                int v = (int)lrint((wv[k] - b) / s);
                v = v < 0 ? 0 : v > qmax ? qmax : v;
                const int64_t kk = gi * GS + k, bit = d * N * BITS + kk * BITS;
                q[(size_t)(d * N + kk)] = v;
                wq[(size_t)(bit / 32)] |= (uint32_t)v << (bit % 32);
            }
        }
    for (int64_t d = 0; d < D; d++)
        put(lbdt, lb.data(), d, emu_urand(-1, 1));
    /* the prep kernel, then the mat-mat */
    std::vector<uint16_t> xt((size_t)(T * N));
    std::vector<float> xs((size_t)(G * Tp), NAN), ix((size_t)T), y((size_t)(T * D), NAN);
    emu_launch(dim3((unsigned)T), QF_THREADS, QF_THREADS * 4, [&] {
        qf_xprep_kernel<BITS>(x.data(), NULL, 1, N, GS, Tp, xt.data(), xs.data(), ix.data());
    });
    qf_args a;
    a.xt = xt.data(), a.xs = xs.data(), a.ix = ix.data(), a.w = (const uint8_t *)wq.data();
    a.scales = sc.data(), a.biases = bi.data(), a.sdt = sdt;
    a.lb = bias ? lb.data() : NULL, a.lbdt = lbdt, a.y = y.data();
    a.T = T, a.D = D, a.N = N, a.Tp = Tp;
    a.y2 = D % 2 == 0;
    emu_launch(dim3((unsigned)((D + C::BN - 1) / C::BN), (unsigned)((T + C::BM - 1) / C::BM)),
               QF_THREADS, C::SMEM, [&a] { qmm_fused_kernel<BITS, GS, MT, NT>(a); });
    /* references, per row of y */
    double et = 0, ec = 0;
    std::vector<double> rt((size_t)D), rc((size_t)D);
    for (int64_t t = 0; t < T; t++) {
        const float *xr = &x[(size_t)(t * N)];
        float m = 0;
        for (int64_t k = 0; k < N; k++)
            m = fmaxf(m, fabsf(xr[k]));
        int e = 0;
        if (m > 0) frexpf(m, &e);
        const double sce = ldexp(1.0, -e);
        double mt = 0, mc = 0;
        for (int64_t d = 0; d < D; d++) {
            double yt = 0, yc = 0;
            for (int64_t gi = 0; gi < G; gi++) {
                const double s = get(sdt, sc.data(), d * G + gi),
                             b = get(sdt, bi.data(), d * G + gi);
                double pt = 0, sx = 0;
                for (int64_t k = gi * GS; k < (gi + 1) * GS; k++) {
                    const double qk = q[(size_t)(d * N + k)];
                    const double xk = h2d(d2h(xr[k] * sce)); /* the kernel's rounded x */
                    pt += qk * xk;
                    sx += xk;
                    yc += (s * qk + b) * xr[k];
                }
                yt += s * pt + b * sx;
            }
            yt /= sce;
            const double lbv = bias ? get(lbdt, lb.data(), d) : 0.0;
            rt[(size_t)d] = yt + lbv, rc[(size_t)d] = yc + lbv;
            mt = fmax(mt, fabs(rt[(size_t)d])), mc = fmax(mc, fabs(rc[(size_t)d]));
        }
        double dt = 0, dc = 0;
        for (int64_t d = 0; d < D; d++) {
            const double v = y[(size_t)(t * D + d)];
            const double a1 = fabs(v - rt[(size_t)d]), a2 = fabs(v - rc[(size_t)d]);
            dt = a1 > dt || a1 != a1 ? a1 : dt;
            dc = a2 > dc || a2 != a2 ? a2 : dc;
        }
        const double rt1 = mt > 0 ? dt / mt : dt, rc1 = mc > 0 ? dc / mc : dc;
        et = rt1 > et || rt1 != rt1 ? (rt1 != rt1 ? INFINITY : rt1) : et;
        ec = rc1 > ec || rc1 != rc1 ? (rc1 != rc1 ? INFINITY : rc1) : ec;
    }
    const bool ok = et <= 1e-5 && ec <= 2e-3;
    failures += !ok;
    cases++;
    worst_tight = fmax(worst_tight, et), worst_contract = fmax(worst_contract, ec);
    printf("%s %d-bit g%d %s tile %dx%d T=%lld D=%lld N=%lld bias=%d: tight %.2e contract %.2e\n",
           ok ? "ok  " : "FAIL", BITS, GS,
           sdt == QF_F32   ? "F32"
           : sdt == QF_F16 ? "F16"
                           : "BF16",
           C::BM, C::BN, (long long)T, (long long)D, (long long)N, bias, et, ec);
    fflush(stdout);
}

/* The grouped form (qmm_fused_group_kernel, the MoE prefill): E experts of
 * one format, rows per expert from 0 to past two tasks, two linears in one
 * launch (blockIdx.z), x gathered by the prep's row map (source row
 * order[s] / k, as cuda_moe.cu sorts pairs). Each output row against the
 * same tight (x rounded as the kernel does) and contract (f32 x) references
 * as run_case, on its task's expert. MX: MXFP4 codes (E2M1, E8M0 scales). */
template <int BITS, int GS, int MT, int NT, bool MX>
static void run_group(int sdt, int64_t D, int64_t N, bool bias, const std::vector<int> &count) {
    typedef qf_cfg<BITS, GS, MT, NT> C;
    const int E = (int)count.size(), K = 3;
    const int64_t G = N / GS, RB = N * BITS / 8;
    int64_t P = 0;
    for (int c : count)
        P += c;
    const int64_t Tsrc = (P + K - 1) / K, Tp = (P + 3) & ~(int64_t)3;
    std::vector<float> x((size_t)(Tsrc * N));
    for (float &v : x)
        v = powf(10.0f, emu_urand(-2, 2)) * (emu_urand(0, 1) < 0.5f ? -1.0f : 1.0f);
    /* sorted row s reads source row order[s] / K: a shuffled pair order */
    std::vector<int32_t> order((size_t)P);
    for (int64_t i = 0; i < P; i++)
        order[(size_t)i] = (int32_t)((i * 7 + 3) % (Tsrc * K));
    /* per linear and expert: codes, scales, biases, linear bias; q and s, b as doubles */
    const size_t ss = MX ? 1 : sdt == QF_F32 ? 4 : 2;
    const int qmax = (1 << BITS) - 1;
    struct lin_data {
        std::vector<std::vector<uint32_t>> wq;
        std::vector<std::vector<unsigned char>> sc, bi;
        std::vector<std::vector<float>> lb;
        std::vector<std::vector<double>> wv; /* W[d, k] exact, per expert */
        std::vector<qf_expert> tab;
        std::vector<float> y;
    } L[2];
    for (lin_data &l : L) {
        l.wq.resize(E), l.sc.resize(E), l.bi.resize(E), l.lb.resize(E), l.wv.resize(E);
        for (int e = 0; e < E; e++) {
            l.wq[e].assign((size_t)(D * RB / 4) + 4, 0);
            l.sc[e].assign((size_t)(D * G) * ss, 0), l.bi[e].assign((size_t)(D * G) * ss, 0);
            l.lb[e].resize((size_t)D), l.wv[e].resize((size_t)(D * N));
            for (int64_t d = 0; d < D; d++) {
                l.lb[e][(size_t)d] = emu_urand(-1, 1);
                for (int64_t gi = 0; gi < G; gi++) {
                    double s = 0, b = 0;
                    if (MX) {
                        l.sc[e][(size_t)(d * G + gi)] =
                            (unsigned char)(120 + (int)emu_urand(0, 10));
                        s = ldexp(1.0, (int)l.sc[e][(size_t)(d * G + gi)] - 127);
                    } else {
                        put(sdt, l.sc[e].data(), d * G + gi, emu_urand(0.5f, 2.0f) / (float)qmax);
                        put(sdt, l.bi[e].data(), d * G + gi, emu_urand(-1, 0));
                        s = get(sdt, l.sc[e].data(), d * G + gi);
                        b = get(sdt, l.bi[e].data(), d * G + gi);
                    }
                    for (int64_t kk = gi * GS; kk < (gi + 1) * GS; kk++) {
                        const int v = (int)emu_urand(0, (float)qmax + 0.999f);
                        const int64_t bit = d * N * BITS + kk * BITS;
                        l.wq[e][(size_t)(bit / 32)] |= (uint32_t)v << (bit % 32);
                        /* E2M1: sign bit 3, exponent bits 2-1, mantissa bit 0 */
                        const int ex = (v >> 1) & 3, mb = v & 1;
                        const double e2m1 =
                            (v & 8 ? -1 : 1) * (ex ? ldexp(1.0 + mb / 2.0, ex - 1) : mb * 0.5);
                        l.wv[e][(size_t)(d * N + kk)] = MX ? s * e2m1 : s * v + b;
                    }
                }
            }
            l.tab.push_back({l.wq[e].data(), l.sc[e].data(), MX ? NULL : l.bi[e].data(),
                             bias ? l.lb[e].data() : NULL});
        }
        l.y.assign((size_t)(P * D), NAN);
    }
    /* tasks of at most BM rows, in expert order */
    std::vector<int32_t> task;
    std::vector<int> expert_of((size_t)P);
    for (int e = 0, r = 0; e < E; r += count[(size_t)e], e++)
        for (int i = 0; i < count[(size_t)e]; i += C::BM) {
            task.push_back(e), task.push_back(r + i);
            task.push_back(count[(size_t)e] - i < C::BM ? count[(size_t)e] - i : C::BM);
            for (int j = r + i; j < r + i + task.back(); j++)
                expert_of[(size_t)j] = e;
        }
    const int ntask = (int)task.size() / 3;
    std::vector<uint16_t> xt((size_t)(P * N));
    std::vector<float> xs((size_t)(G * Tp), NAN), ix((size_t)P);
    emu_launch(dim3((unsigned)P), QF_THREADS, QF_THREADS * 4, [&] {
        qf_xprep_kernel<BITS>(x.data(), order.data(), K, N, GS, Tp, xt.data(), xs.data(),
                              ix.data());
    });
    qf_group_args g;
    for (int z = 0; z < 2; z++)
        g.tab[z] = L[z].tab.data(), g.y[z] = L[z].y.data(), g.lbdt[z] = QF_F32;
    g.task = task.data(), g.xt = xt.data(), g.xs = xs.data(), g.ix = ix.data();
    g.sdt = MX ? QF_E8M0 : sdt, g.D = D, g.N = N, g.Tp = Tp, g.y2 = D % 2 == 0;
    emu_launch(dim3((unsigned)((D + C::BN - 1) / C::BN), (unsigned)ntask, 2), QF_THREADS, C::SMEM,
               [&g] { qmm_fused_group_kernel<BITS, GS, MT, NT, MX>(g); });
    double et = 0, ec = 0;
    for (int z = 0; z < 2; z++)
        for (int64_t r = 0; r < P; r++) {
            const int e = expert_of[(size_t)r];
            const float *xr = &x[(size_t)(order[(size_t)r] / K) * N];
            float m = 0;
            for (int64_t k = 0; k < N; k++)
                m = fmaxf(m, fabsf(xr[k]));
            int ex = 0;
            if (m > 0) frexpf(m, &ex);
            const double sce = ldexp(1.0, -ex);
            double mt = 0, dt = 0, dc = 0;
            std::vector<double> rt((size_t)D), rc((size_t)D);
            for (int64_t d = 0; d < D; d++) {
                double yt = 0, yc = 0;
                for (int64_t k = 0; k < N; k++) {
                    const double w = L[z].wv[(size_t)e][(size_t)(d * N + k)];
                    yt += w * h2d(d2h(xr[k] * sce)), yc += w * xr[k];
                }
                const double lbv = bias ? L[z].lb[(size_t)e][(size_t)d] : 0.0;
                rt[(size_t)d] = yt / sce + lbv, rc[(size_t)d] = yc + lbv;
                mt = fmax(mt, fabs(rc[(size_t)d]));
            }
            for (int64_t d = 0; d < D; d++) {
                const double v = L[z].y[(size_t)(r * D + d)];
                const double a1 = fabs(v - rt[(size_t)d]), a2 = fabs(v - rc[(size_t)d]);
                dt = a1 > dt || a1 != a1 ? a1 : dt;
                dc = a2 > dc || a2 != a2 ? a2 : dc;
            }
            const double r1 = mt > 0 ? dt / mt : dt, r2 = mt > 0 ? dc / mt : dc;
            et = r1 > et || r1 != r1 ? (r1 != r1 ? INFINITY : r1) : et;
            ec = r2 > ec || r2 != r2 ? (r2 != r2 ? INFINITY : r2) : ec;
        }
    const bool ok = et <= 1e-5 && ec <= 2e-3;
    failures += !ok;
    cases++;
    worst_tight = fmax(worst_tight, et), worst_contract = fmax(worst_contract, ec);
    printf("%s grouped %s %d-bit g%d tile %dx%d E=%d P=%lld tasks=%d D=%lld N=%lld bias=%d: tight "
           "%.2e contract %.2e\n",
           ok ? "ok  " : "FAIL", MX ? "MXFP4" : "affine", BITS, GS, C::BM, C::BN, E, (long long)P,
           ntask, (long long)D, (long long)N, bias, et, ec);
    fflush(stdout);
}

template <int BITS, int GS> static void run_format(bool quick) {
    for (int sdt = 0; sdt < 3; sdt++) {
        if (quick && sdt != (BITS + GS / 32) % 3) continue; /* one scale dtype a format */
        const int64_t n1 = GS == 128 ? 128 : 64, n2 = GS == 128 ? 384 : 320;
        /* big tile: T and D past one tile, tails; small tile: several blocks */
        run_case<BITS, GS, 4, 4>(sdt, 130, 131, n2, sdt != 1, sdt == 2 ? QF_BF16 : QF_F32);
        if (quick) continue;
        run_case<BITS, GS, 2, 2>(sdt, 65, 70, n1, sdt == 1, QF_F16);
        run_case<BITS, GS, 2, 2>(sdt, 100, 131, n2, sdt == 0, QF_F32);
        run_case<BITS, GS, 4, 4>(sdt, 5, 37, n1, true, QF_BF16);
    }
}

int main(int argc, char **argv) {
    const bool quick = argc > 1 && !strcmp(argv[1], "quick");
    const bool grouped_only = argc > 2 && !strcmp(argv[2], "grouped");
    /* the permutation is a bijection of each 64-input tile */
    for (int bits = 4; bits <= 8; bits += 4) {
        int seen[64] = {0};
        for (int p = 0; p < 64; p++)
            seen[bits == 4 ? qf_perm<4>(p) : qf_perm<8>(p)]++;
        for (int i = 0; i < 64; i++)
            if (seen[i] != 1) {
                printf("FAIL: qf_perm<%d> is not a permutation (input %d seen %d times)\n", bits, i,
                       seen[i]);
                return 1;
            }
    }
    /* the decode: every code value in every slot (4-bit: q, 8-bit: 1024 + q) */
    for (int h = 0; h < 2; h++)
        for (int s = 0; s < 4; s++)
            for (int v = 0; v < 256; v++) {
                uint32_t cw4[2] = {0, 0}, cw8[4] = {0, 0, 0, 0};
                /* 4-bit: nibbles P and P + 4 of word s / 2, P = 2 (s % 2) + h */
                const int P = 2 * (s & 1) + h, q0 = v & 15, q1 = v >> 4;
                cw4[s >> 1] = (uint32_t)q0 << (4 * P) | (uint32_t)q1 << (4 * (P + 4));
                const uint32_t r4 = qf_decode<4>(cw4, s, h);
                /* 8-bit: bytes 2h, 2h + 1 of word s */
                cw8[s] = (uint32_t)v << (16 * h) | (uint32_t)(255 - v) << (16 * h + 8);
                const uint32_t r8 = qf_decode<8>(cw8, s, h);
                if (h2d(r4) != q0 || h2d(r4 >> 16) != q1 || h2d(r8) != 1024 + v ||
                    h2d(r8 >> 16) != 1024 + 255 - v) {
                    printf("FAIL: decode s=%d h=%d v=%d: 4-bit %g %g, 8-bit %g %g\n", s, h, v,
                           h2d(r4), h2d(r4 >> 16), h2d(r8), h2d(r8 >> 16));
                    return 1;
                }
            }
    /* grouped: empty experts, one row, a task and a half, several tasks */
    run_group<4, 64, 1, 4, false>(QF_BF16, 130, 192, true, {0, 1, 45, 0, 70, 32});
    run_group<4, 32, 1, 4, true>(0, 70, 128, true, {33, 0, 5, 64});
    run_group<8, 64, 2, 2, false>(QF_F16, 66, 128, false, {3, 0, 65, 20});
    if (!quick) {
        run_group<4, 128, 2, 4, false>(QF_F32, 129, 256, true, {130, 7});
        run_group<4, 32, 2, 4, true>(0, 128, 64, false, {1, 64, 2});
        run_group<8, 32, 1, 4, false>(QF_BF16, 40, 192, true, {31, 32, 33});
    }
    if (grouped_only) goto done;
    run_format<4, 64>(quick);
    run_format<8, 64>(quick);
    run_format<4, 32>(quick);
    run_format<8, 128>(quick);
    run_format<4, 128>(quick);
    run_format<8, 32>(quick);
done:
    printf("%d cases, %d failed; worst tight %.2e (bound 1e-5), contract %.2e (bound 2e-3)\n",
           cases, failures, worst_tight, worst_contract);
    printf("%s\n", failures ? "FAIL" : "PASS");
    return failures != 0;
}
