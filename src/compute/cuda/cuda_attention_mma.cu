/* Prefill attention on the tensor cores (FlashAttention-2 style), same
 * contract as `attention` (backend.h) and the tiled kernel
 * (cuda_attention_tiled.cu): causal with q_pos and n_kv, sliding window,
 * soft-capping, sinks, GQA, zeros for a query that sees no key.
 *
 * Blocks: one per (head, 64 queries); 4 warps, each owning 16 query rows.
 * The block's queries are staged once in shared memory, then it walks the
 * keys its queries see in tiles of TK (64; 32 for heads over 128, to fit
 * shared memory), K and V rows converted from f32 while staging. Per tile a
 * warp computes S = Q K^T (16 x TK) with mma.m16n8k16, scales, soft-caps
 * and masks it in registers, updates its rows' online softmax (running max
 * m, sum l) and adds P V (16 x HD) into its accumulators, also with mma:
 * S and O never leave the registers. A warp skips a tile that none of its
 * rows sees (windows, a diagonal off the tile grid) and the 16-key steps
 * past its rows' last key (most of the diagonal tile's upper triangle).
 *
 * Precision: every f32 operand x is written as a sum of two f16, x = hi +
 * lo (hi = f16(x), lo = f16(x - hi), RNE; x - hi is exact in f32), and
 * each product as hi*hi + hi*lo + lo*hi (three mma; lo*lo dropped), the
 * products exact in f32, the sums f32. f16 keeps 11 bits where bf16 keeps
 * 8, so a pair holds 22 bits (|x - hi - lo| <= 2^-22 |x|) but f16's range
 * is small: each row of Q, K and V is staged times a power of two that
 * puts its max |x| in [2^14, 2^15) (exact), and elements below 2^-17 of
 * their row's max, where lo is subnormal, keep 2^-39 of that max. S's row
 * and column factors are undone in f32 before the softmax. For P V, p_j
 * goes in as p_j vun_j 2^14 / u (vun_j = V row j's unscale, u the largest
 * of the tiles so far: <= 2^14), the accumulator holds O 2^14 / u and is
 * rescaled (a power of two) with the softmax's alpha when u grows.
 * So each product is within ~3 x 2^-22 (7e-7) of f32's, less on average:
 * the output's error is f32's order (the emulation, tests/cuda/
 * attn_mma_emu.cpp: 1e-7 to 4e-7 of max|out| on uniform inputs, 1.4e-6
 * with scores of +-40, rows of K and V spread over e^+-7). bf16 pairs
 * (2^-18 a term) measured 5e-6 and 2.6e-5 there; plain bf16 would be 2^-8.
 * tests/cuda allows 2e-5 of max|out| (the f32 kernels 1e-5) and prints
 * the worst seen: far above 1e-6 on a GPU would point at the tensor
 * cores' accumulation or a bug.
 *
 * Shared memory (f16, rows padded by 8 so that the 8 rows an ldmatrix
 * reads start in different banks): Q hi/lo [64][HD + 8], K and V hi/lo
 * [TK][HD + 8], and the rows' unscale factors: 102 KiB at HD 128 (two
 * blocks an SM on an H100), 132 KiB at HD 256, 55 KiB at HD 64.
 *
 * The default for prefill (H100: Llama-3.1-8B 4-bit pp512 1.20x the tiled
 * kernel's tokens/s end to end, Llama-3.2-1B bf16 1.23x; every fixture
 * passes); NMLX_CUDA_ATTN_MMA=0 (or nmlx_cuda_set_attn_mma(0)) turns it
 * off. Where it does not apply (HD not a multiple of 16 or over 256,
 * unaligned pointers) the tiled kernel runs. */
#ifndef NMLX_ATTN_MMA_EMU /* tests/cuda/attn_mma_emu.cpp: this kernel on the CPU */
#include "compute/cuda/cuda_internal.h"
#endif

#include <math.h>
#include <stdlib.h>
#include <string.h>

namespace {

enum { MQ = 64 /* queries a block */, MW = 4 /* warps */, MT = 32 * MW, PAD = 8 };

typedef uint16_t b16; /* f16 bits in shared memory */

/* Fragment layouts of mma.m16n8k16 (lane = 4 g + c; g = lane / 4, c = lane % 4;
 * each 32-bit register holds two f16, the lower column in the low half):
 *   A (16 x 16, row major) a[0]: row g, cols 2c, 2c+1   a[1]: row g+8, same cols
 *                          a[2]: row g, cols 2c+8, +9   a[3]: row g+8, same cols
 *   B (16 x 8, k x n)      b[0]: k 2c, 2c+1 of col g     b[1]: k 2c+8, 2c+9 of col g
 *   C (16 x 8, f32)        c[0], c[1]: row g, cols 2c, 2c+1   c[2], c[3]: row g+8
 * ldmatrix.x4 loads four 8 x 8 16-bit matrices, lanes 8i..8i+7 giving the row
 * addresses of matrix i; each lane receives (row g, cols 2c, 2c+1) of each
 * (.trans: rows 2c, 2c+1 of col g). So Q rows give A, K rows (key = n,
 * dim = k) give B directly, V rows (key = k, dim = n) give B through
 * .trans, and the C fragments of S for keys 16j..16j+15, as f16 pairs,
 * are the A fragments of P for k-step j (no trip through shared memory). */
#ifndef NMLX_ATTN_MMA_EMU /* the emulation supplies these three */
__device__ __forceinline__ void mma_f16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldsm_x4(uint32_t *r, const b16 *p) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

__device__ __forceinline__ void ldsm_x4_trans(uint32_t *r, const b16 *p) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}
#endif

/* c += (ah + al)(bh + bl) without al bl: the split product, small terms first */
__device__ __forceinline__ void mma3(float *c, const uint32_t *ah, const uint32_t *al, uint32_t bh0,
                                     uint32_t bh1, uint32_t bl0, uint32_t bl1) {
    mma_f16(c, ah, bl0, bl1);
    mma_f16(c, al, bh0, bh1);
    mma_f16(c, ah, bh0, bh1);
}

__device__ __forceinline__ uint32_t bits(__half2 v) { return *(uint32_t *)&v; }

/* (x0, x1) as packed f16 hi and lo pairs, x0 in the low halves */
__device__ __forceinline__ void split2(float x0, float x1, uint32_t *hi, uint32_t *lo) {
    const __half2 h = __floats2half2_rn(x0, x1);
    const float2 hf = __half22float2(h);
    *hi = bits(h);
    *lo = bits(__floats2half2_rn(x0 - hf.x, x1 - hf.y)); /* x - hi: exact in f32 */
}

/* Rows [0, R) of a tile into hi / lo ([R][LD]): row r from src + r *
 * stride (HD floats, 16-byte aligned), zeros for r >= n (keys past the
 * block's range may be unwritten cache rows: 0 * NaN would poison P V);
 * the row times 2^k, k putting its max |x| in [2^14, 2^15), as f16 pairs,
 * and unscale[r] = 2^-k. Warp w takes rows w, w + MW, ..., its lanes over
 * a row's float4s (NC a lane: 2 at D = 256); a batch of RB rows is loaded
 * before any is converted, so the loads' latency is paid once a batch. */
template <int R, int D>
__device__ __forceinline__ void stage(b16 *hi, b16 *lo, float *unscale, int LD,
                                      const float *__restrict__ src, int64_t stride, int n,
                                      int HD) {
    constexpr int NC = D > 128 ? 2 : 1, RB = 8 / NC, RW = R / MW;
    static_assert(RW % RB == 0, "rows a warp: whole batches");
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll 1 /* one batch's registers at a time */
    for (int b = 0; b < RW; b += RB) {
        float4 x[RB][NC];
#pragma unroll
        for (int i = 0; i < RB; i++) {
            const int r = warp + MW * (b + i);
#pragma unroll
            for (int k = 0; k < NC; k++) {
                const int d = (lane + 32 * k) * 4;
                x[i][k] = r < n && d < HD ? __ldg((const float4 *)(src + r * stride + d))
                                          : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
        }
#pragma unroll
        for (int i = 0; i < RB; i++) {
            const int r = warp + MW * (b + i);
            float mx = 0.0f;
#pragma unroll
            for (int k = 0; k < NC; k++)
                mx = fmaxf(mx, fmaxf(fmaxf(fabsf(x[i][k].x), fabsf(x[i][k].y)),
                                     fmaxf(fabsf(x[i][k].z), fabsf(x[i][k].w))));
            for (int o = 16; o > 0; o >>= 1)
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            /* mx in [2^(e-127), 2^(e-126)) for its biased exponent e (0 and
             * subnormals: e = 0, k clamped); the factors from their bits */
            const int e = (__float_as_int(mx) >> 23) & 0xff;
            const int k2 = 141 - e < -100 ? -100 : 141 - e > 100 ? 100 : 141 - e;
            const float mul = __int_as_float((127 + k2) << 23);
            if (lane == 0) unscale[r] = __int_as_float((127 - k2) << 23);
#pragma unroll
            for (int k = 0; k < NC; k++) {
                const int d = (lane + 32 * k) * 4;
                if (d >= HD) break;
                uint2 h, l;
                split2(x[i][k].x * mul, x[i][k].y * mul, &h.x, &l.x);
                split2(x[i][k].z * mul, x[i][k].w * mul, &h.y, &l.y);
                *(uint2 *)(hi + r * LD + d) = h;
                *(uint2 *)(lo + r * LD + d) = l;
            }
        }
    }
}

/* keys query t sees: [*lo, *hi] (empty when *lo > *hi) */
__device__ __forceinline__ void visible(const nmlx_attn_args &a, int64_t t, int64_t *lo,
                                        int64_t *hi) {
    const int64_t qi = a.q_pos + t;
    *hi = qi < a.n_kv - 1 ? qi : a.n_kv - 1;
    *lo = a.window > 0 ? qi - a.window + 1 : 0;
    if (*lo < 0) *lo = 0;
}

/* D: head size rounded up to the template's (64, 128, 256; a.HD itself is
 * any multiple of 16 up to D: register arrays are sized by D, loops stop at
 * a.HD). TK: keys a tile. */
template <int D, int TK>
__global__ void __launch_bounds__(MT) attention_mma_kernel(nmlx_attn_args a) {
    extern __shared__ __align__(16) unsigned char sm[];
    const int HD = (int)a.HD, LD = HD + PAD;
    b16 *qh = (b16 *)sm, *ql = qh + MQ * LD;
    b16 *kh = ql + MQ * LD, *kl = kh + TK * LD;
    b16 *vh = kl + TK * LD, *vl = vh + TK * LD;
    float *qun = (float *)(vl + TK * LD), *kun = qun + MQ, *vun = kun + TK; /* rows' unscales */
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, c = lane % 4;
    /* the last query tiles see the most keys: they go first */
    const int64_t h = blockIdx.x, t0 = (int64_t)(gridDim.y - 1 - blockIdx.y) * MQ;
    const int64_t group = a.H / a.KVH, kvh = h / group;
    const float *kb = a.k + kvh * a.cap * HD, *vb = a.v + kvh * a.cap * HD;

    /* this thread's two rows (g and g + 8 of its warp): visible keys; a row
     * past T sees nothing */
    int64_t rlo[2], rhi[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int64_t t = t0 + warp * 16 + g + 8 * i;
        if (t < a.T)
            visible(a, t, &rlo[i], &rhi[i]);
        else
            rlo[i] = 0, rhi[i] = -1;
    }
    /* the warp's rows wt0..wt1: keys some of them see [wlo, whi], keys all
     * of them see [alo, ahi] (a tile inside needs no mask) */
    const int64_t wt0 = t0 + warp * 16, wt1 = wt0 + 15 < a.T - 1 ? wt0 + 15 : a.T - 1;
    int64_t wlo, whi, alo, ahi, x;
    visible(a, wt0, &wlo, &ahi);
    visible(a, wt1, &alo, &whi);
    if (wt0 >= a.T) whi = -1;
    /* the block's: from its first row's lo to its last row's hi */
    int64_t blo, bhi;
    visible(a, t0, &blo, &x);
    visible(a, t0 + MQ - 1 < a.T - 1 ? t0 + MQ - 1 : a.T - 1, &x, &bhi);

    const int nq = (int)(a.T - t0 < MQ ? a.T - t0 : MQ);
    stage<MQ, D>(qh, ql, qun, LD, a.q + (t0 * a.H + h) * HD, a.H * HD, nq, HD);
    __syncthreads();
    /* S's factor for rows g, g + 8: their unscale times the softmax scale */
    const float qf[2] = {qun[warp * 16 + g] * a.scale, qun[warp * 16 + g + 8] * a.scale};

    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; i++)
        o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    /* running max and sum of rows g, g + 8; l is this lane's share (its
     * columns), added over the 4 lanes of a row at the end: the sink's 1
     * goes to lane c = 0 only */
    float m[2], l[2];
    m[0] = m[1] = a.sinks ? a.sinks[h] : -INFINITY;
    l[0] = l[1] = a.sinks && c == 0 ? 1.0f : 0.0f;
    /* o holds O / (u 2^-14): u = the largest V row unscale of the tiles so
     * far (0 before the first), see P V below */
    float u = 0.0f;
    const int r8 = lane % 8, m1 = (lane / 8) % 2, m2 = lane / 16; /* ldmatrix row, matrix bits */

    for (int64_t j0 = blo; j0 <= bhi; j0 += TK) {
        const int n = (int)(bhi - j0 + 1 < TK ? bhi - j0 + 1 : TK);
        __syncthreads(); /* the previous tile is consumed */
        stage<TK, D>(kh, kl, kun, LD, kb + j0 * HD, HD, n, HD);
        stage<TK, D>(vh, vl, vun, LD, vb + j0 * HD, HD, n, HD);
        __syncthreads();
        if (j0 > whi || j0 + n - 1 < wlo) continue; /* none of the warp's rows sees these keys */

        /* S = Q K^T: 16 rows x TK keys */
        float s[TK / 8][4];
#pragma unroll
        for (int i = 0; i < TK / 8; i++)
            s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ks++) {
            if (ks * 16 >= HD) break;
            uint32_t ah[4], al[4];
            const int qoff = (warp * 16 + m1 * 8 + r8) * LD + ks * 16 + m2 * 8;
            ldsm_x4(ah, qh + qoff);
            ldsm_x4(al, ql + qoff);
#pragma unroll
            for (int np = 0; np < TK / 16; np++) { /* keys 16 np .. 16 np + 15: two n-tiles */
                if (j0 + np * 16 > whi) break; /* past every row's last key: masked below */
                uint32_t bh[4], bl[4];
                const int koff = (np * 16 + m2 * 8 + r8) * LD + ks * 16 + m1 * 8;
                ldsm_x4(bh, kh + koff);
                ldsm_x4(bl, kl + koff);
                mma3(s[2 * np], ah, al, bh[0], bh[1], bl[0], bl[1]);
                mma3(s[2 * np + 1], ah, al, bh[2], bh[3], bl[2], bl[3]);
            }
        }

        /* unscale (powers of two: exact) and scale, soft-cap, mask; the
         * rows' new max (over the quad's lanes) */
        const bool all = j0 >= alo && j0 + TK - 1 <= ahi; /* every key seen by every row */
        float tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < TK / 8; nt++) {
            const float2 ku = *(const float2 *)(kun + nt * 8 + 2 * c);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float v = s[nt][e] * (e & 1 ? ku.y : ku.x) * qf[e / 2];
                if (a.softcap > 0) v = tanhf(v / a.softcap) * a.softcap;
                if (!all) {
                    const int64_t key = j0 + nt * 8 + 2 * c + (e & 1);
                    if (key < rlo[e / 2] || key > rhi[e / 2]) v = -INFINITY;
                }
                s[nt][e] = v;
                tmax[e / 2] = fmaxf(tmax[e / 2], v);
            }
        }
        /* P V's scale: V row j is staged times 2^k_j (vun[j] = 2^-k_j), so p_j
         * goes in as p_j vun[j] / u 2^14 <= 2^14 (f16 range, and lo's
         * subnormals 2^-39 below the largest term); u only grows, o is
         * rescaled by u_old / u (a power of two: exact) with alpha */
        float un = u;
        for (int j = lane; j < TK; j += 32)
            un = fmaxf(un, vun[j]);
        for (int w = 16; w > 0; w >>= 1)
            un = fmaxf(un, __shfl_xor_sync(0xffffffffu, un, w));
        const float rescale = u / un, pin = 16384.0f / un;
        u = un;
        float alpha[2], mn[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            tmax[i] = fmaxf(tmax[i], __shfl_xor_sync(0xffffffffu, tmax[i], 1));
            tmax[i] = fmaxf(tmax[i], __shfl_xor_sync(0xffffffffu, tmax[i], 2));
            mn[i] = fmaxf(m[i], tmax[i]);
            /* mn = -inf: nothing seen yet (no sink): everything stays zero */
            alpha[i] = m[i] == -INFINITY ? 0.0f : expf(m[i] - mn[i]);
            m[i] = mn[i];
            l[i] *= alpha[i];
        }
#pragma unroll
        for (int nt = 0; nt < TK / 8; nt++) {
            const float2 vu = *(const float2 *)(vun + nt * 8 + 2 * c);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float p = mn[e / 2] == -INFINITY ? 0.0f : expf(s[nt][e] - mn[e / 2]);
                l[e / 2] += p;
                s[nt][e] = p * ((e & 1 ? vu.y : vu.x) * pin);
            }
        }
        const float f0 = alpha[0] * rescale, f1 = alpha[1] * rescale;
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) {
            o[dt][0] *= f0, o[dt][1] *= f0;
            o[dt][2] *= f1, o[dt][3] *= f1;
        }

        /* O += P V: P's A fragments straight from S's C fragments */
#pragma unroll
        for (int kk = 0; kk < TK / 16; kk++) {
            if (j0 + kk * 16 > whi) break; /* keys past every row's last: p = 0 */
            uint32_t ph[4], pl[4];
            split2(s[2 * kk][0], s[2 * kk][1], &ph[0], &pl[0]);
            split2(s[2 * kk][2], s[2 * kk][3], &ph[1], &pl[1]);
            split2(s[2 * kk + 1][0], s[2 * kk + 1][1], &ph[2], &pl[2]);
            split2(s[2 * kk + 1][2], s[2 * kk + 1][3], &ph[3], &pl[3]);
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) { /* dims 16 dp .. 16 dp + 15: two n-tiles */
                if (dp * 16 >= HD) break;
                uint32_t bh[4], bl[4];
                const int voff = (kk * 16 + m1 * 8 + r8) * LD + dp * 16 + m2 * 8;
                ldsm_x4_trans(bh, vh + voff);
                ldsm_x4_trans(bl, vl + voff);
                mma3(o[2 * dp], ph, pl, bh[0], bh[1], bl[0], bl[1]);
                mma3(o[2 * dp + 1], ph, pl, bh[2], bh[3], bl[2], bl[3]);
            }
        }
    }

#pragma unroll
    for (int i = 0; i < 2; i++) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int64_t t = wt0 + g + 8 * i;
        if (t >= a.T) continue;
        /* no key: zeros; else o's u 2^-14 over l (u / l first: the scales
         * are far from 1, their product stays a power of two times 1/l) */
        const float inv = rlo[i] <= rhi[i] && l[i] > 0 ? u / l[i] * (1.0f / 16384.0f) : 0.0f;
        float *out = a.out + (t * a.H + h) * HD + 2 * c;
#pragma unroll
        for (int dt = 0; dt < D / 8; dt++) {
            if (dt * 8 >= HD) break;
            *(float2 *)(out + dt * 8) = make_float2(o[dt][2 * i] * inv, o[dt][2 * i + 1] * inv);
        }
    }
}

} // namespace

#ifndef NMLX_ATTN_MMA_EMU
namespace {

int mma_mode = -1;           /* NMLX_CUDA_ATTN_MMA=0 turns it off */
unsigned long long launches; /* test hook: calls that ran the kernel */

/* Launches attention_mma_kernel<D, TK>; false if its shared memory cannot
 * be had. The opt-in above 48 KiB is a function attribute of each device,
 * raised once per instance and device (GPUs past the 16th ask every time). */
template <int D, int TK> bool launch(nmlx_backend *be, const nmlx_attn_args *a) {
    const size_t shmem = (size_t)(MQ + 2 * TK) * 2 * (size_t)(a->HD + PAD) * sizeof(b16) +
                         (size_t)(MQ + 2 * TK) * sizeof(float);
    static size_t raised_on[16];
    const int dev = cuda_of(be)->device;
    size_t *raised = dev >= 0 && dev < 16 ? &raised_on[dev] : NULL;
    if (shmem > 48 * 1024 && (!raised || shmem > *raised)) {
        if (cudaFuncSetAttribute(attention_mma_kernel<D, TK>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)shmem) != cudaSuccess) {
            cudaGetLastError();
            return false;
        }
        if (raised) *raised = shmem;
    }
    const dim3 grid((unsigned)a->H, (unsigned)((a->T + MQ - 1) / MQ));
    attention_mma_kernel<D, TK><<<grid, MT, shmem, cuda_of(be)->stream>>>(*a);
    nmlx_cuda_note(be, cudaGetLastError());
    launches++;
    return true;
}

} // namespace

extern "C" void nmlx_cuda_set_attn_mma(int on) { mma_mode = on ? 1 : 0; }

extern "C" unsigned long long nmlx_cuda_attn_mma_launches(void) { return launches; }

bool nmlx_cuda_attention_mma(nmlx_backend *be, const nmlx_attn_args *a) {
    if (mma_mode < 0) {
        const char *e = getenv("NMLX_CUDA_ATTN_MMA");
        mma_mode = !(e && !strcmp(e, "0"));
    }
    if (!mma_mode || a->T < 2 || a->HD % 16 || a->HD > 256 || a->KVH <= 0 || a->H % a->KVH ||
        a->kv_dtype != NMLX_DT_F32)
        return false;
    if (((uintptr_t)a->q | (uintptr_t)a->k | (uintptr_t)a->v | (uintptr_t)a->out) % 16)
        return false; /* float4 loads, float2 stores */
    if (a->HD <= 64) return launch<64, 64>(be, a);
    if (a->HD <= 128) return launch<128, 64>(be, a);
    return launch<256, 32>(be, a);
}
#endif
