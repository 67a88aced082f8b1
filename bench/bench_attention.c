/* CPU attention benchmark: one prefill's attention (T queries at positions
 * 0..T-1 against a causal cache, f16 unless told) through the backend's op,
 * CPU seconds of the calling thread per call and GFLOP/s (4 T^2/2 H HD
 * multiply-adds counted as 2 flops each), 1 thread. NMLX_ATTN_BLOCK=0
 * times the row path, =1 query blocks through the row kernels, unset the
 * flash kernel (attention_avx512.c). Build like bench_kernels
 * (bench/kernels.md):
 *   bench_attention [T=512] [H=16] [KVH=8] [HD=128] [reps=5] [f16|bf16|f32] [past=0]
 * past > 0: the T queries follow `past` cached keys (a chunked prefill). */
#define _POSIX_C_SOURCE 200809L
#include "common.h"
#include "compute/backend.h"
#include "compute/cpu/cpu_internal.h"
#include "bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv) {
    const int64_t T = argc > 1 ? atoll(argv[1]) : 512, H = argc > 2 ? atoll(argv[2]) : 16,
                  KVH = argc > 3 ? atoll(argv[3]) : 8, HD = argc > 4 ? atoll(argv[4]) : 128;
    const int reps = argc > 5 ? atoi(argv[5]) : 5;
    const char *dts = argc > 6 ? argv[6] : "f16";
    const int64_t past = argc > 7 ? atoll(argv[7]) : 0, NK = T + past;
    const nmlx_dtype dt = !strcmp(dts, "f32")    ? NMLX_DT_F32
                          : !strcmp(dts, "bf16") ? NMLX_DT_BF16
                                                 : NMLX_DT_F16;
    nmlx_backend *be = NULL;
    if (nmlx_backend_cpu_create_isa(1, NULL, &be) != NMLX_OK) return 1;
    float *q = malloc((size_t)(T * H * HD) * 4), *out = malloc((size_t)(T * H * HD) * 4);
    uint16_t *k16 = malloc((size_t)(KVH * NK * HD) * 2), *v16 = malloc((size_t)(KVH * NK * HD) * 2);
    float *k32 = malloc((size_t)(KVH * NK * HD) * 4), *v32 = malloc((size_t)(KVH * NK * HD) * 4);
    float *scratch = malloc((size_t)(H / KVH * NK) * 4);
    uint32_t st = 12345;
    for (int64_t i = 0; i < T * H * HD; i++)
        st = st * 1664525u + 1013904223u, q[i] = (float)(st >> 8) / 16777216.0f - 0.5f;
    for (int64_t i = 0; i < KVH * NK * HD; i++) {
        st = st * 1664525u + 1013904223u;
        k32[i] = (float)(st >> 8) / 16777216.0f - 0.5f;
        v32[i] = (float)(st & 0xffff) / 65536.0f - 0.5f;
        k16[i] = dt == NMLX_DT_BF16 ? nmlx_f32_to_bf16(k32[i]) : nmlx_f32_to_f16(k32[i]);
        v16[i] = dt == NMLX_DT_BF16 ? nmlx_f32_to_bf16(v32[i]) : nmlx_f32_to_f16(v32[i]);
    }
    nmlx_attn_args a = {.q = q,
                        .out = out,
                        .T = T,
                        .H = H,
                        .KVH = KVH,
                        .HD = HD,
                        .cap = NK,
                        .q_pos = past,
                        .n_kv = NK,
                        .scale = 0.088f,
                        .scratch = scratch,
                        .k = k32,
                        .v = v32,
                        .kv_dtype = dt,
                        .k16 = k16,
                        .v16 = v16};
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = bench_cpu_seconds();
        be->ops->attention(be, &a);
        double t = bench_cpu_seconds() - t0;
        best = t < best ? t : best;
    }
    double flops = 4.0 * (double)T * ((double)(T + 1) / 2 + (double)past) * (double)H * (double)HD;
    printf("attention T %lld past %lld H %lld KVH %lld HD %lld %s (%s): %.3f ms, %.1f GFLOP/s\n",
           (long long)T, (long long)past, (long long)H, (long long)KVH, (long long)HD, dts,
           nmlx_backend_cpu_isa(be), 1e3 * best, flops / best * 1e-9);
    free(q), free(out), free(k16), free(v16), free(k32), free(v32), free(scratch);
    nmlx_backend_free(be);
    return 0;
}
