/* The AMX-BF16 dense prefill (src/compute/cpu/matmul_amx.c) with its tile
 * operations emulated in C (tests/amx_emulate.h), so its blocking, W
 * packing, x rounding and every tail (T, D, N not multiples of 16/32/512,
 * T over one 512-token x block, unaligned row ranges split as 1-3 threads
 * split them) are checked on any CPU with AVX512_BF16 (the kernel's x
 * rounding uses it); the real tiles are tested by test_kernels with
 * NMLX_AMX=1 on an AMX CPU. Reference: bf16(x) times the exact bf16 W in
 * double; rows outside the range must stay untouched. */
#define NMLX_AMX_EMULATE 1
#define nmlx_amx_ok emu_amx_ok
#define nmlx_amx_status emu_amx_status
#define nmlx_amx_env emu_amx_env
#define nmlx_amx_wanted emu_amx_wanted
#define nmlx_amx_quant_env emu_amx_quant_env
#define nmlx_amx_bf16_matmat emu_amx_bf16_matmat
#include "compute/cpu/matmul_amx.c"

#include "common.h"
#include "compute/cpu/cpu_internal.h"
#include "harness.h"

#include <math.h>
#include <stdio.h>

static void check(int64_t T, int64_t D, int64_t N, int nth, bool unaligned) {
    uint16_t *W = malloc((size_t)(D * N) * 2);
    float *x = malloc((size_t)(T * N) * 4), *y = malloc((size_t)(T * D) * 4);
    for (int64_t i = 0; i < D * N; i++)
        W[i] = nmlx_f32_to_bf16(test_randf(-1, 1));
    for (int64_t i = 0; i < T * N; i++)
        x[i] = test_randf(-1, 1);
    for (int64_t i = 0; i < T * D; i++)
        y[i] = 1234.5f;
    nmlx_weight w = {.w = {.dtype = NMLX_DT_BF16, .ndim = 2, .shape = {D, N}, .data = W},
                     .mode = NMLX_QUANT_NONE,
                     .rows = D,
                     .cols = N};
    const int64_t lo = unaligned ? D / 5 : 0, hi = unaligned ? D - D / 7 : D;
    for (int ith = 0; ith < nth; ith++) {
        int64_t d0, d1;
        cpu_split(hi - lo, ith, nth, unaligned ? 1 : 16, &d0, &d1);
        if (d0 < d1)
            EXPECT(emu_amx_bf16_matmat(&w, x, y, T, lo + d0, lo + d1), "refused T=%lld",
                   (long long)T);
    }
    double emax = 0, rmax = 0;
    bool untouched = true;
    for (int64_t t = 0; t < T; t++)
        for (int64_t d = 0; d < D; d++) {
            if (d < lo || d >= hi) {
                untouched &= y[t * D + d] == 1234.5f;
                continue;
            }
            double s = 0;
            for (int64_t n = 0; n < N; n++)
                s += (double)nmlx_bf16_to_f32(W[d * N + n]) *
                     nmlx_bf16_to_f32(nmlx_f32_to_bf16(x[t * N + n]));
            double e = fabs((double)y[t * D + d] - s);
            if (!(e <= emax)) emax = e;
            rmax = fmax(rmax, fabs(s));
        }
    double e = rmax > 0 ? emax / rmax : emax;
    EXPECT(e < 2e-5 * (1 + N / 1024.0) && untouched,
           "amx (emulated) T=%lld D=%lld N=%lld nth=%d%s: err %.3g, outside rows %s", (long long)T,
           (long long)D, (long long)N, nth, unaligned ? " unaligned" : "", e,
           untouched ? "untouched" : "WRITTEN");
    free(W), free(x), free(y);
}

int main(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512bf16") || !__builtin_cpu_supports("avx512bw")) {
        printf("note: no AVX512_BF16 on this CPU, emulated AMX test skipped\n");
        return test_summary();
    }
    test_seed(31337);
    const int64_t shapes[][3] = {/* T, D, N */
                                 {1, 1, 1},      {5, 17, 31},   {24, 33, 64},  {37, 45, 83},
                                 {33, 100, 300}, {70, 67, 545}, {257, 40, 97}, {48, 64, 1024},
                                 {530, 20, 40},  {96, 48, 1100}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int nth = 1; nth <= 3; nth++)
            for (int ua = 0; ua < 2; ua++)
                check(shapes[i][0], shapes[i][1], shapes[i][2], nth, ua);
    return test_summary();
}
