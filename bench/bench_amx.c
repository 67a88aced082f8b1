/* Dense bf16 prefill kernels, 1 thread (the caller's), T tokens (512):
 * the f32 kernel (nmlx_avx512_matmul_rows), AVX512_BF16 vdpbf16ps panels
 * (nmlx_avx512bf16_quant_matmat) and AMX-BF16 tiles (nmlx_amx_bf16_matmat,
 * run whatever NMLX_AMX says, where the CPU and OS allow AMX), on the
 * linear layers of Qwen3-0.6B and Llama-3.2-1B. Prints ms (best of reps),
 * GFLOP/s, the per-layer sums and ratios, and the largest difference of the
 * AMX and vdpbf16ps results (both round x to bf16: they differ only by
 * summation order).
 *
 *   gcc -std=c11 -O2 -Iinclude -Isrc bench/bench_amx.c build/libnmlx.a \
 *     $(pkg-config --libs jansson libpcre2-8 libutf8proc) -lpthread -lm -o build/bench_amx
 *   taskset -c 0 build/bench_amx [T=512] [reps=5] */
#define _POSIX_C_SOURCE 200809L
#include "common.h"
#include "compute/cpu/cpu_internal.h"
#include "compute/cpu/matmul_amx.h"
#include "compute/cpu/quant_kernels.h"
#include "bench_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { K_F32, K_BF16, K_AMX, NK };
static const char *kname[NK] = {"f32", "avx512bf16", "amx"};

static bool run(int k, const nmlx_weight *w, const float *x, float *y, int64_t T) {
    switch (k) {
    case K_F32: nmlx_avx512_matmul_rows(w, x, y, T, 0, w->rows); return true;
    case K_BF16: nmlx_avx512bf16_quant_matmat(w, x, y, T, 0, w->rows); return true;
    default: return nmlx_amx_bf16_matmat(w, x, y, T, 0, w->rows);
    }
}

int main(int argc, char **argv) {
    const int64_t T = argc > 1 ? atoll(argv[1]) : 512;
    const int reps = argc > 2 ? atoi(argv[2]) : 5;
    __builtin_cpu_init();
    const bool have[NK] = {__builtin_cpu_supports("avx512f"), __builtin_cpu_supports("avx512bf16"),
                           nmlx_amx_ok()};
    printf("dense bf16 prefill, T=%lld, 1 thread, best of %d; kernels: f32 %s, avx512bf16 %s, "
           "amx %s\n",
           (long long)T, reps, have[0] ? "yes" : "no", have[1] ? "yes" : "no",
           have[2] ? "yes" : nmlx_amx_status());
    if (!have[0]) return 0;
    double sum[2][NK] = {{0}};
    uint64_t st = 88172645463325252ull;
    const bench_shape *shapes = bench_shapes();
    for (size_t s = 0; s < BENCH_N_SHAPES; s++) {
        const int64_t D = shapes[s].D, N = shapes[s].N;
        uint16_t *W = malloc((size_t)(D * N) * 2);
        float *x = malloc((size_t)(T * N) * 4), *y[NK];
        for (int k = 0; k < NK; k++)
            y[k] = malloc((size_t)(T * D) * 4);
        for (int64_t i = 0; i < D * N; i++)
            W[i] = nmlx_f32_to_bf16(bench_uniform(&st) * 0.05f);
        for (int64_t i = 0; i < T * N; i++)
            x[i] = bench_uniform(&st);
        nmlx_weight w = {.w = {.dtype = NMLX_DT_BF16, .ndim = 2, .shape = {D, N}, .data = W},
                         .mode = NMLX_QUANT_NONE,
                         .rows = D,
                         .cols = N};
        double ms[NK] = {0};
        for (int k = 0; k < NK; k++) {
            if (!have[k]) continue;
            double best = 1e30;
            for (int r = 0; r < reps; r++) {
                double t0 = nmlx_time_seconds();
                if (!run(k, &w, x, y[k], T)) break;
                double dt = nmlx_time_seconds() - t0;
                best = dt < best ? dt : best;
            }
            ms[k] = best < 1e30 ? 1e3 * best : 0;
            sum[!strcmp(shapes[s].model, "llama-3.2-1b")][k] += shapes[s].per_layer * ms[k];
        }
        double gf = 2.0 * (double)T * (double)D * (double)N / 1e6;
        printf("%-13s %-8s D=%-5lld N=%-5lld", shapes[s].model, shapes[s].name, (long long)D,
               (long long)N);
        for (int k = 0; k < NK; k++)
            if (ms[k] > 0) printf("  %s %7.2f ms %6.0f GF/s", kname[k], ms[k], gf / ms[k]);
        if (ms[K_AMX] > 0 && ms[K_BF16] > 0) {
            double dmax = 0, ymax = 0;
            for (int64_t i = 0; i < T * D; i++) {
                dmax = fmax(dmax, fabs((double)y[K_AMX][i] - y[K_BF16][i]));
                ymax = fmax(ymax, fabs((double)y[K_BF16][i]));
            }
            printf("  |amx-bf16|/max %.2g", ymax > 0 ? dmax / ymax : dmax);
        }
        printf("\n");
        free(W), free(x);
        for (int k = 0; k < NK; k++)
            free(y[k]);
    }
    for (int m = 0; m < 2; m++) {
        printf("%s per layer:", m ? "llama-3.2-1b" : "qwen3-0.6b");
        for (int k = 0; k < NK; k++)
            if (sum[m][k] > 0) printf("  %s %.1f ms", kname[k], sum[m][k]);
        if (sum[m][K_AMX] > 0)
            printf("  -> amx %.2fx f32, %.2fx avx512bf16", sum[m][K_F32] / sum[m][K_AMX],
                   sum[m][K_BF16] > 0 ? sum[m][K_BF16] / sum[m][K_AMX] : 0);
        printf("\n");
    }
    return 0;
}
