/* The few-rows kernels v2 / v3 (cuda_qrows2.h, cuda_qrows3.h) on the device:
 * their primitives, the kernel choice and the launch templates, shared by
 * cuda_qrows_mma.cu (the entry point, v1, the configuration and the
 * split-K scratch) and the units that instantiate the kernels a few bit
 * widths each (cuda_qrows_b4.cu, _b8.cu, _b23.cu, _b56.cu). Why split:
 * every (bits, scales, token tiles, m16 tiles) form of v2 and v3 in one
 * translation unit took ~135 s to compile, twice the next slowest, and set
 * the length of every build on the GPU machine (~200 s a device call); in
 * four units they compile side by side. */
#ifndef NMLX_CUDA_QROWS_LAUNCH_H
#define NMLX_CUDA_QROWS_LAUNCH_H

#include "compute/cuda/cuda_backend.h"
#include "compute/cuda/cuda_internal.h"
#include "compute/cuda/cuda_qdecode.h"
#include "compute/cuda/cuda_qrows2.h"
#include "compute/cuda/cuda_qrows3.h"

#include <stdint.h>
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

/* The kernel choice: version 1, 2 or 3 (NMLX_CUDA_QROWS=v1 / v2 / v3), or
 * 0 (the default): v3 up to QR3_AUTO_T rows of x, v2 past them,
 * v2's (and v3's) m16 tiles a warp (0: by T), row groups a block, blocks
 * per SM target for split-K (0: no split) and a forced split count (0:
 * from the target). */
typedef struct qr_cfg {
    int version, mt, wr, bps, split;
} qr_cfg;

/* cuda_qrows_mma.cu's: launch counts (test hooks), the split-K scratch,
 * the shared memory a block may opt in to */
extern unsigned long long qr2_launch_count, qr3_launch_count;
bool qr2_reserve(nmlx_backend *be, size_t part_bytes, int64_t ncnt);
int qr3_smem_optin(int dev);

/* v2 (x3 NULL: qx_split's output in a) or v3 (x3: the f32 x) of a weight
 * of each bit width; false where v3 declines (shared memory) or the form
 * does not exist. One unit each (see the top). */
bool nmlx_qrows_v2_b2(nmlx_backend *be, const qr_cfg &cfg, const nmlx_weight *w, const qr2_args &a,
                      const float *x3);
bool nmlx_qrows_v2_b3(nmlx_backend *be, const qr_cfg &cfg, const nmlx_weight *w, const qr2_args &a,
                      const float *x3);
bool nmlx_qrows_v2_b4(nmlx_backend *be, const qr_cfg &cfg, const nmlx_weight *w, const qr2_args &a,
                      const float *x3);
bool nmlx_qrows_v2_b5(nmlx_backend *be, const qr_cfg &cfg, const nmlx_weight *w, const qr2_args &a,
                      const float *x3);
bool nmlx_qrows_v2_b6(nmlx_backend *be, const qr_cfg &cfg, const nmlx_weight *w, const qr2_args &a,
                      const float *x3);
bool nmlx_qrows_v2_b8(nmlx_backend *be, const qr_cfg &cfg, const nmlx_weight *w, const qr2_args &a,
                      const float *x3);

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

#endif
