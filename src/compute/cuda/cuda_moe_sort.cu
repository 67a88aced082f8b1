/* A prefill chunk's (token, slot) pairs sorted by expert on the device,
 * for the grouped expert kernels: the order nmlx_switch_gather_sort makes
 * on the host (stable: within an expert, pairs in index order), its
 * inverse, and the kernels' tasks (expert, first row, rows <= most).
 *
 * Why: with the routing on the device (moe_routed), the host sort was the
 * last thing a MoE layer's prefill waited for: idx downloaded, the stream
 * drained, the host sorting and uploading, the GPU idle meanwhile (H100,
 * Qwen3-30B-A3B pp512: ~30 ms of kernels in ~46 ms; bench/cuda/README.md
 * session 25). Now nothing crosses to the host.
 *
 * One block of 1024 threads (a chunk's pairs are a few thousand):
 *  1. counts per expert (shared atomics), then one thread's running sums:
 *     each expert's first row and first task;
 *  2. a thread per expert writes its tasks; the slots past the last task
 *     get rows = 0 (the grouped kernels' blocks for them return at once:
 *     the host launches the most tasks there can be, min(P, E) + P / most
 *     + 1);
 *  3. the pairs in chunks of 1024: a pair's rank among its warp's pairs of
 *     the same expert (match.any), plus the same expert's pairs in the
 *     chunk's earlier warps (a [warps][E] count table), plus the rows its
 *     expert filled in earlier chunks: its row, in index order.
 * Shared memory: 34 E ints (E <= 256: 34 KiB). */
#include "compute/cuda/cuda_internal.h"

#include <stdint.h>

enum { MS_THREADS = 1024, MS_WARPS = MS_THREADS / 32, MS_MAX_E = 256 };

__global__ void __launch_bounds__(MS_THREADS)
    moe_sort_kernel(const int32_t *idx, int P, int E, int most, int tasks_max, int32_t *order,
                    int32_t *inv, int32_t *task) {
    extern __shared__ int ms_sm[];
    int *base = ms_sm, *tfirst = ms_sm + E, *wc = ms_sm + 2 * E; /* wc [MS_WARPS][E] */
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5;
    for (int e = tid; e < E; e += MS_THREADS)
        base[e] = 0;
    for (int i = tid; i < tasks_max; i += MS_THREADS) /* empty unless written below */
        task[3 * i] = 0, task[3 * i + 1] = 0, task[3 * i + 2] = 0;
    __syncthreads();
    for (int p = tid; p < P; p += MS_THREADS)
        atomicAdd(&base[idx[p]], 1);
    __syncthreads();
    if (tid == 0) {
        int rows = 0, tasks = 0;
        for (int e = 0; e < E; e++) {
            const int n = base[e];
            base[e] = rows, tfirst[e] = tasks;
            rows += n, tasks += (n + most - 1) / most;
        }
    }
    __syncthreads();
    for (int e = tid; e < E; e += MS_THREADS) {
        const int r0 = base[e], n = (e + 1 < E ? base[e + 1] : P) - r0;
        for (int i = 0, t = tfirst[e]; i < n; i += most, t++)
            task[3 * t] = e, task[3 * t + 1] = r0 + i,
                     task[3 * t + 2] = n - i < most ? n - i : most;
    }
    for (int c0 = 0; c0 < P; c0 += MS_THREADS) {
        const int p = c0 + tid;
        const bool on = p < P;
        const int e = on ? idx[p] : -1 - lane; /* idle lanes match no one */
        const unsigned same = __match_any_sync(0xffffffffu, e);
        const int rank = __popc(same & ((1u << lane) - 1u));
        for (int i = tid; i < MS_WARPS * E; i += MS_THREADS)
            wc[i] = 0;
        __syncthreads();
        if (on && rank == 0) wc[warp * E + e] = __popc(same);
        __syncthreads();
        if (on) {
            int row = base[e] + rank;
            for (int w = 0; w < warp; w++)
                row += wc[w * E + e];
            order[row] = p, inv[p] = row;
        }
        __syncthreads();
        for (int x = tid; x < E; x += MS_THREADS) {
            int n = 0;
            for (int w = 0; w < MS_WARPS; w++)
                n += wc[w * E + x];
            base[x] += n;
        }
        __syncthreads();
    }
}

bool nmlx_cuda_moe_sort_ok(int64_t P, int64_t E) {
    return P > 0 && P <= INT32_MAX / 2 && E > 0 && E <= MS_MAX_E;
}

bool nmlx_cuda_moe_sort(nmlx_backend *be, const int32_t *idx, int64_t P, int64_t E, int most,
                        int tasks_max, int32_t *order, int32_t *inv, int32_t *task) {
    if (!nmlx_cuda_moe_sort_ok(P, E) || most <= 0 || tasks_max <= 0) return false;
    const size_t smem = (size_t)(2 + MS_WARPS) * (size_t)E * sizeof(int);
    moe_sort_kernel<<<1, MS_THREADS, smem, cuda_of(be)->stream>>>(idx, (int)P, (int)E, most,
                                                                  tasks_max, order, inv, task);
    nmlx_cuda_note(be, cudaGetLastError());
    return true;
}
