/* cuda_attention_decode.cu's kernel run on the CPU (ctest attn_decode_emu):
 * the kernel source compiled as host C++ (NMLX_ATTN_DECODE_EMU drops its
 * launch code), each CUDA thread of a block a fiber (ucontext) of one OS
 * thread, switched at __syncthreads (a barrier of the block) and
 * __shfl_xor_sync (a barrier of the warp, twice: values posted, then read),
 * so any mix of warp and block barriers meets as on the GPU. The blocks of
 * a launch run one after another in a shuffled order, so the block that
 * merges the partials (the last to count itself in) is a different one
 * from case to case. Checked against a double-precision reference of the
 * `attention` contract (backend.h): the partition of the keys over the
 * blocks, the lane groups' and warps' merges, the last block's combine,
 * sinks, window, softcap, several query rows (T > 1), rows that see no
 * key, cache rows past n_kv (NaN: must not be read), every instance (HD
 * 16..256, 1..16 rows a KV head) and S from 1 to DEC_MAX_S, the recorded
 * step form (q_pos, n_kv as deltas of a device position), and the rows
 * form of batched decode (rows with their own caches in one launch,
 * blocks of all rows interleaved). The counts must
 * be back to 0 after each launch, and shared memory is NaN-poisoned before
 * each block. Exit 0: every case within 1e-5 of max|ref|. */
#include <ucontext.h>

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

extern "C" {
#include "compute/backend.h"
}

/* the CUDA types, keywords and built-ins the kernel uses, as host code */
struct alignas(16) float4 {
    float x, y, z, w;
};
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
struct uint3 {
    unsigned x, y, z;
};
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define threadIdx emu_thread
#define blockIdx emu_block

static uint3 emu_thread, emu_block;

enum { SM_FLOATS = 16384 };
alignas(16) static float4 dec_sm[SM_FLOATS / 4];
static size_t sm_used; /* floats of the launch's dynamic shared memory */
#define DEC_DYN_SMEM (void)0

/* fibers: one a thread of the block, a round-robin scheduler */
enum { NT = 128, STACK = 256 * 1024 };
static ucontext_t sched_ctx, fib_ctx[NT];
static bool fib_done[NT];
static int cur;
static void (*fib_body)();

static void yield_() {
    swapcontext(&fib_ctx[cur], &sched_ctx);
    emu_thread = {(unsigned)cur, 0, 0};
}

/* a barrier of n threads: arrive, then yield until the generation moves */
struct bar {
    int n, count = 0;
    long gen = 0;
};
static bar block_bar{NT};
static bar warp_bar[NT / 32] = {{32}, {32}, {32}, {32}};
static void arrive(bar &b) {
    const long g = b.gen;
    if (++b.count == b.n) {
        b.count = 0;
        b.gen++;
        return;
    }
    while (b.gen == g)
        yield_();
}

static inline void __syncthreads() { arrive(block_bar); }
static float shfl_buf[NT];
static inline float __shfl_xor_sync(unsigned, float v, int o) {
    const int t = (int)emu_thread.x, w = t / 32, lane = t % 32;
    shfl_buf[t] = v;
    arrive(warp_bar[w]);
    const float r = shfl_buf[w * 32 + (lane ^ o)];
    arrive(warp_bar[w]);
    return r;
}
static inline void __threadfence() {}
static inline float __ldcg(const float *p) { return *p; }
static inline float4 __ldcg(const float4 *p) { return *p; }
static inline unsigned atomicAdd(unsigned *p, unsigned v) {
    const unsigned o = *p;
    *p = o + v;
    return o;
}
static inline void cuda_pdl_trigger() {}

#define NMLX_ATTN_DECODE_EMU 1
#include "compute/cuda/cuda_attention_decode.cu"

static void fib_entry() {
    fib_body();
    fib_done[cur] = true;
    swapcontext(&fib_ctx[cur], &sched_ctx);
}

/* one block: NT fibers running body, round robin until all return */
static void run_block(void (*body)()) {
    static std::vector<char> stacks((size_t)NT * STACK);
    fib_body = body;
    for (int t = 0; t < NT; t++) {
        getcontext(&fib_ctx[t]);
        fib_ctx[t].uc_stack.ss_sp = &stacks[(size_t)t * STACK];
        fib_ctx[t].uc_stack.ss_size = STACK;
        fib_ctx[t].uc_link = &sched_ctx;
        makecontext(&fib_ctx[t], fib_entry, 0);
        fib_done[t] = false;
    }
    block_bar.count = 0;
    for (auto &w : warp_bar)
        w.count = 0;
    for (int left = NT; left > 0;) {
        left = 0;
        for (int t = 0; t < NT; t++) {
            if (fib_done[t]) continue;
            cur = t;
            emu_thread = {(unsigned)t, 0, 0};
            swapcontext(&sched_ctx, &fib_ctx[t]);
            left += !fib_done[t];
        }
    }
}

/* the launch's arguments, for the fibers */
static nmlx_attn_args L_a;
static const int64_t *L_step;
static int L_S;
static float *L_po, *L_pml;
static unsigned *L_cnt;
template <int LPK, int DPL, int R> static void body() {
    attn_decode_kernel<LPK, DPL, R>(L_a, L_step, L_S, L_po, L_pml, L_cnt);
}

/* the rows form's table (attn_decode_rows_kernel) */
static dec_rows L_rows;
template <int LPK, int DPL, int R> static void body_rows() {
    attn_decode_rows_kernel<LPK, DPL, R>(L_a, L_rows, L_S, L_po, L_pml, L_cnt);
}

static std::mt19937_64 rng(20261206);

/* one block of fn at (x, y, z), shared memory NaN-poisoned before and
 * checked after for writes past sm_used */
static void emu_block_run(void (*fn)(), unsigned x, unsigned y, unsigned z) {
    float *f = (float *)dec_sm;
    for (size_t i = 0; i < SM_FLOATS; i++)
        f[i] = NAN;
    emu_block = {x, y, z};
    run_block(fn);
    for (size_t i = sm_used; i < SM_FLOATS; i++)
        if (!std::isnan(f[i])) {
            fprintf(stderr, "shared memory written past %zu floats (at %zu)\n", sm_used, i);
            abort();
        }
}

/* the host side of nmlx_cuda_attention_decode with S given: blocks in a
 * shuffled order; false: the instance does not take the shape */
static bool emu_decode(const nmlx_attn_args &a, const int64_t *step, int S) {
    const int64_t G = a.H / a.KVH, RQ = a.T * G;
    const int id = dec_pick(a.HD, RQ);
    if (id < 0) return false;
    std::vector<float> po((size_t)(a.KVH * S * RQ * a.HD), NAN),
        pml((size_t)(a.KVH * S * RQ * 2), NAN);
    std::vector<unsigned> cnt((size_t)a.KVH, 0u);
    L_a = a, L_step = step, L_S = S, L_po = po.data(), L_pml = pml.data(), L_cnt = cnt.data();
    void (*fn)() = nullptr;
    switch (id) {
#define DEC_EMU(ID, LPK, DPL, R)                                                                   \
    case ID:                                                                                       \
        fn = body<LPK, DPL, R>;                                                                    \
        sm_used = (size_t)dec_smem_floats(LPK * DPL, R);                                           \
        break;
        DEC_CONFIGS(DEC_EMU)
#undef DEC_EMU
    }
    assert(fn && sm_used <= SM_FLOATS);
    std::vector<std::pair<unsigned, unsigned>> blocks;
    for (unsigned y = 0; y < (unsigned)a.KVH; y++)
        for (unsigned x = 0; x < (unsigned)S; x++)
            blocks.push_back({x, y});
    std::shuffle(blocks.begin(), blocks.end(), rng);
    for (auto [x, y] : blocks)
        emu_block_run(fn, x, y, 0);
    for (int64_t h = 0; h < a.KVH; h++)
        if (cnt[(size_t)h]) {
            fprintf(stderr, "count of KV head %lld left at %u\n", (long long)h, cnt[(size_t)h]);
            abort();
        }
    return true;
}

/* backend.h's contract in double */
static void ref_attention(const nmlx_attn_args &a, std::vector<double> &out) {
    const int64_t HD = a.HD, G = a.H / a.KVH;
    out.assign((size_t)(a.T * a.H * HD), 0.0);
    std::vector<double> p;
    for (int64_t t = 0; t < a.T; t++)
        for (int64_t h = 0; h < a.H; h++) {
            const int64_t qi = a.q_pos + t, hi = qi < a.n_kv - 1 ? qi : a.n_kv - 1;
            int64_t lo = a.window > 0 ? qi - a.window + 1 : 0;
            if (lo < 0) lo = 0;
            if (lo > hi) continue; /* zeros */
            const float *q = a.q + (t * a.H + h) * HD;
            const float *K = a.k + (h / G) * a.cap * HD, *V = a.v + (h / G) * a.cap * HD;
            double m = a.sinks ? a.sinks[h] : -INFINITY;
            p.assign((size_t)(hi - lo + 1), 0.0);
            for (int64_t j = lo; j <= hi; j++) {
                double s = 0;
                for (int64_t d = 0; d < HD; d++)
                    s += (double)q[d] * K[j * HD + d];
                s *= a.scale;
                if (a.softcap > 0) s = tanh(s / a.softcap) * a.softcap;
                p[(size_t)(j - lo)] = s;
                m = s > m ? s : m;
            }
            double l = a.sinks ? exp(a.sinks[h] - m) : 0.0;
            for (auto &s : p)
                l += (s = exp(s - m));
            double *o = &out[(size_t)((t * a.H + h) * HD)];
            for (int64_t j = lo; j <= hi; j++)
                for (int64_t d = 0; d < HD; d++)
                    o[d] += p[(size_t)(j - lo)] / l * V[j * HD + d];
        }
}

static float urand(float lo, float hi) {
    return lo + (hi - lo) * (float)((rng() >> 40) / 16777216.0);
}

static int failures, cases;

/* T queries from q_pos over n_kv keys, S blocks a KV head; step >= 0: the
 * step form with the device position `step` (q_pos, n_kv passed as deltas) */
static void run_case(int64_t T, int64_t H, int64_t KVH, int64_t HD, int64_t cap, int64_t q_pos,
                     int64_t n_kv, int64_t window, float softcap, bool sinks, int S,
                     int64_t step = -1, float qmul = 1) {
    std::vector<float> q((size_t)(T * H * HD)), k((size_t)(KVH * cap * HD)), v(k.size()),
        sk((size_t)H), out(q.size(), NAN);
    for (auto &x : q)
        x = qmul * urand(-1, 1);
    for (auto &x : k)
        x = urand(-1, 1);
    for (auto &x : v)
        x = urand(-1, 1);
    for (auto &x : sk)
        x = urand(-1, 2);
    /* cache rows past n_kv: NaN (must not leak in) */
    for (int64_t kh = 0; kh < KVH; kh++)
        for (int64_t j = n_kv; j < cap; j++)
            for (int64_t d = 0; d < HD; d++)
                k[(size_t)((kh * cap + j) * HD + d)] = v[(size_t)((kh * cap + j) * HD + d)] = NAN;
    nmlx_attn_args a = {};
    a.q = q.data(), a.k = k.data(), a.v = v.data(), a.out = out.data();
    a.T = T, a.H = H, a.KVH = KVH, a.HD = HD, a.cap = cap, a.q_pos = q_pos, a.n_kv = n_kv;
    a.scale = 1.0f / sqrtf((float)HD), a.window = window, a.softcap = softcap;
    a.sinks = sinks ? sk.data() : NULL;
    nmlx_attn_args g = a;
    int64_t dev_step = step;
    if (step >= 0) g.q_pos -= step, g.n_kv -= step;
    cases++;
    if (!emu_decode(g, step >= 0 ? &dev_step : nullptr, S)) {
        printf("FAIL T=%lld H=%lld KVH=%lld HD=%lld: no instance\n", (long long)T, (long long)H,
               (long long)KVH, (long long)HD);
        failures++;
        return;
    }
    std::vector<double> ref;
    ref_attention(a, ref);
    double mx = 0, err = 0;
    for (size_t i = 0; i < ref.size(); i++)
        mx = fmax(mx, fabs(ref[i]));
    for (size_t i = 0; i < ref.size(); i++) {
        const double e = fabs(out[i] - ref[i]);
        err = e > err || e != e ? e : err;
    }
    const double rel = mx > 0 ? err / mx : err; /* all-zero outputs: exact zeros */
    const bool ok = rel <= 1e-5;
    failures += !ok;
    printf("%s T=%lld H=%lld KVH=%lld HD=%lld cap=%lld q_pos=%lld n_kv=%lld win=%lld cap=%g "
           "sinks=%d S=%d step=%lld: rel err %.2e\n",
           ok ? "ok  " : "FAIL", (long long)T, (long long)H, (long long)KVH, (long long)HD,
           (long long)cap, (long long)q_pos, (long long)n_kv, (long long)window, softcap, sinks, S,
           (long long)step, rel);
    fflush(stdout);
}

/* The rows form (batched decode): n rows of one query each, row r with its
 * own cache (cap, n_kv, window), S blocks a KV head, all blocks of the
 * launch in one shuffled order; each row against the reference alone. */
static void run_rows_case(int n, int64_t H, int64_t KVH, int64_t HD, int64_t window, bool sinks,
                          int S, int64_t max_cap) {
    const int64_t G = H / KVH, row = H * HD;
    const int id = dec_pick(HD, G);
    assert(n <= DEC_ROWS && id >= 0);
    std::vector<float> q((size_t)(n * row)), out(q.size(), NAN), sk((size_t)H);
    std::vector<std::vector<float>> k((size_t)n), v((size_t)n);
    for (auto &x : q)
        x = urand(-1, 1);
    for (auto &x : sk)
        x = urand(-1, 2);
    dec_rows rows = {};
    for (int r = 0; r < n; r++) {
        const int64_t cap = 1 + (int64_t)(rng() % (uint64_t)max_cap);
        const int64_t n_kv = 1 + (int64_t)(rng() % (uint64_t)cap);
        k[(size_t)r].resize((size_t)(KVH * cap * HD));
        v[(size_t)r].resize(k[(size_t)r].size());
        for (int64_t kh = 0; kh < KVH; kh++)
            for (int64_t j = 0; j < cap; j++)
                for (int64_t d = 0; d < HD; d++) {
                    const size_t i = (size_t)((kh * cap + j) * HD + d);
                    const bool live = j < n_kv; /* rows past n_kv: NaN, must not be read */
                    k[(size_t)r][i] = live ? urand(-1, 1) : NAN;
                    v[(size_t)r][i] = live ? urand(-1, 1) : NAN;
                }
        rows.k[r] = k[(size_t)r].data(), rows.v[r] = v[(size_t)r].data();
        rows.cap[r] = cap, rows.q_pos[r] = n_kv - 1, rows.n_kv[r] = n_kv;
        rows.window[r] = window;
    }
    nmlx_attn_args a = {};
    a.q = q.data(), a.out = out.data(), a.T = 1, a.H = H, a.KVH = KVH, a.HD = HD;
    a.scale = 1.0f / sqrtf((float)HD), a.softcap = 0, a.sinks = sinks ? sk.data() : NULL;
    /* the host's layout: po for the n rows, then pml */
    std::vector<float> po((size_t)(n * H * S * HD), NAN), pml((size_t)(n * H * S * 2), NAN);
    std::vector<unsigned> cnt((size_t)(n * KVH), 0u);
    L_a = a, L_rows = rows, L_S = S, L_po = po.data(), L_pml = pml.data(), L_cnt = cnt.data();
    void (*fn)() = nullptr;
    switch (id) {
#define DEC_EMU_ROWS(ID, LPK, DPL, R)                                                              \
    case ID:                                                                                       \
        fn = body_rows<LPK, DPL, R>;                                                               \
        sm_used = (size_t)dec_smem_floats(LPK * DPL, R);                                           \
        break;
        DEC_CONFIGS(DEC_EMU_ROWS)
#undef DEC_EMU_ROWS
    }
    std::vector<uint3> blocks;
    for (unsigned z = 0; z < (unsigned)n; z++)
        for (unsigned y = 0; y < (unsigned)KVH; y++)
            for (unsigned x = 0; x < (unsigned)S; x++)
                blocks.push_back({x, y, z});
    std::shuffle(blocks.begin(), blocks.end(), rng);
    for (auto b : blocks)
        emu_block_run(fn, b.x, b.y, b.z);
    cases++;
    bool ok = true;
    for (size_t i = 0; i < cnt.size(); i++)
        ok &= cnt[i] == 0u;
    double worst = 0;
    for (int r = 0; r < n; r++) {
        nmlx_attn_args one = a;
        one.q = q.data() + r * row, one.k = rows.k[r], one.v = rows.v[r], one.cap = rows.cap[r];
        one.q_pos = rows.q_pos[r], one.n_kv = rows.n_kv[r], one.window = window;
        std::vector<double> ref;
        ref_attention(one, ref);
        double mx = 0, err = 0;
        for (size_t i = 0; i < ref.size(); i++)
            mx = fmax(mx, fabs(ref[i]));
        for (size_t i = 0; i < ref.size(); i++) {
            const double e = fabs(out[(size_t)(r * row) + i] - ref[i]);
            err = e > err || e != e ? e : err;
        }
        const double rel = mx > 0 ? err / mx : err;
        worst = rel > worst || rel != rel ? rel : worst;
    }
    ok &= worst <= 1e-5;
    failures += !ok;
    printf("%s rows=%d H=%lld KVH=%lld HD=%lld win=%lld sinks=%d S=%d caps<=%lld: worst rel err "
           "%.2e%s\n",
           ok ? "ok  " : "FAIL", n, (long long)H, (long long)KVH, (long long)HD, (long long)window,
           sinks, S, (long long)max_cap, worst, !ok && worst <= 1e-5 ? " (counts left set)" : "");
    fflush(stdout);
}

int main(void) {
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
    /* batched decode (the rows form): rows with their own lengths, one
     * launch; 8B-like, few rows many splits, many rows few splits, GQA 8
     * with sinks and a window, HD 64 / 256, 32 rows (a full launch) */
    run_rows_case(3, 8, 2, 128, 0, false, 5, 300);
    run_rows_case(5, 16, 2, 64, 0, true, 3, 200);
    run_rows_case(4, 16, 2, 64, 40, true, 4, 150);
    run_rows_case(2, 4, 1, 256, 0, false, 2, 120);
    run_rows_case(6, 6, 3, 48, 0, true, 1, 90);
    run_rows_case(DEC_ROWS, 4, 1, 32, 0, false, 2, 40);
    printf("%d cases: %s\n", cases, failures ? "FAIL" : "PASS");
    return failures != 0;
}
