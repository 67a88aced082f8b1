/* The few-rows v2 and v3 kernels (src/compute/cuda/cuda_qrows2.h,
 * cuda_qrows3.h) run on the CPU,
 * for machines without a GPU (as qmm_fused_emu.cpp and attn_mma_emu.cpp do
 * for theirs): the kernel's header compiled as host C++ on warp_emu.h (each
 * CUDA thread of a block a fiber, __syncthreads a barrier of the 256,
 * mma.m16n8k16 bf16 by the PTX ISA's fragment layouts: bf16 products exact,
 * sums in double then rounded to f32). Needs no CUDA header, so it runs in
 * the CPU build's ctest.
 *
 * A launch runs its blocks one at a time in a shuffled order (so the
 * split-K's "last block adds the partials" meets every arrival order);
 * every global load is checked against the buffers it may read (bounds and
 * alignment); y and the partials have poisoned guard zones that must stay
 * untouched, y is poisoned (NaN) and must be written everywhere, and the
 * row blocks' counters must be back at 0 after the launch; each case is
 * launched twice (the second finds the counters the first left).
 *
 * Cases: affine 2/3/4/5/6/8-bit x group 32/64/128 x F32/F16/BF16 scales and
 * MXFP4 (E8M0 scales, group 32); T over 2..64 (every token-tile count, full
 * and partial); every (NT, MT) the launcher can pick; 1, 2, 4, 8 row
 * groups a block; split counts 1..7 (more splits than a warp's chunks
 * included); D off the block's rows; a
 * linear bias of each dtype or none; x over 1e-3..1e3 with tiny and 100x
 * rows. Per row of y, against its max|y|: tight, within 2e-6 of the
 * kernel's own math in double (x as hi + lo, the group's bias times the f32
 * chunk sums: only f32 rounding of the sums left, so a fragment, token,
 * split or decode bug is O(1) here); contract, within 1e-4 (test_cuda_qrows'
 * bound on the GPU) of y = sum_k x (s q + b) + bias with the f32 x (hi + lo
 * carries x to ~2^-18: ~1e-6 typical, up to ~1e-5 where one 1e5 input
 * dominates a short row).
 *
 * v3 runs every case too, on the f32 x (at a 4-byte offset every other
 * case: its scalar loads), twice: in one piece (the launcher's shared
 * memory budget) and in the most pieces (8 / wr chunks each: several
 * wherever a split has more chunks than that); its y must equal v2's bit for bit
 * (x above is split with qx_split_kernel's arithmetic, which v3 repeats),
 * with v2's guard and counter checks, every shared access within the
 * launch's size and aligned, nothing past the size written, and nothing
 * read before it was written (the buffer is 0xff, NaN, before each block).
 *
 * The grouped form (cuda_qrows2_group.h, the MoE prefill's experts): two
 * linears of 3..8 experts each in one launch, rows an expert from none to
 * three tasks; each task's outputs must equal qrows2_kernel's for that
 * expert and those rows alone, bit for bit (9 formats, 1 / 2 m16 tiles a
 * warp, 1..8 row groups).
 *
 * Built by ctest (tests/cuda_emu.cmake) as test_qrows2_emu, and with
 * QR2_BREAK=1 (A fragment halves crossed), QR2_BREAK=2 (the split-K
 * counters not put back to 0: the second launch never finds its last
 * block), QR2_BREAK=3 (the grouped kernel reads the first task's chunk
 * sums for every task), QR3_BREAK=1 (v3's chunk sums added in another order: within the
 * error bounds, not v2's bits) and QR3_BREAK=2 (v3 stages a piece while
 * warps still read the one before) as tests that must fail.
 * Usage: test_qrows2_emu [quick] */
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "warp_emu.h"

#include "compute/cuda/cuda_qrows2_group.h"
#include "compute/cuda/cuda_qrows3.h"

/* the primitives */
inline qr2_u4 qr2_ldg16(const void *p) {
    emu_check_load(p, 16, 16);
    qr2_u4 v;
    memcpy(&v, p, 16);
    return v;
}
inline uint32_t qr2_sub128x2(uint32_t p) {
    return (uint32_t)f2bf(bf2f(p) - 128.0f) | (uint32_t)f2bf(bf2f(p >> 16) - 128.0f) << 16;
}
inline uint32_t qr2_pack_bf16(float lo, float hi) {
    return (uint32_t)f2bf(lo) | (uint32_t)f2bf(hi) << 16;
}
inline float qr2_h2f(uint16_t h) { return (float)h2d(h); }
inline void qr2_pdl() {} /* blocks run in launch order here */
inline void qr2_mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    emu_mma_m16n8k16<EMU_BF16>(c, a, b0, b1);
}

/* v3's shared memory: one buffer (a block's threads are fibers of one OS
 * thread, the blocks run one after another), poisoned (0xff: bf16 / f32
 * NaN) before each block; every access checked against the launch's size
 * and its alignment; nothing past the size may change */
enum { QR3_EMU_SMEM = 256 * 1024 };
alignas(16) static unsigned char qr3_emu_sm[QR3_EMU_SMEM];
static size_t qr3_emu_used;
static void qr3_emu_check(const unsigned char *p, size_t n, const char *what) {
    if ((uintptr_t)p % n || p < qr3_emu_sm || p + n > qr3_emu_sm + qr3_emu_used) {
        fprintf(stderr, "v3 %s: shared offset %td of %zu, misaligned or out of bounds\n", what,
                p - qr3_emu_sm, qr3_emu_used);
        abort();
    }
}
static bool qr3_emu_tail_clean() {
    for (size_t i = qr3_emu_used; i < QR3_EMU_SMEM; i++)
        if (qr3_emu_sm[i] != 0xff) return false;
    return true;
}
inline unsigned char *qr3_smem() { return qr3_emu_sm; }
inline qr2_u4 qr3_lds16(const unsigned char *p) {
    qr3_emu_check(p, 16, "16-byte load");
    qr2_u4 v;
    memcpy(&v, p, 16);
    return v;
}
inline float qr3_ldsf(const unsigned char *p) {
    qr3_emu_check(p, 4, "4-byte load");
    float v;
    memcpy(&v, p, 4);
    return v;
}
inline void qr3_sts16(unsigned char *p, qr2_u4 v) {
    qr3_emu_check(p, 16, "16-byte store");
    memcpy(p, &v, 16);
}
inline void qr3_stsf(unsigned char *p, float v) {
    qr3_emu_check(p, 4, "4-byte store");
    memcpy(p, &v, 4);
}

static int failures, cases, v3_same, v3_multi, group_cases, group_tasks;
static double worst, worst_c;

/* E2M1 code -> value */
static double e2m1(int c) {
    static const double v[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
    return (c & 8 ? -1 : 1) * v[c & 7];
}

/* One weight of a format: codes (MLX packing), scales and biases in their
 * storage, a linear bias; and the values the references take. */
struct emu_qw {
    std::vector<uint8_t> wq, sc, bi, lb;
    std::vector<int> q;
    std::vector<double> sv, bv, lbv;
};

template <int BITS, int SC>
static emu_qw make_qw(int gs, int64_t D, int64_t N, int lbdt, bool bias) {
    constexpr bool MX = SC == QR2_SC_E8M0;
    const int64_t G = N / gs, rowb = N * BITS / 8;
    emu_qw o;
    std::vector<uint8_t> &wq = o.wq, &sc = o.sc, &bi = o.bi, &lb = o.lb;
    std::vector<int> &q = o.q;
    std::vector<double> &sv = o.sv, &bv = o.bv, &lbv = o.lbv;
    /* codes (MLX packing: a little-endian bit stream, input k at bits k BITS of its row) */
    wq.assign((size_t)(D * rowb) + 8, 0);
    q.assign((size_t)(D * N), 0);
    for (int64_t d = 0; d < D; d++)
        for (int64_t k = 0; k < N; k++) {
            const int v = (int)(emu_next32() % (1u << BITS));
            q[(size_t)(d * N + k)] = v;
            for (int b = 0; b < BITS; b++)
                if (v >> b & 1) {
                    const int64_t bit = d * rowb * 8 + k * BITS + b;
                    wq[(size_t)(bit / 8)] |= (uint8_t)(1u << (bit % 8));
                }
        }
    /* scales and biases in their storage; the reference takes the stored values */
    const size_t ss = SC == QR2_SC_F32 ? 4 : SC == QR2_SC_E8M0 ? 1 : 2;
    sc.assign((size_t)(D * G) * ss, 0), bi.assign((size_t)(D * G) * ss, 0);
    sv.assign((size_t)(D * G), 0), bv.assign((size_t)(D * G), 0);
    for (int64_t i = 0; i < D * G; i++) {
        if (MX) {
            const uint8_t e = (uint8_t)(118 + emu_next32() % 8);
            sc[(size_t)i] = e;
            sv[(size_t)i] = ldexp(1.0, e - 127);
            bv[(size_t)i] = 0;
            continue;
        }
        const float s = emu_urand(0.001f, 0.02f) / (float)((1 << BITS) - 1) * 16.0f,
                    b = emu_urand(-0.1f, 0.1f);
        if (SC == QR2_SC_F32) {
            memcpy(&sc[(size_t)i * 4], &s, 4), memcpy(&bi[(size_t)i * 4], &b, 4);
            sv[(size_t)i] = s, bv[(size_t)i] = b;
        } else if (SC == QR2_SC_BF16) {
            const uint16_t hs = f2bf(s), hb = f2bf(b);
            memcpy(&sc[(size_t)i * 2], &hs, 2), memcpy(&bi[(size_t)i * 2], &hb, 2);
            sv[(size_t)i] = bf2f(hs), bv[(size_t)i] = bf2f(hb);
        } else {
            const uint16_t hs = d2h(s), hb = d2h(b);
            memcpy(&sc[(size_t)i * 2], &hs, 2), memcpy(&bi[(size_t)i * 2], &hb, 2);
            sv[(size_t)i] = h2d(hs), bv[(size_t)i] = h2d(hb);
        }
    }
    /* the linear bias */
    lb.assign((size_t)D * 4, 0);
    lbv.assign((size_t)D, 0.0);
    for (int64_t d = 0; d < D; d++) {
        const float v = emu_urand(-1, 1);
        if (lbdt == QR2_B_F32)
            memcpy(&lb[(size_t)d * 4], &v, 4), lbv[(size_t)d] = v;
        else if (lbdt == QR2_B_BF16) {
            const uint16_t h = f2bf(v);
            memcpy(&lb[(size_t)d * 2], &h, 2), lbv[(size_t)d] = bf2f(h);
        } else {
            const uint16_t h = d2h(v);
            memcpy(&lb[(size_t)d * 2], &h, 2), lbv[(size_t)d] = h2d(h);
        }
        if (!bias) lbv[(size_t)d] = 0;
    }
    return o;
}

/* x [T, N] as qx_split_kernel leaves it: hi = bf16(x), lo = bf16(x - hi),
 * and the chunk sums in its order (v3 must give its bits): a thread's 8
 * inputs as 4 pairs added to 0 in order, then the 4 threads by shfl_xor 1,
 * 2: (p0 + p1) + (p2 + p3) */
static void split_x(const float *x, int64_t T, int64_t N, std::vector<uint16_t> &xhi,
                    std::vector<uint16_t> &xlo, std::vector<float> &xs) {
    const int64_t C = N / 32;
    xhi.assign((size_t)(T * N), 0), xlo.assign((size_t)(T * N), 0);
    xs.assign((size_t)(T * C), 0.0f);
    for (int64_t i = 0; i < T * N; i++) {
        xhi[(size_t)i] = f2bf(x[i]);
        xlo[(size_t)i] = f2bf(x[i] - bf2f(xhi[(size_t)i]));
    }
    for (int64_t i = 0; i < T * C; i++) {
        float p[4];
        for (int m = 0; m < 4; m++) {
            const float *v = x + i * 32 + 8 * m;
            float s = 0.0f;
            for (int j = 0; j < 4; j++)
                s += v[2 * j] + v[2 * j + 1];
            p[m] = s;
        }
        xs[(size_t)i] = (p[0] + p[1]) + (p[2] + p[3]);
    }
}

template <int BITS, int SC, int NT, int MT>
static void run_case(int gs, int T, int64_t D, int64_t N, int S, int wr, int lbdt, bool bias) {
    constexpr bool MX = SC == QR2_SC_E8M0;
    const int64_t G = N / gs, C = N / 32, rowb = N * BITS / 8;
    const emu_qw W = make_qw<BITS, SC>(gs, D, N, lbdt, bias);
    const std::vector<uint8_t> &wq = W.wq, &sc = W.sc, &bi = W.bi, &lb = W.lb;
    const std::vector<int> &q = W.q;
    const std::vector<double> &sv = W.sv, &bv = W.bv, &lbv = W.lbv;
    /* x over 1e-3..1e3, every 5th row tiny, every 7th 100x; split as
     * qx_split_kernel does (hi = bf16(x), lo = bf16(x - hi), chunk sums) */
    /* x at a 4-byte offset every other case (v3's scalar loads) */
    const int xo = (int)(emu_next32() & 1);
    std::vector<float> xbuf((size_t)(T * N + 1));
    float *const x = xbuf.data() + xo;
    for (int t = 0; t < T; t++)
        for (int64_t k = 0; k < N; k++) {
            float v = powf(10.0f, emu_urand(-3, 3)) * (emu_next32() & 1 ? -1.0f : 1.0f);
            if (t % 5 == 3)
                v = emu_urand(-1e-5f, 1e-5f);
            else if (t % 7 == 5)
                v *= 100.0f;
            x[t * N + k] = v;
        }
    std::vector<uint16_t> xhi, xlo;
    std::vector<float> xs;
    split_x(x, T, N, xhi, xlo, xs);
    /* y, the partials and the counters with poisoned guard zones */
    enum { GUARD = 64 };
    const int64_t rblocks = (D + 16 * MT * wr - 1) / (16 * MT * wr);
    std::vector<float> y((size_t)(T * D + 2 * GUARD), NAN);
    std::vector<float> part((size_t)(S * T * D + 2 * GUARD), NAN);
    std::vector<unsigned> cnt((size_t)(rblocks + 2 * GUARD), 0xdeadbeefu);
    for (int64_t i = 0; i < rblocks; i++)
        cnt[(size_t)(GUARD + i)] = 0;
    /* the buffers loads may read: a load outside them (or misaligned) aborts */
    emu_regions.clear();
    emu_regions.push_back({wq.data(), (size_t)(D * rowb), "codes"});
    emu_regions.push_back({sc.data(), sc.size(), "scales"});
    if (!MX) emu_regions.push_back({bi.data(), bi.size(), "biases"});
    emu_regions.push_back({xhi.data(), xhi.size() * 2, "x hi"});
    emu_regions.push_back({xlo.data(), xlo.size() * 2, "x lo"});
    emu_regions.push_back({xs.data(), xs.size() * 4, "xs"});
    if (S > 1) emu_regions.push_back({part.data() + GUARD, (size_t)(S * T * D) * 4, "partials"});
    qr2_args a;
    memset(&a, 0, sizeof a);
    a.w = wq.data(), a.scales = sc.data(), a.biases = MX ? nullptr : bi.data();
    a.gshift = gs == 32 ? 0 : gs == 64 ? 1 : 2;
    a.xhi = xhi.data(), a.xlo = xlo.data(), a.xs = xs.data();
    a.y = y.data() + GUARD;
    a.part = S > 1 ? part.data() + GUARD : nullptr;
    a.cnt = S > 1 ? cnt.data() + GUARD : nullptr;
    a.lbias = bias ? lb.data() : nullptr, a.lbdt = lbdt;
    a.T = T, a.S = S, a.wr = wr, a.D = D, a.N = N;
    /* twice: the second launch finds the counters as the first left them
     * (as the next call or a graph replay does); y and the partials poisoned
     * again before it */
    bool ok = true;
    for (int rep = 0; rep < 2; rep++) {
        if (rep) {
            std::fill(y.begin(), y.end(), NAN);
            std::fill(part.begin(), part.end(), NAN);
        }
        emu_launch_shuffled(dim3((unsigned)rblocks, (unsigned)S), QR2_THREADS, 0, emu_next32,
                            [&a] { qrows2_kernel<BITS, SC, NT, MT>(a); });
        bool guards = true;
        for (int i = 0; i < GUARD; i++) {
            guards =
                guards && std::isnan(y[(size_t)i]) && std::isnan(y[(size_t)(GUARD + T * D + i)]);
            guards = guards && std::isnan(part[(size_t)i]) &&
                     std::isnan(part[(size_t)(GUARD + S * T * D + i)]);
            guards = guards && cnt[(size_t)i] == 0xdeadbeefu &&
                     cnt[(size_t)(GUARD + rblocks + i)] == 0xdeadbeefu;
        }
        if (!guards) printf("guard zone written\n");
        ok = ok && guards;
        for (int64_t i = 0; i < rblocks; i++)
            if (cnt[(size_t)(GUARD + i)] != 0) {
                printf("counter %lld left at %u\n", (long long)i, cnt[(size_t)(GUARD + i)]);
                ok = false;
                break;
            }
    }
    /* v3 on the same inputs (the f32 x): v2's bits, in one piece (the
     * launcher's budget) and in the most pieces (pc = 8 / wr chunks), each
     * launch checked as v2's (guards, counters back at 0) */
    std::vector<float> y2(y.begin() + GUARD, y.begin() + GUARD + T * D);
    qr3_args a3;
    memset(&a3, 0, sizeof a3);
    a3.w = a.w, a3.scales = a.scales, a3.biases = a.biases, a3.gshift = a.gshift;
    a3.x = x, a3.xvec = (uintptr_t)x % 16 == 0;
    a3.y = a.y, a3.part = a.part, a3.cnt = a.cnt, a3.lbias = a.lbias, a3.lbdt = a.lbdt;
    a3.T = T, a3.S = S, a3.wr = wr, a3.D = D, a3.N = N;
    emu_regions.clear();
    emu_regions.push_back({wq.data(), (size_t)(D * rowb), "codes"});
    emu_regions.push_back({sc.data(), sc.size(), "scales"});
    if (!MX) emu_regions.push_back({bi.data(), bi.size(), "biases"});
    emu_regions.push_back({x, (size_t)(T * N) * 4, "x"});
    if (S > 1) emu_regions.push_back({part.data() + GUARD, (size_t)(S * T * D) * 4, "partials"});
    int pieces[2] = {0, 0};
    bool same = true;
    for (int rep = 0; rep < 2; rep++) {
        std::fill(y.begin(), y.end(), NAN);
        std::fill(part.begin(), part.end(), NAN);
        a3.pc = qr3_pick_pc(T, (int)C, S, wr, 16 * MT * wr, a3.gshift, NT, MX,
                            rep ? 1 : qr3_budget(MT, NT, QR3_SMEM_MAX));
        const qr3_layout L = qr3_layout_of(T, a3.pc, 16 * MT * wr, a3.gshift, NT, MX);
        pieces[rep] = (int)((C + S - 1) / S + a3.pc - 1) / a3.pc;
        qr3_emu_used = (size_t)L.bytes;
        if (L.bytes > QR3_SMEM_MAX) {
            printf("v3: %d bytes of shared memory\n", L.bytes);
            ok = false;
        }
        memset(qr3_emu_sm, 0xff, sizeof qr3_emu_sm);
        bool tail = true;
        emu_launch_shuffled(dim3((unsigned)rblocks, (unsigned)S), QR2_THREADS, 0, emu_next32,
                            [&a3, &tail] {
                                if (threadIdx.x == 0) { /* the block's first thread to run */
                                    tail = tail && qr3_emu_tail_clean();
                                    memset(qr3_emu_sm, 0xff, sizeof qr3_emu_sm);
                                }
                                qrows3_kernel<BITS, SC, NT, MT>(a3);
                            });
        tail = tail && qr3_emu_tail_clean();
        if (!tail) printf("v3: shared memory written past its size\n");
        bool guards = tail;
        for (int i = 0; i < GUARD; i++) {
            guards =
                guards && std::isnan(y[(size_t)i]) && std::isnan(y[(size_t)(GUARD + T * D + i)]);
            guards = guards && std::isnan(part[(size_t)i]) &&
                     std::isnan(part[(size_t)(GUARD + S * T * D + i)]);
            guards = guards && cnt[(size_t)i] == 0xdeadbeefu &&
                     cnt[(size_t)(GUARD + rblocks + i)] == 0xdeadbeefu;
        }
        if (!guards) printf("v3: guard zone written\n");
        ok = ok && guards;
        for (int64_t i = 0; i < rblocks; i++)
            if (cnt[(size_t)(GUARD + i)] != 0) {
                printf("v3: counter %lld left at %u\n", (long long)i, cnt[(size_t)(GUARD + i)]);
                ok = false;
                break;
            }
        const bool eq = !memcmp(y2.data(), y.data() + GUARD, (size_t)(T * D) * 4);
        if (!eq) printf("v3 (%d pieces) differs from v2 in bits\n", pieces[rep]);
        same = same && eq;
    }
    ok = ok && same;
    v3_same += same;
    v3_multi += pieces[1] > 1;
    /* the references, per row of y, for v2's y and v3's (the same where
     * they agree): tight (the kernel's own math in double: x as hi + lo,
     * the group bias times the f32 chunk sums) and contract (the f32 x) */
    const float *const ys[2] = {y2.data(), y.data() + GUARD};
    double e = 0, ec = 0;
    for (int t = 0; t < T; t++) {
        std::vector<double> r((size_t)D), rc((size_t)D);
        double m = 0, mc = 0;
        for (int64_t d = 0; d < D; d++) {
            double acc = 0, accc = 0;
            for (int64_t ch = 0; ch < C; ch++) {
                const int64_t gi = d * G + ch * 32 / gs;
                double pq = 0;
                for (int64_t k = ch * 32; k < ch * 32 + 32; k++) {
                    const int qq = q[(size_t)(d * N + k)];
                    const double qv = MX ? e2m1(qq) : qq, xk = x[t * N + k];
                    const double xt = (double)bf2f(xhi[(size_t)(t * N + k)]) +
                                      (double)bf2f(xlo[(size_t)(t * N + k)]);
                    pq += qv * xt;
                    accc += (sv[(size_t)gi] * qv + bv[(size_t)gi]) * xk;
                }
                acc += sv[(size_t)gi] * pq + bv[(size_t)gi] * (double)xs[(size_t)(t * C + ch)];
            }
            r[(size_t)d] = acc + lbv[(size_t)d], rc[(size_t)d] = accc + lbv[(size_t)d];
            m = fmax(m, fabs(r[(size_t)d])), mc = fmax(mc, fabs(rc[(size_t)d]));
        }
        for (int k = 0; k < (same ? 1 : 2); k++)
            for (int64_t d = 0; d < D; d++) {
                const double v = ys[k][t * D + d];
                double rel = fabs(v - r[(size_t)d]) / (m > 0 ? m : 1),
                       relc = fabs(v - rc[(size_t)d]) / (mc > 0 ? mc : 1);
                if (rel != rel) rel = INFINITY;
                if (relc != relc) relc = INFINITY;
                e = fmax(e, rel), ec = fmax(ec, relc);
            }
    }
    ok = ok && e <= 2e-6 && ec <= 1e-4;
    worst_c = fmax(worst_c, ec);
    failures += !ok;
    cases++;
    worst = fmax(worst, e);
    const char *sn = MX ? "mxfp4" : SC == QR2_SC_F32 ? "f32" : SC == QR2_SC_F16 ? "f16" : "bf16";
    if (!ok || getenv("QR2_EMU_VERBOSE"))
        printf("%s %d-bit g%d %s NT=%d MT=%d WR=%d T=%d D=%lld N=%lld S=%d bias=%d/%d x+%d "
               "v3 pieces %d/%d: tight %.2e contract %.2e\n",
               ok ? "ok  " : "FAIL", BITS, gs, sn, NT, MT, wr, T, (long long)D, (long long)N, S,
               bias, lbdt, xo, pieces[0], pieces[1], e, ec);
    fflush(stdout);
}

/* T -> the launcher's NT; then (NT, MT) as it may pick them */
template <int BITS, int SC>
static void run_t(int pick, int gs, int T, int64_t D, int64_t N, int S, int lbdt, bool bias) {
    const int wr = 1 << ((pick >> 1) % 4); /* 1, 2, 4, 8 row groups a block */
    const int nt = T <= 8 ? 1 : T <= 16 ? 2 : T <= 32 ? 4 : 8, alt = pick & 1;
    switch (nt) {
    case 1:
        alt ? run_case<BITS, SC, 1, 2>(gs, T, D, N, S, wr, lbdt, bias)
            : run_case<BITS, SC, 1, 4>(gs, T, D, N, S, wr, lbdt, bias);
        break;
    case 2:
        alt ? run_case<BITS, SC, 2, 2>(gs, T, D, N, S, wr, lbdt, bias)
            : run_case<BITS, SC, 2, 4>(gs, T, D, N, S, wr, lbdt, bias);
        break;
    case 4:
        alt ? run_case<BITS, SC, 4, 2>(gs, T, D, N, S, wr, lbdt, bias)
            : run_case<BITS, SC, 4, 4>(gs, T, D, N, S, wr, lbdt, bias);
        break;
    default:
        alt ? run_case<BITS, SC, 8, 1>(gs, T, D, N, S, wr, lbdt, bias)
            : run_case<BITS, SC, 8, 2>(gs, T, D, N, S, wr, lbdt, bias);
        break;
    }
}

/* The grouped kernel (cuda_qrows2_group.h) over E experts of two linears
 * (one launch, blockIdx.z the linear): rows per expert from 0 to past two
 * tasks; each task's rows of both y must equal qrows2_kernel's for that
 * expert alone (T = the task's rows, S = 1, the same row groups) bit for
 * bit; y poisoned (NaN) and written everywhere, its guard zones untouched,
 * every load inside the experts' buffers, x, the sums or the task table. */
template <int BITS, int SC, int MT>
static void run_group(int gs, int E, int64_t D, int64_t N, int wr, int lbdt, bool bias) {
    constexpr bool MX = SC == QR2_SC_E8M0;
    constexpr int NT = 4, ROWS = 8 * NT;
    const int64_t rowb = N * BITS / 8;
    std::vector<emu_qw> W[2];
    std::vector<qr2_expert> tab[2];
    for (int l = 0; l < 2; l++)
        for (int e = 0; e < E; e++) {
            W[l].push_back(make_qw<BITS, SC>(gs, D, N, lbdt, bias));
            const emu_qw &w = W[l].back();
            tab[l].push_back(qr2_expert{w.wq.data(), w.sc.data(), MX ? nullptr : w.bi.data(),
                                        bias ? w.lb.data() : nullptr});
        }
    /* rows an expert: none for about a third, the last past two tasks */
    std::vector<int32_t> task;
    int P = 0;
    for (int e = 0; e < E; e++) {
        const int n = e == E - 1              ? 2 * ROWS + 1 + (int)(emu_next32() % ROWS)
                      : emu_next32() % 3 == 0 ? 0
                                              : 1 + (int)(emu_next32() % (ROWS + 8));
        for (int r = 0; r < n; r += ROWS)
            task.insert(task.end(), {e, P + r, n - r < ROWS ? n - r : ROWS});
        P += n;
    }
    const int ntask = (int)task.size() / 3;
    std::vector<float> x((size_t)(P * N));
    for (auto &v : x)
        v = powf(10.0f, emu_urand(-3, 3)) * (emu_next32() & 1 ? -1.0f : 1.0f);
    std::vector<uint16_t> xhi, xlo;
    std::vector<float> xs;
    split_x(x.data(), P, N, xhi, xlo, xs);
    enum { GUARD = 64 };
    std::vector<float> y[2];
    for (int l = 0; l < 2; l++)
        y[l].assign((size_t)(P * D + 2 * GUARD), NAN);
    emu_regions.clear();
    for (int l = 0; l < 2; l++)
        for (const emu_qw &w : W[l]) {
            emu_regions.push_back({w.wq.data(), (size_t)(D * rowb), "codes"});
            emu_regions.push_back({w.sc.data(), w.sc.size(), "scales"});
            if (!MX) emu_regions.push_back({w.bi.data(), w.bi.size(), "biases"});
        }
    emu_regions.push_back({xhi.data(), xhi.size() * 2, "x hi"});
    emu_regions.push_back({xlo.data(), xlo.size() * 2, "x lo"});
    emu_regions.push_back({xs.data(), xs.size() * 4, "xs"});
    emu_regions.push_back({task.data(), task.size() * 4, "tasks"});
    qr2_group_args g;
    memset(&g, 0, sizeof g);
    for (int l = 0; l < 2; l++)
        g.lin[l] = qr2_lin{tab[l].data(), y[l].data() + GUARD, lbdt};
    g.task = task.data();
    g.xhi = xhi.data(), g.xlo = xlo.data(), g.xs = xs.data();
    g.gshift = gs == 32 ? 0 : gs == 64 ? 1 : 2, g.wr = wr, g.D = D, g.N = N;
    const int64_t RB = 16 * MT * wr;
    emu_launch_shuffled(dim3((unsigned)((D + RB - 1) / RB), (unsigned)ntask, 2), QR2_THREADS, 0,
                        emu_next32, [&g] { qrows2_group_kernel<BITS, SC, NT, MT>(g); });
    bool ok = true;
    for (int l = 0; l < 2; l++)
        for (int i = 0; i < GUARD; i++)
            ok = ok && std::isnan(y[l][(size_t)i]) && std::isnan(y[l][(size_t)(GUARD + P * D + i)]);
    if (!ok) printf("grouped: guard zone written\n");
    /* each task alone through qrows2_kernel */
    int differ = 0;
    for (int l = 0; l < 2; l++)
        for (int t = 0; t < ntask; t++) {
            const int e = task[(size_t)(3 * t)], r0 = task[(size_t)(3 * t + 1)],
                      n = task[(size_t)(3 * t + 2)];
            std::vector<float> yr((size_t)(n * D), NAN);
            qr2_args a;
            memset(&a, 0, sizeof a);
            a.w = W[l][(size_t)e].wq.data(), a.scales = tab[l][(size_t)e].s;
            a.biases = tab[l][(size_t)e].b, a.gshift = g.gshift;
            a.xhi = xhi.data() + (size_t)r0 * N, a.xlo = xlo.data() + (size_t)r0 * N;
            a.xs = xs.data() + (size_t)r0 * (N / 32);
            a.y = yr.data(), a.lbias = tab[l][(size_t)e].bias, a.lbdt = lbdt;
            a.T = n, a.S = 1, a.wr = wr, a.D = D, a.N = N;
            emu_launch(dim3((unsigned)((D + RB - 1) / RB), 1), QR2_THREADS, 0,
                       [&a] { qrows2_kernel<BITS, SC, NT, MT>(a); });
            const float *yg = y[l].data() + GUARD + (size_t)r0 * D;
            for (int64_t i = 0; i < n * D; i++)
                differ += std::isnan(yr[(size_t)i]) || memcmp(&yr[(size_t)i], &yg[i], 4) != 0;
        }
    ok = ok && !differ;
    failures += !ok;
    cases++, group_cases++, group_tasks += ntask;
    if (!ok || getenv("QR2_EMU_VERBOSE"))
        printf("%s grouped %d-bit g%d sc %d MT=%d WR=%d E=%d P=%d tasks %d D=%lld N=%lld: %d "
               "outputs differ from qrows2_kernel\n",
               ok ? "ok  " : "FAIL", BITS, gs, SC, MT, wr, E, P, ntask, (long long)D, (long long)N,
               differ);
    fflush(stdout);
}

static const int Ts[12] = {2, 3, 7, 8, 9, 16, 17, 31, 32, 33, 63, 64};
static int case_i;

template <int BITS, int SC> static void run_format(int gs, bool quick) {
    for (int k = 0; k < (quick ? 1 : 2); k++) {
        const int i = case_i++;
        const int T = Ts[(i * 5 + k * 7) % 12];
        /* 1..4 groups of inputs; D from under one block to a few, off 16 */
        const int64_t N = (int64_t)gs * (1 + (i + k) % 4);
        const int64_t C = N / 32, D = 21 + (i * 13 + k * 29) % 90;
        int S = 1 + (i + 2 * k) % 5;
        if (i % 4 == 3) S = (int)C + 1 > 7 ? 7 : (int)C + 1; /* more splits than chunks */
        run_t<BITS, SC>(i + k, gs, T, D, N, S, (i + k) % 3, (i + k) % 4 != 1);
    }
}

template <int BITS> static void run_bits(bool quick) {
    const int gss[3] = {32, 64, 128};
    for (int gi = 0; gi < 3; gi++) {
        run_format<BITS, QR2_SC_F32>(gss[gi], quick);
        run_format<BITS, QR2_SC_F16>(gss[gi], quick);
        run_format<BITS, QR2_SC_BF16>(gss[gi], quick);
    }
}

int main(int argc, char **argv) {
    const bool quick = argc > 1 && !strcmp(argv[1], "quick");
    /* the decode: every code value in every position of a piece */
    for (int pos = 0; pos < 8; pos++)
        for (int v = 0; v < 256; v++) {
            uint32_t p[4];
            const int c4 = v & 15, c8 = v;
            qr2_codes<4, false>((uint64_t)c4 << (4 * pos), p);
            const float g4 = bf2f(p[pos / 2] >> (16 * (pos % 2)));
            qr2_codes<8, false>((uint64_t)c8 << (8 * pos), p);
            const float g8 = bf2f(p[pos / 2] >> (16 * (pos % 2)));
            qr2_codes<4, true>((uint64_t)c4 << (4 * pos), p);
            const double gm = bf2f(p[pos / 2] >> (16 * (pos % 2))) * 16384.0;
            qr2_codes<6, false>((uint64_t)(v & 63) << (6 * pos), p);
            const float g6 = bf2f(p[pos / 2] >> (16 * (pos % 2)));
            if (g4 != c4 || g8 != c8 || gm != e2m1(c4) || g6 != (v & 63)) {
                printf("FAIL: decode pos %d v %d: 4-bit %g 8-bit %g mxfp4 %g 6-bit %g\n", pos, v,
                       g4, g8, gm, g6);
                return 1;
            }
        }
    run_bits<4>(quick);
    run_bits<8>(quick);
    run_bits<2>(quick);
    run_bits<3>(quick);
    run_bits<5>(quick);
    run_bits<6>(quick);
    for (int k = 0; k < (quick ? 4 : 12); k++) {
        const int T = Ts[(k * 7) % 12], S = 1 + k % 4;
        run_t<4, QR2_SC_E8M0>(k, 32, T, 19 + 11 * k, 32 * (1 + k % 5), S, k % 3, k % 2 == 0);
    }
    /* longer rows: several chunks a warp, every split with work */
    run_t<4, QR2_SC_BF16>(0, 64, 8, 70, 2048, 3, QR2_B_BF16, true);
    run_t<4, QR2_SC_BF16>(1, 64, 16, 40, 1024, 1, QR2_B_F32, false);
    run_t<8, QR2_SC_BF16>(0, 64, 32, 33, 1024, 2, QR2_B_F16, true);
    run_t<4, QR2_SC_F16>(1, 128, 64, 50, 1024, 4, QR2_B_F32, true);
    /* the grouped kernel: formats, groups, row groups a block, m16 tiles a warp */
    run_group<4, QR2_SC_BF16, 2>(64, 5, 70, 128, 4, QR2_B_BF16, true); /* the default config */
    run_group<4, QR2_SC_F16, 2>(32, 4, 37, 96, 1, QR2_B_F32, false);
    run_group<8, QR2_SC_F16, 1>(32, 3, 45, 64, 2, QR2_B_F16, true);
    run_group<3, QR2_SC_F32, 1>(128, 4, 33, 256, 8, QR2_B_F32, true);
    run_group<4, QR2_SC_E8M0, 1>(32, 6, 50, 96, 4, QR2_B_BF16, true);
    if (!quick) {
        run_group<2, QR2_SC_BF16, 2>(128, 3, 40, 128, 2, QR2_B_F16, false);
        run_group<5, QR2_SC_BF16, 1>(32, 4, 29, 64, 1, QR2_B_BF16, true);
        run_group<6, QR2_SC_F16, 1>(64, 3, 66, 64, 4, QR2_B_F32, true);
        run_group<4, QR2_SC_BF16, 1>(64, 8, 130, 512, 4, QR2_B_BF16, false);
    }
    printf("qrows2 emulation: %d cases, %d failed; worst tight %.2e (bound 2e-6), contract %.2e "
           "(bound 1e-4); v3 = v2 bit for bit in %d (%d of them in several pieces); grouped "
           "= per task bit for bit in %d cases (%d tasks)\n",
           cases, failures, worst, worst_c, v3_same, v3_multi, group_cases, group_tasks);
    printf("%s\n", failures ? "FAIL" : "PASS");
    return failures != 0;
}
