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
#include "compute/cuda/cuda_backend.h"
#include "compute/cuda/cuda_internal.h"
#include "compute/cuda/cuda_qdecode.h"
#include "compute/cuda/cuda_qrows2.h"
#include "compute/cuda/cuda_qrows3.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* cuda_qrows2.h's primitives on the device */
__device__ __forceinline__ qr2_u4 qr2_ldg16(const void *p) {
    const uint4 v = __ldg((const uint4 *)p);
    return qr2_u4{v.x, v.y, v.z, v.w};
}
__device__ __forceinline__ void qr2_mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    mma_bf16(c, a, b0, b1);
}
__device__ __forceinline__ uint32_t qr2_sub128x2(uint32_t p) {
    const __nv_bfloat162 r =
        __hsub2(*(const __nv_bfloat162 *)&p, __floats2bfloat162_rn(128.0f, 128.0f));
    return *(const uint32_t *)&r;
}
__device__ __forceinline__ uint32_t qr2_pack_bf16(float lo, float hi) { return pack_bf16(lo, hi); }
__device__ __forceinline__ float qr2_h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ void qr2_pdl() {
    cuda_pdl_trigger();
    cuda_pdl_wait();
}
/* cuda_qrows3.h's */
__device__ __forceinline__ unsigned char *qr3_smem() {
    extern __shared__ __align__(16) unsigned char qr3_dyn[];
    return qr3_dyn;
}
__device__ __forceinline__ qr2_u4 qr3_lds16(const unsigned char *p) {
    const uint4 v = *(const uint4 *)p;
    return qr2_u4{v.x, v.y, v.z, v.w};
}
__device__ __forceinline__ float qr3_ldsf(const unsigned char *p) { return *(const float *)p; }
__device__ __forceinline__ void qr3_sts16(unsigned char *p, qr2_u4 v) {
    *(uint4 *)p = make_uint4(v.x, v.y, v.z, v.w);
}
__device__ __forceinline__ void qr3_stsf(unsigned char *p, float v) { *(float *)p = v; }

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

/* The kernel choice: version 1, 2 or 3 (NMLX_CUDA_QROWS=v1 / v2 / v3), or
 * 0 (the default): v3 up to QR3_AUTO_T rows of x, v2 past them,
 * v2's (and v3's) m16 tiles a warp (0: by T), row groups a block, blocks
 * per SM target for split-K (0: no split) and a forced split count (0:
 * from the target). */
typedef struct qr_cfg {
    int version, mt, wr, bps, split;
} qr_cfg;
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

static unsigned long long qr2_launch_count, qr3_launch_count;
extern "C" unsigned long long nmlx_cuda_qrows2_launches(void) { return qr2_launch_count; }
extern "C" unsigned long long nmlx_cuda_qrows3_launches(void) { return qr3_launch_count; }

/* The split-K scratch: partial sums and the row blocks' counters (zeroed
 * once, then put back to 0 by each launch's last blocks). */
static bool qr2_reserve(nmlx_backend *be, size_t part_bytes, int64_t ncnt) {
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
static int qr3_smem_optin(int dev) {
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

/* v3 (x3: the f32 x): v2's grid and split, the block's shared memory for
 * x in pieces; false where it declines (more shared memory than the GPU
 * gives a block: never on sm_90, at most ~80 KB), nothing launched */
template <int BITS, int SC, int NT, int MT>
static bool launch3(nmlx_backend *be, const qr2_args &a, const float *x3, int64_t rblocks) {
    constexpr bool MX = SC == QR2_SC_E8M0;
    cuda_impl *c = cuda_of(be);
    const int dev = ((cuda_impl *)be->impl)->device, RB = 16 * MT * a.wr;
    const int optin = qr3_smem_optin(dev);
    const int budget = qr3_budget(MT, NT, optin);
    qr3_args b;
    memset(&b, 0, sizeof b);
    b.w = a.w, b.scales = a.scales, b.biases = a.biases, b.gshift = a.gshift;
    b.x = x3, b.xvec = (uintptr_t)x3 % 16 == 0;
    b.y = a.y, b.part = a.part, b.cnt = a.cnt, b.lbias = a.lbias, b.lbdt = a.lbdt;
    b.T = a.T, b.S = a.S, b.wr = a.wr, b.D = a.D, b.N = a.N;
    b.pc = qr3_pick_pc(a.T, (int)(a.N / 32), a.S, a.wr, RB, a.gshift, NT, MX, budget);
    const qr3_layout L = qr3_layout_of(a.T, b.pc, RB, a.gshift, NT, MX);
    if (L.bytes > optin) return false;
    static int attr_bytes[64]; /* this instantiation's opt-in so far, per device */
    int *ab = &attr_bytes[dev >= 0 && dev < 64 ? dev : 0];
    if (L.bytes > *ab) {
        const int want = L.bytes > budget ? L.bytes : budget;
        if (cudaFuncSetAttribute(qrows3_kernel<BITS, SC, NT, MT>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 want) != cudaSuccess) {
            (void)cudaGetLastError();
            return false;
        }
        /* shared memory first (2 blocks of ~100 KB an SM; the codes are read once) */
        (void)cudaFuncSetAttribute(qrows3_kernel<BITS, SC, NT, MT>,
                                   cudaFuncAttributePreferredSharedMemoryCarveout,
                                   cudaSharedmemCarveoutMaxShared);
        (void)cudaGetLastError();
        *ab = want;
    }
    const dim3 grid((unsigned)rblocks, (unsigned)a.S);
    /* launched early with NMLX_CUDA_PDL_BATCH=1 (a batched step is launched kernel by kernel) */
    nmlx_cuda_note(be, cuda_launch_pdl_batch(qrows3_kernel<BITS, SC, NT, MT>, grid,
                                             dim3(QR2_THREADS), (size_t)L.bytes, c->stream, b));
    qr3_launch_count++;
    return true;
}

/* v2 (x3 NULL: qx_split's output in a) or v3 (x3: the f32 x); false where
 * v3 declines */
template <int BITS, int SC, int NT, int MT>
static bool launch2_mt(nmlx_backend *be, const qr_cfg &cfg, qr2_args a, const float *x3) {
    /* one row group a block by default: the H100 sweep (bench/cuda/README.md,
     * session 13) put mt=2, wr=1 first at every T (T = 8: 5.27 ms of step
     * matmuls against 5.43 with wr by T; T = 64: 14.6 against 25.4) */
    a.wr = cfg.wr ? cfg.wr : 1;
    const int64_t RB = 16 * MT * a.wr, rblocks = (a.D + RB - 1) / RB, C = a.N / 32;
    int64_t S = 1;
    if (cfg.split > 0)
        S = cfg.split;
    else if (cfg.bps > 0) {
        const int64_t target = (int64_t)cfg.bps * nmlx_cuda_sm_count();
        S = target / rblocks;                        /* whole waves: never a few blocks past one */
        const int64_t most = C / (QR2_WARPS / a.wr); /* a chunk a warp at least */
        S = S > most ? most : S;
    }
    S = S < 1 ? 1 : S > 64 ? 64 : S > C ? C : S;
    /* partials capped at 256 MiB (never near: S > 1 only for few row blocks) */
    while (S > 1 && (size_t)S * (size_t)a.T * (size_t)a.D * 4 > ((size_t)256 << 20))
        S--;
    if (S > 1 && !qr2_reserve(be, (size_t)S * (size_t)a.T * (size_t)a.D * 4, rblocks)) S = 1;
    cuda_impl *c = cuda_of(be);
    a.S = (int)S;
    a.part = S > 1 ? c->qr_part : NULL;
    a.cnt = S > 1 ? c->qr_cnt : NULL;
    if (x3) return launch3<BITS, SC, NT, MT>(be, a, x3, rblocks);
    const dim3 grid((unsigned)rblocks, (unsigned)S);
    nmlx_cuda_note(be, cuda_launch_pdl_batch(qrows2_kernel<BITS, SC, NT, MT>, grid,
                                             dim3(QR2_THREADS), 0, c->stream, a)); /* as launch3 */
    qr2_launch_count++;
    return true;
}

template <int BITS, int SC, int NT>
static bool launch2_nt(nmlx_backend *be, const qr_cfg &cfg, const qr2_args &a, const float *x3) {
    /* m16 tiles a warp (MT x NT <= 16 accumulator quads); by default 2 (the
     * H100 sweep's best at every T, above) */
    if constexpr (NT == 8) {
        if (cfg.mt == 1)
            return launch2_mt<BITS, SC, NT, 1>(be, cfg, a, x3);
        else
            return launch2_mt<BITS, SC, NT, 2>(be, cfg, a, x3);
    } else if constexpr (NT == 1) {
        if (cfg.mt == 4)
            return launch2_mt<BITS, SC, NT, 4>(be, cfg, a, x3);
        else
            return launch2_mt<BITS, SC, NT, 2>(be, cfg, a, x3);
    } else {
        if (cfg.mt == 4)
            return launch2_mt<BITS, SC, NT, 4>(be, cfg, a, x3);
        else
            return launch2_mt<BITS, SC, NT, 2>(be, cfg, a, x3);
    }
}

template <int BITS, int SC>
static bool launch2_sc(nmlx_backend *be, const qr_cfg &cfg, const qr2_args &a, const float *x3) {
    if (a.T <= 8) return launch2_nt<BITS, SC, 1>(be, cfg, a, x3);
    if (a.T <= 16) return launch2_nt<BITS, SC, 2>(be, cfg, a, x3);
    if (a.T <= 32) return launch2_nt<BITS, SC, 4>(be, cfg, a, x3);
    return launch2_nt<BITS, SC, 8>(be, cfg, a, x3);
}

template <int BITS>
static bool launch2_bits(nmlx_backend *be, const qr_cfg &cfg, const nmlx_weight *w,
                         const qr2_args &a, const float *x3) {
    if (w->mode == NMLX_QUANT_MXFP4) {
        if constexpr (BITS == 4) return launch2_sc<4, SC_E8M0>(be, cfg, a, x3);
        return false;
    }
    if (w->scales.dtype == NMLX_DT_F32) return launch2_sc<BITS, SC_F32>(be, cfg, a, x3);
    if (w->scales.dtype == NMLX_DT_F16) return launch2_sc<BITS, SC_F16>(be, cfg, a, x3);
    return launch2_sc<BITS, SC_BF16>(be, cfg, a, x3);
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
    case 2: return launch2_bits<2>(be, cfg, w, a, x3);
    case 3: return launch2_bits<3>(be, cfg, w, a, x3);
    case 4: return launch2_bits<4>(be, cfg, w, a, x3);
    case 5: return launch2_bits<5>(be, cfg, w, a, x3);
    case 6: return launch2_bits<6>(be, cfg, w, a, x3);
    default: return launch2_bits<8>(be, cfg, w, a, x3);
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
