/* The MoE prefill's expert matmuls as one launch a linear (gate and up
 * together): cuda_qrows2_group.h's kernel over every (expert, row tile),
 * after one x split for all rows. cuda_moe.cu builds the tasks and calls it
 * from its prefill form; where it declines (dense experts, group sizes
 * past 128, precision "f32"), that form runs its per-expert matmuls.
 *
 * Four token tiles (NT = 4: tasks of up to 32 rows; NT = 8 spilled 120-180
 * bytes at 128 registers), two m16 tiles a warp (MT = 2) and 4 row groups
 * a block (128 weight rows: each x chunk a block loads serves 4 warps).
 * H100, pp512 tok/s by NMLX_CUDA_MOE_CFG (bench/cuda/README.md, session
 * 24; runs differ by up to ~15%):
 *                  mt=1,wr=4  mt=1,wr=8  mt=2,wr=1  mt=2,wr=2     mt=2,wr=4  mt=2,wr=8
 *   Qwen3-30B-A3B    4,466      4,475      4,697    4,066-4,873     4,849      4,858
 *   GPT-OSS-20B      7,536      7,319      8,336      8,348         8,580      7,992
 * (mt=1 takes no spill at 128 registers; mt=2 spills 40-72 bytes and is
 * faster.) */
#include "compute/cuda/cuda_qrows2_group.h"
#include "compute/cuda/cuda_qrows_launch.h"

#include <stdlib.h>
#include <string.h>

static_assert(sizeof(qr2_expert) == sizeof(moe_ptrs) &&
                  offsetof(qr2_expert, s) == offsetof(moe_ptrs, s) &&
                  offsetof(qr2_expert, bias) == offsetof(moe_ptrs, bias),
              "qr2_expert is cuda_internal.h's moe_ptrs");
static_assert(8 * 4 == NMLX_CUDA_MOE_TASK_ROWS, "tasks of 8 NT rows");

/* launches of the grouped kernel, all backends of the process (tests) */
static unsigned long long group_launches;
extern "C" unsigned long long nmlx_cuda_moe_rows_launches(void) { return group_launches; }

static int qr2_lbdt(nmlx_dtype dt) {
    return dt == NMLX_DT_F16 ? QR2_B_F16 : dt == NMLX_DT_BF16 ? QR2_B_BF16 : QR2_B_F32;
}

/* NMLX_CUDA_MOE_CFG=mt=M,wr=R: m16 tiles a warp (1, 2) and row groups a
 * block (1, 2, 4, 8), default mt=2,wr=4; grouped=0: declined (the
 * per-expert matmuls) */
static int cfg_mt = 0, cfg_wr = 0;
static bool cfg_off;

static void read_cfg(void) {
    if (cfg_mt) return;
    cfg_mt = 2, cfg_wr = 4;
    const char *e = getenv("NMLX_CUDA_MOE_CFG");
    if (!e) return;
    cfg_off = strstr(e, "grouped=0") != NULL;
    const char *p = strstr(e, "mt=");
    if (p && (p[3] == '1' || p[3] == '2')) cfg_mt = p[3] - '0';
    p = strstr(e, "wr=");
    if (p && (p[3] == '1' || p[3] == '2' || p[3] == '4' || p[3] == '8')) cfg_wr = p[3] - '0';
}

bool nmlx_cuda_moe_rows_ok(nmlx_backend *be, const moe_lin *l) {
    read_cfg();
    if (cfg_off || ((cuda_impl *)be->impl)->f32_x || l->cols % 32 || l->cols <= 0 || l->rows <= 0 ||
        l->cols > INT32_MAX / 64 || l->rows > INT32_MAX)
        return false;
    /* gshift: log2(group size / 8); the kernel takes groups of 32..128 */
    if (l->sc == SC_E8M0) return l->bits == 4 && l->gshift == 2;
    return l->bits >= 2 && l->bits <= 8 && l->bits != 7 && l->gshift >= 2 && l->gshift <= 4;
}

template <int BITS, int SC, int MT>
static cudaError_t launch(cudaStream_t s, const qr2_group_args &g, int ntask, int nlin) {
    const int64_t rb = 16 * MT * g.wr;
    const dim3 grid((unsigned)((g.D + rb - 1) / rb), (unsigned)ntask, (unsigned)nlin);
    return cuda_launch_pdl_batch(qrows2_group_kernel<BITS, SC, 4, MT>, grid, dim3(QR2_THREADS), 0,
                                 s, g);
}

template <int BITS, int SC>
static cudaError_t launch_mt(cudaStream_t s, const qr2_group_args &g, int ntask, int nlin) {
    return cfg_mt == 2 ? launch<BITS, SC, 2>(s, g, ntask, nlin)
                       : launch<BITS, SC, 1>(s, g, ntask, nlin);
}

template <int BITS>
static cudaError_t launch_sc(cudaStream_t s, int sc, const qr2_group_args &g, int ntask, int nlin) {
    if (sc == SC_F32) return launch_mt<BITS, SC_F32>(s, g, ntask, nlin);
    if (sc == SC_F16) return launch_mt<BITS, SC_F16>(s, g, ntask, nlin);
    return launch_mt<BITS, SC_BF16>(s, g, ntask, nlin);
}

bool nmlx_cuda_moe_rows(nmlx_backend *be, const moe_lin *l0, float *y0, const moe_lin *l1,
                        float *y1, const float *x, int64_t P, const int32_t *dtask, int ntask) {
    if (!nmlx_cuda_moe_rows_ok(be, l0) || ntask <= 0 || ntask > 65535 || P <= 0 ||
        P > INT32_MAX / l0->cols)
        return false;
    if (l1 && (l1->bits != l0->bits || l1->sc != l0->sc || l1->gshift != l0->gshift ||
               l1->rows != l0->rows || l1->cols != l0->cols))
        return false;
    nmlx_cuda_qx qx;
    if (!nmlx_cuda_qx_split(be, x, P, l0->cols, &qx)) return false;
    qr2_group_args g;
    memset(&g, 0, sizeof g);
    g.lin[0] = qr2_lin{(const qr2_expert *)l0->tab, y0, qr2_lbdt(l0->bias_dt)};
    g.lin[1] = l1 ? qr2_lin{(const qr2_expert *)l1->tab, y1, qr2_lbdt(l1->bias_dt)} : g.lin[0];
    g.task = dtask;
    g.xhi = (const uint16_t *)qx.hi, g.xlo = (const uint16_t *)qx.lo, g.xs = qx.xs;
    g.gshift = l0->gshift - 2, g.wr = cfg_wr;
    g.D = l0->rows, g.N = l0->cols;
    const int nlin = l1 ? 2 : 1;
    cudaStream_t s = cuda_of(be)->stream;
    cudaError_t err;
    if (l0->sc == SC_E8M0) {
        err = launch_mt<4, SC_E8M0>(s, g, ntask, nlin);
    } else {
        switch (l0->bits) {
        case 2: err = launch_sc<2>(s, l0->sc, g, ntask, nlin); break;
        case 3: err = launch_sc<3>(s, l0->sc, g, ntask, nlin); break;
        case 4: err = launch_sc<4>(s, l0->sc, g, ntask, nlin); break;
        case 5: err = launch_sc<5>(s, l0->sc, g, ntask, nlin); break;
        case 6: err = launch_sc<6>(s, l0->sc, g, ntask, nlin); break;
        default: err = launch_sc<8>(s, l0->sc, g, ntask, nlin); break;
        }
    }
    nmlx_cuda_note(be, err);
    group_launches++;
    return true;
}
