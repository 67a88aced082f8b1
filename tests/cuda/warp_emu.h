/* CUDA kernels run on the CPU: the CUDA keywords, types and built-ins a kernel
 * source uses, as host C++, and a scheduler that runs a block's threads.
 * Why: the emulation tests (attn_mma_emu.cpp, attn_decode_emu.cpp, qgemv16_emu.cpp,
 * qrows2_emu.cpp, qmm_fused_emu.cpp) compile a kernel source of src/compute/cuda as host C++
 * and run it against a reference, so that its index math, fragment layouts
 * and barriers are checked without a GPU; this is what they share.
 *
 * Each CUDA thread of a block is a fiber (ucontext) of the one OS thread,
 * switched only at barriers: __syncthreads (the block's) and the warp
 * collectives (__shfl_*_sync, mma, ldmatrix: the warp's, twice: operands
 * posted, then read). So any mix of warp and block barriers meets as on the
 * GPU, a run is deterministic, and a barrier that some thread never reaches
 * aborts (deadlock) instead of hanging. A warp's fibers run, in turns, as far
 * as they can (to the block's barrier) before the next warp's: a warp reading
 * what another warp writes to shared memory with no __syncthreads between
 * them reads it stale (a missing barrier shows as an error). The blocks of a
 * launch run one after another (row-major or shuffled order).
 *
 * Before including it a test may define:
 *   WARP_EMU_CUDA_HEADERS  take the vector types, __half and their intrinsics
 *                          from the CUDA toolkit's cuda_fp16.h and
 *                          vector_functions.h (build with -isystem
 *                          <cuda>/include); else they are defined here.
 *   WARP_EMU_SMEM name     the kernel's `extern __shared__` byte array: defined
 *                          here (WARP_EMU_SMEM_BYTES, default 256 KiB), filled
 *                          with 0xff before each block (f16 / f32 NaN: a read
 *                          of what was never written shows) and checked after
 *                          it (nothing written past the launch's size); then
 *                          __shared__ is empty (such a kernel's fixed __shared__
 *                          arrays would be per thread), else it is `static`.
 *                          ldmatrix and cp.async take addresses in it.
 *   WARP_EMU_STACK         bytes of stack a fiber (default 256 KiB).
 * then includes the kernel source (with its own EMU macro, which drops the
 * PTX wrappers and launch code: the test defines those wrappers with the
 * emu_* functions below), then launches it:
 *   emu_launch(dim3(gx, gy), threads, smem_bytes, [&] { kernel<...>(args); });
 * (emu_launch_shuffled: blocks in a shuffled order; emu_launch_blocks: in the
 * caller's). A block's thread count is the launch's (full warps are assumed by
 * the warp collectives, whose masks are ignored). Global loads through __ldg /
 * __ldcg / emu_check_load are checked for alignment and, where the test lists
 * its buffers in emu_regions, for bounds. Also here for the tests: f16 / bf16
 * bit conversions (h2d, d2h, bf2f, f2bf) and one random stream (emu_next32,
 * emu_urand). */
#ifndef NMLX_TESTS_CUDA_WARP_EMU_H
#define NMLX_TESTS_CUDA_WARP_EMU_H

#ifdef WARP_EMU_CUDA_HEADERS
#include <cuda_fp16.h>
#include <vector_functions.h>
#endif
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

/* ---- keywords ---- */
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#ifdef WARP_EMU_SMEM
#define __shared__
#else
#define __shared__ static
#endif
#ifndef __align__
#define __align__(n) __attribute__((aligned(n)))
#endif
#define threadIdx emu_thread
#define blockIdx emu_block
#define blockDim emu_block_dim
#define gridDim emu_grid

/* ---- types (CUDA's sizes and alignments) ---- */
#ifndef WARP_EMU_CUDA_HEADERS
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct alignas(8) int2 {
    int x, y;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) int4 {
    int x, y, z, w;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(2) __half {
    unsigned short x;
};
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return {x, y, z}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
#endif

/* ---- bits: f32, f16, bf16 ---- */
inline uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline uint32_t __float_as_uint(float f) { return f2u(f); }
inline float __int_as_float(int i) { return __uint_as_float((uint32_t)i); }
inline int __float_as_int(float f) { return (int)f2u(f); }
/* f16 bits (the low 16 of b) as a double: exact, subnormals included */
inline double h2d(uint32_t b) {
    b &= 0xffffu;
    const int e = (int)(b >> 10) & 31, m = (int)(b & 1023);
    const double v = e == 31  ? (m ? NAN : INFINITY)
                     : e == 0 ? ldexp(m, -24)
                              : ldexp(1024 + m, e - 25);
    return b >> 15 ? -v : v;
}
/* to f16 bits, rounded to nearest even (via f32, as the kernels round; what
 * a _Float16 cast gives for every f32 but NaN payloads, without needing one) */
inline uint16_t d2h(double v) {
    const uint32_t u = f2u((float)v), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | (a >> 13 & 0x3ffu)); /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* 65520 and up: inf */
    if (a < 0x38800000u) /* under 2^-14: subnormal, in units of 2^-24 */
        return (uint16_t)(sign | (uint32_t)nearbyintf(__uint_as_float(a) * 16777216.0f));
    uint32_t h = (a - 0x38000000u) >> 13; /* exponent rebiased, 10 mantissa bits */
    const uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}
inline float bf2f(uint32_t b) { return __uint_as_float((b & 0xffffu) << 16); }
inline uint16_t f2bf(float f) { /* rounded to nearest even (finite values) */
    const uint32_t u = f2u(f);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
#ifndef WARP_EMU_CUDA_HEADERS
inline float __half2float(__half h) { return (float)h2d(h.x); }
inline __half __float2half_rn(float f) { return __half{d2h(f)}; }
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }
#endif

/* ---- arithmetic built-ins ---- */
inline float __fmul_rn(float a, float b) { return a * b; }
inline int __float2int_rn(float v) { return (int)nearbyintf(v); } /* ties to even */
inline uint32_t __byte_perm(uint32_t x, uint32_t y, uint32_t s) {
    const uint64_t v = (uint64_t)y << 32 | x;
    uint32_t r = 0;
    for (int i = 0; i < 4; i++)
        r |= (uint32_t)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}

/* ---- the launch's indices ---- */
inline uint3 emu_thread, emu_block;
inline dim3 emu_block_dim, emu_grid;
inline int emu_tid() { return (int)emu_thread.x; }
inline int emu_lane() { return (int)(emu_thread.x % 32); }

/* ---- global loads: alignment, and bounds against the test's buffers ---- */
struct emu_region {
    const void *p;
    size_t n;
    const char *name;
};
inline std::vector<emu_region> emu_regions; /* empty: alignment checked only */
inline void emu_check_load(const void *p, size_t n, size_t align) {
    if ((uintptr_t)p % align) {
        fprintf(stderr, "misaligned %zu-byte load at %p\n", n, p);
        abort();
    }
    if (emu_regions.empty()) return;
    for (const emu_region &r : emu_regions)
        if ((const char *)p >= (const char *)r.p && (const char *)p + n <= (const char *)r.p + r.n)
            return;
    fprintf(stderr, "load of %zu bytes at %p outside every buffer\n", n, p);
    abort();
}
template <typename T> inline T __ldg(const T *p) {
    emu_check_load(p, sizeof(T), alignof(T));
    return *p;
}
template <typename T> inline T __ldcg(const T *p) {
    emu_check_load(p, sizeof(T), alignof(T));
    return *p;
}

/* ---- fibers and barriers ---- */
#ifndef WARP_EMU_STACK
#define WARP_EMU_STACK (256 * 1024)
#endif
struct emu_barrier {
    unsigned n, count;
    uint64_t gen;
};
struct emu_warp_t {
    emu_barrier bar;
    uint64_t v[32];    /* shuffles */
    uint32_t w[32][6]; /* mma operands: a[4], b0, b1 */
    const void *p[32]; /* ldmatrix row addresses */
};
struct emu_cp_op {
    void *dst;
    const void *src;
    int bytes, size; /* bytes copied, size - bytes zeroed */
};
struct emu_cp_queue { /* a thread's cp.async copies: open, then committed groups */
    std::vector<emu_cp_op> open;
    std::deque<std::vector<emu_cp_op>> groups;
};
struct emu_block_t {
    unsigned n;
    std::vector<ucontext_t> ctx;
    std::vector<char> done;
    std::unique_ptr<char[]> stacks;
    size_t stacks_n;
    ucontext_t sched;
    int cur;
    uint64_t progress; /* arrivals and exits: a round without any is a deadlock */
    void (*call)(void *);
    void *body;
    emu_barrier bar;
    unsigned sync_count, sync_read; /* __syncthreads_count's sum, its readers */
    std::vector<emu_warp_t> warps;
    std::vector<emu_cp_queue> cp;
};
inline emu_block_t emu_blk;
inline emu_warp_t &emu_warp() { return emu_blk.warps[emu_thread.x / 32]; }

inline void emu_yield() { swapcontext(&emu_blk.ctx[(size_t)emu_blk.cur], &emu_blk.sched); }
/* arrive, then yield until the last of the n has arrived */
inline void emu_arrive(emu_barrier &b) {
    emu_blk.progress++;
    const uint64_t g = b.gen;
    if (++b.count == b.n) {
        b.count = 0;
        b.gen++;
        return;
    }
    while (b.gen == g)
        emu_yield();
}

inline void __syncthreads() { emu_arrive(emu_blk.bar); }
inline int __syncthreads_count(int p) {
    emu_block_t &b = emu_blk;
    b.sync_count += p != 0;
    emu_arrive(b.bar);
    const unsigned r = b.sync_count;
    if (++b.sync_read == b.n) b.sync_count = b.sync_read = 0; /* every thread has read it */
    emu_arrive(b.bar);
    return (int)r;
}
inline int __syncthreads_or(int p) { return __syncthreads_count(p) != 0; }
inline int __syncthreads_and(int p) { return __syncthreads_count(p) == (int)emu_blk.n; }
inline void __syncwarp(unsigned = 0xffffffffu) { emu_arrive(emu_warp().bar); }
/* one thread of the block at a time: fences and atomics are plain */
inline void __threadfence() {}
template <typename T> inline T atomicAdd(T *p, std::type_identity_t<T> v) {
    const T o = *p;
    *p = o + v;
    return o;
}
/* cuda_internal.h's programmatic-dependent-launch hooks: nothing to wait for */
inline void cuda_pdl_trigger() {}
inline void cuda_pdl_wait() {}

/* ---- warp shuffles: any type up to 8 bytes; an out-of-range lane reads its own ---- */
template <typename T, typename Src> inline T emu_shfl(T v, Src src) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a scalar");
    emu_warp_t &w = emu_warp();
    const int lane = emu_lane();
    uint64_t b = 0;
    memcpy(&b, &v, sizeof v);
    w.v[lane] = b;
    emu_arrive(w.bar);
    b = w.v[src(lane)];
    emu_arrive(w.bar);
    T r;
    memcpy(&r, &b, sizeof r);
    return r;
}
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    return emu_shfl(v, [=](int l) {
        const int s = l ^ mask;
        return s < 32 && s < (l / width + 1) * width ? s : l;
    });
}
template <typename T> inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    return emu_shfl(v, [=](int l) { return l / width * width + src % width; });
}
template <typename T> inline T __shfl_down_sync(unsigned, T v, unsigned d, int width = 32) {
    return emu_shfl(v, [=](int l) { return l % width + (int)d < width ? l + (int)d : l; });
}
template <typename T> inline T __shfl_up_sync(unsigned, T v, unsigned d, int width = 32) {
    return emu_shfl(v, [=](int l) { return l % width >= (int)d ? l - (int)d : l; });
}

/* ---- mma.m16n8k16 row.col, f32 accumulate: c += A B by the PTX ISA's fragment
 * layouts; f16 / bf16 products exact, the 16 summed in double, then rounded
 * to f32 once (the tensor cores' own f32 rounding is not modelled) ---- */
enum emu_ab { EMU_F16, EMU_BF16 };
template <emu_ab AB> inline float emu_ab_val(uint32_t w, int half) {
    const uint32_t b = half ? w >> 16 : w & 0xffffu;
    return AB == EMU_F16 ? (float)h2d(b) : bf2f(b);
}
template <emu_ab AB>
inline void emu_mma_m16n8k16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    emu_warp_t &x = emu_warp();
    const int lane = emu_lane(), g = lane / 4, q = lane % 4;
    for (int i = 0; i < 4; i++)
        x.w[lane][i] = a[i];
    x.w[lane][4] = b0, x.w[lane][5] = b1;
    emu_arrive(x.bar);
    for (int e = 0; e < 4; e++) {
        const int row = g + 8 * (e / 2), col = 2 * q + e % 2;
        double s = 0;
        for (int k = 0; k < 16; k++) {
            /* A[row][k]: lane 4 (row % 8) + (k % 8) / 2, register (row >= 8) + 2 (k >= 8) */
            const float av =
                emu_ab_val<AB>(x.w[4 * (row % 8) + (k % 8) / 2][(row >= 8) + 2 * (k >= 8)], k % 2);
            /* B[k][col]: lane 4 col + (k % 8) / 2, register b0 / b1 by k >= 8 */
            const float bv = emu_ab_val<AB>(x.w[4 * col + (k % 8) / 2][4 + (k >= 8)], k % 2);
            s += (double)av * (double)bv;
        }
        c[e] = (float)((double)c[e] + s);
    }
    emu_arrive(x.bar);
}

#ifdef WARP_EMU_SMEM
/* ---- dynamic shared memory, ldmatrix, cp.async ---- */
#ifndef WARP_EMU_SMEM_BYTES
#define WARP_EMU_SMEM_BYTES (256 * 1024)
#endif
namespace {
alignas(16) unsigned char WARP_EMU_SMEM[WARP_EMU_SMEM_BYTES];
unsigned char *const emu_smem = WARP_EMU_SMEM; /* the same, by a name no kernel uses */
} // namespace
enum : size_t { EMU_SMEM_BYTES = WARP_EMU_SMEM_BYTES };
inline size_t emu_smem_used; /* the launch's dynamic shared memory */
inline void emu_smem_check(const void *p, size_t bytes, const char *what) {
    const unsigned char *b = (const unsigned char *)p;
    if ((uintptr_t)b % (bytes < 16 ? bytes : 16) || b < emu_smem ||
        b + bytes > emu_smem + emu_smem_used) {
        fprintf(stderr, "%s: shared offset %td of %zu, misaligned or out of bounds\n", what,
                b - emu_smem, emu_smem_used);
        abort();
    }
}

/* ldmatrix.x4 [.trans]: lane l gets, of matrix i (rows from lanes 8i..8i+7),
 * row l/4, cols 2(l%4), +1; .trans: rows 2(l%4), +1 of col l/4 */
inline void emu_ldmatrix_x4(uint32_t *r, const void *p, bool trans) {
    emu_warp_t &x = emu_warp();
    const int lane = emu_lane();
    emu_smem_check(p, 16, "ldmatrix row");
    x.p[lane] = p;
    emu_arrive(x.bar);
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
    emu_arrive(x.bar);
}

/* cp.async (16 bytes, `bytes` of them copied, the rest zeroed): queued per
 * thread in commit groups, landing only when a wait_group lets their group
 * complete, so a slot read before its wait sees the old bytes (the poison);
 * the test checks the source (the kernel's contract) before queueing */
inline void emu_cp_async(void *dst, const void *src, int bytes, int size) {
    emu_smem_check(dst, size, "cp.async");
    emu_blk.cp[(size_t)emu_tid()].open.push_back({dst, src, bytes, size});
}
inline void emu_cp_async16(void *dst, const void *src, int bytes) {
    emu_cp_async(dst, src, bytes, 16);
}
inline void emu_cp_commit() {
    emu_cp_queue &q = emu_blk.cp[(size_t)emu_tid()];
    q.groups.push_back(std::move(q.open));
    q.open.clear();
}
template <int N> inline void emu_cp_wait() {
    emu_cp_queue &q = emu_blk.cp[(size_t)emu_tid()];
    while (q.groups.size() > (size_t)N) {
        for (const emu_cp_op &o : q.groups.front()) {
            memcpy(o.dst, o.src, (size_t)o.bytes);
            memset((char *)o.dst + o.bytes, 0, (size_t)(o.size - o.bytes));
        }
        q.groups.pop_front();
    }
}
#endif

/* ---- a block: its threads as fibers, until every one returns ---- */
inline void emu_fiber_entry() {
    emu_block_t &b = emu_blk;
    b.call(b.body);
    const emu_cp_queue &q = b.cp[(size_t)b.cur];
    if (!q.open.empty() || !q.groups.empty()) {
        fprintf(stderr, "cp.async copies left in flight at exit\n");
        abort();
    }
    b.done[(size_t)b.cur] = 1;
    b.progress++;
    swapcontext(&b.ctx[(size_t)b.cur], &b.sched);
}

/* runs body as `threads` threads of block emu_block */
template <typename F> void emu_run_block(unsigned threads, F &body) {
    emu_block_t &b = emu_blk;
    const size_t need = (size_t)threads * WARP_EMU_STACK;
    if (b.stacks_n < need) {
        b.stacks.reset(new char[need]); /* not touched: pages come as used */
        b.stacks_n = need;
    }
    b.n = threads;
    b.ctx.assign(threads, ucontext_t{});
    b.done.assign(threads, 0);
    b.cp.assign(threads, emu_cp_queue{});
    b.bar = emu_barrier{threads, 0, 0};
    b.sync_count = b.sync_read = 0;
    b.warps.assign((threads + 31) / 32, emu_warp_t{});
    for (size_t w = 0; w < b.warps.size(); w++)
        b.warps[w].bar.n = threads - 32 * (unsigned)w < 32 ? threads - 32 * (unsigned)w : 32;
    b.call = [](void *f) { (*(F *)f)(); };
    b.body = &body;
    emu_block_dim = dim3(threads, 1, 1);
    for (unsigned t = 0; t < threads; t++) {
        getcontext(&b.ctx[t]);
        b.ctx[t].uc_stack.ss_sp = b.stacks.get() + (size_t)t * WARP_EMU_STACK;
        b.ctx[t].uc_stack.ss_size = WARP_EMU_STACK;
        b.ctx[t].uc_link = &b.sched;
        makecontext(&b.ctx[t], emu_fiber_entry, 0);
    }
    /* warp by warp: a warp's fibers take turns until none of them can go on
     * (all wait at the block's barrier, or have returned), then the next warp's */
    for (unsigned left = threads; left > 0;) {
        const uint64_t before = b.progress;
        for (unsigned w0 = 0; w0 < threads; w0 += 32)
            for (uint64_t p = ~(uint64_t)0; p != b.progress;) {
                p = b.progress;
                for (unsigned t = w0; t < w0 + 32 && t < threads; t++) {
                    if (b.done[t]) continue;
                    b.cur = (int)t;
                    emu_thread = uint3{t, 0, 0};
                    swapcontext(&b.sched, &b.ctx[t]);
                }
            }
        left = 0;
        for (unsigned t = 0; t < threads; t++)
            left += !b.done[t];
        if (left > 0 && b.progress == before) {
            fprintf(stderr,
                    "block (%u, %u, %u): %u threads wait at barriers that the others never "
                    "reach (deadlock)\n",
                    emu_block.x, emu_block.y, emu_block.z, left);
            abort();
        }
    }
}

/* ---- a launch: the blocks of `order` one after another, `threads` each ---- */
template <typename F>
void emu_launch_blocks(const std::vector<uint3> &order, dim3 grid, unsigned threads,
                       size_t smem_bytes, F body) {
    emu_grid = grid;
#ifdef WARP_EMU_SMEM
    emu_smem_used = smem_bytes;
    if (smem_bytes > EMU_SMEM_BYTES) {
        fprintf(stderr, "launch with %zu bytes of shared memory: over %zu\n", smem_bytes,
                (size_t)EMU_SMEM_BYTES);
        abort();
    }
#else
    if (smem_bytes) {
        fprintf(stderr, "launch with shared memory: define WARP_EMU_SMEM\n");
        abort();
    }
#endif
    for (const uint3 &blk : order) {
#ifdef WARP_EMU_SMEM
        memset(emu_smem, 0xff, EMU_SMEM_BYTES);
#endif
        emu_block = blk;
        emu_run_block(threads, body);
#ifdef WARP_EMU_SMEM
        for (size_t i = smem_bytes; i < EMU_SMEM_BYTES; i++)
            if (emu_smem[i] != 0xff) {
                fprintf(stderr, "shared memory written past %zu bytes (at %zu)\n", smem_bytes, i);
                abort();
            }
#endif
    }
}
inline std::vector<uint3> emu_blocks(dim3 grid) { /* row-major: x fastest */
    std::vector<uint3> o;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++)
                o.push_back(uint3{x, y, z});
    return o;
}
template <typename F> void emu_launch(dim3 grid, unsigned threads, size_t smem_bytes, F body) {
    emu_launch_blocks(emu_blocks(grid), grid, threads, smem_bytes, body);
}
/* blocks in a shuffled order (Fisher-Yates, rnd() % i), e.g. so that the
 * last block to arrive at a counter is a different one each case */
template <typename R, typename F>
void emu_launch_shuffled(dim3 grid, unsigned threads, size_t smem_bytes, R rnd, F body) {
    std::vector<uint3> o = emu_blocks(grid);
    for (size_t i = o.size(); i > 1; i--)
        std::swap(o[i - 1], o[rnd() % i]);
    emu_launch_blocks(o, grid, threads, smem_bytes, body);
}

/* ---- the tests' random numbers (a 64-bit LCG, the same stream in each) ---- */
inline uint64_t emu_rng = 20261206;
inline uint32_t emu_next32() {
    emu_rng = emu_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(emu_rng >> 32);
}
inline float emu_urand(float lo, float hi) {
    return lo + (hi - lo) * (float)((emu_next32() >> 8) / 16777216.0);
}

#endif
