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
 *  - prefill (T > 1), qmm_kernel: y[T, D] = x[T, N] @ W[D, N]^T on the tensor
 *    cores (mma.sync m16n8k16 bf16, f32 accumulate). A block computes a
 *    64 (rows of W) x 128 (tokens) tile; per 32-input chunk it decodes the
 *    codes q into shared memory as bf16 (integers <= 255: exact), splits x
 *    into bf16 hi + lo (x = hi + lo to ~2^-16), multiplies q by both, and
 *    applies the group's scale and bias to the chunk's f32 partial sums. So
 *    the result matches the f32 reference to ~1e-5, not bf16 rounding.
 *    NMLX_CUDA_QMM=bf16 drops the lo half (x rounded to bf16: half the
 *    tensor-core work, as cuBLAS bf16 prefill rounds x).
 *  - embed: one block per token dequantizes its row. */
#include "compute/cuda/cuda_backend.h"
#include "compute/cuda/cuda_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- shared decoding helpers ---- */

/* The BITS words of chunk c of a row (u32 pointer to the chunk). vec: the
 * chunk is 16-byte aligned (BITS % 4 == 0) or 8-byte aligned (BITS % 2 == 0)
 * whenever the weight's base is 16-byte aligned (checked on the host). */
template <int BITS>
__device__ __forceinline__ void load_chunk(const uint32_t *p, bool vec, uint32_t *wd) {
    if (vec && BITS % 4 == 0) {
#pragma unroll
        for (int i = 0; i < BITS / 4; i++) {
            uint4 u = __ldg((const uint4 *)p + i);
            wd[4 * i] = u.x, wd[4 * i + 1] = u.y, wd[4 * i + 2] = u.z, wd[4 * i + 3] = u.w;
        }
    } else if (vec && BITS % 2 == 0) {
#pragma unroll
        for (int i = 0; i < BITS / 2; i++) {
            uint2 u = __ldg((const uint2 *)p + i);
            wd[2 * i] = u.x, wd[2 * i + 1] = u.y;
        }
    } else {
#pragma unroll
        for (int i = 0; i < BITS; i++) wd[i] = __ldg(p + i);
    }
}

/* Code i (0..31, a compile-time constant after unrolling) of a chunk. */
template <int BITS> __device__ __forceinline__ uint32_t chunk_code(const uint32_t *wd, int i) {
    const int bit = i * BITS, wi = bit >> 5, sh = bit & 31;
    uint32_t v = wd[wi] >> sh;
    if (sh + BITS > 32) v |= wd[wi + 1] << (32 - sh);
    return v & ((1u << BITS) - 1u);
}

/* Small unsigned integer -> float without the slow int->float unit. */
__device__ __forceinline__ float code_f32(uint32_t q) {
    return __uint_as_float(q | 0x4B000000u) - 8388608.0f;
}

/* E2M1 code -> value * 2^-14: the code's bits placed as an f16 (exponent
 * field e = code bits 1-2, one mantissa bit; e = 0 lands on f16 subnormals,
 * which decode 0 and 0.5 exactly). Callers multiply by 2^14 once per chunk. */
__device__ __forceinline__ float fp4_f32_scaled(uint32_t q) {
    unsigned short h = (unsigned short)(((q & 8u) << 12) | ((q & 7u) << 9));
    return __half2float(__ushort_as_half(h));
}

/* E8M0 byte -> 2^(e - 127) (e = 0 decodes as 2^-127, like the CPU). */
__device__ __forceinline__ float e8m0_f32(uint8_t e) {
    return e ? __uint_as_float((uint32_t)e << 23) : __uint_as_float(0x00400000u);
}

/* q as f32 in the form the kernels multiply (affine: the integer; MXFP4:
 * the E2M1 value * 2^-14). */
template <bool MX> __device__ __forceinline__ float qvalue(uint32_t q) {
    return MX ? fp4_f32_scaled(q) : code_f32(q);
}

/* Scale and bias of group entry idx (MXFP4: 2^(e-127), bias 0). */
template <bool MX>
__device__ __forceinline__ void group_sb(const void *scales, const void *biases, nmlx_dtype sdt,
                                         int64_t idx, float *s, float *b) {
    if (MX) {
        *s = e8m0_f32(((const uint8_t *)scales)[idx]);
        *b = 0.0f;
    } else {
        *s = cuda_load_f32(sdt, scales, idx);
        *b = cuda_load_f32(sdt, biases, idx);
    }
}

/* ---- decode mat-vec ---- */

enum { QG_WARPS = 4, QG_ROWS = 2 };

__device__ __forceinline__ float qwarp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* y[d] = sum_k W[d, k] x[k] (+ bias[d]) for QG_ROWS rows per warp. */
template <int BITS, bool MX>
__global__ void __launch_bounds__(32 * QG_WARPS)
    qgemv_kernel(const uint32_t *w, const void *scales, const void *biases, nmlx_dtype sdt, int gs,
                 const float *x, float *y, int64_t D, int64_t N, const void *lbias,
                 nmlx_dtype lbdt, bool wvec, bool xvec) {
    const int lane = threadIdx.x & 31;
    const int64_t d0 = ((int64_t)blockIdx.x * QG_WARPS + threadIdx.x / 32) * QG_ROWS;
    if (d0 >= D) return;
    const int64_t C = N / 32, G = N / gs, wpr = N * BITS / 32;
    const int cpg = gs / 32; /* chunks per group */
    float acc[QG_ROWS];
#pragma unroll
    for (int r = 0; r < QG_ROWS; r++) acc[r] = 0.0f;
#pragma unroll 2
    for (int64_t c = lane; c < C; c += 32) {
        float xv[32], xs = 0.0f;
        const float *xc = x + c * 32;
        if (xvec) {
#pragma unroll
            for (int i = 0; i < 8; i++) {
                float4 v = __ldg((const float4 *)xc + i);
                xv[4 * i] = v.x, xv[4 * i + 1] = v.y, xv[4 * i + 2] = v.z, xv[4 * i + 3] = v.w;
            }
        } else {
#pragma unroll
            for (int i = 0; i < 32; i++) xv[i] = __ldg(xc + i);
        }
        if (!MX) {
#pragma unroll
            for (int i = 0; i < 32; i++) xs += xv[i];
        }
#pragma unroll
        for (int r = 0; r < QG_ROWS; r++) {
            const int64_t d = d0 + r;
            if (d < D) {
                uint32_t wd[BITS];
                load_chunk<BITS>(w + d * wpr + c * BITS, wvec, wd);
                float dot = 0.0f;
#pragma unroll
                for (int i = 0; i < 32; i++) dot = fmaf(qvalue<MX>(chunk_code<BITS>(wd, i)), xv[i], dot);
                float s, b;
                group_sb<MX>(scales, biases, sdt, d * G + c / cpg, &s, &b);
                if (MX) dot *= 16384.0f; /* fp4_f32_scaled's 2^-14, exact */
                acc[r] = fmaf(s, dot, fmaf(b, xs, acc[r]));
            }
        }
    }
#pragma unroll
    for (int r = 0; r < QG_ROWS; r++) {
        float v = qwarp_sum(acc[r]);
        if (lane == 0 && d0 + r < D) y[d0 + r] = v + (lbias ? cuda_load_f32(lbdt, lbias, d0 + r) : 0.0f);
    }
}

/* ---- prefill mat-mat on the tensor cores ---- */

enum { QM_BM = 64, QM_BN = 128, QM_BK = 32, QM_THREADS = 256, QM_LD = QM_BK + 8 };

__device__ __forceinline__ void mma_bf16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* .x = lo (low half) */
    return *(uint32_t *)&v;
}

/* y[t, d] = sum_k x[t, k] W[d, k] (+ bias[d]); block (blockIdx.x: 64 rows of
 * W, blockIdx.y: 128 tokens); 8 warps as 2 (rows) x 4 (tokens), each 32 x 32
 * = 2 x 4 mma tiles. */
template <int BITS, bool MX, bool SPLIT>
__global__ void __launch_bounds__(QM_THREADS, 2)
    qmm_kernel(const uint32_t *w, const void *scales, const void *biases, nmlx_dtype sdt, int gs,
               const float *x, float *y, int64_t T, int64_t D, int64_t N, const void *lbias,
               nmlx_dtype lbdt, bool xvec) {
    __shared__ __align__(16) __nv_bfloat16 As[QM_BM][QM_LD];
    __shared__ __align__(16) __nv_bfloat16 Bh[QM_BN][QM_LD];
    __shared__ __align__(16) __nv_bfloat16 Bl[SPLIT ? QM_BN : 1][QM_LD];
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

    float acc[2][4][4], part[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) acc[i][j][r] = 0.0f;

    /* raw operands of the next chunk, loaded into registers while the
     * tensor cores work on the current one */
    uint64_t rw = 0;
    float rs = 0.0f, rb = 0.0f, rv[16];
    const int sb = aq * BITS * 8, wi = sb >> 5, sh = sb & 31;
    auto load_raw = [&](int64_t c) {
        if (ad < D) {
            /* codes 8*aq.. are BITS bytes from bit sb of the chunk: one or two
             * words, never past the chunk */
            const uint32_t *p = w + ad * wpr + c * BITS;
            rw = __ldg(p + wi);
            if (sh + 8 * BITS > 32) rw |= (uint64_t)__ldg(p + wi + 1) << 32;
            if (aq == 0) group_sb<MX>(scales, biases, sdt, ad * G + c / cpg, &rs, &rb);
        }
        if (bt < T) {
            const float *xp = x + bt * N + c * 32 + 16 * bp;
            if (xvec) {
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    float4 u = __ldg((const float4 *)xp + i);
                    rv[4 * i] = u.x, rv[4 * i + 1] = u.y, rv[4 * i + 2] = u.z, rv[4 * i + 3] = u.w;
                }
            } else {
#pragma unroll
                for (int i = 0; i < 16; i++) rv[i] = __ldg(xp + i);
            }
        } else {
#pragma unroll
            for (int i = 0; i < 16; i++) rv[i] = 0.0f;
        }
    };
    load_raw(0);

    for (int64_t c = 0; c < C; c++) {
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
                for (int i = 0; i < 4; i++) pk[i] = pack_bf16(f[2 * i], f[2 * i + 1]);
            }
            if (aq == 0) {
                Ss[ar] = rs;
                Sb[ar] = rb;
            }
            *(uint4 *)&As[ar][8 * aq] = make_uint4(pk[0], pk[1], pk[2], pk[3]);
        }
        /* B: 16 inputs of token bt (zero past T), split into bf16 hi (+ lo) */
        {
            float s = 0.0f;
            uint32_t hi[8], lo[8];
#pragma unroll
            for (int i = 0; i < 8; i++) {
                s += rv[2 * i] + rv[2 * i + 1];
                hi[i] = pack_bf16(rv[2 * i], rv[2 * i + 1]);
                if (SPLIT) {
                    __nv_bfloat162 h = *(__nv_bfloat162 *)&hi[i];
                    lo[i] = pack_bf16(rv[2 * i] - __low2float(h), rv[2 * i + 1] - __high2float(h));
                }
            }
            s += __shfl_xor_sync(0xffffffffu, s, 1);
            if (bp == 0) Xs[br] = s;
            uint4 *dh = (uint4 *)&Bh[br][16 * bp];
            dh[0] = make_uint4(hi[0], hi[1], hi[2], hi[3]);
            dh[1] = make_uint4(hi[4], hi[5], hi[6], hi[7]);
            if (SPLIT) {
                uint4 *dl = (uint4 *)&Bl[br][16 * bp];
                dl[0] = make_uint4(lo[0], lo[1], lo[2], lo[3]);
                dl[1] = make_uint4(lo[4], lo[5], lo[6], lo[7]);
            }
        }
        __syncthreads();
        if (c + 1 < C) load_raw(c + 1);
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int r = 0; r < 4; r++) part[i][j][r] = 0.0f;
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
                uint32_t b0 = *(const uint32_t *)&Bh[n0][ks + 2 * tig];
                uint32_t b1 = *(const uint32_t *)&Bh[n0][ks + 8 + 2 * tig];
#pragma unroll
                for (int i = 0; i < 2; i++) mma_bf16(part[i][j], a[i], b0, b1);
                if (SPLIT) {
                    b0 = *(const uint32_t *)&Bl[n0][ks + 2 * tig];
                    b1 = *(const uint32_t *)&Bl[n0][ks + 8 + 2 * tig];
#pragma unroll
                    for (int i = 0; i < 2; i++) mma_bf16(part[i][j], a[i], b0, b1);
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
    for (int64_t k = threadIdx.x; k < D; k += blockDim.x) {
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
        if (mx) val = fp4_f32_scaled(q) * 16384.0f * e8m0_f32(((const uint8_t *)scales)[gi]);
        else val = cuda_load_f32(sdt, scales, gi) * (float)q + cuda_load_f32(sdt, biases, gi);
        o[k] = val * scale;
    }
}

void nmlx_cuda_qembed(nmlx_backend *be, const nmlx_weight *table, const int32_t *ids_dev,
                      int64_t T, float scale, float *out) {
    cudaStream_t s = cuda_of(be)->stream;
    qembed_kernel<<<(unsigned)T, 256, 0, s>>>(
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

template <int BITS, bool MX>
static void launch(cudaStream_t s, const nmlx_weight *w, const nmlx_tensor *bias, const float *x,
                   float *y, int64_t T) {
    const int64_t D = w->rows, N = w->cols;
    const uint32_t *wp = (const uint32_t *)w->w.data;
    const bool wvec = (uintptr_t)wp % 16 == 0, xvec = (uintptr_t)x % 16 == 0;
    const void *lb = bias ? bias->data : NULL;
    const nmlx_dtype lbdt = bias ? bias->dtype : NMLX_DT_F32;
    if (T == 1) {
        const int64_t rows_per_block = QG_WARPS * QG_ROWS;
        const unsigned grid = (unsigned)((D + rows_per_block - 1) / rows_per_block);
        qgemv_kernel<BITS, MX><<<grid, 32 * QG_WARPS, 0, s>>>(
            wp, w->scales.data, w->biases.data, w->scales.dtype, w->group_size, x, y, D, N, lb,
            lbdt, wvec, xvec);
        return;
    }
    dim3 grid((unsigned)((D + QM_BM - 1) / QM_BM), (unsigned)((T + QM_BN - 1) / QM_BN));
    if (qmm_split())
        qmm_kernel<BITS, MX, true><<<grid, QM_THREADS, 0, s>>>(
            wp, w->scales.data, w->biases.data, w->scales.dtype, w->group_size, x, y, T, D, N, lb,
            lbdt, xvec);
    else
        qmm_kernel<BITS, MX, false><<<grid, QM_THREADS, 0, s>>>(
            wp, w->scales.data, w->biases.data, w->scales.dtype, w->group_size, x, y, T, D, N, lb,
            lbdt, xvec);
}

/* Quantized y[T, D] = x[T, N] @ W[D, N]^T (+ bias); the loaders validated
 * bits, group size and shapes (quant_layers.c). */
void nmlx_cuda_qmatmul(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                       const float *x, float *y, int64_t T) {
    cudaStream_t s = cuda_of(be)->stream;
    if (w->mode == NMLX_QUANT_MXFP4) {
        launch<4, true>(s, w, bias, x, y, T);
    } else {
        switch (w->bits) {
        case 2: launch<2, false>(s, w, bias, x, y, T); break;
        case 3: launch<3, false>(s, w, bias, x, y, T); break;
        case 4: launch<4, false>(s, w, bias, x, y, T); break;
        case 5: launch<5, false>(s, w, bias, x, y, T); break;
        case 6: launch<6, false>(s, w, bias, x, y, T); break;
        case 8: launch<8, false>(s, w, bias, x, y, T); break;
        default: nmlx_cuda_note(be, cudaErrorInvalidValue); return;
        }
    }
    nmlx_cuda_note(be, cudaGetLastError());
}
