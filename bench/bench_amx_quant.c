/* Quantized prefill kernels, 1 thread (the caller's), T tokens (512), MLX
 * affine 4-bit and 8-bit g64 (bf16 scales and biases, as quantize-on-load
 * writes them), on the linear layers of Qwen3-0.6B and Llama-3.2-1B:
 *   f32     nmlx_avx512f32_quant_matmat (precision "f32")
 *   int16   nmlx_avx512vnni_quant_matmat16 (the default where VNNI)
 *   amx3    nmlx_amx_quant_matmat, 3 terms (x, W as bf16 hi + lo; default
 *           where the pick finds it faster)
 *   amx2    nmlx_amx_quant_matmat, 2 terms (x hi + lo, W in bf16; NMLX_AMX_QUANT=2)
 *   amx1    nmlx_amx_quant_matmat, 1 term (x, W in bf16; NMLX_AMX_QUANT=bf16)
 *   amx8    nmlx_amx8_quant_matmat: AMX-INT8 on int16 x, the int16 kernel's
 *           bits (quant_int8_amx.c; NMLX_AMX_INT8)
 *   pack    quant_amx.c with its tile operations made no-ops
 *           (bench/amx_null/amx_emulate.h): the cost of dequantizing the
 *           panels and splitting x, on any AVX512_BF16 CPU
 * kernels alternating within each repetition (best of reps per kernel, CPU
 * time of the thread);
 * prints ms, GFLOP/s, per-layer sums, amx3 / int16 ratios and each
 * kernel's max |y - y_f32| / max |y_f32|.
 *
 *   gcc -std=c11 -O2 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mfma -mf16c \
 *     -mavx2 -Ibench/amx_null -Iinclude -Isrc bench/bench_amx_quant.c build/libnmlx.a \
 *     $(pkg-config --libs jansson libpcre2-8 libutf8proc) -lpthread -lm -o build/bench_amx_quant
 *   taskset -c 0 build/bench_amx_quant [T=512] [reps=3] [bits=4,8] */
#define _POSIX_C_SOURCE 200809L
#define NMLX_AMX_EMULATE 1 /* the pack-only copy below */
#define nmlx_amx_quant_ok pack_quant_ok
#define nmlx_amx_quant_matmat pack_quant_matmat
#include "compute/cpu/quant_amx.c"
#undef nmlx_amx_quant_ok
#undef nmlx_amx_quant_matmat
/* the library's (matmul_amx.h, already included under the names above) */
bool nmlx_amx_quant_matmat(const nmlx_weight *w, const float *x, float *y, int64_t T, int64_t d0,
                           int64_t d1, int terms);

#include "common.h"
#include "compute/cpu/cpu_internal.h"
#include "compute/cpu/matmul_amx.h"
#include "compute/cpu/quant_kernels.h"
#include "compute/quant.h"
#include "bench_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { K_F32, K_I16, K_AMX3, K_AMX2, K_AMX1, K_AMX8, K_PACK, NK };
static const char *kname[NK] = {"f32", "int16", "amx3", "amx2", "amx1", "amx8", "pack"};

static bool run(int k, const nmlx_weight *w, const float *x, float *y, int64_t T) {
    switch (k) {
    case K_F32: nmlx_avx512f32_quant_matmat(w, x, y, T, 0, w->rows); return true;
    case K_I16: return nmlx_avx512vnni_quant_matmat16(w, x, y, T, 0, w->rows);
    case K_AMX3: return nmlx_amx_quant_matmat(w, x, y, T, 0, w->rows, 3);
    case K_AMX2: return nmlx_amx_quant_matmat(w, x, y, T, 0, w->rows, 2);
    case K_AMX1: return nmlx_amx_quant_matmat(w, x, y, T, 0, w->rows, 1);
    case K_AMX8: return nmlx_amx8_quant_matmat(w, x, y, T, 0, w->rows);
    default: return pack_quant_matmat(w, x, y, T, 0, w->rows, 3);
    }
}

static uint64_t st = 88172645463325252ull;

static void bench_bits(int bits, int64_t T, int reps, const bool *have) {
    const int gs = 64;
    double sum[2][NK] = {{0}};
    printf("affine %d-bit g%d, bf16 scales, T=%lld, 1 thread, best of %d, kernels alternating\n",
           bits, gs, (long long)T, reps);
    const bench_shape *shapes = bench_shapes();
    for (size_t s = 0; s < BENCH_N_SHAPES; s++) {
        const int64_t D = shapes[s].D, N = shapes[s].N, words = nmlx_quant_row_words(N, bits),
                      G = N / gs;
        uint32_t *q = malloc((size_t)(D * words) * 4);
        uint16_t *sc = malloc((size_t)(D * G) * 2), *bi = malloc((size_t)(D * G) * 2);
        float *row = malloc((size_t)N * 4), *x = malloc((size_t)(T * N) * 4), *y[NK];
        for (int k = 0; k < NK; k++)
            y[k] = malloc((size_t)(T * D) * 4);
        for (int64_t d = 0; d < D; d++) {
            for (int64_t n = 0; n < N; n++)
                row[n] = 0.05f * bench_uniform(&st);
            nmlx_quant_quantize_row(NMLX_QUANT_AFFINE, bits, gs, row, N, q + d * words, sc + d * G,
                                    bi + d * G, NMLX_DT_BF16);
        }
        for (int64_t i = 0; i < T * N; i++)
            x[i] = bench_uniform(&st) * (i % N % 97 == 3 ? 20.0f : 1.0f); /* outlier channels */
        nmlx_weight w = bench_affine_weight(bits, gs, D, N, q, sc, bi);
        double best[NK];
        for (int k = 0; k < NK; k++)
            best[k] = have[k] ? 1e30 : 0;
        for (int r = 0; r < reps; r++)
            for (int k = 0; k < NK; k++) {
                if (!have[k] || best[k] == 0) continue;
                double t0 = bench_cpu_seconds();
                if (!run(k, &w, x, y[k], T)) {
                    best[k] = 0;
                    continue;
                }
                double dt = bench_cpu_seconds() - t0;
                best[k] = dt < best[k] ? dt : best[k];
            }
        const double gf = 2.0 * (double)T * (double)D * (double)N / 1e6;
        printf("%-13s %-8s D=%-5lld N=%-5lld", shapes[s].model, shapes[s].name, (long long)D,
               (long long)N);
        double ymax = 0;
        for (int64_t i = 0; i < T * D; i++)
            ymax = fmax(ymax, fabs((double)y[K_F32][i]));
        for (int k = 0; k < NK; k++) {
            if (best[k] <= 0 || best[k] >= 1e30) continue;
            const double ms = 1e3 * best[k];
            sum[!strcmp(shapes[s].model, "llama-3.2-1b")][k] += shapes[s].per_layer * ms;
            printf("  %s %.2f ms %.0f GF/s", kname[k], ms, gf / ms);
            if (k != K_F32 && k != K_PACK) {
                double dmax = 0;
                for (int64_t i = 0; i < T * D; i++)
                    dmax = fmax(dmax, fabs((double)y[k][i] - y[K_F32][i]));
                printf(" err %.1e", ymax > 0 ? dmax / ymax : dmax);
            }
        }
        printf("\n");
        free(q), free(sc), free(bi), free(row), free(x);
        for (int k = 0; k < NK; k++)
            free(y[k]);
    }
    for (int m = 0; m < 2; m++) {
        printf("%d-bit %s per layer:", bits, m ? "llama-3.2-1b" : "qwen3-0.6b");
        for (int k = 0; k < NK; k++)
            if (sum[m][k] > 0) printf("  %s %.1f ms", kname[k], sum[m][k]);
        for (int k = K_AMX3; k <= K_AMX8; k++)
            if (sum[m][k] > 0 && sum[m][K_I16] > 0)
                printf("  -> %s %.2fx int16, %.2fx f32", kname[k], sum[m][K_I16] / sum[m][k],
                       sum[m][K_F32] / sum[m][k]);
        printf("\n");
    }
}

int main(int argc, char **argv) {
    const int64_t T = argc > 1 ? atoll(argv[1]) : 512;
    const int reps = argc > 2 ? atoi(argv[2]) : 3;
    const char *bits = argc > 3 ? argv[3] : "4,8";
    __builtin_cpu_init();
    const bool amx = nmlx_amx_ok(), bf16 = __builtin_cpu_supports("avx512bf16");
    const bool have[NK] = {__builtin_cpu_supports("avx512f"),
                           nmlx_qint8_cpu_ok(),
                           amx,
                           amx,
                           amx,
                           nmlx_amx_int8_ok(),
                           bf16};
    printf("quantized prefill kernels; f32 %s, int16 %s, amx %s, pack-only %s\n",
           have[K_F32] ? "yes" : "no", have[K_I16] ? "yes" : "no", amx ? "yes" : nmlx_amx_status(),
           bf16 ? "yes" : "no (no avx512bf16)");
    if (!have[K_F32]) return 0;
    if (strchr(bits, '4')) bench_bits(4, T, reps, have);
    if (strchr(bits, '8')) bench_bits(8, T, reps, have);
    return 0;
}
