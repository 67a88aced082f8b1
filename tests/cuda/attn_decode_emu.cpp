/* cuda_attention_decode.cu's kernel run on the CPU (ctest attn_decode_emu):
 * the kernel source compiled as host C++ (NMLX_ATTN_DECODE_EMU drops its
 * launch code) on warp_emu.h: each CUDA thread of a block a fiber, switched
 * at __syncthreads (a barrier of the block) and __shfl_xor_sync (a barrier
 * of the warp), so any mix of warp and block barriers meets as on the GPU.
 * The blocks of a launch run one after another in a shuffled order, so the
 * block that merges the partials (the last to count itself in) is a
 * different one from case to case. Checked against attn_ref.h's
 * double-precision reference of the `attention` contract (backend.h): the
 * partition of the keys over the blocks, the lane groups' and warps'
 * merges, the last block's combine, sinks, window, softcap, several query
 * rows (T > 1), rows that see no key, cache rows past n_kv (NaN: must not
 * be read), every instance (HD 16..256, 1..16 rows a KV head) and S from 1
 * to DEC_MAX_S, the recorded step form (q_pos, n_kv as deltas of a device
 * position), and the rows form of batched decode (rows with their own
 * caches in one launch, blocks of all rows interleaved). The counts must
 * be back to 0 after each launch, and shared memory is NaN-poisoned before
 * each block and checked after it. Exit 0: every case within 1e-5 of
 * max|ref|. */
#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

extern "C" {
#include "compute/backend.h"
}

/* no WARP_EMU_SMEM: the kernel's fixed __shared__ arrays are `static`, one
 * for the block's fibers; its dynamic shared memory is dec_sm below */
#include "warp_emu.h"

#include "attn_ref.h"

enum { SM_FLOATS = 16384 };
alignas(16) static float4 dec_sm[SM_FLOATS / 4];
static size_t sm_used; /* floats of the launch's dynamic shared memory */
#define DEC_DYN_SMEM (void)0

/* false: a block with every key (nb == 1) takes the merge path (partial,
 * count, merge) instead of writing the output itself; the two must give
 * the same bits */
static bool emu_direct = true;
#define DEC_DIRECT emu_direct

#define NMLX_ATTN_DECODE_EMU 1
#include "compute/cuda/cuda_attention_decode.cu"

static int failures, cases;
static bool quick; /* argv[1] "quick" (the broken builds): exit 1 at the first failure */
static void fail_fast(void) {
    if (quick && failures) {
        printf("%d cases: FAIL (quick: stopped at the first)\n", cases);
        exit(1);
    }
}

/* The counts: one array for every launch, as the backend's scratch, so a
 * count a launch leaves set breaks the next one; checked (and put back)
 * after each launch. */
static unsigned emu_cnt[1024];
static bool counts_clear(size_t n) {
    bool ok = true;
    for (size_t i = 0; i < n; i++)
        if (emu_cnt[i]) {
            if (ok) fprintf(stderr, "count %zu left at %u\n", i, emu_cnt[i]);
            ok = false;
            emu_cnt[i] = 0u;
        }
    return ok;
}

/* blocks with keys (nb) of a one-query-or-step launch, as the kernel computes it */
static int host_nb(const nmlx_attn_args &a, int S) {
    int64_t j0 = a.window > 0 ? a.q_pos - a.window + 1 : 0;
    j0 = j0 < 0 ? 0 : j0;
    const int64_t j1 = a.q_pos + a.T < a.n_kv ? a.q_pos + a.T : a.n_kv;
    const int64_t N = j1 > j0 ? j1 - j0 : 0;
    const int64_t len = N > 0 ? dec_chunk(N, S) : 1;
    return (int)((N + len - 1) / len);
}

/* a launch over grid of instance <LPK, DPL, R>: kernel(LPK, DPL, R), given
 * as std::integral_constant (a lambda calling that instance of a kernel),
 * its blocks in a shuffled order; dec_sm NaN-poisoned as a block's first
 * thread starts and checked for writes past sm_used as its last returns */
template <int LPK, int DPL, int R, typename K> static void dec_launch_inst(dim3 grid, K &kernel) {
    sm_used = (size_t)dec_smem_floats(LPK * DPL, R);
    assert(sm_used <= SM_FLOATS);
    unsigned started = 0, finished = 0;
    emu_launch_shuffled(grid, DEC_THREADS, 0, emu_next32, [&] {
        float *f = (float *)dec_sm;
        if (started++ == 0)
            for (size_t i = 0; i < SM_FLOATS; i++)
                f[i] = NAN;
        kernel(std::integral_constant<int, LPK>{}, std::integral_constant<int, DPL>{},
               std::integral_constant<int, R>{});
        if (++finished < DEC_THREADS) return;
        started = finished = 0;
        for (size_t i = sm_used; i < SM_FLOATS; i++)
            if (!std::isnan(f[i])) {
                fprintf(stderr, "shared memory written past %zu floats (at %zu)\n", sm_used, i);
                abort();
            }
    });
}

/* the same with the instance dec_pick chose */
template <typename K> static void dec_launch(int id, dim3 grid, K kernel) {
    switch (id) {
#define DEC_EMU(ID, LPK, DPL, R)                                                                   \
    case ID: dec_launch_inst<LPK, DPL, R>(grid, kernel); break;
        DEC_CONFIGS(DEC_EMU)
#undef DEC_EMU
    default: abort();
    }
}

/* attn_short_kernel<nv> over grid (KVH), its blocks in a shuffled order */
static void emu_short(int nv, const nmlx_attn_args &a, const int64_t *step) {
    emu_launch_shuffled(dim3((unsigned)a.KVH), SHORT_THREADS, 0, emu_next32, [&] {
        switch (nv) {
        case 1: attn_short_kernel<1>(a, step); break;
        case 2: attn_short_kernel<2>(a, step); break;
        case 3: attn_short_kernel<3>(a, step); break;
        default: attn_short_kernel<4>(a, step); break;
        }
    });
}

static int short_runs; /* launches of the short kernel that had the keys */

/* the host side of nmlx_cuda_attention_decode with S given: with use_short,
 * the short-context kernel alone where it applies and the keys are known,
 * and in the step form it and the split kernel (each returning where the
 * other applies), as the backend does; grid (S, KVH) for the split kernel,
 * po / pml: the partials (NaN-filled here when empty); *counts: whether
 * the counts were back to 0. false: the instance does not take the shape */
static bool emu_decode(const nmlx_attn_args &a, const int64_t *step, int S, bool *counts,
                       std::vector<float> *keep_po = nullptr,
                       std::vector<float> *keep_pml = nullptr, bool use_short = false) {
    const int64_t G = a.H / a.KVH, RQ = a.T * G;
    const int id = dec_pick(a.HD, RQ);
    if (id < 0) return false;
    const int nv = use_short ? short_pick(a.T, a.HD, G) : 0;
    int short_n = 0;
    if (nv) {
        const int64_t base = step ? *step : 0;
        int64_t lo;
        const int64_t n = short_keys(a.q_pos + base, a.n_kv + base, a.window, &lo);
        if (n <= SHORT_MAX) short_runs++;
        if (step || n <= SHORT_MAX) emu_short(nv, a, step);
        if (!step && n <= SHORT_MAX) {
            *counts = counts_clear((size_t)a.KVH);
            return true;
        }
        if (step) short_n = SHORT_MAX;
    }
    std::vector<float> fresh_po, fresh_pml;
    std::vector<float> &po = keep_po ? *keep_po : fresh_po, &pml = keep_pml ? *keep_pml : fresh_pml;
    if (po.empty()) po.assign((size_t)(a.KVH * S * RQ * a.HD), NAN);
    if (pml.empty()) pml.assign((size_t)(a.KVH * S * RQ * 2), NAN);
    assert((size_t)a.KVH <= sizeof emu_cnt / sizeof emu_cnt[0]);
    dec_launch(id, dim3((unsigned)S, (unsigned)a.KVH), [&](auto lpk, auto dpl, auto r) {
        attn_decode_kernel<lpk, dpl, r>(a, step, S, po.data(), pml.data(), emu_cnt, short_n);
    });
    *counts = counts_clear((size_t)a.KVH);
    return true;
}

static int phased_runs; /* launches of the phased kernel */

/* the phased kernel's launch as nmlx_cuda_attention_decode makes it (grid
 * (S, KVH), at least `run` tiles a block), its blocks in a shuffled order;
 * false: it does not take the shape */
static bool emu_phased(const nmlx_attn_args &a, const int64_t *step, int S, int run, bool *counts,
                       std::vector<float> *keep_po = nullptr,
                       std::vector<float> *keep_pml = nullptr) {
    const int64_t G = a.H / a.KVH;
    const int id = ph_pick(a.T, a.HD, G);
    if (id < 0) return false;
    std::vector<float> fresh_po, fresh_pml;
    std::vector<float> &po = keep_po ? *keep_po : fresh_po, &pml = keep_pml ? *keep_pml : fresh_pml;
    if (po.empty()) po.assign((size_t)(a.KVH * S * G * a.HD), NAN);
    if (pml.empty()) pml.assign((size_t)(a.KVH * S * G * 2), NAN);
    assert((size_t)a.KVH <= sizeof emu_cnt / sizeof emu_cnt[0]);
    emu_launch_shuffled(dim3((unsigned)S, (unsigned)a.KVH), DEC_THREADS, 0, emu_next32, [&] {
        switch (id) {
#define PH_EMU(ID, NC, R)                                                                          \
    case ID:                                                                                       \
        attn_phased_kernel<NC, R>(a, step, S, run, po.data(), pml.data(), emu_cnt);                \
        break;
            PH_CONFIGS(PH_EMU)
#undef PH_EMU
        default: abort();
        }
    });
    phased_runs++;
    *counts = counts_clear((size_t)a.KVH);
    return true;
}

/* blocks with keys of the phased kernel's launch */
static int host_ph_nb(const nmlx_attn_args &a, int S, int run) {
    int64_t j0 = a.window > 0 ? a.q_pos - a.window + 1 : 0;
    j0 = j0 < 0 ? 0 : j0;
    const int64_t hi = a.q_pos < a.n_kv - 1 ? a.q_pos : a.n_kv - 1;
    const int64_t N = hi >= j0 ? hi - j0 + 1 : 0;
    const int id = ph_pick(a.T, a.HD, a.H / a.KVH);
    const int64_t len = N > 0 ? ph_chunk(N, S, ph_tile_keys(id), run) : 1;
    return (int)((N + len - 1) / len);
}

/* The phased kernel on case c (its q, caches and reference): at S blocks
 * and `run` tiles, against the reference; one block with keys: its direct
 * output equals the merge's bit for bit. Adds to *ok; the worst error. */
static double check_phased(const attn_case &c, const nmlx_attn_args &g, const int64_t *step, int S,
                           int run, const std::vector<double> &ref, bool *ok, int *nb_out) {
    std::vector<float> out(c.out.size(), NAN);
    nmlx_attn_args x = g;
    x.out = out.data();
    bool counts = true;
    if (!emu_phased(x, step, S, run, &counts)) return 0;
    double mx, err;
    attn_err(out, ref, mx, err);
    const double rel = mx > 0 ? err / mx : err;
    *ok &= rel <= 1e-5 && counts;
    if (!counts) printf("  phased S=%d run=%d: counts left set\n", S, run);
    const int nb = host_ph_nb(c.a, S, run);
    *nb_out = nb;
    if (nb == 1) {
        std::vector<float> merged(out.size(), NAN);
        x.out = merged.data();
        emu_direct = false;
        bool counts2 = true;
        emu_phased(x, step, S, run, &counts2);
        emu_direct = true;
        if (!counts2 || memcmp(merged.data(), out.data(), out.size() * sizeof(float))) {
            printf("  phased S=%d run=%d: the direct output differs from the merge\n", S, run);
            *ok = false;
        }
    }
    return rel;
}

/* T queries from q_pos over n_kv keys, S blocks a KV head; step >= 0: the
 * step form with the device position `step` (q_pos, n_kv passed as deltas) */
static void run_case(int64_t T, int64_t H, int64_t KVH, int64_t HD, int64_t cap, int64_t q_pos,
                     int64_t n_kv, int64_t window, float softcap, bool sinks, int S,
                     int64_t step = -1, float qmul = 1) {
    attn_case c;
    attn_case_init(c, T, H, KVH, HD, cap, q_pos, n_kv, window, softcap, sinks, qmul, 0, emu_urand);
    nmlx_attn_args g = c.a;
    int64_t dev_step = step;
    if (step >= 0) g.q_pos -= step, g.n_kv -= step;
    cases++;
    bool counts = true;
    if (!emu_decode(g, step >= 0 ? &dev_step : nullptr, S, &counts)) {
        printf("FAIL T=%lld H=%lld KVH=%lld HD=%lld: no instance\n", (long long)T, (long long)H,
               (long long)KVH, (long long)HD);
        failures++;
        return;
    }
    std::vector<double> ref;
    ref_attention(c.a, ref);
    double mx, err;
    attn_err(c.out, ref, mx, err);
    const double rel = mx > 0 ? err / mx : err; /* all-zero outputs: exact zeros */
    bool ok = rel <= 1e-5 && counts;
    /* the backend's dispatch: the short-context kernel where it applies */
    std::vector<float> split_out = c.out;
    std::fill(c.out.begin(), c.out.end(), NAN);
    bool counts_s = true;
    emu_decode(g, step >= 0 ? &dev_step : nullptr, S, &counts_s, nullptr, nullptr, true);
    double mx_s, err_s;
    attn_err(c.out, ref, mx_s, err_s);
    const double rel_s = mx_s > 0 ? err_s / mx_s : err_s;
    ok &= rel_s <= 1e-5 && counts_s;
    c.out = split_out;
    /* one block with keys: its direct output equals the merge's, bit for bit */
    const int nb = host_nb(c.a, S);
    bool same = true;
    if (nb == 1) {
        std::vector<float> merged(c.out.size(), NAN);
        g.out = merged.data();
        emu_direct = false;
        bool counts2 = true;
        emu_decode(g, step >= 0 ? &dev_step : nullptr, S, &counts2);
        emu_direct = true;
        same = counts2 && !memcmp(merged.data(), c.out.data(), merged.size() * sizeof(float));
        ok &= same;
    }
    /* the phased kernel (one query): at S, and at least 3 tiles a block */
    double rel_p = 0;
    int nb_p = -1;
    if (ph_pick(T, HD, H / KVH) >= 0) {
        bool okp = true;
        int nb3 = 0;
        rel_p = check_phased(c, g, step >= 0 ? &dev_step : nullptr, S, 1, ref, &okp, &nb_p);
        const double r3 =
            check_phased(c, g, step >= 0 ? &dev_step : nullptr, S, 3, ref, &okp, &nb3);
        rel_p = r3 > rel_p || r3 != r3 ? r3 : rel_p;
        ok &= okp;
    }
    failures += !ok;
    printf("%s T=%lld H=%lld KVH=%lld HD=%lld cap=%lld q_pos=%lld n_kv=%lld win=%lld cap=%g "
           "sinks=%d S=%d nb=%d step=%lld: rel err %.2e (dispatched %.2e, phased %.2e nb %d)%s%s\n",
           ok ? "ok  " : "FAIL", (long long)T, (long long)H, (long long)KVH, (long long)HD,
           (long long)cap, (long long)q_pos, (long long)n_kv, (long long)window, softcap, sinks, S,
           nb, (long long)step, rel, rel_s, rel_p, nb_p,
           counts && counts_s ? "" : " (counts left set)",
           same ? (nb == 1 ? " (= merge, bit for bit)" : "") : " (differs from the merge)");
    fflush(stdout);
    fail_fast();
}

/* A recorded step replayed (the step form, one launch's arguments, the
 * position from device memory): T queries at each pos[i] over n_kv =
 * pos[i] + T keys, S blocks, the same partials and counts
 * for every replay (as the backend's scratch); cache rows past each n_kv
 * NaN. Every replay against the reference, the counts back to 0 each
 * time. */
static void run_replay(int64_t T, int64_t H, int64_t KVH, int64_t HD, int64_t window, float softcap,
                       bool sinks, int S, const std::vector<int64_t> &pos, bool use_short = false,
                       int phased_run = 0) {
    int64_t cap = 0;
    for (int64_t p : pos)
        cap = p + T > cap ? p + T : cap;
    attn_case c;
    attn_case_init(c, T, H, KVH, HD, cap, 0, cap, window, softcap, sinks, 1, 0, emu_urand);
    const std::vector<float> k0 = c.k, v0 = c.v;
    const int64_t RQ = T * (H / KVH);
    std::vector<float> po((size_t)(KVH * S * RQ * HD), NAN), pml((size_t)(KVH * S * RQ * 2), NAN);
    nmlx_attn_args g = c.a;
    g.q_pos = 0, g.n_kv = T; /* deltas from the device position */
    double worst = 0;
    bool ok = true;
    int nbs[2] = {1 << 30, 0};
    for (int64_t p : pos) {
        c.k = k0, c.v = v0;
        for (int64_t kh = 0; kh < KVH; kh++)
            for (int64_t j = p + T; j < cap; j++)
                for (int64_t d = 0; d < HD; d++)
                    c.k[(size_t)((kh * cap + j) * HD + d)] =
                        c.v[(size_t)((kh * cap + j) * HD + d)] = NAN;
        g.k = c.k.data(), g.v = c.v.data();
        std::fill(c.out.begin(), c.out.end(), NAN);
        const int64_t dev_pos = p;
        bool counts = true;
        if (phased_run > 0) { /* the phased kernel, at least phased_run tiles a block */
            const bool taken = emu_phased(g, &dev_pos, S, phased_run, &counts, &po, &pml);
            assert(taken), (void)taken;
        } else
            emu_decode(g, &dev_pos, S, &counts, &po, &pml, use_short);
        c.a.k = g.k, c.a.v = g.v, c.a.q_pos = p, c.a.n_kv = p + T;
        const int nb = phased_run > 0 ? host_ph_nb(c.a, S, phased_run) : host_nb(c.a, S);
        nbs[0] = nb < nbs[0] ? nb : nbs[0], nbs[1] = nb > nbs[1] ? nb : nbs[1];
        std::vector<double> ref;
        ref_attention(c.a, ref);
        double mx, err;
        attn_err(c.out, ref, mx, err);
        const double rel = mx > 0 ? err / mx : err;
        if (!counts || !(rel <= 1e-5)) {
            if (ok)
                printf("  replay at pos %lld (nb %d): rel err %.2e%s\n", (long long)p, nb, rel,
                       counts ? "" : ", counts left set");
            ok = false;
        }
        worst = rel > worst || rel != rel ? rel : worst;
    }
    cases++;
    failures += !ok;
    printf("%s replay T=%lld H=%lld KVH=%lld HD=%lld win=%lld cap=%g sinks=%d S=%d%s: %zu "
           "positions to %lld, nb %d..%d, worst rel err %.2e\n",
           ok ? "ok  " : "FAIL", (long long)T, (long long)H, (long long)KVH, (long long)HD,
           (long long)window, softcap, sinks, S,
           phased_run > 0 ? " phased"
           : use_short    ? " +short"
                          : "",
           pos.size(), (long long)cap - T, nbs[0], nbs[1], worst);
    fflush(stdout);
    fail_fast();
}

/* The rows form (batched decode): n rows of one query each, row r with its
 * own cache (cap, n_kv, window; row 0's sinks for all), S blocks a KV head,
 * grid (S, KVH, n) in one shuffled order; each row against the reference
 * alone. */
static void run_rows_case(int n, int64_t H, int64_t KVH, int64_t HD, int64_t window, bool sinks,
                          int S, int64_t max_cap) {
    const int64_t G = H / KVH, row = H * HD;
    const int id = dec_pick(HD, G);
    assert(n <= DEC_ROWS && id >= 0);
    std::vector<attn_case> c((size_t)n);
    std::vector<float> q((size_t)(n * row)), out(q.size(), NAN);
    dec_rows rows = {};
    for (int r = 0; r < n; r++) {
        const int64_t cap = 1 + (int64_t)(emu_next32() % (uint64_t)max_cap);
        const int64_t n_kv = 1 + (int64_t)(emu_next32() % (uint64_t)cap);
        attn_case &x = c[(size_t)r];
        attn_case_init(x, 1, H, KVH, HD, cap, n_kv - 1, n_kv, window, 0, sinks, 1, 0, emu_urand);
        std::copy(x.q.begin(), x.q.end(), q.begin() + r * row);
        rows.k[r] = x.a.k, rows.v[r] = x.a.v;
        rows.cap[r] = cap, rows.q_pos[r] = n_kv - 1, rows.n_kv[r] = n_kv;
        rows.window[r] = window;
    }
    nmlx_attn_args a = {};
    a.q = q.data(), a.out = out.data(), a.T = 1, a.H = H, a.KVH = KVH, a.HD = HD;
    a.scale = 1.0f / sqrtf((float)HD), a.softcap = 0, a.sinks = c[0].a.sinks;
    /* dec_block's rows kernel, then the phased one (2 tiles a block at
     * least on odd S) where it takes the shape */
    const int pid = ph_pick(1, HD, G);
    for (int phased = 0; phased < (pid >= 0 ? 2 : 1); phased++) {
        std::fill(out.begin(), out.end(), NAN);
        /* the host's layout: po for the n rows, then pml */
        std::vector<float> po((size_t)(n * H * S * HD), NAN), pml((size_t)(n * H * S * 2), NAN);
        assert((size_t)(n * KVH) <= sizeof emu_cnt / sizeof emu_cnt[0]);
        const dim3 grid((unsigned)S, (unsigned)KVH, (unsigned)n);
        if (phased) {
            emu_launch_shuffled(grid, DEC_THREADS, 0, emu_next32, [&] {
                switch (pid) {
#define PH_ROWS_EMU(ID, NC, R)                                                                     \
    case ID:                                                                                       \
        attn_phased_rows_kernel<NC, R>(a, rows, S, 1 + S % 2, po.data(), pml.data(), emu_cnt);     \
        break;
                    PH_CONFIGS(PH_ROWS_EMU)
#undef PH_ROWS_EMU
                default: abort();
                }
            });
            phased_runs++;
        } else
            dec_launch(id, grid, [&](auto lpk, auto dpl, auto r) {
                attn_decode_rows_kernel<lpk, dpl, r>(a, rows, S, po.data(), pml.data(), emu_cnt);
            });
        cases++;
        bool ok = counts_clear((size_t)(n * KVH));
        double worst = 0;
        for (int r = 0; r < n; r++) {
            attn_case &x = c[(size_t)r];
            std::copy(out.begin() + r * row, out.begin() + (r + 1) * row, x.out.begin());
            x.a.sinks = a.sinks;
            std::vector<double> ref;
            ref_attention(x.a, ref);
            double mx, err;
            attn_err(x.out, ref, mx, err);
            const double rel = mx > 0 ? err / mx : err;
            worst = rel > worst || rel != rel ? rel : worst;
        }
        ok &= worst <= 1e-5;
        failures += !ok;
        printf("%s rows=%d H=%lld KVH=%lld HD=%lld win=%lld sinks=%d S=%d caps<=%lld%s: worst "
               "rel err %.2e%s\n",
               ok ? "ok  " : "FAIL", n, (long long)H, (long long)KVH, (long long)HD,
               (long long)window, sinks, S, (long long)max_cap, phased ? " phased" : "", worst,
               !ok && worst <= 1e-5 ? " (counts left set)" : "");
        fflush(stdout);
        fail_fast();
    }
}

int main(int argc, char **argv) {
    quick = argc > 1 && !strcmp(argv[1], "quick");
    /* Llama-like group of 4 (one KV head of it, two), HD 128: n_kv from 1,
     * keys fewer than the blocks, chunk edges, S 1 / odd / DEC_MAX_S */
    for (int64_t n : {1, 2, 15, 16, 17, 63, 64, 65, 200, 513})
        run_case(1, 4, 1, 128, 600, n - 1, n, 0, 0, false, 7);
    run_case(1, 8, 2, 128, 300, 299, 300, 0, 0, false, 1);
    run_case(1, 8, 2, 128, 300, 250, 251, 0, 0, true, 3);
    run_case(1, 8, 2, 128, 1200, 1100, 1101, 0, 0, false, DEC_MAX_S);
    run_case(1, 4, 1, 128, 100, 40, 41, 0, 0, false, 100);           /* most blocks empty */
    run_case(1, 4, 1, 64, 2048, 2047, 2048, 0, 0, true, DEC_MAX_S);  /* DEC_MAX_S partials */
    run_case(1, 2, 1, 64, 2048, 2031, 2032, 0, 0, false, DEC_MAX_S); /* 127 of them */
    /* the step form: deltas from a device position */
    run_case(1, 8, 2, 128, 700, 600, 601, 0, 0, false, 5, 590);
    run_case(1, 8, 2, 128, 700, 10, 11, 0, 0, true, 5, 3);
    run_case(3, 8, 2, 64, 400, 333, 336, 100, 0, true, 6, 300);
    /* GQA 1 / 8, MQA 16; HD 64 / 256 / small and odd multiples of 4 */
    run_case(1, 4, 4, 128, 130, 128, 129, 64, 0, false, 4); /* MHA, window 64 */
    run_case(1, 16, 2, 64, 300, 257, 258, 128, 0, true, 9); /* gpt-oss-like: group 8 */
    run_case(1, 16, 1, 64, 150, 140, 141, 0, 0, false, 5);  /* 16 rows */
    run_case(1, 16, 1, 128, 150, 140, 141, 0, 0, true, 5);
    run_case(1, 2, 1, 256, 600, 517, 518, 0, 50.0f, false, 11); /* Gemma-like HD 256, softcap */
    run_case(1, 4, 1, 256, 300, 99, 100, 0, 30.0f, true, 3);
    run_case(1, 8, 1, 256, 100, 70, 71, 32, 0, false, 2);
    run_case(1, 1, 1, 256, 90, 80, 81, 0, 0, false, 4);
    run_case(1, 2, 2, 16, 60, 44, 45, 0, 0, false, 3); /* the fixtures' HD 16, 32, 48 */
    run_case(1, 4, 2, 32, 100, 69, 70, 9, 0, true, 3);
    run_case(1, 4, 2, 48, 100, 68, 69, 0, 15.0f, false, 3);
    run_case(1, 4, 2, 80, 100, 68, 69, 0, 0, true, 3);
    run_case(1, 3, 1, 96, 100, 50, 51, 0, 0, false, 3); /* 3 rows (instance of 4) */
    run_case(1, 6, 1, 112, 100, 50, 51, 7, 0, false, 2);
    /* several queries a step: causal inside the step, window per row, rows
     * that see nothing (n_kv short of q_pos + T with a window) */
    run_case(2, 16, 2, 64, 400, 300, 302, 0, 0, false, 4);
    run_case(4, 8, 2, 128, 200, 100, 104, 3, 0, true, 4);
    run_case(3, 8, 2, 64, 400, 333, 336, 100, 0, true, 6);
    run_case(2, 14, 2, 80, 300, 130, 132, 0, 0, true, 3); /* 14 rows */
    run_case(5, 4, 2, 64, 100, 30, 20, 8, 0, false, 3);   /* every row sees nothing */
    run_case(5, 4, 2, 64, 100, 16, 20, 4, 0, true, 3);    /* the last rows see nothing */
    run_case(16, 2, 2, 32, 100, 0, 16, 0, 0, true, 3);    /* T 16, from the first key */
    /* window 1 and 2, sinks only beside one key, a window longer than the cache */
    run_case(1, 8, 2, 64, 100, 50, 51, 1, 0, true, 4);
    run_case(1, 8, 2, 64, 100, 50, 51, 2, 0, false, 4);
    run_case(1, 8, 2, 64, 100, 50, 51, 1000, 0, false, 4);
    /* peaky scores: the running max moves often */
    run_case(1, 8, 2, 128, 400, 350, 351, 0, 0, true, 6, -1, 12.0f);
    run_case(2, 8, 1, 64, 400, 350, 352, 0, 0, false, 6, -1, 20.0f);
    /* ... over many partials: the merge's running max moves from one round
     * of DEC_MERGE partials to the next */
    run_case(1, 8, 2, 128, 1200, 1100, 1101, 0, 0, true, 66, -1, 12.0f);
    run_case(1, 16, 2, 64, 1200, 1000, 1001, 0, 0, false, DEC_MAX_S, -1, 16.0f);
    /* batched decode (the rows form): rows with their own lengths, one
     * launch; 8B-like, few rows many splits, many rows few splits, GQA 8
     * with sinks and a window, HD 64 / 256, 32 rows (a full launch) */
    run_rows_case(3, 8, 2, 128, 0, false, 5, 300);
    run_rows_case(5, 16, 2, 64, 0, true, 3, 200);
    run_rows_case(4, 16, 2, 64, 40, true, 4, 150);
    run_rows_case(2, 4, 1, 256, 0, false, 2, 120);
    run_rows_case(6, 6, 3, 48, 0, true, 1, 90);
    run_rows_case(DEC_ROWS, 4, 1, 32, 0, false, 2, 40);
    /* short contexts: n_kv 1..300 over S 1..DEC_MAX_S, so that one block
     * has the keys (n_kv <= 16, or S 1: the direct output, also run through
     * the merge and compared bit for bit) or a few, and most of the S
     * blocks none; GQA 1 / 4 / 8, HD 64 / 128 / 256, sinks, windows,
     * softcap, T 2 / 3 (rows that see nothing among them) */
    {
        const int64_t nkv[] = {1,  2,  3,   15,  16,  17,  31,  33,  48,  63,
                               64, 65, 100, 127, 128, 129, 200, 256, 257, 300};
        const int Ss[] = {66, 7, DEC_MAX_S, 1, 33};
        int i = 0;
        for (int pass = 0; pass < 3; pass++)
            for (int64_t n : nkv) {
                i++;
                const int64_t T = i % 5 == 0 ? 3 : i % 7 == 0 ? 2 : 1;
                const int64_t HD = i % 3 == 0 ? 64 : i % 3 == 1 ? 128 : 256;
                const int64_t G = T > 1 || HD == 256 ? (i % 2 ? 1 : 2) : i % 4 == 0 ? 8 : 4;
                const int64_t window = i % 4 == 1 ? 7 : i % 4 == 2 ? 50 : 0;
                const float softcap = i % 6 == 5 ? 30.0f : 0.0f;
                const int64_t q_pos = n - T >= 0 ? n - T : 0;
                run_case(T, 2 * G, 2, HD, n + 5, q_pos, n, window, softcap, i % 2 == 1, Ss[i % 5]);
            }
        /* one block always (S 1): the step form, long runs, rows that see nothing */
        run_case(1, 8, 2, 128, 300, 40, 41, 0, 0, true, 1, 30);
        run_case(2, 8, 2, 64, 300, 150, 152, 0, 0, false, 1, 100);
        run_case(1, 8, 2, 128, 700, 600, 601, 0, 0, true, 1);
        run_case(4, 8, 2, 64, 400, 300, 304, 100, 0, false, 1);
        run_case(5, 4, 2, 64, 100, 30, 20, 8, 0, false, 1); /* every row sees nothing */
    }
    /* recorded steps replayed at growing (and then falling) lengths, the
     * partials and counts kept across replays; S 1: the direct output at
     * every length */
    {
        std::vector<int64_t> pos;
        for (int64_t p = 0; p < 40; p++)
            pos.push_back(p);
        for (int64_t p : {47,  48,  63,  64,  65,  95,  96,  100, 127, 128, 129, 150, 191,
                          192, 200, 255, 256, 257, 299, 130, 64,  20,  1,   0,   180})
            pos.push_back(p);
        run_replay(1, 8, 2, 128, 0, 0, false, 66, pos);
        run_replay(1, 8, 2, 128, 0, 0, true, 1, pos);
        run_replay(1, 16, 2, 64, 0, 0, true, 33, pos);
        run_replay(3, 8, 2, 128, 50, 30.0f, true, 66, pos);
        run_replay(1, 4, 2, 256, 0, 0, false, 7, pos);
        /* the same with the short-context kernel recorded beside the split one */
        run_replay(1, 8, 2, 128, 0, 0, false, 66, pos, true);
        run_replay(1, 8, 2, 128, 0, 0, true, 1, pos, true);
        run_replay(1, 16, 2, 64, 0, 0, true, 33, pos, true);
        run_replay(1, 16, 2, 64, 128, 20.0f, true, 9, pos, true); /* gpt-oss-like, window 128 */
        run_replay(3, 8, 2, 128, 50, 30.0f, true, 66, pos, true); /* T 3: the split kernel only */
        /* the phased kernel: 8B-like, one block always, gpt-oss-like with a
         * window, Gemma-like HD 256 with softcap, 3 tiles a block */
        run_replay(1, 8, 2, 128, 0, 0, false, 66, pos, false, 1);
        run_replay(1, 8, 2, 128, 0, 0, true, 1, pos, false, 1);
        run_replay(1, 16, 2, 64, 128, 20.0f, true, 9, pos, false, 1);
        run_replay(1, 4, 2, 256, 0, 30.0f, false, 7, pos, false, 1);
        run_replay(1, 8, 2, 128, 50, 0, true, 66, pos, false, 3);
    }
    /* the rows form: rows of 1..300 keys in one launch, some with one
     * block of keys and some with several (S 1: every row one block) */
    run_rows_case(8, 8, 2, 128, 0, true, 9, 300);
    run_rows_case(6, 16, 2, 64, 40, true, 17, 300);
    run_rows_case(DEC_ROWS, 4, 1, 64, 16, false, 5, 300);
    run_rows_case(5, 8, 2, 128, 0, false, 1, 200);
    /* the short kernel must have taken keys (and not only returned) */
    if (short_runs < 50) {
        printf("FAIL: the short-context kernel took only %d launches\n", short_runs);
        failures++;
    }
    if (phased_runs < 200) {
        printf("FAIL: the phased kernel ran only %d launches\n", phased_runs);
        failures++;
    }
    printf("%d cases (%d with the short-context kernel's keys, %d phased launches): %s\n", cases,
           short_runs, phased_runs, failures ? "FAIL" : "PASS");
    return failures != 0;
}
