/* Quantized mat-mat for a few rows of x (2 <= T <= 64: the batched decode
 * steps of 2 to 64 sessions) on the tensor cores, weights read once.
 *
 * Why: the f32 rows kernel (cuda_quant.cu qgemv_rows_kernel) reloads x for
 * every few weight rows and does 8 f32 multiply-adds per code and token; at
 * 8 rows of x it runs far from the weight stream's bandwidth, and past 8 the
 * cuBLAS path dequantizes every weight to f16 first (several times the
 * bytes of a 4-bit weight). Here a warp multiplies 16 weight rows by up to
 * 8 tokens per mma.m16n8k16, so x is read once per 16 weight rows.
 *
 * Block: 16 rows of W, 8 warps taking the 32-input chunks of those rows in
 * turn (warp w: chunks w, w + 8, ...: together the block reads 128
 * contiguous bytes of a 4-bit row at a time), partial sums added in shared
 * memory in a fixed order (deterministic). Per chunk a thread decodes 8
 * codes of rows g and g + 8 (g = lane / 4) into bf16 (small integers and
 * E2M1 values: exact), takes 8 inputs of token g of each group of 8 tokens
 * as bf16 hi + lo (qx_split_kernel: x = hi + lo to ~2^-16), and the warp
 * multiplies codes by hi and by lo into f32. The chunk's f32 partial sums
 * then take the group's scale and bias (s * sum q x + b * sum x), as
 * qmm_kernel does: error ~1e-6 of the f32 reference, the same as the
 * cuBLAS path, not bf16 rounding.
 *
 * k order inside a chunk: mma's A fragment gives lane (g, c = lane % 4)
 * the k slots {2c, 2c+1, 2c+8, 2c+9} of each 16-wide half; the B fragment
 * gives the lane with the same c the same slots. A dot product does not
 * care which input sits in which slot as long as A and B agree, so slot s
 * of half h holds input 8c + 4h + (s % 2) + 2 (s >= 8) of the chunk: each
 * lane's slots are 8 consecutive inputs, one load of codes (BITS bytes)
 * and one 16-byte load of x hi (and of lo). */
#include "compute/cuda/cuda_backend.h"
#include "compute/cuda/cuda_internal.h"
#include "compute/cuda/cuda_qdecode.h"

#include <stdint.h>
#include <stdlib.h>

enum { QR_WARPS = 8, QR_ROWS = 16, QR_MAX_NT = 8 };

/* codes i and i + 1 of a 4-bit word as bf16 pair (128 + q via the exponent
 * of 128.0, then 128 subtracted: exact) */
__device__ __forceinline__ uint32_t qr_nib2(uint32_t w, int i) {
    const uint32_t v = w >> (4 * i);
    const uint32_t p = (v & 0xFu) | ((v & 0xF0u) << 12) | 0x43004300u;
    const __nv_bfloat162 r =
        __hsub2(*(const __nv_bfloat162 *)&p, __floats2bfloat162_rn(128.0f, 128.0f));
    return *(const uint32_t *)&r;
}

/* The 8 codes of a row piece as 4 bf16 pairs, in input order */
template <int BITS, bool MX> __device__ __forceinline__ void qr_codes(uint64_t v, uint32_t *p) {
    if (!MX && BITS == 4) {
#pragma unroll
        for (int j = 0; j < 4; j++)
            p[j] = qr_nib2((uint32_t)v, 2 * j);
    } else {
        float q[8];
        decode8<BITS, MX>(v, q); /* MXFP4: E2M1 * 2^-14, exact in bf16 */
#pragma unroll
        for (int j = 0; j < 4; j++)
            p[j] = pack_bf16(q[2 * j], q[2 * j + 1]);
    }
}

/* y[t, d] = sum_k x[t, k] W[d, k] (+ bias[d]) for t < T <= 8 NT. gshift =
 * log2(group_size / 32). x as hi, lo [T, N] bf16 and xs [T, N / 32] (chunk
 * sums), from qx_split_kernel. */
template <int BITS, int SC, int NT>
__global__ void __launch_bounds__(32 * QR_WARPS)
    qrows_mma_kernel(const uint32_t *w, const void *scales, const void *biases, int gshift,
                     const __nv_bfloat16 *xhi, const __nv_bfloat16 *xlo, const float *xs, float *y,
                     int T, int64_t D, int64_t N, const void *lbias, nmlx_dtype lbdt) {
    constexpr bool MX = SC == SC_E8M0;
    __shared__ float red[QR_WARPS][NT * 4][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, c4 = lane & 3;
    const int64_t d0 = (int64_t)blockIdx.x * QR_ROWS;
    const int64_t C = N / 32, G = N >> (gshift + 5);
    const int64_t da = d0 + g < D ? d0 + g : D - 1, db = d0 + g + 8 < D ? d0 + g + 8 : D - 1;
    const uint8_t *ra = (const uint8_t *)w + da * (N * BITS / 8),
                  *rb = (const uint8_t *)w + db * (N * BITS / 8);
    typedef typename sc_raw<SC>::t sct;
    const sct *sa = (const sct *)scales + da * G, *sb = (const sct *)scales + db * G;
    const sct *ba = MX ? sa : (const sct *)biases + da * G,
              *bb = MX ? sb : (const sct *)biases + db * G;
    /* this lane's token in each group of 8 (B fragment), and the two
     * tokens of its sums (C fragment); tokens past T read token 0 and are
     * not stored */
    int64_t xoff[NT];
    int tc[NT][2];
#pragma unroll
    for (int j = 0; j < NT; j++) {
        const int n = 8 * j + g;
        xoff[j] = (int64_t)(n < T ? n : 0) * N + 8 * c4;
        const int t0 = 8 * j + 2 * c4;
        tc[j][0] = t0 < T ? t0 : 0;
        tc[j][1] = t0 + 1 < T ? t0 + 1 : 0;
    }
    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int i = 0; i < 4; i++)
            acc[j][i] = 0.0f;
#pragma unroll 2
    for (int64_t ch = warp; ch < C; ch += QR_WARPS) {
        const int64_t gi = ch >> gshift;
        const uint64_t va = load8<BITS>(ra, (int)(ch * 4 + c4)),
                       vb = load8<BITS>(rb, (int)(ch * 4 + c4));
        const float fsa = sc_f32<SC>(__ldg(sa + gi)), fsb = sc_f32<SC>(__ldg(sb + gi));
        const float fba = MX ? 0.0f : sc_f32<SC>(__ldg(ba + gi)),
                    fbb = MX ? 0.0f : sc_f32<SC>(__ldg(bb + gi));
        uint4 xh[NT], xl[NT];
        float s0[NT], s1[NT];
#pragma unroll
        for (int j = 0; j < NT; j++) {
            xh[j] = __ldg((const uint4 *)(xhi + xoff[j] + ch * 32));
            xl[j] = __ldg((const uint4 *)(xlo + xoff[j] + ch * 32));
            s0[j] = MX ? 0.0f : __ldg(xs + tc[j][0] * C + ch);
            s1[j] = MX ? 0.0f : __ldg(xs + tc[j][1] * C + ch);
        }
        uint32_t pa[4], pb[4];
        qr_codes<BITS, MX>(va, pa);
        qr_codes<BITS, MX>(vb, pb);
        /* A fragments of the two halves (slots 2c, 2c+1 | 2c+8, 2c+9) */
        const uint32_t a0[4] = {pa[0], pb[0], pa[1], pb[1]}, a1[4] = {pa[2], pb[2], pa[3], pb[3]};
        const float pk = MX ? 16384.0f : 1.0f; /* MXFP4: the codes' 2^-14 back (exact) */
#pragma unroll
        for (int j = 0; j < NT; j++) {
            float p[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            mma_bf16(p, a0, xh[j].x, xh[j].y);
            mma_bf16(p, a0, xl[j].x, xl[j].y);
            mma_bf16(p, a1, xh[j].z, xh[j].w);
            mma_bf16(p, a1, xl[j].z, xl[j].w);
            acc[j][0] = fmaf(fsa, p[0] * pk, fmaf(fba, s0[j], acc[j][0]));
            acc[j][1] = fmaf(fsa, p[1] * pk, fmaf(fba, s1[j], acc[j][1]));
            acc[j][2] = fmaf(fsb, p[2] * pk, fmaf(fbb, s0[j], acc[j][2]));
            acc[j][3] = fmaf(fsb, p[3] * pk, fmaf(fbb, s1[j], acc[j][3]));
        }
    }
#pragma unroll
    for (int j = 0; j < NT; j++)
#pragma unroll
        for (int i = 0; i < 4; i++)
            red[warp][j * 4 + i][lane] = acc[j][i];
    __syncthreads();
    for (int v = threadIdx.x; v < NT * 4 * 32; v += 32 * QR_WARPS) {
        const int e = v >> 5, l = v & 31, j = e >> 2, i = e & 3;
        const int64_t d = d0 + (l >> 2) + (i >= 2 ? 8 : 0);
        const int t = 8 * j + 2 * (l & 3) + (i & 1);
        if (d >= D || t >= T) continue;
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < QR_WARPS; k++)
            s += red[k][e][l];
        y[(int64_t)t * D + d] = s + (lbias ? cuda_load_f32(lbdt, lbias, d) : 0.0f);
    }
}

template <int BITS, int SC, int NT>
static void launch_nt(cudaStream_t s, const nmlx_weight *w, const nmlx_cuda_qx *qx, float *y, int T,
                      const void *lb, nmlx_dtype lbdt) {
    int gshift = 0;
    while ((32 << gshift) < w->group_size)
        gshift++;
    const unsigned grid = (unsigned)((w->rows + QR_ROWS - 1) / QR_ROWS);
    qrows_mma_kernel<BITS, SC, NT><<<grid, 32 * QR_WARPS, 0, s>>>(
        (const uint32_t *)w->w.data, w->scales.data, w->biases.data, gshift, qx->hi, qx->lo, qx->xs,
        y, T, w->rows, w->cols, lb, lbdt);
}

template <int BITS, int SC>
static void launch_sc(cudaStream_t s, const nmlx_weight *w, const nmlx_cuda_qx *qx, float *y, int T,
                      const void *lb, nmlx_dtype lbdt) {
    if (T <= 8)
        launch_nt<BITS, SC, 1>(s, w, qx, y, T, lb, lbdt);
    else if (T <= 16)
        launch_nt<BITS, SC, 2>(s, w, qx, y, T, lb, lbdt);
    else if (T <= 32)
        launch_nt<BITS, SC, 4>(s, w, qx, y, T, lb, lbdt);
    else
        launch_nt<BITS, SC, 8>(s, w, qx, y, T, lb, lbdt);
}

template <int BITS>
static void launch_bits(cudaStream_t s, const nmlx_weight *w, const nmlx_cuda_qx *qx, float *y,
                        int T, const void *lb, nmlx_dtype lbdt) {
    if (w->mode == NMLX_QUANT_MXFP4) {
        if constexpr (BITS == 4) launch_sc<4, SC_E8M0>(s, w, qx, y, T, lb, lbdt);
    } else if (w->scales.dtype == NMLX_DT_F32)
        launch_sc<BITS, SC_F32>(s, w, qx, y, T, lb, lbdt);
    else if (w->scales.dtype == NMLX_DT_F16)
        launch_sc<BITS, SC_F16>(s, w, qx, y, T, lb, lbdt);
    else
        launch_sc<BITS, SC_BF16>(s, w, qx, y, T, lb, lbdt);
}

/* Most rows of x the kernel takes (NMLX_CUDA_QROWS_MMA_T; 0 or 1: off). */
static int qrows_mma_max = -1;

static int clamp_limit(int v) { return v < 0 ? 0 : v > 8 * QR_MAX_NT ? 8 * QR_MAX_NT : v; }

static int qrows_mma_limit(void) {
    if (qrows_mma_max < 0) {
        const char *e = getenv("NMLX_CUDA_QROWS_MMA_T");
        qrows_mma_max = clamp_limit(e ? atoi(e) : NMLX_CUDA_QROWS_MMA_T_DEFAULT);
    }
    return qrows_mma_max;
}

extern "C" void nmlx_cuda_set_qrows_mma(int max_t) {
    qrows_mma_max = max_t < 0 ? -1 : clamp_limit(max_t); /* -1: the environment's again */
}

bool nmlx_cuda_qrows_mma(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                         const float *x, float *y, int64_t T) {
    if (T < 2 || T > qrows_mma_limit() || ((cuda_impl *)be->impl)->f32_x) return false;
    const bool mx = w->mode == NMLX_QUANT_MXFP4;
    if (!(mx ? w->bits == 4 && w->group_size == 32
             : w->mode == NMLX_QUANT_AFFINE && w->bits >= 2 && w->bits <= 8 && w->bits != 7 &&
                   (w->group_size == 32 || w->group_size == 64 || w->group_size == 128)) ||
        w->cols % 32)
        return false;
    nmlx_cuda_qx qx;
    if (!nmlx_cuda_qx_split(be, x, T, w->cols, &qx)) return false;
    cudaStream_t s = cuda_of(be)->stream;
    const void *lb = bias ? bias->data : NULL;
    const nmlx_dtype lbdt = bias ? bias->dtype : NMLX_DT_F32;
    const int t = (int)T;
    switch (w->bits) {
    case 2: launch_bits<2>(s, w, &qx, y, t, lb, lbdt); break;
    case 3: launch_bits<3>(s, w, &qx, y, t, lb, lbdt); break;
    case 4: launch_bits<4>(s, w, &qx, y, t, lb, lbdt); break;
    case 5: launch_bits<5>(s, w, &qx, y, t, lb, lbdt); break;
    case 6: launch_bits<6>(s, w, &qx, y, t, lb, lbdt); break;
    default: launch_bits<8>(s, w, &qx, y, t, lb, lbdt); break;
    }
    nmlx_cuda_note(be, cudaGetLastError());
    return true;
}
