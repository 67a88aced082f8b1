/* The few-rows v2 kernel grouped over MoE experts (cuda_moe.cu's prefill
 * form): one launch runs every (expert, row tile) of a layer's switch
 * linear, where the per-expert form launched an x split and a matmul for
 * each used expert (Qwen3-30B-A3B: 128 experts, ~6 launches each, a
 * layer; pp512 0.14x llama.cpp on the H100, whose grouped mul_mat_q was
 * 63% of its kernel time).
 *
 * The rows of x arrive sorted by expert (cuda_moe.cu gathers them), split
 * once into bf16 hi + lo and chunk sums (qx_split_kernel) for all experts.
 * The host cuts each used expert's rows into tasks of at most 8 NT rows
 * (expert, first row, rows) and uploads them with the routing; block
 * (x, y, z) is row block x of task y of linear z (gate and up read the
 * same x: one launch for both). Each block is a qrows2_tile with S = 1
 * (no split-K: the tasks fill the GPU), over that expert's weight
 * pointers and that task's rows of x and y: the same sums, bit for bit, as
 * qrows2_kernel with T = rows, S = 1 and the same row groups
 * (tests/cuda/qrows2_emu.cpp checks it). Tokens tiles past a task's rows
 * are skipped. Host C++ compiles it too, as cuda_qrows2.h. */
#ifndef NMLX_CUDA_QROWS2_GROUP_H
#define NMLX_CUDA_QROWS2_GROUP_H

#include "compute/cuda/cuda_qrows2.h"

/* One expert's device pointers: codes, group scales and biases, the
 * linear's bias (NULL: none). The layout of cuda_internal.h moe_ptrs. */
struct qr2_expert {
    const void *w, *s, *b, *bias;
};

/* One switch linear of a grouped launch. */
struct qr2_lin {
    const qr2_expert *tab; /* [E] */
    float *y;              /* [P, D], rows in x's order */
    int lbdt;              /* QR2_B_*: the linear bias's dtype */
};

struct qr2_group_args {
    qr2_lin lin[2];            /* blockIdx.z picks; one format, one shape */
    const int32_t *task;       /* [tasks][3]: expert, first row, rows (1..8 NT) */
    const uint16_t *xhi, *xlo; /* bf16 bits [P, N] */
    const float *xs;           /* [P, N / 32] */
    int gshift, wr;
    int64_t D, N;
};

template <int BITS, int SC, int NT, int MT>
__global__ void __launch_bounds__(QR2_THREADS, MT *NT <= 8 ? 2 : 1)
    qrows2_group_kernel(const qr2_group_args g) {
    qr2_pdl();
    const int32_t *tk = g.task + 3 * (int64_t)blockIdx.y;
    const int e = (int)__ldg((const uint32_t *)tk), r0 = (int)__ldg((const uint32_t *)tk + 1),
              n = (int)__ldg((const uint32_t *)tk + 2);
    if (n <= 0) return; /* a slot past the device sort's last task (cuda_moe_sort.cu) */
    const bool z = blockIdx.z != 0;
    const qr2_expert p = (z ? g.lin[1].tab : g.lin[0].tab)[e];
    qr2_args a;
    a.w = (const uint8_t *)p.w, a.scales = p.s, a.biases = p.b, a.gshift = g.gshift;
    a.xhi = g.xhi + (int64_t)r0 * g.N, a.xlo = g.xlo + (int64_t)r0 * g.N;
#if QR2_BREAK == 3 /* test hook (qrows2_emu): every task reads the first rows' chunk sums */
    a.xs = g.xs;
#else
    a.xs = g.xs + (int64_t)r0 * (g.N / 32);
#endif
    a.y = (z ? g.lin[1].y : g.lin[0].y) + (int64_t)r0 * g.D;
    a.part = nullptr, a.cnt = nullptr;
    a.lbias = p.bias, a.lbdt = z ? g.lin[1].lbdt : g.lin[0].lbdt;
    a.T = n, a.S = 1, a.wr = g.wr, a.D = g.D, a.N = g.N;
    qrows2_tile<BITS, SC, NT, MT, true>(a, blockIdx.x, 0);
}

#endif
