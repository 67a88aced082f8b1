/* Device code of the int16 mat-vec (cuda_qgemv16.cu, where the design is
 * described): kernel v1 (x staged whole, Q16_WARPS * R rows a block) and v2
 * (persistent warps, a ring of DEP loads a lane). A header so that
 * tests/cuda/qgemv16_emu.cpp can run both on the CPU (NMLX_QGEMV16_EMU: it
 * supplies the CUDA built-ins and the PTX wrappers). Included once, inside
 * no namespace. */
#ifndef NMLX_CUDA_QGEMV16_DEV_CUH
#define NMLX_CUDA_QGEMV16_DEV_CUH

#include "compute/cuda/cuda_norm_sumsq.cuh"

namespace {

enum { Q16_WARPS = 8, Q16_THREADS = 32 * Q16_WARPS, Q16_MAXW = 3 };
enum { SCF32 = 0, SCF16, SCBF16 };

struct q16_weight {
    const uint4 *w;
    const void *scales, *biases;
    const void *lbias; /* optional per-row bias of dtype lbdt */
    float *y;
    int64_t D;
    unsigned blk0; /* v1: first block of this weight */
    int64_t r0;    /* v2: first unit (RR rows) of this weight */
    nmlx_dtype lbdt;
    int fold; /* v2, rope_kv folded in (q16_rope): Q16_Q, Q16_K, Q16_V; Q16_R (v1 and
               * v2, one weight): y is the residual stream, y += W x; 0: y = W x */
};

/* rope_kv folded into the q/k/v launch (v2, two rows a unit; backend.h
 * add_rmsnorm_matmul's rope): q's rows rotated into its y, k's rotated and
 * v's copied into cache row crow = row0 (+ *step) of their KV head h,
 * kc / vc + (h cap + crow) HD, at position pos0 (+ *step). half = HD / 2:
 * a unit of q or k is the pair (i, i + half) of one head, i < half, rotated
 * by cuda_rope_pair as rope_kv rotates it; half 0: no rotation, units are
 * consecutive rows as without the fold. */
enum { Q16_Q = 1, Q16_K, Q16_V, Q16_R };
struct q16_rope {
    float *kc, *vc;
    int64_t HD, cap, row0, pos0, half;
    const float *freqs;
    float mscale;
    const int64_t *step; /* non-NULL (a recorded step): row0 and pos0 are deltas from *step */
};

struct q16_args {
    q16_weight m[Q16_MAXW];
    int n;
    nmlx_act act; /* PAIR only */
    const float *x;
    int64_t N;
    int gshift;     /* log2(group_size / piece inputs) */
    unsigned tiles; /* v1: tiles of Q16_WARPS * R rows over all weights */
    int64_t units;  /* v2: units over all weights (RR rows of one; PAIR: row pairs) */
    /* NORM only: x += d (x is `xw`), staged as y = rmsnorm(x) (weight nw,
     * offset noff, eps neps), y written to yn; done: the blocks' counter */
    float *xw, *yn;
    const float *d;
    const void *nw;
    nmlx_dtype nwdt;
    float noff, neps;
    unsigned *done;
    /* NORM: parts (non-NULL) holds a Q16_R launch's sums of squares of x
     * (parts[0] the count n, parts[1..n] the sums): 1 / rms from them, no
     * pass over x; d NULL: x already holds the residual sum (nothing added,
     * x not written back) */
    const double *parts;
    /* Q16_R: where each block writes its sum of squares of the rows it
     * updated (rsum[1 + block]; block 0 also writes the count, rsum[0]) */
    double *rsum;
    q16_rope rope; /* where a weight's fold is set */
};

template <int SC> __device__ __forceinline__ float sc_get(const void *p, int64_t i) {
    if constexpr (SC == SCF32)
        return __ldg((const float *)p + i);
    else if constexpr (SC == SCF16)
        return __half2float(__ushort_as_half(__ldg((const unsigned short *)p + i)));
    else
        return __uint_as_float((uint32_t)__ldg((const unsigned short *)p + i) << 16);
}

#ifndef NMLX_QGEMV16_EMU /* tests/cuda/qgemv16_emu.cpp supplies its own */
/* two int16 of a (signed) times bytes 0,1 (lo) or 2,3 (hi) of b (unsigned) */
__device__ __forceinline__ int dp2a_lo(int a, unsigned b, int c) {
    int d;
    asm("dp2a.lo.s32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
__device__ __forceinline__ int dp2a_hi(int a, unsigned b, int c) {
    int d;
    asm("dp2a.hi.s32.u32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
/* a 16-byte load of streamed codes: read once, kept out of L1 */
__device__ __forceinline__ uint4 ld_stream(const uint4 *p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}
/* v2's ASYNC ring: 16 bytes global -> shared (bytes 0: zeros), its groups */
__device__ __forceinline__ void q16_cp16(void *smem, const void *gmem, int bytes) {
    const unsigned sa = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(gmem), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void q16_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void q16_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

/* Inputs per 16-byte piece of codes, bytes of x per piece, and the swizzle
 * key of piece k (8 lanes of one shared-memory phase hit distinct banks). */
template <int BITS> struct piece {
    enum { IN = 128 / BITS, XB = IN * 2, SEG = XB / 16 };
    static __device__ __forceinline__ int key(int64_t k) {
        return BITS == 4 ? (int)((k >> 1) & 3) : (int)((k >> 2) & 1);
    }
};

/* dot of one 32-bit code word (8 nibbles or 4 bytes) with its x int16
 * pairs a (uint4 segment: 4-bit uses all four, 8-bit two of them) */
template <int BITS> __device__ __forceinline__ int word_dot(unsigned w, const int *xp, int acc) {
    if (BITS == 4) {
        const unsigned lo = w & 0x0F0F0F0Fu, hi = (w >> 4) & 0x0F0F0F0Fu;
        acc = dp2a_lo(xp[0], lo, acc);
        acc = dp2a_hi(xp[1], lo, acc);
        acc = dp2a_lo(xp[2], hi, acc);
        return dp2a_hi(xp[3], hi, acc);
    } else {
        acc = dp2a_lo(xp[0], w, acc);
        return dp2a_hi(xp[1], w, acc);
    }
}

/* The weight of tile t (tiles numbered across the weights) */
__device__ __forceinline__ q16_weight weight_of(const q16_args &a, unsigned t) {
    q16_weight m = a.m[0]; /* selected without a dynamic index (no local copy of a) */
    if (a.n > 1 && t >= a.m[1].blk0) m = a.m[1];
    if (a.n > 2 && t >= a.m[2].blk0) m = a.m[2];
    return m;
}

/* The sum of squares of x + d (N inputs) as add_rmsnorm sums it (cuda_norm_sumsq.cuh);
 * d NULL: of x */
__device__ __forceinline__ double norm_sumsq(const float *x, const float *d, int64_t N) {
    if (!d) return norm_sumsq256([&](int64_t i) { return x[i]; }, N);
    return norm_sumsq256([&](int64_t i) { return x[i] + d[i]; }, N);
}

/* A row's output (lane 0): y[d] = v, or for Q16_R y[d] += v with the new
 * value's square added to ss (x + d, the sum the unfused add gives) */
__device__ __forceinline__ void row_out(const q16_weight &m, int64_t d, float v, double &ss) {
    if (m.fold == Q16_R) {
        const float s = m.y[d] + v;
        m.y[d] = s;
        ss += (double)s * s;
    } else {
        m.y[d] = v;
    }
}

/* y[i] = (x[i] + d[i]) * inv * (w[i] + off) as add_rmsnorm_kernel writes it
 * (s = x[i] + d[i]); __fmul_rn: never contracted into an FMA with the
 * staging's sums (the unfused kernel reads y rounded from memory) */
__device__ __forceinline__ float norm_one(const q16_args &a, float s, float inv, int64_t i) {
    const float v = __fmul_rn(s, inv);
    return a.nw ? __fmul_rn(v, cuda_load_f32(a.nwdt, a.nw, i) + a.noff) : v;
}

/* NORM's end (kernel v1): the block that counted itself last (every
 * other block has staged, so none reads x any more) writes x += d and y =
 * rmsnorm(x + d), and puts the counter back to 0 for the next launch (a
 * recorded graph replays it). Every thread of the block calls it. */
__device__ __forceinline__ void norm_write_back(const q16_args &a, float ninv, bool last) {
    if (!__syncthreads_or(last)) return;
    __threadfence();
    for (int64_t i = 4 * threadIdx.x; i < a.N; i += 4 * Q16_THREADS) {
        float4 sv = *(const float4 *)(a.xw + i);
        if (a.d) { /* else x already holds the sum */
            const float4 dv = *(const float4 *)(a.d + i);
            sv = make_float4(sv.x + dv.x, sv.y + dv.y, sv.z + dv.z, sv.w + dv.w);
            *(float4 *)(a.xw + i) = sv;
        }
        *(float4 *)(a.yn + i) =
            make_float4(norm_one(a, sv.x, ninv, i), norm_one(a, sv.y, ninv, i + 1),
                        norm_one(a, sv.z, ninv, i + 2), norm_one(a, sv.w, ninv, i + 3));
    }
    if (threadIdx.x == 0) *a.done = 0; /* for the next launch */
}

/* Both kernels' staging of x into shared memory (smem: N int16 in swizzled
 * pieces, then NB steps and NB sums; NORM, kernel v1 only: rmsnorm(x + d) staged instead of
 * x, its 1 / rms returned): a thread takes 16 inputs at a time, one f32 step
 * (max|v| / 32767) and one f32 sum per 16. The caller syncs the block after. */
template <int BITS, bool NORM>
__device__ __forceinline__ float stage_x(const q16_args &a, unsigned char *smem) {
    typedef piece<BITS> P;
    const int64_t N = a.N, NB = N / 16;
    unsigned char *xq = smem;               /* N int16, swizzled pieces */
    float *xstep = (float *)(smem + N * 2); /* NB steps */
    float *xsum = xstep + NB;               /* NB sums */
    float ninv = 1.0f;                      /* NORM: 1 / rms(x + d), as add_rmsnorm rounds it */
    if constexpr (NORM)
        ninv = norm_inv(a.parts ? parts_sum(a.parts) : norm_sumsq(a.x, a.d, N), N, a.neps);

    /* stage x (NORM: y = rmsnorm(x + d)): a thread takes 16 inputs at a time */
    for (int64_t b = threadIdx.x; b < NB; b += Q16_THREADS) {
        float v[16];
        const float4 *src = (const float4 *)(a.x + b * 16);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float4 f = src[i];
            v[4 * i] = f.x, v[4 * i + 1] = f.y, v[4 * i + 2] = f.z, v[4 * i + 3] = f.w;
        }
        if constexpr (NORM) {
            if (a.d) {
                const float4 *dsrc = (const float4 *)(a.d + b * 16);
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const float4 f = dsrc[i];
                    v[4 * i] += f.x, v[4 * i + 1] += f.y, v[4 * i + 2] += f.z, v[4 * i + 3] += f.w;
                }
            }
#pragma unroll
            for (int i = 0; i < 16; i++)
                v[i] = norm_one(a, v[i], ninv, b * 16 + i);
        }
        float mx = 0.0f, sum = 0.0f;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            mx = fmaxf(mx, fabsf(v[i]));
            sum += v[i];
        }
        const float step = mx / 32767.0f, inv = mx > 0.0f ? 32767.0f / mx : 0.0f;
        int q[16];
#pragma unroll
        for (int i = 0; i < 16; i++)
            q[i] = __float2int_rn(v[i] * inv);
            /* 8 inputs -> one 16-byte segment (4 int16 pairs) */
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int *s = q + 8 * h;
            uint32_t pr[4];
            if (BITS == 4) { /* pairs (x0,x2) (x4,x6) (x1,x3) (x5,x7) */
                pr[0] = (uint32_t)(s[0] & 0xFFFF) | (uint32_t)s[2] << 16;
                pr[1] = (uint32_t)(s[4] & 0xFFFF) | (uint32_t)s[6] << 16;
                pr[2] = (uint32_t)(s[1] & 0xFFFF) | (uint32_t)s[3] << 16;
                pr[3] = (uint32_t)(s[5] & 0xFFFF) | (uint32_t)s[7] << 16;
            } else {
#pragma unroll
                for (int j = 0; j < 4; j++)
                    pr[j] = (uint32_t)(s[2 * j] & 0xFFFF) | (uint32_t)s[2 * j + 1] << 16;
            }
            const int64_t seg = b * 2 + h; /* logical 16-byte segment */
            const int64_t k = seg / P::SEG;
            const int j = (int)(seg % P::SEG) ^ P::key(k);
            *(uint4 *)(xq + k * P::XB + j * 16) = make_uint4(pr[0], pr[1], pr[2], pr[3]);
        }
        xstep[b] = step;
        xsum[b] = sum;
    }
    return ninv;
}

/* The dot products of a warp's R rows (from d0) with the staged x, and
 * their outputs; Q16_R: lane 0's sum of squares of the updated rows. */
template <int BITS, int SC, int R, bool PAIR>
__device__ __forceinline__ double
rows_dot(const q16_args &a, const q16_weight &m, const q16_weight &mu, int64_t d0,
         const uint4 *const *rows, const uint4 *c0, const unsigned char *smem) {
    typedef piece<BITS> P;
    const int64_t N = a.N, NB = N / 16, NP = N / P::IN;
    const unsigned char *xq = smem;
    const float *xstep = (const float *)(smem + N * 2), *xsum = xstep + NB;
    constexpr int RW = PAIR ? R / 2 : R;
    const int lane = threadIdx.x & 31;
    auto drow = [&](int r) -> int64_t {
        const int64_t d = d0 + (PAIR ? r / 2 : r);
        return d < m.D ? d : m.D - 1;
    };
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        acc[r] = 0.0f;
    const int64_t G = NP >> a.gshift; /* groups a row */
#pragma unroll 2
    for (int64_t k = lane; k < NP; k += 32) {
        uint4 c[R];
#pragma unroll
        for (int r = 0; r < R; r++)
            c[r] = k == lane ? c0[r] : __ldg(rows[r] + k);
        const int64_t g = k >> a.gshift;
        float s[R], bb[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            const bool up = PAIR && (r & 1);
            s[r] = sc_get<SC>(up ? mu.scales : m.scales, drow(r) * G + g);
            bb[r] = sc_get<SC>(up ? mu.biases : m.biases, drow(r) * G + g);
        }
        int xp[P::SEG * 4];
#pragma unroll
        for (int j = 0; j < P::SEG; j++) {
            const uint4 u = *(const uint4 *)(xq + k * P::XB + (j ^ P::key(k)) * 16);
            xp[4 * j] = (int)u.x, xp[4 * j + 1] = (int)u.y, xp[4 * j + 2] = (int)u.z,
                   xp[4 * j + 3] = (int)u.w;
        }
        if constexpr (BITS == 4) { /* 32 inputs: x blocks 2k, 2k + 1 */
            const float2 st = *(const float2 *)(xstep + 2 * k);
            const float2 sm = *(const float2 *)(xsum + 2 * k);
            const float xs = sm.x + sm.y;
#pragma unroll
            for (int r = 0; r < R; r++) {
                int i0 = word_dot<4>(c[r].x, xp, 0);
                i0 = word_dot<4>(c[r].y, xp + 4, i0);
                int i1 = word_dot<4>(c[r].z, xp + 8, 0);
                i1 = word_dot<4>(c[r].w, xp + 12, i1);
                const float dot = fmaf(st.x, (float)i0, st.y * (float)i1);
                acc[r] = fmaf(s[r], dot, fmaf(bb[r], xs, acc[r]));
            }
        } else { /* 16 inputs: x block k */
            const float st = xstep[k], xs = xsum[k];
#pragma unroll
            for (int r = 0; r < R; r++) {
                int i0 = word_dot<8>(c[r].x, xp, 0);
                i0 = word_dot<8>(c[r].y, xp + 2, i0);
                i0 = word_dot<8>(c[r].z, xp + 4, i0);
                i0 = word_dot<8>(c[r].w, xp + 6, i0);
                acc[r] = fmaf(s[r], st * (float)i0, fmaf(bb[r], xs, acc[r]));
            }
        }
    }
    if constexpr (PAIR) {
#pragma unroll
        for (int j = 0; j < RW; j++) {
            float g = acc[2 * j], u = acc[2 * j + 1];
            for (int o = 16; o > 0; o >>= 1) {
                g += __shfl_xor_sync(0xffffffffu, g, o);
                u += __shfl_xor_sync(0xffffffffu, u, o);
            }
            const int64_t d = d0 + j;
            if (lane == 0 && d < m.D) {
                g += m.lbias ? cuda_load_f32(m.lbdt, m.lbias, d) : 0.0f;
                u += mu.lbias ? cuda_load_f32(mu.lbdt, mu.lbias, d) : 0.0f;
                m.y[d] = cuda_act1(a.act, g) * u;
            }
        }
    }
    double ss = 0.0;
    if constexpr (!PAIR) {
#pragma unroll
        for (int r = 0; r < R; r++) {
            float v = acc[r];
            for (int o = 16; o > 0; o >>= 1)
                v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0 && d0 + r < m.D)
                row_out(m, d0 + r, v + (m.lbias ? cuda_load_f32(m.lbdt, m.lbias, d0 + r) : 0.0f),
                        ss);
        }
    }
    return ss;
}

/* NORM's staging takes registers: 3 blocks a multiprocessor kept (<= 80,
 * measured with ptxas -v: no spills) where the plain kernel has 3 or 4;
 * minimum 0 = none given, the plain kernels compile as before */
template <int BITS, int SC, int R, bool PAIR, bool NORM>
__global__ void __launch_bounds__(Q16_THREADS, NORM && (PAIR || R == 2) ? 3 : 0)
    qgemv16_kernel(q16_args a) {
    typedef piece<BITS> P;
    extern __shared__ __align__(16) unsigned char smem[];
    const int64_t N = a.N, NP = N / P::IN;
    const q16_weight m = PAIR ? a.m[0] : weight_of(a, blockIdx.x);
    const q16_weight mu = PAIR ? a.m[1] : m; /* PAIR: odd rows r are up's */
    constexpr int RW = PAIR ? R / 2 : R;     /* rows of one weight a warp takes */
    const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    const int64_t d0 = ((int64_t)(blockIdx.x - m.blk0) * Q16_WARPS + warp) * RW;
    auto drow = [&](int r) -> int64_t { /* the weight row of the warp's row r (clamped) */
                                        const int64_t d = d0 + (PAIR ? r / 2 : r);
                                        return d < m.D ? d : m.D - 1;
    };

    /* first codes in flight before x is staged */
    const int64_t rowb = N * BITS / 128; /* 16-byte pieces a row */
    const uint4 *rows[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        rows[r] = (PAIR && (r & 1) ? mu.w : m.w) + drow(r) * rowb;
    uint4 c0[R];
    if (lane < NP)
#pragma unroll
        for (int r = 0; r < R; r++)
            c0[r] = __ldg(rows[r] + lane);
    cuda_pdl_trigger(); /* the next mat-vec may start its own code loads */
    cuda_pdl_wait();    /* launched early (NMLX_CUDA_PDL): x is ready from here */

    [[maybe_unused]] const float ninv = stage_x<BITS, NORM>(a, smem); /* NORM: 1 / rms(x + d) */
    __syncthreads();
    [[maybe_unused]] bool last = false; /* NORM: this block is the last to read x */
    if constexpr (NORM) {
        if (threadIdx.x == 0) {
            __threadfence();
            last = atomicAdd(a.done, 1u) == gridDim.x - 1;
        }
    }
    double ss = 0.0; /* Q16_R: lane 0's sum of squares of its updated rows */
    if (d0 < m.D) ss = rows_dot<BITS, SC, R, PAIR>(a, m, mu, d0, rows, c0, smem);
    if constexpr (NORM) norm_write_back(a, ninv, last);
    if (a.rsum) resid_sum_out<Q16_WARPS>(a.rsum, ss);
}

/* ---- v2 (the default; NMLX_CUDA_QGEMV16=v1 keeps the kernel above) ----
 * Persistent warps over rows: the grid is a few blocks a multiprocessor
 * (all resident, one wave), warp w of TW takes units (rows; PAIR: a gate
 * row and its up row) w, w + TW, ... Lane l reads, of each unit's row,
 * pieces l, l + 32, ... (KP = ceil(NP / 32) steps a row, pieces past the
 * row's end skipped: the steps of a row end on the same step in every lane)
 * in the order kernel v1 reads them, so each row's sums, their warp tree and
 * the outputs are v1's bit for bit. The lane's steps over its units form
 * one stream; a ring of DEP registers holds the codes and the raw scale
 * and bias of the next DEP steps: step p is consumed, then step p + DEP
 * loaded into its slot, so DEP 16-byte loads a lane (x RU) stay in flight
 * across row ends, and the first DEP are issued before x is staged. */

/* The raw bits of scale element i (converted at use: the ring holds loads
 * whose values have not arrived) */
template <int SC> __device__ __forceinline__ uint32_t sc_raw(const void *p, int64_t i) {
    if constexpr (SC == SCF32)
        return __ldg((const unsigned *)p + i);
    else
        return (uint32_t)__ldg((const unsigned short *)p + i);
}
template <int SC> __device__ __forceinline__ float sc_cvt(uint32_t u) {
    if constexpr (SC == SCF32)
        return __uint_as_float(u);
    else if constexpr (SC == SCF16)
        return __half2float(__ushort_as_half((unsigned short)u));
    else
        return __uint_as_float(u << 16);
}

/* The weight of unit u (v2, not PAIR): units numbered across the weights */
__device__ __forceinline__ q16_weight weight_at(const q16_args &a, int64_t u) {
    q16_weight m = a.m[0];
    if (a.n > 1 && u >= a.m[1].r0) m = a.m[1];
    if (a.n > 2 && u >= a.m[2].r0) m = a.m[2];
    return m;
}

/* Where a lane's loads stand: unit u, step i (piece lane + 32 i) */
template <int RU> struct q16_cursor {
    int64_t u;
    int i;
    const uint4 *w[RU];         /* the unit's rows of codes */
    const unsigned char *s[RU]; /* their scales (row start) */
    const unsigned char *b[RU]; /* their biases */
};

/* The rows of unit c.u: PAIR gate row u and up row u; else rows RU (u -
 * r0) + r of the unit's weight (a row past its end: its last, loaded but
 * not written) */
/* Row r of unit u of weight m (not PAIR): rows RU (u - r0) + r, or with
 * rope_kv folded into q or k (RU 2) the pair (i, i + half) of head h */
template <int RU>
__device__ __forceinline__ int64_t unit_row(const q16_args &a, const q16_weight &m, int64_t u,
                                            int r) {
    const int64_t ui = u - m.r0;
    if (RU == 2 && (m.fold == Q16_Q || m.fold == Q16_K) && a.rope.half) {
        const int64_t h = ui / a.rope.half, i = ui - h * a.rope.half;
        return h * a.rope.HD + i + r * a.rope.half;
    }
    return ui * RU + r;
}

template <int SC, int RU, bool PAIR>
__device__ __forceinline__ void cursor_rows(const q16_args &a, q16_cursor<RU> &c, int64_t rowb,
                                            int64_t G) {
    constexpr int ES = SC == SCF32 ? 4 : 2;
    const int64_t u = c.u < a.units ? c.u : a.units - 1; /* past the end: loads are skipped */
    q16_weight m = PAIR ? a.m[0] : weight_at(a, u);
#pragma unroll
    for (int r = 0; r < RU; r++) {
        if (PAIR && r == 1) m = a.m[1];
        const int64_t dr = PAIR ? u : unit_row<RU>(a, m, u, r);
        const int64_t d = dr < m.D ? dr : m.D - 1;
        c.w[r] = m.w + d * rowb;
        c.s[r] = (const unsigned char *)m.scales + d * G * ES;
        c.b[r] = (const unsigned char *)m.biases + d * G * ES;
    }
}

/* ASYNC: the ring's codes in shared memory instead (cp.async, a group a
 * step, wait_group DEP - 1 before a step is read: each lane reads only the
 * 16 bytes it copied), after x: DEP x RU x 512 bytes a warp; registers
 * keep only the raw scales, so DEP can be 16. */
template <int RU, int DEP> constexpr size_t q16_ring_bytes() {
    return (size_t)Q16_WARPS * DEP * RU * 512;
}

/* A unit's two outputs (y0, y1: rows d0, d1, bias added) where its weight
 * folds rope_kv in (lane 0; base: *a.rope.step or 0) */
__device__ __forceinline__ void fold_out(const q16_args &a, const q16_weight &m, int64_t d0,
                                         int64_t d1, float y0, float y1, int64_t base) {
    const q16_rope &f = a.rope;
    if (m.fold != Q16_V && f.half) {
        const int64_t i = d0 % f.HD;
        cuda_rope_pair(y0, y1, (double)(f.pos0 + base), f.freqs[i], f.mscale, &y0, &y1);
    }
    if (m.fold == Q16_Q) {
        m.y[d0] = y0, m.y[d1] = y1;
        return;
    }
    float *c = m.fold == Q16_K ? f.kc : f.vc;
    const int64_t crow = f.row0 + base;
    c[(d0 / f.HD * f.cap + crow) * f.HD + d0 % f.HD] = y0;
    c[(d1 / f.HD * f.cap + crow) * f.HD + d1 % f.HD] = y1;
}

/* NORM (v2 as v1): rmsnorm(x + d) staged, x + d and y written by the block
 * that counts itself last (norm_write_back) */
template <int BITS, int SC, bool PAIR, int DEP, bool ASYNC, int RR, bool NORM = false>
__global__ void __launch_bounds__(Q16_THREADS, 2) qgemv16v2_kernel(q16_args a) {
    typedef piece<BITS> P;
    constexpr int RU = PAIR ? 2 : RR; /* rows a unit */
    extern __shared__ __align__(16) unsigned char smem[];
    const int64_t N = a.N, NB = N / 16, NP = N / P::IN, U = a.units;
    const int KP = (int)((NP + 31) / 32);
    const int64_t rowb = N * BITS / 128, G = NP >> a.gshift;
    unsigned char *xq = smem;               /* N int16, swizzled pieces */
    float *xstep = (float *)(smem + N * 2); /* NB steps */
    float *xsum = xstep + NB;               /* NB sums */
    const int lane = threadIdx.x & 31;
    const int64_t TW = (int64_t)gridDim.x * Q16_WARPS;
    const int64_t gw = (int64_t)blockIdx.x * Q16_WARPS + threadIdx.x / 32;
    const int64_t steps = gw < U ? ((U - 1 - gw) / TW + 1) * KP : 0; /* this warp's */

    uint4 rc[ASYNC ? 1 : DEP][RU];
    [[maybe_unused]] unsigned char *ring = /* ASYNC: this lane's 16 bytes of slot 0, row 0 */
        smem + N * 2 + NB * 8 + (size_t)(threadIdx.x / 32) * (DEP * RU * 512) + lane * 16;
    uint32_t rs[DEP][RU], rb[DEP][RU];
    q16_cursor<RU> lc; /* the loads' cursor */
    lc.u = gw, lc.i = 0;
    cursor_rows<SC, RU, PAIR>(a, lc, rowb, G);
    /* step p's loads into slot j (nothing past the warp's units or a row) */
    auto load = [&](int j) {
        const int64_t k = lane + 32 * (int64_t)lc.i;
        const bool ok = lc.u < U && k < NP;
        const int64_t g = k >> a.gshift;
#pragma unroll
        for (int r = 0; r < RU; r++) {
            if constexpr (ASYNC) /* nothing read where !ok: zeros (any valid address) */
                q16_cp16(ring + (j * RU + r) * 512, ok ? lc.w[r] + k : lc.w[r], ok ? 16 : 0);
            else
                rc[j][r] = ok ? ld_stream(lc.w[r] + k) : make_uint4(0, 0, 0, 0);
            rs[j][r] = ok ? sc_raw<SC>(lc.s[r], g) : 0u;
            rb[j][r] = ok ? sc_raw<SC>(lc.b[r], g) : 0u;
        }
        if constexpr (ASYNC) q16_commit(); /* one group a step, empty ones too */
        if (++lc.i == KP) {
            lc.i = 0;
            lc.u += TW;
            cursor_rows<SC, RU, PAIR>(a, lc, rowb, G);
        }
    };
#pragma unroll
    for (int j = 0; j < DEP; j++)
        load(j);
    cuda_pdl_trigger(); /* the next mat-vec may start its own code loads */
    cuda_pdl_wait();    /* launched early (NMLX_CUDA_PDL): x is ready from here */

    [[maybe_unused]] const float ninv = stage_x<BITS, NORM>(a, smem); /* NORM: 1 / rms(x + d) */
    __syncthreads();
    [[maybe_unused]] bool last = false; /* NORM: this block is the last to read x */
    if constexpr (NORM) {
        if (threadIdx.x == 0) {
            __threadfence();
            last = atomicAdd(a.done, 1u) == gridDim.x - 1;
        }
    }
    /* a recorded step's position (read after the wait: written by the step's upload) */
    const int64_t rbase = !PAIR && RR == 2 && a.rope.step ? *a.rope.step : 0;

    float acc[RU];
#pragma unroll
    for (int r = 0; r < RU; r++)
        acc[r] = 0.0f;
    int64_t cu = gw; /* the consumed step's unit and step */
    int ci = 0;
    double ss = 0.0; /* Q16_R: lane 0's sum of squares of its updated rows */
    for (int64_t p0 = 0; p0 < steps; p0 += DEP) {
#pragma unroll
        for (int j = 0; j < DEP; j++) {
            if (p0 + j < steps) {                         /* warp-uniform */
                if constexpr (ASYNC) q16_wait<DEP - 1>(); /* step p0 + j's group landed */
                const int64_t k = lane + 32 * (int64_t)ci;
                if (k < NP) {
                    int xp[P::SEG * 4];
#pragma unroll
                    for (int e = 0; e < P::SEG; e++) {
                        const uint4 u = *(const uint4 *)(xq + k * P::XB + (e ^ P::key(k)) * 16);
                        xp[4 * e] = (int)u.x, xp[4 * e + 1] = (int)u.y, xp[4 * e + 2] = (int)u.z,
                               xp[4 * e + 3] = (int)u.w;
                    }
                    if constexpr (BITS == 4) { /* 32 inputs: x blocks 2k, 2k + 1 */
                        const float2 st = *(const float2 *)(xstep + 2 * k);
                        const float2 sm = *(const float2 *)(xsum + 2 * k);
                        const float xs = sm.x + sm.y;
#pragma unroll
                        for (int r = 0; r < RU; r++) {
                            uint4 c;
                            if constexpr (ASYNC)
                                c = *(const uint4 *)(ring + (j * RU + r) * 512);
                            else
                                c = rc[j][r];
                            int i0 = word_dot<4>(c.x, xp, 0);
                            i0 = word_dot<4>(c.y, xp + 4, i0);
                            int i1 = word_dot<4>(c.z, xp + 8, 0);
                            i1 = word_dot<4>(c.w, xp + 12, i1);
                            const float dot = fmaf(st.x, (float)i0, st.y * (float)i1);
                            acc[r] = fmaf(sc_cvt<SC>(rs[j][r]), dot,
                                          fmaf(sc_cvt<SC>(rb[j][r]), xs, acc[r]));
                        }
                    } else { /* 16 inputs: x block k */
                        const float st = xstep[k], xs = xsum[k];
#pragma unroll
                        for (int r = 0; r < RU; r++) {
                            uint4 c;
                            if constexpr (ASYNC)
                                c = *(const uint4 *)(ring + (j * RU + r) * 512);
                            else
                                c = rc[j][r];
                            int i0 = word_dot<8>(c.x, xp, 0);
                            i0 = word_dot<8>(c.y, xp + 2, i0);
                            i0 = word_dot<8>(c.z, xp + 4, i0);
                            i0 = word_dot<8>(c.w, xp + 6, i0);
                            acc[r] = fmaf(sc_cvt<SC>(rs[j][r]), st * (float)i0,
                                          fmaf(sc_cvt<SC>(rb[j][r]), xs, acc[r]));
                        }
                    }
                }
                if (++ci == KP) { /* the unit's rows are summed: v1's tree and outputs */
                    if constexpr (PAIR) {
                        const q16_weight &m = a.m[0], &mu = a.m[1];
                        float g = acc[0], u = acc[1];
                        for (int o = 16; o > 0; o >>= 1) {
                            g += __shfl_xor_sync(0xffffffffu, g, o);
                            u += __shfl_xor_sync(0xffffffffu, u, o);
                        }
                        if (lane == 0) {
                            g += m.lbias ? cuda_load_f32(m.lbdt, m.lbias, cu) : 0.0f;
                            u += mu.lbias ? cuda_load_f32(mu.lbdt, mu.lbias, cu) : 0.0f;
                            m.y[cu] = cuda_act1(a.act, g) * u;
                        }
                    } else {
                        const q16_weight m = weight_at(a, cu);
                        float v[RU];
#pragma unroll
                        for (int r = 0; r < RU; r++) {
                            v[r] = acc[r];
                            for (int o = 16; o > 0; o >>= 1)
                                v[r] += __shfl_xor_sync(0xffffffffu, v[r], o);
                            const int64_t d = unit_row<RU>(a, m, cu, r);
                            if (lane == 0 && d < m.D)
                                v[r] += m.lbias ? cuda_load_f32(m.lbdt, m.lbias, d) : 0.0f;
                        }
                        if constexpr (RU == 2) {
                            if (lane == 0 && m.fold && m.fold != Q16_R)
                                fold_out(a, m, unit_row<RU>(a, m, cu, 0), unit_row<RU>(a, m, cu, 1),
                                         v[0], v[1], rbase);
                        }
#pragma unroll
                        for (int r = 0; r < RU; r++) {
                            const int64_t d = unit_row<RU>(a, m, cu, r);
                            if (lane == 0 && d < m.D && (!m.fold || m.fold == Q16_R))
                                row_out(m, d, v[r], ss);
                        }
                    }
#pragma unroll
                    for (int r = 0; r < RU; r++)
                        acc[r] = 0.0f;
                    ci = 0;
                    cu += TW;
                }
            }
            load(j); /* step p0 + j + DEP */
        }
    }
    if constexpr (ASYNC) q16_wait<0>(); /* no copy into shared memory outlives the block */
    if constexpr (NORM) norm_write_back(a, ninv, last);
    if (a.rsum) resid_sum_out<Q16_WARPS>(a.rsum, ss);
}

/* Host side, shared with the emulation: v1's tiles (blk0 of each weight,
 * a.tiles) and v2's units (r0 of each weight, a.units) */
static inline void q16_v1_tiles(q16_args &a, int R, bool pair) {
    if (pair) {
        a.m[0].blk0 = a.m[1].blk0 = 0;
        a.tiles = (unsigned)((a.m[0].D + Q16_WARPS * (R / 2) - 1) / (Q16_WARPS * (R / 2)));
        return;
    }
    unsigned blk = 0;
    for (int i = 0; i < a.n; i++) {
        a.m[i].blk0 = blk;
        blk += (unsigned)((a.m[i].D + Q16_WARPS * R - 1) / (Q16_WARPS * R));
    }
    a.tiles = blk;
}
static inline void q16_v2_units(q16_args &a, bool pair, int rr = 1) {
    if (pair) {
        a.m[0].r0 = a.m[1].r0 = 0;
        a.units = a.m[0].D;
        return;
    }
    int64_t u = 0;
    for (int i = 0; i < a.n; i++) {
        a.m[i].r0 = u;
        u += (a.m[i].D + rr - 1) / rr;
    }
    a.units = u;
}
/* v2's shared memory: x as int16, NB steps and sums (as v1) */
static inline size_t q16_smem(int64_t N) { return (size_t)N * 2 + (size_t)(N / 16) * 8; }

} // namespace

#endif
