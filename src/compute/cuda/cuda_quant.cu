/* Quantized weights on the GPU (MLX affine 2/3/4/5/6/8-bit at group 32/64/128
 * with F32/F16/BF16 scales, and MXFP4; formats in docs/quantization.md and
 * compute/quant.h). Nothing is ever dequantized to a full copy: every kernel
 * decodes the packed codes it reads.
 *
 * Every row's bit stream is read in chunks of 32 inputs (BITS u32 words):
 * group sizes are multiples of 32, so one chunk lies in one group and
 *   W[d, k] = s[d, g] * q[d, k] + b[d, g]  =>
 *   sum_{k in chunk} W[d, k] x[k] = s * sum q x + b * sum x.
 * (MXFP4: W = e2m1(q) * 2^(e - 127), no bias.)
 *
 *  - decode (T == 1), qgemv_kernel: y[D] = W[D, N] x[N]; a warp takes
 *    QG_ROWS rows, each lane one chunk at a time (the warp reads consecutive
 *    chunks: coalesced 8/16/32-byte loads), x chunk loaded once for all rows;
 *    f32 accumulation as the CPU reference.
 *  - batched decode (1 < T <= 8), qgemv_rows_kernel: the mat-vec for T rows
 *    of x, codes read and decoded once for all rows; each row's sums as
 *    qgemv_kernel's, so equal to that token alone bit for bit
 *    (NMLX_CUDA_QGEMV_T=1 sends T > 1 to the mat-mat instead);
 *  - prefill (T > 8): by default cuda_qgemm.cu (cuBLAS GEMMs on row chunks
 *    of W dequantized to f16 hi + lo: 2.2-2.4x qmm_kernel's prefill on an
 *    H100, exact to ~1e-6; NMLX_CUDA_QMM=fused: cuda_qmm_fused.cu, the
 *    codes decoded inside one kernel); qmm_kernel below where NMLX_CUDA_QMM=mma or
 *    bf16 asks for it or that path's scratch cannot be had: y[T, D] = x[T, N] @ W[D, N]^T on the
 * tensor cores (mma.sync m16n8k16 bf16, f32 accumulate). A block computes a 64 (rows of W) x 128
 * (tokens) tile; per 32-input chunk it decodes the codes q into shared memory as bf16 (integers <=
 * 255: exact), splits x into bf16 hi + lo (x = hi + lo to ~2^-16), multiplies q by both, and
 *    applies the group's scale and bias to the chunk's f32 partial sums. So
 *    the result matches the f32 reference to ~1e-5, not bf16 rounding.
 *    NMLX_CUDA_QMM=bf16 drops the lo half (x rounded to bf16: half the
 *    tensor-core work, as cuBLAS bf16 prefill rounds x).
 *  - embed: one block per token dequantizes its row. */
#include "compute/cuda/cuda_backend.h"
#include "compute/cuda/cuda_internal.h"
#include "compute/cuda/cuda_qdecode.h"
#include "compute/cuda/cuda_qgemv16.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* decoding helpers: cuda_qdecode.h */

/* ---- decode mat-vec ---- */

/* scale storage templates (SC_F32 ... SC_E8M0, sc_load, sc_f32): cuda_qdecode.h */

enum { QG_WARPS = 4 };

__device__ __forceinline__ float qwarp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* sum_i q_i * xv[i] over the 8 codes in v (affine: integers; MXFP4: E2M1
 * values * 2^-14) */
template <int BITS, bool MX> __device__ __forceinline__ float dot8(uint64_t v, const float *xv) {
    float dot = 0.0f;
    if (!MX && BITS == 4) {
        const uint32_t w = (uint32_t)v, lo = w & 0x0F0F0F0Fu, hi = (w >> 4) & 0x0F0F0F0Fu;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            dot = fmaf(byte_f32(lo, j), xv[2 * j], dot);
            dot = fmaf(byte_f32(hi, j), xv[2 * j + 1], dot);
        }
    } else if (!MX && BITS == 8) {
#pragma unroll
        for (int j = 0; j < 4; j++)
            dot = fmaf(byte_f32((uint32_t)v, j), xv[j], dot);
#pragma unroll
        for (int j = 0; j < 4; j++)
            dot = fmaf(byte_f32((uint32_t)(v >> 32), j), xv[4 + j], dot);
    } else {
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const uint32_t q = (uint32_t)(v >> (i * BITS)) & ((1u << BITS) - 1u);
            dot = fmaf(qvalue<MX>(q), xv[i], dot);
        }
    }
    return dot;
}

/* y[d] = sum_k W[d, k] x[k] (+ bias[d]) for R rows per warp. Lane l takes
 * the 8-input pieces k = l, l + 32, ...: the warp's x loads (2 x 16 bytes a
 * lane) and code loads (BITS bytes a lane) are contiguous, and each x piece
 * serves the R rows. All loads of a piece are issued before any math.
 * gshift = log2(group_size / 8). SC: the scales' storage (SC_E8M0 = MXFP4). */
template <int BITS, int SC, int R>
__global__ void __launch_bounds__(32 * QG_WARPS)
    qgemv_kernel(const uint32_t *w, const void *scales, const void *biases, int gshift,
                 const float *x, float *y, int64_t D, int64_t N, const void *lbias, nmlx_dtype lbdt,
                 bool xvec) {
    constexpr bool MX = SC == SC_E8M0;
    const int lane = threadIdx.x & 31;
    const int64_t d0 = ((int64_t)blockIdx.x * QG_WARPS + threadIdx.x / 32) * R;
    if (d0 >= D) return;
    const int K8 = (int)(N / 8), G = (int)(N >> (gshift + 3));
    const uint8_t *rows[R];
    const typename sc_raw<SC>::t *srow[R], *brow[R];
#pragma unroll
    for (int r = 0; r < R; r++) { /* rows past D repeat the last one (not stored) */
        const int64_t d = d0 + r < D ? d0 + r : D - 1;
        rows[r] = (const uint8_t *)w + d * (N * BITS / 8);
        srow[r] = (const typename sc_raw<SC>::t *)scales + d * G;
        brow[r] = MX ? srow[r] : (const typename sc_raw<SC>::t *)biases + d * G;
    }
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        acc[r] = 0.0f;
#pragma unroll 4
    for (int k = lane; k < K8; k += 32) {
        const int g = k >> gshift;
        uint64_t v[R];
        typename sc_raw<SC>::t sr[R], bq[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            v[r] = load8<BITS>(rows[r], k);
            sr[r] = __ldg(srow[r] + g);
            if (!MX) bq[r] = __ldg(brow[r] + g);
        }
        float xv[8];
        const float xs = load_x8<MX>(x, k, xvec, xv);
#pragma unroll
        for (int r = 0; r < R; r++) {
            const float dot = dot8<BITS, MX>(v[r], xv);
            if (MX)
                acc[r] = fmaf(sc_f32<SC>(sr[r]), dot * 16384.0f, acc[r]); /* fp4 2^-14 back */
            else
                acc[r] = fmaf(sc_f32<SC>(sr[r]), dot, fmaf(sc_f32<SC>(bq[r]), xs, acc[r]));
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        const float v = qwarp_sum(acc[r]);
        if (lane == 0 && d0 + r < D)
            y[d0 + r] = v + (lbias ? cuda_load_f32(lbdt, lbias, d0 + r) : 0.0f);
    }
}

template <int BITS, int SC>
static void launch_gemv(cudaStream_t s, const nmlx_weight *w, const float *x, float *y,
                        const void *lb, nmlx_dtype lbdt) {
    const int64_t D = w->rows, N = w->cols;
    const bool xvec = (uintptr_t)x % 16 == 0;
    int gshift = 0;
    while ((8 << gshift) < w->group_size)
        gshift++;
    const uint32_t *wp = (const uint32_t *)w->w.data;
    if (D >= 8192) { /* 4 rows a warp: x read once for 4 rows */
        const unsigned grid = (unsigned)((D + QG_WARPS * 4 - 1) / (QG_WARPS * 4));
        qgemv_kernel<BITS, SC, 4><<<grid, 32 * QG_WARPS, 0, s>>>(
            wp, w->scales.data, w->biases.data, gshift, x, y, D, N, lb, lbdt, xvec);
    } else { /* 2: more warps for the narrower matrices */
        const unsigned grid = (unsigned)((D + QG_WARPS * 2 - 1) / (QG_WARPS * 2));
        qgemv_kernel<BITS, SC, 2><<<grid, 32 * QG_WARPS, 0, s>>>(
            wp, w->scales.data, w->biases.data, gshift, x, y, D, N, lb, lbdt, xvec);
    }
}

/* ---- batched decode: the mat-vec over up to QG_MAX_T rows of x ---- */

enum { QG_MAX_T = 8 };

/* qgemv_kernel for T <= QG_MAX_T rows of x (one token each of a batch of
 * sequences): each piece's codes are loaded and decoded once for the T
 * rows, and every (row of x, row of W) sum takes the same operations in the
 * same order as qgemv_kernel, so a row equals that token decoded alone bit
 * for bit. */
template <int BITS, int SC, int R>
__global__ void __launch_bounds__(32 * QG_WARPS)
    qgemv_rows_kernel(const uint32_t *w, const void *scales, const void *biases, int gshift,
                      const float *x, float *y, int64_t D, int64_t N, int T, const void *lbias,
                      nmlx_dtype lbdt, bool xvec) {
    constexpr bool MX = SC == SC_E8M0;
    const int lane = threadIdx.x & 31;
    const int64_t d0 = ((int64_t)blockIdx.x * QG_WARPS + threadIdx.x / 32) * R;
    if (d0 >= D) return;
    const int K8 = (int)(N / 8), G = (int)(N >> (gshift + 3));
    const uint8_t *rows[R];
    const typename sc_raw<SC>::t *srow[R], *brow[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int64_t d = d0 + r < D ? d0 + r : D - 1;
        rows[r] = (const uint8_t *)w + d * (N * BITS / 8);
        srow[r] = (const typename sc_raw<SC>::t *)scales + d * G;
        brow[r] = MX ? srow[r] : (const typename sc_raw<SC>::t *)biases + d * G;
    }
    float acc[QG_MAX_T][R];
#pragma unroll
    for (int t = 0; t < QG_MAX_T; t++)
#pragma unroll
        for (int r = 0; r < R; r++)
            acc[t][r] = 0.0f;
#pragma unroll 2
    for (int k = lane; k < K8; k += 32) {
        const int g = k >> gshift;
        float q[R][8], sf[R], bf[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            const uint64_t v = load8<BITS>(rows[r], k);
            sf[r] = sc_f32<SC>(__ldg(srow[r] + g));
            bf[r] = MX ? 0.0f : sc_f32<SC>(__ldg(brow[r] + g));
            decode8<BITS, MX>(v, q[r]);
        }
#pragma unroll
        for (int t = 0; t < QG_MAX_T; t++) {
            if (t >= T) break;
            const float *xt = x + (int64_t)t * N;
            float xv[8];
            const float xs = load_x8<MX>(xt, k, xvec, xv);
#pragma unroll
            for (int r = 0; r < R; r++) {
                float dot = 0.0f;
#pragma unroll
                for (int i = 0; i < 8; i++)
                    dot = fmaf(q[r][i], xv[i], dot);
                if (MX)
                    acc[t][r] = fmaf(sf[r], dot * 16384.0f, acc[t][r]);
                else
                    acc[t][r] = fmaf(sf[r], dot, fmaf(bf[r], xs, acc[t][r]));
            }
        }
    }
#pragma unroll
    for (int t = 0; t < QG_MAX_T; t++) {
        if (t >= T) break;
#pragma unroll
        for (int r = 0; r < R; r++) {
            const float v = qwarp_sum(acc[t][r]);
            if (lane == 0 && d0 + r < D)
                y[(int64_t)t * D + d0 + r] =
                    v + (lbias ? cuda_load_f32(lbdt, lbias, d0 + r) : 0.0f);
        }
    }
}

/* NMLX_CUDA_QROWS_R=8: 8 weight rows a warp in the batched mat-vec from 3
 * rows of x (default: 2, or 4 from 8192 weight rows). Each row's sums are
 * unchanged (bit for bit); it trades blocks for fewer x loads, not yet
 * measured. */
static int qrows_r(void) {
    static int r = -1;
    if (r < 0) {
        const char *e = getenv("NMLX_CUDA_QROWS_R");
        r = e && atoi(e) == 8 ? 8 : 0;
    }
    return r;
}

template <int BITS, int SC>
static void launch_gemv_rows(cudaStream_t s, const nmlx_weight *w, const float *x, float *y, int T,
                             const void *lb, nmlx_dtype lbdt) {
    const int64_t D = w->rows, N = w->cols;
    const bool xvec = (uintptr_t)x % 16 == 0; /* N is a multiple of 32: every row aligned */
    int gshift = 0;
    while ((8 << gshift) < w->group_size)
        gshift++;
    const uint32_t *wp = (const uint32_t *)w->w.data;
    if (T >= 3 && qrows_r() == 8) { /* opt-in: x read once for 8 weight rows (4x fewer x loads) */
        const unsigned grid = (unsigned)((D + QG_WARPS * 8 - 1) / (QG_WARPS * 8));
        qgemv_rows_kernel<BITS, SC, 8><<<grid, 32 * QG_WARPS, 0, s>>>(
            wp, w->scales.data, w->biases.data, gshift, x, y, D, N, T, lb, lbdt, xvec);
    } else if (D >= 8192) { /* as launch_gemv */
        const unsigned grid = (unsigned)((D + QG_WARPS * 4 - 1) / (QG_WARPS * 4));
        qgemv_rows_kernel<BITS, SC, 4><<<grid, 32 * QG_WARPS, 0, s>>>(
            wp, w->scales.data, w->biases.data, gshift, x, y, D, N, T, lb, lbdt, xvec);
    } else {
        const unsigned grid = (unsigned)((D + QG_WARPS * 2 - 1) / (QG_WARPS * 2));
        qgemv_rows_kernel<BITS, SC, 2><<<grid, 32 * QG_WARPS, 0, s>>>(
            wp, w->scales.data, w->biases.data, gshift, x, y, D, N, T, lb, lbdt, xvec);
    }
}

/* ---- prefill mat-mat on the tensor cores ---- */

enum { QM_BM = 64, QM_BN = 128, QM_BK = 32, QM_THREADS = 256, QM_LD = QM_BK + 8 };

/* 16 bytes global -> shared, asynchronously; bytes = 0 writes zeros */
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, int bytes) {
    const unsigned sa = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(gmem),
                 "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* The prefill operand x [T, N] f32, prepared once per matmul: hi = bf16(x),
 * lo = bf16(x - hi) (x = hi + lo to ~2^-16 relative), xs[t, c] = sum of
 * the 32 inputs of chunk c (f32). A thread takes 8 inputs. */
__global__ void qx_split_kernel(const float *x, int64_t T, int64_t N, bool xvec, bool split,
                                __nv_bfloat16 *hi, __nv_bfloat16 *lo, float *xs) {
    cuda_pdl_trigger();
    cuda_pdl_wait(); /* launched early (cuda_launch_pdl): x is ready from here */
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; /* piece of 8 */
    const int64_t n8 = T * N / 8;
    float v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (i < n8) {
        if (xvec) {
            const float4 a = ((const float4 *)x)[2 * i], b = ((const float4 *)x)[2 * i + 1];
            v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z,
            v[7] = b.w;
        } else {
#pragma unroll
            for (int j = 0; j < 8; j++)
                v[j] = x[8 * i + j];
        }
    }
    float sum = 0.0f;
    uint32_t h[4], l[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        sum += v[2 * j] + v[2 * j + 1];
        h[j] = pack_bf16(v[2 * j], v[2 * j + 1]);
        const __nv_bfloat162 hb = *(const __nv_bfloat162 *)&h[j];
        l[j] = pack_bf16(v[2 * j] - __low2float(hb), v[2 * j + 1] - __high2float(hb));
    }
    /* the 4 threads of one 32-input chunk are lanes 4m..4m+3 (N % 32 == 0) */
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    if (i < n8) {
        ((uint4 *)hi)[i] = make_uint4(h[0], h[1], h[2], h[3]);
        if (split) ((uint4 *)lo)[i] = make_uint4(l[0], l[1], l[2], l[3]);
        if ((i & 3) == 0) xs[i / 4] = sum;
    }
}

/* y[t, d] = sum_k x[t, k] W[d, k] (+ bias[d]); block (blockIdx.x: 64 rows of
 * W, blockIdx.y: 128 tokens); 8 warps as 2 (rows) x 4 (tokens), each 32 x 32
 * = 2 x 4 mma tiles. Per 32-input chunk: the next chunk's x tiles (bf16 hi,
 * lo) stream into the other shared buffer (cp.async) and its codes into
 * registers while the tensor cores work on this one. */
template <int BITS, bool MX, bool SPLIT>
__global__ void __launch_bounds__(QM_THREADS, 2)
    qmm_kernel(const uint32_t *w, const void *scales, const void *biases, nmlx_dtype sdt, int gs,
               const __nv_bfloat16 *xhi, const __nv_bfloat16 *xlo, const float *xsum, float *y,
               int64_t T, int64_t D, int64_t N, const void *lbias, nmlx_dtype lbdt) {
    __shared__ __align__(16) __nv_bfloat16 As[QM_BM][QM_LD];
    __shared__ __align__(16) __nv_bfloat16 Bh[2][QM_BN][QM_LD];
    __shared__ __align__(16) __nv_bfloat16 Bl[SPLIT ? 2 : 1][SPLIT ? QM_BN : 1][QM_LD];
    __shared__ float Ss[QM_BM], Sb[QM_BM], Xs[QM_BN];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int gid = lane >> 2, tig = lane & 3;
    const int wm = warp & 1, wn = warp >> 1;
    const int64_t d0 = (int64_t)blockIdx.x * QM_BM, t0 = (int64_t)blockIdx.y * QM_BN;
    const int64_t C = N / 32, G = N / gs, wpr = N * BITS / 32;
    const int cpg = gs / 32;

    /* loader roles: A: row ar, codes 8*aq..8*aq+7; B: token br, inputs 16*bp.. */
    const int ar = tid >> 2, aq = tid & 3, br = tid >> 1, bp = tid & 1;
    const int64_t ad = d0 + ar, bt = t0 + br;
    const int bbytes = bt < T ? 16 : 0;
    const int64_t boff = (bt < T ? bt : 0) * N + 16 * bp; /* element offset of this thread's x */

    float acc[2][4][4], part[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int r = 0; r < 4; r++)
                acc[i][j][r] = 0.0f;

    /* codes 8*aq.. are BITS bytes from bit sb of the chunk: one or two words */
    uint64_t rw = 0;
    float rs = 0.0f, rb = 0.0f, rx = 0.0f;
    const int sb = aq * BITS * 8, wi = sb >> 5, sh = sb & 31;
    auto load_a = [&](int64_t c) {
        if (ad < D) {
            const uint32_t *p = w + ad * wpr + c * BITS;
            rw = __ldg(p + wi);
            if (sh + 8 * BITS > 32) rw |= (uint64_t)__ldg(p + wi + 1) << 32;
            if (aq == 0) group_sb<MX>(scales, biases, sdt, ad * G + c / cpg, &rs, &rb);
        }
        if (tid < QM_BN) rx = t0 + tid < T ? __ldg(xsum + (t0 + tid) * C + c) : 0.0f;
    };
    auto load_b = [&](int64_t c, int buf) {
        const int64_t o = boff + c * 32;
        cp_async16(&Bh[buf][br][16 * bp], xhi + o, bbytes);
        cp_async16(&Bh[buf][br][16 * bp + 8], xhi + o + 8, bbytes);
        if (SPLIT) {
            cp_async16(&Bl[buf][br][16 * bp], xlo + o, bbytes);
            cp_async16(&Bl[buf][br][16 * bp + 8], xlo + o + 8, bbytes);
        }
        cp_async_commit();
    };
    load_a(0);
    load_b(0, 0);

    for (int64_t c = 0; c < C; c++) {
        const int buf = (int)(c & 1);
        if (c + 1 < C)
            load_b(c + 1, buf ^ 1); /* that buffer was last read before the
                                       previous iteration's closing barrier */
        /* A: 8 codes of row ad as bf16 (exact small integers / E2M1 values);
         * rows past D are zero */
        {
            uint32_t pk[4] = {0, 0, 0, 0};
            if (ad < D) {
                const uint64_t v = rw >> sh;
                float f[8];
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    const uint32_t q = (uint32_t)(v >> (i * BITS)) & ((1u << BITS) - 1u);
                    f[i] = MX ? fp4_f32_scaled(q) * 16384.0f : code_f32(q);
                }
#pragma unroll
                for (int i = 0; i < 4; i++)
                    pk[i] = pack_bf16(f[2 * i], f[2 * i + 1]);
            }
            if (aq == 0) {
                Ss[ar] = ad < D ? rs : 0.0f;
                Sb[ar] = ad < D ? rb : 0.0f;
            }
            if (tid < QM_BN) Xs[tid] = rx;
            *(uint4 *)&As[ar][8 * aq] = make_uint4(pk[0], pk[1], pk[2], pk[3]);
        }
        if (c + 1 < C)
            cp_async_wait<1>(); /* chunk c's x has landed */
        else
            cp_async_wait<0>();
        __syncthreads();
        if (c + 1 < C) load_a(c + 1);
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int r = 0; r < 4; r++)
                    part[i][j][r] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < QM_BK; ks += 16) {
            uint32_t a[2][4];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int r0 = 32 * wm + 16 * i + gid;
                a[i][0] = *(const uint32_t *)&As[r0][ks + 2 * tig];
                a[i][1] = *(const uint32_t *)&As[r0 + 8][ks + 2 * tig];
                a[i][2] = *(const uint32_t *)&As[r0][ks + 8 + 2 * tig];
                a[i][3] = *(const uint32_t *)&As[r0 + 8][ks + 8 + 2 * tig];
            }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int n0 = 32 * wn + 8 * j + gid;
                uint32_t b0 = *(const uint32_t *)&Bh[buf][n0][ks + 2 * tig];
                uint32_t b1 = *(const uint32_t *)&Bh[buf][n0][ks + 8 + 2 * tig];
#pragma unroll
                for (int i = 0; i < 2; i++)
                    mma_bf16(part[i][j], a[i], b0, b1);
                if (SPLIT) {
                    b0 = *(const uint32_t *)&Bl[buf][n0][ks + 2 * tig];
                    b1 = *(const uint32_t *)&Bl[buf][n0][ks + 8 + 2 * tig];
#pragma unroll
                    for (int i = 0; i < 2; i++)
                        mma_bf16(part[i][j], a[i], b0, b1);
                }
            }
        }
        /* fold the chunk in: acc += s[d] * part + b[d] * sum x[t] */
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int r0 = 32 * wm + 16 * i + gid;
            const float s0 = Ss[r0], s1 = Ss[r0 + 8], b0 = Sb[r0], b1 = Sb[r0 + 8];
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int n0 = 32 * wn + 8 * j + 2 * tig;
                const float x0 = Xs[n0], x1 = Xs[n0 + 1];
                acc[i][j][0] = fmaf(s0, part[i][j][0], fmaf(b0, x0, acc[i][j][0]));
                acc[i][j][1] = fmaf(s0, part[i][j][1], fmaf(b0, x1, acc[i][j][1]));
                acc[i][j][2] = fmaf(s1, part[i][j][2], fmaf(b1, x0, acc[i][j][2]));
                acc[i][j][3] = fmaf(s1, part[i][j][3], fmaf(b1, x1, acc[i][j][3]));
            }
        }
        __syncthreads();
    }
    /* store y[t, d] */
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const int64_t d = d0 + 32 * wm + 16 * i + gid + (r >= 2 ? 8 : 0);
                const int64_t t = t0 + 32 * wn + 8 * j + 2 * tig + (r & 1);
                if (d < D && t < T)
                    y[t * D + d] = acc[i][j][r] + (lbias ? cuda_load_f32(lbdt, lbias, d) : 0.0f);
            }
}

/* ---- embed: out[t, :] = W[ids[t], :] * scale (zero row for bad ids) ---- */

__global__ void qembed_kernel(const uint32_t *w, const void *scales, const void *biases,
                              nmlx_dtype sdt, int bits, int gs, bool mx, const int32_t *ids,
                              int64_t V, int64_t D, float scale, float *out) {
    const int64_t t = blockIdx.x;
    const int32_t id = ids[t];
    float *o = out + t * D;
    const int64_t G = D / gs;
    const uint8_t *row = (const uint8_t *)(w + (int64_t)id * (D * bits / 32));
    for (int64_t k = blockIdx.y * (int64_t)blockDim.x + threadIdx.x; k < D;
         k += (int64_t)gridDim.y * blockDim.x) {
        if (id < 0 || id >= V) {
            o[k] = 0.0f;
            continue;
        }
        const uint64_t bit = (uint64_t)k * (uint64_t)bits;
        const uint8_t *p = row + (bit >> 3);
        const unsigned sh = (unsigned)(bit & 7);
        unsigned v = p[0];
        if (sh + (unsigned)bits > 8) v |= (unsigned)p[1] << 8;
        const uint32_t q = (v >> sh) & ((1u << bits) - 1u);
        const int64_t gi = (int64_t)id * G + k / gs;
        float val;
        if (mx)
            val = fp4_f32_scaled(q) * 16384.0f * e8m0_f32(((const uint8_t *)scales)[gi]);
        else
            val = cuda_load_f32(sdt, scales, gi) * (float)q + cuda_load_f32(sdt, biases, gi);
        o[k] = val * scale;
    }
}

void nmlx_cuda_qembed(nmlx_backend *be, const nmlx_weight *table, const int32_t *ids_dev, int64_t T,
                      float scale, float *out) {
    cudaStream_t s = cuda_of(be)->stream;
    /* a row over several blocks: one token's lookup is a handful of
     * dependent-free loads a thread, not D / 256 rounds of them */
    const unsigned ky = (unsigned)((table->cols + 255) / 256 < 64 ? (table->cols + 255) / 256 : 64);
    qembed_kernel<<<dim3((unsigned)T, ky), 256, 0, s>>>(
        (const uint32_t *)table->w.data, table->scales.data, table->biases.data,
        table->scales.dtype, table->bits, table->group_size, table->mode == NMLX_QUANT_MXFP4,
        ids_dev, table->rows, table->cols, scale, out);
    nmlx_cuda_note(be, cudaGetLastError());
}

/* ---- dispatch ---- */

static int qmm_split_mode = -1; /* -1: not read from the environment yet */

static bool qmm_split(void) {
    if (qmm_split_mode < 0) {
        const char *e = getenv("NMLX_CUDA_QMM");
        qmm_split_mode = !(e && !strcmp(e, "bf16"));
    }
    return qmm_split_mode != 0;
}

extern "C" void nmlx_cuda_set_qmm_split(int split) { qmm_split_mode = split ? 1 : 0; }

/* Most rows of x that take the mat-vec (qgemv_rows_kernel) rather than the
 * tensor-core mat-mat: NMLX_CUDA_QGEMV_T (1..8, default 8; 1 = only T = 1). */
static int qgemv_max_t(void) {
    static int max_t = 0;
    if (!max_t) {
        const char *e = getenv("NMLX_CUDA_QGEMV_T");
        int v = e ? atoi(e) : QG_MAX_T;
        max_t = v < 1 ? 1 : v > QG_MAX_T ? (int)QG_MAX_T : v;
    }
    return max_t;
}

static int qgemv16_mode = -1; /* -1: not read from the environment yet */

/* Decode mat-vecs of affine 4/8-bit weights on int16 x (cuda_qgemv16.cu)
 * unless precision "f32" or NMLX_CUDA_QGEMV=f32 asks for the f32 kernel. */
static bool qgemv16_on(nmlx_backend *be) {
    if (qgemv16_mode < 0) {
        const char *e = getenv("NMLX_CUDA_QGEMV");
        qgemv16_mode = !(e && !strcmp(e, "f32"));
    }
    return qgemv16_mode && !((cuda_impl *)be->impl)->f32_x;
}

extern "C" void nmlx_cuda_set_qgemv16(int on) { qgemv16_mode = on ? 1 : 0; }

extern "C" void nmlx_cuda_set_f32_activations(nmlx_backend *be, int on) {
    ((cuda_impl *)be->impl)->f32_x = on != 0;
}

/* Weights that read one x (q/k/v, gate/up): one int16 mat-vec launch when
 * they share a format, else one matmul each (x split once for them all). */
void nmlx_cuda_matmul_multi(nmlx_backend *be, int n, const nmlx_weight *const *ws,
                            const nmlx_tensor *const *biases, const float *x, float *const *ys,
                            int64_t T) {
    if (T == 1 && qgemv16_on(be) && nmlx_cuda_qgemv16(be, n, ws, biases, x, ys)) return;
    if (nmlx_cuda_gemv_multi(be, n, ws, biases, x, ys, T)) return; /* dense, decode */
    cuda_impl *c = (cuda_impl *)be->impl;
    c->qg_x = NULL; /* only a split made for this x in this call counts */
    for (int i = 0; i < n; i++) {
        c->qg_x_share = i > 0; /* the cuBLAS mat-mat splits x once (cuda_qgemm.cu) */
        nmlx_cuda_matmul(be, ws[i], biases ? biases[i] : NULL, x, ys[i], T);
    }
    c->qg_x_share = false;
}

/* backend.h gate_up_act: one int16 mat-vec launch whose warps take gate
 * and up rows in pairs and write act(g) * u, else the two ops. */
void nmlx_cuda_gate_up_act(nmlx_backend *be, nmlx_act act, const nmlx_weight *g,
                           const nmlx_weight *u, const nmlx_tensor *bg, const nmlx_tensor *bu,
                           const float *x, float *gate, float *up, int64_t T) {
    if (T == 1 && qgemv16_on(be) && nmlx_cuda_qgemv16_act(be, act, g, u, bg, bu, x, gate)) return;
    if (nmlx_cuda_gemv_act(be, act, g, u, bg, bu, x, gate, T)) return; /* dense, decode */
    /* prefill: the cuBLAS mat-mat's join writes act(g) u (up never written) */
    if (g->mode != NMLX_QUANT_NONE && T > qgemv_max_t() && T > nmlx_cuda_qrows_mma_max_t() &&
        nmlx_cuda_qgemm_act(be, act, g, u, bg, bu, x, gate, T))
        return;
    const nmlx_weight *ws[2] = {g, u};
    const nmlx_tensor *bs[2] = {bg, bu};
    float *ys[2] = {gate, up};
    nmlx_cuda_matmul_multi(be, 2, ws, bs, x, ys, T);
    nmlx_cuda_act_mul(be, act, gate, up, gate, T * g->rows);
}

/* backend.h add_rmsnorm_matmul: the int16 mat-vec (q/k/v, or gate/up
 * pairs) staging rmsnorm(x + d) itself, the add_rmsnorm launch saved (and
 * rope_kv's where asked), or for dense weights the f32 mat-vec
 * (cuda_matmul.cu, the same folds); false (nothing done) for weights
 * neither takes (the int16 one: precision "f32" or NMLX_CUDA_QGEMV=f32;
 * dense weights ignore precision, as matmul does). */
bool nmlx_cuda_add_rmsnorm_matmul(nmlx_backend *be, float *x, const float *d, const nmlx_tensor *nw,
                                  float w_offset, float eps, float *y, int64_t D, int act, int n,
                                  const nmlx_weight *const *ws, const nmlx_tensor *const *biases,
                                  float *const *ys, const nmlx_rope_kv_args *rope) {
    cuda_impl *c = (cuda_impl *)be->impl;
    /* the folds this backend was asked for (a declined rope fold is asked
     * again without it: the sums below stay for that call) */
    if ((d && !c->norm_with_d) || (rope && !c->norm_rope)) {
        c->norm_declined++;
        return false;
    }
    /* d NULL right after matmul_residual into this x: its sums of squares */
    const double *parts = !d && c->rsum_x == x && c->rsum_D == D ? c->rsum : NULL;
    c->rsum_x = NULL;
    const nmlx_cuda_norm_in in = {x, d, nw, w_offset, eps, y, D, c->norm_done, parts};
    const bool done =
        (qgemv16_on(be) && nmlx_cuda_qgemv16_norm(be, &in, act, n, ws, biases, ys, rope)) ||
        nmlx_cuda_gemv_norm(be, &in, act, n, ws, biases, ys, rope);
    if (done)
        c->norm_fused++, c->norm_roped += rope != NULL;
    else
        c->norm_declined++;
    return done;
}

/* backend.h matmul_residual: one token through the int16 mat-vec (Q16_R)
 * or the dense one, its sums of squares kept for the add_rmsnorm_matmul
 * that reads x next */
bool nmlx_cuda_matmul_residual(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                               const float *a, float *x, int64_t T) {
    cuda_impl *c = (cuda_impl *)be->impl;
    c->rsum_x = NULL;
    if (T != 1 || !c->rsum) return false;
    const bool dense = w->mode == NMLX_QUANT_NONE;
    if (dense ? !nmlx_cuda_gemv_resid(be, w, bias, a, x, c->rsum)
              : !qgemv16_on(be) || !nmlx_cuda_qgemv16_resid(be, w, bias, a, x, c->rsum))
        return false;
    c->rsum_x = x, c->rsum_D = w->rows;
    c->resid_fused++;
    return true;
}

extern "C" long nmlx_cuda_resid_stats(nmlx_backend *be) {
    return ((const cuda_impl *)be->impl)->resid_fused;
}

extern "C" void nmlx_cuda_norm_matmul_stats(nmlx_backend *be, long *fused, long *roped,
                                            long *declined) {
    const cuda_impl *c = (const cuda_impl *)be->impl;
    *fused = c->norm_fused;
    *roped = c->norm_roped;
    *declined = c->norm_declined;
}

/* The backend's scratch for the prefill operand (hi, lo, xs) of T x N. */
static bool qx_reserve(nmlx_backend *be, size_t need) {
    if (need <= ((cuda_impl *)be->impl)->qx_bytes) return true; /* no host wait: graphs go on */
    cuda_impl *c = cuda_host_of(be);
    cudaStreamSynchronize(c->stream);
    if (c->qx) cudaFree(c->qx);
    c->qx = NULL;
    c->qx_bytes = 0;
    cudaError_t e = cudaMalloc(&c->qx, need);
    nmlx_cuda_note(be, e);
    if (e != cudaSuccess) return false;
    c->qx_bytes = need;
    return true;
}

bool nmlx_cuda_qx_split(nmlx_backend *be, const float *x, int64_t T, int64_t N, nmlx_cuda_qx *out) {
    const size_t elems = (size_t)(T * N);
    if (!qx_reserve(be, elems * 4 + elems / 8)) return false;
    char *base = (char *)cuda_of(be)->qx;
    __nv_bfloat16 *hi = (__nv_bfloat16 *)base, *lo = (__nv_bfloat16 *)(base + elems * 2);
    float *xs = (float *)(base + elems * 4);
    const int64_t n8 = (int64_t)elems / 8;
    cuda_launch_pdl_batch(qx_split_kernel, dim3((unsigned)((n8 + 255) / 256)), dim3(256), 0,
                          cuda_of(be)->stream, x, T, N, (uintptr_t)x % 16 == 0, true, hi, lo, xs);
    out->hi = hi, out->lo = lo, out->xs = xs;
    return true;
}

template <int BITS, bool MX>
static void launch(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias, const float *x,
                   float *y, int64_t T) {
    cudaStream_t s = cuda_of(be)->stream;
    const int64_t D = w->rows, N = w->cols;
    const uint32_t *wp = (const uint32_t *)w->w.data;
    const bool xvec = (uintptr_t)x % 16 == 0;
    const void *lb = bias ? bias->data : NULL;
    const nmlx_dtype lbdt = bias ? bias->dtype : NMLX_DT_F32;
    if (T == 1) {
        if (qgemv16_on(be) && nmlx_cuda_qgemv16(be, 1, &w, &bias, x, &y)) return;
        if constexpr (MX)
            launch_gemv<BITS, SC_E8M0>(s, w, x, y, lb, lbdt);
        else if (w->scales.dtype == NMLX_DT_F32)
            launch_gemv<BITS, SC_F32>(s, w, x, y, lb, lbdt);
        else if (w->scales.dtype == NMLX_DT_F16)
            launch_gemv<BITS, SC_F16>(s, w, x, y, lb, lbdt);
        else
            launch_gemv<BITS, SC_BF16>(s, w, x, y, lb, lbdt);
        return;
    }
    if (nmlx_cuda_qrows_mma(be, w, bias, x, y, T)) return; /* 2..64 rows on the tensor cores */
    if (T <= qgemv_max_t()) {                              /* a batched decode step */
        const int t = (int)T;
        if constexpr (MX)
            launch_gemv_rows<BITS, SC_E8M0>(s, w, x, y, t, lb, lbdt);
        else if (w->scales.dtype == NMLX_DT_F32)
            launch_gemv_rows<BITS, SC_F32>(s, w, x, y, t, lb, lbdt);
        else if (w->scales.dtype == NMLX_DT_F16)
            launch_gemv_rows<BITS, SC_F16>(s, w, x, y, t, lb, lbdt);
        else
            launch_gemv_rows<BITS, SC_BF16>(s, w, x, y, t, lb, lbdt);
        return;
    }
    if (nmlx_cuda_qgemm(be, w, bias, x, y, T))
        return; /* the default: cuBLAS on dequantized chunks */
    const bool split = qmm_split();
    const size_t elems = (size_t)(T * N);
    if (!qx_reserve(be, elems * 4 + elems / 8)) return;
    char *base = (char *)cuda_of(be)->qx;
    __nv_bfloat16 *hi = (__nv_bfloat16 *)base, *lo = (__nv_bfloat16 *)(base + elems * 2);
    float *xs = (float *)(base + elems * 4);
    const int64_t n8 = (int64_t)elems / 8;
    qx_split_kernel<<<(unsigned)((n8 + 255) / 256), 256, 0, s>>>(x, T, N, xvec, split, hi, lo, xs);
    dim3 grid((unsigned)((D + QM_BM - 1) / QM_BM), (unsigned)((T + QM_BN - 1) / QM_BN));
    if (split)
        qmm_kernel<BITS, MX, true><<<grid, QM_THREADS, 0, s>>>(wp, w->scales.data, w->biases.data,
                                                               w->scales.dtype, w->group_size, hi,
                                                               lo, xs, y, T, D, N, lb, lbdt);
    else
        qmm_kernel<BITS, MX, false><<<grid, QM_THREADS, 0, s>>>(wp, w->scales.data, w->biases.data,
                                                                w->scales.dtype, w->group_size, hi,
                                                                lo, xs, y, T, D, N, lb, lbdt);
}

/* Quantized y[T, D] = x[T, N] @ W[D, N]^T (+ bias); the loaders validated
 * bits, group size and shapes (quant_layers.c). */
void nmlx_cuda_qmatmul(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                       const float *x, float *y, int64_t T) {
    if (w->mode == NMLX_QUANT_MXFP4) {
        launch<4, true>(be, w, bias, x, y, T);
    } else {
        switch (w->bits) {
        case 2: launch<2, false>(be, w, bias, x, y, T); break;
        case 3: launch<3, false>(be, w, bias, x, y, T); break;
        case 4: launch<4, false>(be, w, bias, x, y, T); break;
        case 5: launch<5, false>(be, w, bias, x, y, T); break;
        case 6: launch<6, false>(be, w, bias, x, y, T); break;
        case 8: launch<8, false>(be, w, bias, x, y, T); break;
        default: nmlx_cuda_note(be, cudaErrorInvalidValue); return;
        }
    }
    nmlx_cuda_note(be, cudaGetLastError());
}
