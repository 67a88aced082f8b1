/* The MoE prefill's expert matmuls on the tensor-core tile of the fused
 * quantized mat-mat (cuda_qmm_fused.h's grouped form): one x prep for all
 * sorted rows (gathered from the tokens on the way: no separate gather),
 * then one launch a linear pair (gate and up) or linear (down) over every
 * (used expert, task of up to BM rows, BN weight rows).
 *
 * Why: the grouped few-rows kernel (cuda_moe_rows.cu) is a decode kernel,
 * each warp reloading its x fragments for every 32 inputs of a 16-row
 * tile. Qwen3-30B-A3B pp512 ran at 0.39x llama.cpp on the H100 with it
 * (bench/cuda/README.md, session 24). Here a block holds a BM x 64 tile of
 * x~ in shared memory for BN = 128 weight rows.
 *
 * Precision: x rounded once to f16 after a power-of-two scale per row, the
 * codes exact: the dense prefill's default (gemm1) contract, ~2^-11 of
 * sum |W x| (precision "f32" declines: the few-rows kernels keep f32 x).
 * Formats: affine 4/8-bit (groups 32-128, F32/F16/BF16 scales) and MXFP4;
 * the others take cuda_moe_rows.cu.
 *
 * NMLX_CUDA_MOE_QMM=0: declined (the few-rows kernel runs); =32 / =64: the
 * task rows (BM) forced; unset: 64 where the used experts average 64 rows
 * or more, else 32. */
#include "compute/cuda/cuda_qdecode.h" /* SC_* */
#include "compute/cuda/cuda_qmm_fused.h"

#include <stdlib.h>
#include <string.h>

static_assert(sizeof(qf_expert) == sizeof(moe_ptrs) &&
                  offsetof(qf_expert, s) == offsetof(moe_ptrs, s) &&
                  offsetof(qf_expert, bias) == offsetof(moe_ptrs, bias),
              "qf_expert is cuda_internal.h's moe_ptrs");

static unsigned long long qmm_launches; /* all backends of the process (tests) */
extern "C" unsigned long long nmlx_cuda_moe_qmm_launches(void) { return qmm_launches; }

/* -1: not read; 0: off; 32, 64: forced; 1: auto */
static int cfg_rows = -1;

static int read_cfg(void) {
    if (cfg_rows < 0) {
        const char *e = getenv("NMLX_CUDA_MOE_QMM");
        cfg_rows = !e || !*e ? 1 : atoi(e) == 32 ? 32 : atoi(e) == 64 ? 64 : strcmp(e, "0") ? 1 : 0;
    }
    return cfg_rows;
}

extern "C" void nmlx_cuda_set_moe_qmm(int rows) {
    cfg_rows = rows == 0 || rows == 1 || rows == 32 || rows == 64 ? rows : -1;
}

static int qf_dt(int sc) { return sc == SC_F16 ? QF_F16 : sc == SC_BF16 ? QF_BF16 : QF_F32; }
static int qf_bdt(nmlx_dtype dt) {
    return dt == NMLX_DT_F16 ? QF_F16 : dt == NMLX_DT_BF16 ? QF_BF16 : QF_F32;
}

bool nmlx_cuda_moe_qmm_ok(nmlx_backend *be, const moe_lin *l) {
    if (!read_cfg() || ((cuda_impl *)be->impl)->f32_x || !l->w16 || l->rows <= 0 || l->cols <= 0 ||
        l->cols % QF_BK || l->cols > INT32_MAX / 64 || l->rows > INT32_MAX)
        return false;
    /* gshift: log2(group size / 8) */
    if (l->sc == SC_E8M0) return l->bits == 4 && l->gshift == 2;
    const int gs = 8 << l->gshift;
    return (l->bits == 4 || l->bits == 8) && gs >= 32 && gs <= 128 && l->cols % gs == 0;
}

int nmlx_cuda_moe_qmm_rows(int64_t pairs, int64_t used) {
    const int r = read_cfg();
    if (r == 32 || r == 64) return r;
    return used > 0 && pairs >= 64 * used ? 64 : 32;
}

/* One instance's launch: blocks (D / BN, tasks, linears); false if its
 * shared memory cannot be had (raised past 48 KiB once per device). */
template <int BITS, int GS, int MT, bool MX>
static bool launch(nmlx_backend *be, const qf_group_args &g, int ntask, int nlin) {
    typedef qf_cfg<BITS, GS, MT, 4> C;
    static bool raised_on[16];
    const int dev = cuda_of(be)->device;
    bool *raised = dev >= 0 && dev < 16 ? &raised_on[dev] : NULL;
    if (C::SMEM > 48 * 1024 && !(raised && *raised)) {
        if (cudaFuncSetAttribute(qmm_fused_group_kernel<BITS, GS, MT, 4, MX>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 C::SMEM) != cudaSuccess) {
            (void)cudaGetLastError();
            return false;
        }
        if (raised) *raised = true;
    }
    const dim3 grid((unsigned)((g.D + C::BN - 1) / C::BN), (unsigned)ntask, (unsigned)nlin);
    qmm_fused_group_kernel<BITS, GS, MT, 4, MX>
        <<<grid, QF_THREADS, C::SMEM, cuda_of(be)->stream>>>(g);
    return true;
}

template <int BITS, int GS>
static bool launch_mt(nmlx_backend *be, int rows, const qf_group_args &g, int ntask, int nlin) {
    return rows == 64 ? launch<BITS, GS, 2, false>(be, g, ntask, nlin)
                      : launch<BITS, GS, 1, false>(be, g, ntask, nlin);
}

bool nmlx_cuda_moe_qmm(nmlx_backend *be, const moe_lin *l0, float *y0, const moe_lin *l1, float *y1,
                       const float *x, const int32_t *rows, int rdiv, int64_t P,
                       const int32_t *dtask, int ntask, int task_rows) {
    if (!nmlx_cuda_moe_qmm_ok(be, l0) || ntask <= 0 || ntask > 65535 || P <= 0 ||
        P > INT32_MAX / l0->cols || (task_rows != 32 && task_rows != 64))
        return false;
    if (l1 && (l1->bits != l0->bits || l1->sc != l0->sc || l1->gshift != l0->gshift ||
               l1->rows != l0->rows || l1->cols != l0->cols || !l1->w16))
        return false;
    const int64_t N = l0->cols, gs = 8 << l0->gshift, G = N / gs, Tp = (P + 3) & ~(int64_t)3;
    /* scratch (shared with cuda_qgemm.cu and the dense fused form): x~ [P, N]
     * f16, xs [G, Tp], ix [P] */
    const size_t o_xs = ((size_t)(P * N) * 2 + 255) & ~(size_t)255,
                 o_ix = o_xs + (((size_t)(G * Tp) * 4 + 255) & ~(size_t)255),
                 need = o_ix + (size_t)P * 4;
    if (!nmlx_cuda_qg_reserve(be, need)) return false;
    cuda_impl *c = cuda_of(be);
    cudaStream_t s = c->stream;
    char *base = (char *)c->qg;
    uint16_t *xt = (uint16_t *)base;
    float *xs = (float *)(base + o_xs), *ix = (float *)(base + o_ix);
    c->qg_x = NULL; /* the scratch's x~ is this one's now */
    if (l0->bits == 8)
        qf_xprep_kernel<8><<<(unsigned)P, QF_THREADS, QF_THREADS * 4, s>>>(x, rows, rdiv, N,
                                                                           (int)gs, Tp, xt, xs, ix);
    else
        qf_xprep_kernel<4><<<(unsigned)P, QF_THREADS, QF_THREADS * 4, s>>>(x, rows, rdiv, N,
                                                                           (int)gs, Tp, xt, xs, ix);
    qf_group_args g;
    memset(&g, 0, sizeof g);
    g.tab[0] = (const qf_expert *)l0->tab, g.y[0] = y0, g.lbdt[0] = qf_bdt(l0->bias_dt);
    g.tab[1] = l1 ? (const qf_expert *)l1->tab : g.tab[0], g.y[1] = l1 ? y1 : y0;
    g.lbdt[1] = l1 ? qf_bdt(l1->bias_dt) : g.lbdt[0];
    g.task = dtask, g.xt = xt, g.xs = xs, g.ix = ix;
    g.sdt = l0->sc == SC_E8M0 ? QF_E8M0 : qf_dt(l0->sc);
    g.D = l0->rows, g.N = N, g.Tp = Tp;
    g.y2 = g.D % 2 == 0 && (uintptr_t)y0 % 8 == 0 && (!l1 || (uintptr_t)y1 % 8 == 0);
    const int nlin = l1 ? 2 : 1;
    bool ok;
    if (l0->sc == SC_E8M0)
        ok = task_rows == 64 ? launch<4, 32, 2, true>(be, g, ntask, nlin)
                             : launch<4, 32, 1, true>(be, g, ntask, nlin);
    else if (l0->bits == 4)
        ok = gs == 32   ? launch_mt<4, 32>(be, task_rows, g, ntask, nlin)
             : gs == 64 ? launch_mt<4, 64>(be, task_rows, g, ntask, nlin)
                        : launch_mt<4, 128>(be, task_rows, g, ntask, nlin);
    else
        ok = gs == 32   ? launch_mt<8, 32>(be, task_rows, g, ntask, nlin)
             : gs == 64 ? launch_mt<8, 64>(be, task_rows, g, ntask, nlin)
                        : launch_mt<8, 128>(be, task_rows, g, ntask, nlin);
    nmlx_cuda_note(be, cudaGetLastError());
    if (ok) qmm_launches++;
    return ok;
}
