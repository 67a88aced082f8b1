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
 * and one 16-byte load of x hi (and of lo).
 *
 * That is v1 (NMLX_CUDA_QROWS=v1). The default is v2 (cuda_qrows2.h: each
 * warp over 2-4 m16 tiles, split-K over blocks with a deterministic
 * last-block reduction; its header says why and what it should measure);
 * NMLX_CUDA_QROWS_CFG="mt=M,wr=R,bps=B,split=S" tunes it (mt 1/2/4: m16
 * tiles a warp; wr 1/2/4/8: row groups a block; bps: blocks per SM the
 * split-K aims at, 0 = no split; split: a fixed split count, for tests;
 * mt, wr absent or 0: 2 and 1, the H100 sweep's best). Measured (H100,
 * 8B q4 step matmuls): 1.19x v1 at T = 8, 1.37x at T = 64; far from the
 * single-token mat-vec's bandwidth still (4096x4096 at T = 8: 18 us).
 * v3 (cuda_qrows3.h): v2's forms and bits without the qx_split launch, each
 * block staging its x and scales in shared memory; the same
 * NMLX_CUDA_QROWS_CFG tunes it. Measured (H100, session 16, bench_cuda_quant
 * rows, 8B q4 step matmuls): 1.14x v2 at T = 2, 1.07x at T = 4, 0.95x at 8,
 * 0.75x at 16, so the default (version 0) takes v3 up to T = 4 and v2 past
 * it; NMLX_CUDA_QROWS=v2 / v3 forces one. */
enum { QR3_AUTO_T = 4 };
#include "compute/cuda/cuda_qrows_launch.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* ---- v2 (cuda_qrows2.h) ---- */
static_assert((int)QR2_SC_F32 == (int)SC_F32 && (int)QR2_SC_F16 == (int)SC_F16 &&
                  (int)QR2_SC_BF16 == (int)SC_BF16 && (int)QR2_SC_E8M0 == (int)SC_E8M0,
              "scale storage codes");

static qr_cfg qr_env_cfg, qr_set_cfg;
static bool qr_env_read, qr_set_on;

static void qr_parse(qr_cfg *c) {
    c->version = 0, c->mt = 0, c->wr = 0, c->bps = 2, c->split = 0;
    const char *v = getenv("NMLX_CUDA_QROWS");
    if (v && (!strcmp(v, "v2") || !strcmp(v, "2"))) c->version = 2;
    if (v && (!strcmp(v, "v1") || !strcmp(v, "1"))) c->version = 1;
    if (v && (!strcmp(v, "v3") || !strcmp(v, "3"))) c->version = 3;
    const char *e = getenv("NMLX_CUDA_QROWS_CFG");
    while (e && *e) {
        int n = 0;
        if (sscanf(e, "mt=%d", &n) == 1)
            c->mt = n == 1 || n == 2 || n == 4 ? n : 0;
        else if (sscanf(e, "wr=%d", &n) == 1)
            c->wr = n == 1 || n == 2 || n == 4 || n == 8 ? n : 0;
        else if (sscanf(e, "bps=%d", &n) == 1)
            c->bps = n < 0 ? 0 : n > 64 ? 64 : n;
        else if (sscanf(e, "split=%d", &n) == 1)
            c->split = n < 0 ? 0 : n > 64 ? 64 : n;
        e = strchr(e, ',');
        if (e) e++;
    }
}

static qr_cfg qr_get_cfg(void) {
    if (qr_set_on) return qr_set_cfg;
    if (!qr_env_read) qr_parse(&qr_env_cfg), qr_env_read = true;
    return qr_env_cfg;
}

extern "C" void nmlx_cuda_set_qrows_kernel(int version, int mt, int wr, int bps, int split) {
    if (version < 0) {
        qr_set_on = false;
        return;
    }
    qr_set_cfg.version = version <= 3 ? version : 2;
    qr_set_cfg.mt = mt == 1 || mt == 2 || mt == 4 ? mt : 0;
    qr_set_cfg.wr = wr == 1 || wr == 2 || wr == 4 || wr == 8 ? wr : 0;
    qr_set_cfg.bps = bps < 0 ? 0 : bps > 64 ? 64 : bps;
    qr_set_cfg.split = split < 0 ? 0 : split > 64 ? 64 : split;
    qr_set_on = true;
}

unsigned long long qr2_launch_count, qr3_launch_count;
extern "C" unsigned long long nmlx_cuda_qrows2_launches(void) { return qr2_launch_count; }
extern "C" unsigned long long nmlx_cuda_qrows3_launches(void) { return qr3_launch_count; }

/* The split-K scratch: partial sums and the row blocks' counters (zeroed
 * once, then put back to 0 by each launch's last blocks). */
bool qr2_reserve(nmlx_backend *be, size_t part_bytes, int64_t ncnt) {
    cuda_impl *c = (cuda_impl *)be->impl;
    if (part_bytes <= c->qr_part_bytes && (size_t)ncnt <= c->qr_cnt_n) return true;
    c = cuda_host_of(be); /* no allocation inside a graph capture */
    cudaStreamSynchronize(c->stream);
    if (part_bytes > c->qr_part_bytes) {
        if (c->qr_part) cudaFree(c->qr_part);
        c->qr_part = NULL, c->qr_part_bytes = 0;
        if (cudaMalloc(&c->qr_part, part_bytes) != cudaSuccess) {
            c->qr_part = NULL;
            (void)cudaGetLastError();
            return false;
        }
        c->qr_part_bytes = part_bytes;
    }
    if ((size_t)ncnt > c->qr_cnt_n) {
        const size_t n = (size_t)ncnt < 4096 ? 4096 : (size_t)ncnt;
        if (c->qr_cnt) cudaFree(c->qr_cnt);
        c->qr_cnt = NULL, c->qr_cnt_n = 0;
        if (cudaMalloc(&c->qr_cnt, n * sizeof(unsigned)) != cudaSuccess) {
            c->qr_cnt = NULL;
            (void)cudaGetLastError();
            return false;
        }
        if (cudaMemsetAsync(c->qr_cnt, 0, n * sizeof(unsigned), c->stream) != cudaSuccess) {
            (void)cudaGetLastError();
            return false;
        }
        c->qr_cnt_n = n;
    }
    return true;
}

/* the most dynamic shared memory a block may opt in to (sm_90: 227 KB) */
int qr3_smem_optin(int dev) {
    static int optin[64];
    if (dev < 0 || dev >= 64) return QR3_SMEM_MAX;
    if (!optin[dev]) {
        int n = 0;
        if (cudaDeviceGetAttribute(&n, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) !=
                cudaSuccess ||
            n <= 0) {
            (void)cudaGetLastError();
            n = 48 * 1024;
        }
        optin[dev] = n;
    }
    return optin[dev];
}

/* v2 (qx: qx_split's output) or v3 (qx NULL, x3 the f32 x); false where v3
 * declines */
static bool launch_v2(nmlx_backend *be, const qr_cfg &cfg, const nmlx_weight *w,
                      const nmlx_cuda_qx *qx, const float *x3, float *y, int T, const void *lb,
                      nmlx_dtype lbdt) {
    qr2_args a;
    memset(&a, 0, sizeof a);
    int gshift = 0;
    while ((32 << gshift) < w->group_size)
        gshift++;
    a.w = (const uint8_t *)w->w.data, a.scales = w->scales.data, a.biases = w->biases.data;
    a.gshift = gshift;
    if (qx) a.xhi = (const uint16_t *)qx->hi, a.xlo = (const uint16_t *)qx->lo, a.xs = qx->xs;
    a.y = y, a.lbias = lb;
    a.lbdt = lbdt == NMLX_DT_F16 ? QR2_B_F16 : lbdt == NMLX_DT_BF16 ? QR2_B_BF16 : QR2_B_F32;
    a.T = T, a.S = 1, a.D = w->rows, a.N = w->cols;
    switch (w->bits) {
    case 2: return nmlx_qrows_v2_b2(be, cfg, w, a, x3);
    case 3: return nmlx_qrows_v2_b3(be, cfg, w, a, x3);
    case 4: return nmlx_qrows_v2_b4(be, cfg, w, a, x3);
    case 5: return nmlx_qrows_v2_b5(be, cfg, w, a, x3);
    case 6: return nmlx_qrows_v2_b6(be, cfg, w, a, x3);
    default: return nmlx_qrows_v2_b8(be, cfg, w, a, x3);
    }
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

int nmlx_cuda_qrows_mma_max_t(void) { return qrows_mma_limit(); }

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
    const void *lb = bias ? bias->data : NULL;
    const nmlx_dtype lbdt = bias ? bias->dtype : NMLX_DT_F32;
    const int t = (int)T;
    const qr_cfg cfg = qr_get_cfg();
    /* v3: x staged by the kernel itself (no qx_split launch); where it
     * declines (shared memory), v2 */
    const bool v3 = cfg.version == 3 || (cfg.version == 0 && t <= QR3_AUTO_T);
    if (v3 && launch_v2(be, cfg, w, NULL, x, y, t, lb, lbdt)) {
        nmlx_cuda_note(be, cudaGetLastError());
        return true;
    }
    nmlx_cuda_qx qx;
    if (!nmlx_cuda_qx_split(be, x, T, w->cols, &qx)) return false;
    if (cfg.version != 1) {
        launch_v2(be, cfg, w, &qx, NULL, y, t, lb, lbdt);
        nmlx_cuda_note(be, cudaGetLastError());
        return true;
    }
    cudaStream_t s = cuda_of(be)->stream;
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
