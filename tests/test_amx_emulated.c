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
#include "amx_bf16_check.h"

#include <math.h>
#include <stdio.h>

static void check(int64_t T, int64_t D, int64_t N, int nth, bool unaligned) {
    uint16_t *W = malloc((size_t)(D * N) * 2);
    for (int64_t i = 0; i < D * N; i++)
        W[i] = nmlx_f32_to_bf16(test_randf(-1, 1));
    float *x = test_rand_floats((size_t)(T * N), -1, 1);
    amx_bf16_check(emu_amx_bf16_matmat, "amx (emulated)", W, x, T, D, N, nth, unaligned);
    free(W), free(x);
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
