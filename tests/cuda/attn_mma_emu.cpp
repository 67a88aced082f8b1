/* cuda_attention_mma.cu's kernel run on the CPU, for machines without a
 * GPU: the kernel source is compiled as host C++ (NMLX_ATTN_MMA_EMU drops
 * its PTX wrappers and launch code), each CUDA thread of a block is a
 * std::thread, __syncthreads a barrier of the 128, and the warp-collective
 * instructions (mma.m16n8k16, ldmatrix.x4 [.trans], shfl.xor) exchange the
 * 32 lanes' operands through a warp barrier and apply the PTX ISA's
 * fragment layouts (f16 products exact, sums in double then rounded to f32: the
 * tensor cores' own f32 rounding is not modelled). It checks the index
 * math (fragments, masks, tile walk, online softmax) and the split
 * precision against a double-precision reference of the `attention`
 * contract, every case of test_cuda_ops' mma list that is small enough.
 * Shared memory is poisoned (f16 NaN) before each block, and ldmatrix
 * addresses checked for alignment and bounds. Not built by cmake; by hand:
 *   g++ -std=c++20 -O2 -pthread -Wno-unknown-pragmas -DNMLX_ATTN_MMA_EMU -Isrc -Iinclude \
 *       -isystem /usr/local/cuda/include tests/cuda/attn_mma_emu.cpp -o /tmp/attn_mma_emu
 *   /tmp/attn_mma_emu        (exit 0: every case within 2e-5 of max|ref|) */
#include <cuda_fp16.h>
#include <vector_functions.h>

#include <barrier>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

extern "C" {
#include "compute/backend.h"
}

/* the CUDA keywords and built-ins the kernel uses, as host code */
#undef __global__
#undef __device__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__
#define threadIdx emu_thread
#define blockIdx emu_block
#define gridDim emu_grid

static thread_local uint3 emu_thread;
static uint3 emu_block;
static dim3 emu_grid;

enum { SM_BYTES = 256 * 1024 };
static size_t sm_used; /* the launch's dynamic shared memory */
static std::barrier<> *block_bar;
struct warp_x {
    std::barrier<> bar{32};
    uint32_t w[32][6];
    const void *p[32];
    float f[32];
};
static warp_x *warps;

static inline void __syncthreads() { block_bar->arrive_and_wait(); }
static inline int __float_as_int(float f) {
    int i;
    memcpy(&i, &f, 4);
    return i;
}
static inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
static inline float4 __ldg(const float4 *p) { return *p; }

namespace {
alignas(16) unsigned char sm[SM_BYTES]; /* the kernel's `extern __shared__ sm[]` */

inline int lane_() { return (int)(emu_thread.x % 32); }
inline warp_x &warp_() { return warps[emu_thread.x / 32]; }

/* f16 half 0 (low) or 1 of w as f32 (subnormals included) */
inline float val(uint32_t w, int half) {
    const uint32_t b = half ? w >> 16 : w & 0xffffu;
    const int e = (int)(b >> 10) & 31, m = (int)(b & 1023);
    const float v = e == 31  ? (m ? NAN : INFINITY)
                    : e == 0 ? ldexpf((float)m, -24)
                             : ldexpf((float)(1024 + m), e - 25);
    return b >> 15 ? -v : v;
}

/* mma.m16n8k16 row.col f32.f16.f16.f32: c += A B (PTX ISA fragment layouts) */
void mma_f16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    warp_x &x = warp_();
    const int lane = lane_(), g = lane / 4, q = lane % 4;
    for (int i = 0; i < 4; i++)
        x.w[lane][i] = a[i];
    x.w[lane][4] = b0, x.w[lane][5] = b1;
    x.bar.arrive_and_wait();
    for (int e = 0; e < 4; e++) {
        const int row = g + 8 * (e / 2), col = 2 * q + e % 2;
        double s = 0;
        for (int k = 0; k < 16; k++) {
            /* A[row][k]: lane 4 (row % 8) + (k % 8) / 2, register (row >= 8) + 2 (k >= 8) */
            const float av =
                val(x.w[4 * (row % 8) + (k % 8) / 2][(row >= 8) + 2 * (k >= 8)], k % 2);
            /* B[k][col]: lane 4 col + (k % 8) / 2, register b0 / b1 by k >= 8 */
            const float bv = val(x.w[4 * col + (k % 8) / 2][4 + (k >= 8)], k % 2);
            s += (double)av * (double)bv;
        }
        c[e] = (float)((double)c[e] + s);
    }
    x.bar.arrive_and_wait();
}

void check_row(const void *p) {
    const unsigned char *b = (const unsigned char *)p;
    if ((uintptr_t)b % 16 || b < sm || b + 16 > sm + sm_used) {
        fprintf(stderr, "ldmatrix row address %p: offset %td of %zu, misaligned or out of bounds\n",
                p, b - sm, sm_used);
        abort();
    }
}

/* ldmatrix.x4: lane l gets, of matrix i (rows from lanes 8i..8i+7), row l/4,
 * cols 2(l%4), +1; .trans: rows 2(l%4), +1 of col l/4 */
void ldsm(uint32_t *r, const uint16_t *p, bool trans) {
    warp_x &x = warp_();
    const int lane = lane_();
    check_row(p);
    x.p[lane] = p;
    x.bar.arrive_and_wait();
    for (int i = 0; i < 4; i++) {
        uint16_t lo, hi;
        if (!trans) {
            const uint16_t *row = (const uint16_t *)x.p[8 * i + lane / 4];
            lo = row[2 * (lane % 4)], hi = row[2 * (lane % 4) + 1];
        } else {
            lo = ((const uint16_t *)x.p[8 * i + 2 * (lane % 4)])[lane / 4];
            hi = ((const uint16_t *)x.p[8 * i + 2 * (lane % 4) + 1])[lane / 4];
        }
        r[i] = (uint32_t)lo | (uint32_t)hi << 16;
    }
    x.bar.arrive_and_wait();
}
void ldsm_x4(uint32_t *r, const uint16_t *p) { ldsm(r, p, false); }
void ldsm_x4_trans(uint32_t *r, const uint16_t *p) { ldsm(r, p, true); }

float __shfl_xor_sync(unsigned, float v, int o) {
    warp_x &x = warp_();
    const int lane = lane_();
    x.f[lane] = v;
    x.bar.arrive_and_wait();
    const float r = x.f[lane ^ o];
    x.bar.arrive_and_wait();
    return r;
}
} // namespace

#include "compute/cuda/cuda_attention_mma.cu"

/* the host side of nmlx_cuda_attention_mma: the instance by head size,
 * every block in turn, its 128 threads at once */
template <int D, int TK> static void emu_launch(const nmlx_attn_args &a) {
    sm_used = (size_t)(MQ + 2 * TK) * 2 * (size_t)(a.HD + PAD) * sizeof(uint16_t) +
              (size_t)(MQ + 2 * TK) * sizeof(float);
    assert(sm_used <= SM_BYTES);
    emu_grid = dim3((unsigned)a.H, (unsigned)((a.T + MQ - 1) / MQ));
    for (unsigned by = 0; by < emu_grid.y; by++)
        for (unsigned bx = 0; bx < emu_grid.x; bx++) {
            memset(sm, 0xff, sizeof sm); /* bf16 NaN: a read of an unstaged element shows */
            emu_block = make_uint3(bx, by, 0);
            std::barrier<> bar(MT);
            block_bar = &bar;
            std::vector<warp_x> w(MW);
            warps = w.data();
            std::vector<std::thread> th;
            for (unsigned t = 0; t < MT; t++)
                th.emplace_back([t, &a] {
                    emu_thread = make_uint3(t, 0, 0);
                    attention_mma_kernel<D, TK>(a);
                });
            for (auto &t : th)
                t.join();
            for (size_t i = sm_used; i < sizeof sm; i++)
                if (sm[i] != 0xff) {
                    fprintf(stderr, "shared memory written past %zu bytes (at %zu)\n", sm_used, i);
                    abort();
                }
        }
}

static void emu_attention(const nmlx_attn_args &a) {
    assert(a.HD % 16 == 0 && a.HD <= 256);
    if (a.HD <= 64)
        emu_launch<64, 64>(a);
    else if (a.HD <= 128)
        emu_launch<128, 64>(a);
    else
        emu_launch<256, 32>(a);
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
                p[j - lo] = s;
                m = s > m ? s : m;
            }
            double l = a.sinks ? exp(a.sinks[h] - m) : 0.0;
            for (auto &s : p)
                l += (s = exp(s - m));
            double *o = &out[(size_t)((t * a.H + h) * HD)];
            for (int64_t j = lo; j <= hi; j++)
                for (int64_t d = 0; d < HD; d++)
                    o[d] += p[j - lo] / l * V[j * HD + d];
        }
}

static uint64_t rng = 20261206;
static float urand(float lo, float hi) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (float)((rng >> 40) / 16777216.0);
}

static int failures;

/* q scaled by qmul (peaky softmax for qmul > 1); each k and v row by
 * e^u, u uniform in [-spread, spread] (the f16 pairs' row scales) */
static void run_case(int64_t T, int64_t H, int64_t KVH, int64_t HD, int64_t cap, int64_t q_pos,
                     int64_t n_kv, int64_t window, float softcap, bool sinks, float qmul,
                     float spread = 0) {
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
    if (spread > 0)
        for (size_t r = 0; r < k.size() / (size_t)HD; r++) {
            const float fk = expf(urand(-spread, spread)), fv = expf(urand(-spread, spread));
            for (int64_t d = 0; d < HD; d++)
                k[r * HD + d] *= fk, v[r * HD + d] *= fv;
        }
    /* cache rows past n_kv: NaN, as stale memory may hold (must not leak in) */
    for (int64_t kh = 0; kh < KVH; kh++)
        for (int64_t j = n_kv; j < cap; j++)
            for (int64_t d = 0; d < HD; d++)
                k[(size_t)((kh * cap + j) * HD + d)] = v[(size_t)((kh * cap + j) * HD + d)] = NAN;
    nmlx_attn_args a = {};
    a.q = q.data(), a.k = k.data(), a.v = v.data(), a.out = out.data();
    a.T = T, a.H = H, a.KVH = KVH, a.HD = HD, a.cap = cap, a.q_pos = q_pos, a.n_kv = n_kv;
    a.scale = 1.0f / sqrtf((float)HD), a.window = window, a.softcap = softcap;
    a.sinks = sinks ? sk.data() : NULL;
    emu_attention(a);
    std::vector<double> ref;
    ref_attention(a, ref);
    double mx = 0, err = 0;
    for (size_t i = 0; i < ref.size(); i++)
        mx = fmax(mx, fabs(ref[i]));
    for (size_t i = 0; i < ref.size(); i++) {
        const double e = fabs(out[i] - ref[i]);
        err = e > err || e != e ? e : err;
    }
    const double rel = err / (mx > 1e-30 ? mx : 1e-30);
    const bool ok = rel <= 2e-5;
    failures += !ok;
    printf("%s T=%lld H=%lld KVH=%lld HD=%lld q_pos=%lld n_kv=%lld win=%lld cap=%g sinks=%d "
           "q x%g spread %g: rel err %.2e\n",
           ok ? "ok  " : "FAIL", (long long)T, (long long)H, (long long)KVH, (long long)HD,
           (long long)q_pos, (long long)n_kv, (long long)window, softcap, sinks, qmul, spread, rel);
    fflush(stdout);
}

int main(void) {
    /* test_cuda_ops' prefill cases, heads cut to keep the emulation short */
    run_case(7, 6, 2, 80, 20, 3, 10, 0, 0, false, 1);
    run_case(19, 4, 4, 64, 300, 150, 169, 16, 0, false, 1);
    run_case(5, 2, 1, 256, 70, 60, 65, 0, 30.0f, true, 1);
    run_case(3, 2, 1, 96, 8, 0, 3, 2, 0, true, 1);
    run_case(130, 2, 1, 128, 160, 0, 130, 0, 0, false, 1);
    run_case(77, 2, 2, 64, 300, 101, 178, 0, 0, false, 1);
    run_case(200, 2, 1, 80, 260, 33, 233, 40, 0, true, 1);
    run_case(64, 2, 1, 256, 70, 0, 64, 0, 50.0f, true, 1);
    run_case(45, 2, 1, 64, 50, 0, 45, 7, 0, false, 1);
    /* the mma kernel's edges */
    run_case(63, 2, 2, 128, 100, 0, 63, 0, 0, false, 1);
    run_case(65, 4, 1, 128, 100, 0, 65, 0, 0, true, 1);    /* group 4 */
    run_case(129, 8, 1, 64, 300, 70, 199, 0, 0, false, 1); /* group 8 */
    run_case(2, 8, 1, 128, 10, 0, 2, 0, 0, false, 1);
    run_case(100, 2, 1, 96, 400, 250, 350, 0, 30.0f, true, 1);
    run_case(70, 2, 1, 112, 200, 5, 75, 130, 0, false, 1);
    run_case(150, 2, 2, 256, 400, 100, 250, 90, 20.0f, true, 1);
    run_case(200, 2, 1, 80, 300, 0, 200, 3, 0, false, 1);
    run_case(90, 2, 1, 128, 100, 0, 20, 8, 0, false, 1);  /* t >= 27 see nothing */
    run_case(200, 2, 1, 64, 300, 30, 60, 16, 0, true, 1); /* whole blocks see nothing */
    run_case(150, 2, 1, 128, 300, 100, 180, 0, 0, false, 1);
    /* peaky softmax (scores up to ~±40): the running max moves tile to tile */
    run_case(140, 2, 1, 128, 200, 0, 140, 0, 0, false, 12);
    run_case(100, 2, 1, 64, 200, 20, 120, 50, 0, true, 12);
    run_case(70, 2, 1, 256, 100, 0, 70, 0, 0, false, 12);
    /* q and k far from 1 (the f16 pairs' row scaling): tiny and huge rows */
    run_case(80, 2, 1, 128, 100, 0, 80, 0, 0, false, 1e-6f);
    run_case(80, 2, 1, 128, 100, 0, 80, 0, 0, true, 3e3f);
    /* k and v rows from e^-7 to e^7 of each other: u grows tile to tile */
    run_case(300, 2, 1, 128, 300, 0, 300, 0, 0, false, 1, 7);
    run_case(200, 2, 1, 64, 300, 50, 250, 100, 0, true, 4, 7);
    /* the fixtures' small heads (HD 16, 32; 48) */
    run_case(40, 2, 1, 16, 60, 5, 45, 0, 0, false, 1);
    run_case(70, 4, 2, 32, 100, 0, 70, 9, 0, true, 1);
    run_case(66, 2, 2, 48, 100, 3, 69, 0, 15.0f, false, 1);
    /* the Llama-3.1-8B layer's prefill (T 512, HD 128, group 4), 4 of its 32 heads */
    run_case(512, 4, 1, 128, 512, 0, 512, 0, 0, false, 1);
    printf("%s\n", failures ? "FAIL" : "PASS");
    return failures != 0;
}
