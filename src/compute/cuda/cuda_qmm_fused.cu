/* The fused quantized mat-mat's launch for one dense linear (opt-in:
 * NMLX_CUDA_QMM=fused); the kernels and their design: cuda_qmm_fused.h. */
#include "compute/cuda/cuda_qmm_fused.h"

#ifndef NMLX_QMM_EMU
namespace {

int fused_tile = 0;                /* nmlx_cuda_set_qmm_fused_tile: 0 auto, 128, 64 */
unsigned long long fused_launches; /* test hook */

int qf_dtype(nmlx_dtype dt) {
    return dt == NMLX_DT_F32    ? QF_F32
           : dt == NMLX_DT_F16  ? QF_F16
           : dt == NMLX_DT_BF16 ? QF_BF16
                                : -1;
}

size_t qf_align(size_t b) { return (b + 255) & ~(size_t)255; }

/* One instance's launch; false if its shared memory cannot be had (the
 * opt-in above 48 KiB, raised once per instance and device). */
template <int BITS, int GS, int MT, int NT> bool qf_launch(nmlx_backend *be, const qf_args &a) {
    typedef qf_cfg<BITS, GS, MT, NT> C;
    static bool raised_on[16];
    const int dev = cuda_of(be)->device;
    bool *raised = dev >= 0 && dev < 16 ? &raised_on[dev] : NULL;
    if (C::SMEM > 48 * 1024 && !(raised && *raised)) {
        if (cudaFuncSetAttribute(qmm_fused_kernel<BITS, GS, MT, NT>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 C::SMEM) != cudaSuccess) {
            (void)cudaGetLastError();
            return false;
        }
        if (raised) *raised = true;
    }
    const dim3 grid((unsigned)((a.D + C::BN - 1) / C::BN), (unsigned)((a.T + C::BM - 1) / C::BM));
    qmm_fused_kernel<BITS, GS, MT, NT><<<grid, QF_THREADS, C::SMEM, cuda_of(be)->stream>>>(a);
    return true;
}

template <int BITS, int GS> bool qf_launch_tile(nmlx_backend *be, const qf_args &a, bool big) {
    return big ? qf_launch<BITS, GS, 4, 4>(be, a) : qf_launch<BITS, GS, 2, 2>(be, a);
}

/* Big tiles (128 x 128) unless they would leave more than half the SMs
 * idle (k/v projections: 1024 rows); NMLX_CUDA_QMM_TILE=128 / 64 forces. */
bool qf_big_tile(nmlx_backend *be, int64_t T, int64_t D) {
    if (fused_tile == 0) {
        const char *e = getenv("NMLX_CUDA_QMM_TILE");
        fused_tile = e && atoi(e) == 64 ? 64 : e && atoi(e) == 128 ? 128 : -1;
    }
    if (fused_tile > 0) return fused_tile == 128;
    static int sms[16];
    const int dev = cuda_of(be)->device;
    int n = dev >= 0 && dev < 16 ? sms[dev] : 0;
    if (!n) {
        if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
            (void)cudaGetLastError();
            n = 132;
        }
        if (dev >= 0 && dev < 16) sms[dev] = n;
    }
    return ((D + 127) / 128) * ((T + 127) / 128) * 2 >= n;
}

} // namespace

extern "C" void nmlx_cuda_set_qmm_fused_tile(int tile) {
    fused_tile = tile == 64 || tile == 128 ? tile : 0;
}

extern "C" unsigned long long nmlx_cuda_qmm_fused_launches(void) { return fused_launches; }

bool nmlx_cuda_qmm_fused(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                         const float *x, float *y, int64_t T) {
    const int64_t D = w->rows, N = w->cols, gs = w->group_size;
    if (w->mode != NMLX_QUANT_AFFINE || (w->bits != 4 && w->bits != 8) ||
        (gs != 32 && gs != 64 && gs != 128) || N % QF_BK || N % gs || T < 1 || D < 1)
        return false;
    const int sdt = qf_dtype(w->scales.dtype), lbdt = bias ? qf_dtype(bias->dtype) : QF_F32;
    if (sdt < 0 || lbdt < 0 || !w->biases.data || w->biases.dtype != w->scales.dtype ||
        (uintptr_t)w->w.data % 16 || T > 65535LL * 64) /* grid.y: T / 64 blocks at most */
        return false;
    const int64_t G = N / gs, Tp = (T + 3) & ~(int64_t)3;
    /* scratch (shared with cuda_qgemm.cu): x~ [T, N] f16, xs [G, Tp], ix [T] */
    const size_t o_xs = qf_align((size_t)(T * N) * 2), o_ix = o_xs + qf_align((size_t)(G * Tp) * 4),
                 need = o_ix + (size_t)T * 4;
    if (!nmlx_cuda_qg_reserve(be, need)) return false;
    cuda_impl *c = cuda_of(be);
    cudaStream_t s = c->stream;
    char *base = (char *)c->qg;
    uint16_t *xt = (uint16_t *)base;
    float *xs = (float *)(base + o_xs), *ix = (float *)(base + o_ix);
    /* x prepared once for the weights of a matmul_multi of one format; the
     * form code stays clear of cuda_qgemm.cu's (0..3) */
    const int xform = 0x100 | w->bits << 4 | (int)(gs >> 5);
    if (!(c->qg_x_share && c->qg_x == x && c->qg_x_t == T && c->qg_x_n == N &&
          c->qg_x_form == xform)) {
        if (w->bits == 4)
            qf_xprep_kernel<4><<<(unsigned)T, QF_THREADS, QF_THREADS * 4, s>>>(
                x, NULL, 1, N, (int)gs, Tp, xt, xs, ix);
        else
            qf_xprep_kernel<8><<<(unsigned)T, QF_THREADS, QF_THREADS * 4, s>>>(
                x, NULL, 1, N, (int)gs, Tp, xt, xs, ix);
        c->qg_x = x, c->qg_x_t = T, c->qg_x_n = N, c->qg_x_form = xform;
    }
    qf_args a;
    a.xt = xt, a.xs = xs, a.ix = ix, a.w = (const uint8_t *)w->w.data;
    a.scales = w->scales.data, a.biases = w->biases.data, a.sdt = sdt;
    a.lb = bias ? bias->data : NULL, a.lbdt = lbdt, a.y = y;
    a.T = T, a.D = D, a.N = N, a.Tp = Tp;
    a.y2 = D % 2 == 0 && (uintptr_t)y % 8 == 0;
    const bool big = qf_big_tile(be, T, D);
    bool ok;
    if (w->bits == 4)
        ok = gs == 32   ? qf_launch_tile<4, 32>(be, a, big)
             : gs == 64 ? qf_launch_tile<4, 64>(be, a, big)
                        : qf_launch_tile<4, 128>(be, a, big);
    else
        ok = gs == 32   ? qf_launch_tile<8, 32>(be, a, big)
             : gs == 64 ? qf_launch_tile<8, 64>(be, a, big)
                        : qf_launch_tile<8, 128>(be, a, big);
    nmlx_cuda_note(be, cudaGetLastError());
    if (ok) fused_launches++;
    return ok;
}
#endif
