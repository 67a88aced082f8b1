/* Accuracy of the quantized prefill kernels against f64 (W dequantized,
 * exact; x float), the data of `bench_quant decode-acc`: Gaussian weights
 * quantized as MLX does (bf16 scales), Gaussian x with every 97th column
 * x20 (outlier channels); per kernel the rms and the max of |y - y_exact|
 * over rms(y_exact). The AMX kernel (quant_amx.c) runs with its tiles
 * emulated in C (tests/amx_emulate.h: f32 sums of exact bf16 products, as
 * TDPBF16PS), so this runs on any AVX512_BF16 CPU.
 *
 *   gcc -std=c11 -O2 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mfma -mf16c \
 *     -mavx2 -Itests -Iinclude -Isrc bench/amx_quant_acc.c build/libnmlx.a \
 *     $(pkg-config --libs jansson libpcre2-8 libutf8proc) -lpthread -lm -o build/amx_quant_acc
 *   build/amx_quant_acc [bits=4] [gs=64] [D=1024] [N=3072] [T=32] */
#define NMLX_AMX_EMULATE 1
#define nmlx_amx_quant_ok emu_quant_ok
#define nmlx_amx_quant_matmat emu_quant_matmat
#include "compute/cpu/quant_amx.c"

#include "compute/cpu/quant_kernels.h"
#include "compute/quant.h"
#include "bench_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    const int bits = argc > 1 ? atoi(argv[1]) : 4, gs = argc > 2 ? atoi(argv[2]) : 64;
    const int64_t D = argc > 3 ? atoll(argv[3]) : 1024, N = argc > 4 ? atoll(argv[4]) : 3072;
    const int64_t T = argc > 5 ? atoll(argv[5]) : 32;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512bf16")) {
        printf("needs AVX512_BF16\n");
        return 0;
    }
    float *deq = malloc((size_t)(D * N) * 4);
    float *x = malloc((size_t)(T * N) * 4), *y = malloc((size_t)(T * D) * 4);
    double *ye = malloc((size_t)(T * D) * 8);
    uint64_t st = 0x9E3779B97F4A7C15ull;
    nmlx_weight w = bench_gauss_affine(bits, gs, D, N, &st, deq);
    for (int64_t i = 0; i < T * N; i++)
        x[i] = (float)(bench_gauss(&st) * (i % N % 97 == 5 ? 20.0 : 1.0));
    double sref = 0;
    for (int64_t t = 0; t < T; t++)
        for (int64_t d = 0; d < D; d++) {
            double s = 0;
            for (int64_t k = 0; k < N; k++)
                s += (double)deq[d * N + k] * x[t * N + k];
            ye[t * D + d] = s, sref += s * s;
        }
    const double rms = sqrt(sref / (double)(T * D));
    printf("prefill accuracy, affine %d-bit g%d bf16 scales, %lldx%lld, %lld tokens (x Gaussian, "
           "every 97th column x20): |y - y_exact| / rms(y_exact)\n",
           bits, gs, (long long)D, (long long)N, (long long)T);
    const char *names[] = {"f32 x", "int16 x (vnni)", "amx 3 terms", "amx 2 terms",
                           "amx 1 term (bf16)"};
    for (int k = 0; k < 5; k++) {
        if (k == 0) nmlx_avx512f32_quant_matmat(&w, x, y, T, 0, D);
        if (k == 1 && (!nmlx_qint8_cpu_ok() || !nmlx_avx512vnni_quant_matmat16(&w, x, y, T, 0, D)))
            continue;
        if (k >= 2) emu_quant_matmat(&w, x, y, T, 0, D, 5 - k);
        double se = 0, mx = 0;
        for (int64_t i = 0; i < T * D; i++) {
            const double e = fabs(y[i] - ye[i]);
            se += e * e, mx = e > mx ? e : mx;
        }
        printf("  %-18s rms %.3e  max %.3e\n", names[k], sqrt(se / (double)(T * D)) / rms,
               mx / rms);
    }
    bench_free_weight(&w), free(deq), free(x), free(y), free(ye);
    return 0;
}
