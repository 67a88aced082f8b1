/* Quantized kernel benchmark: read bandwidth (the decode ceiling), then for
 * MLX affine 4/8-bit group 64 (bf16 scales/biases, as quantize-on-load
 * writes them) the decode mat-vec in GB/s of packed weights + scales +
 * biases streamed from DRAM (weights cycled over >256 MiB) as a fraction of
 * that bandwidth, and the prefill mat-mat (T=512) in GFLOP/s, at Qwen3-0.6B
 * shapes, per kernel set and thread count.
 *
 *   cmake --build build-x --target nmlx
 *   gcc -std=c11 -O2 -Iinclude -Isrc bench/bench_quant.c build-x/libnmlx.a \
 *       $(pkg-config --libs jansson libpcre2-8 libutf8proc) -lpthread -lm -o build-x/bench_quant
 *   build-x/bench_quant [seconds=0.4] [matvec|matmat|all] [isa] [bits] [threads]
 *   build-x/bench_quant prefill [rounds=3] [bits=4] [threads=2] [T=512]
 *
 * `prefill`: one decoder layer's seven matmuls (q, k, v, o, gate, up, down)
 * at Qwen3-0.6B and Llama-3.2-1B shapes, affine g64 bf16 scales, T tokens,
 * through the avx512 set's three prefill kernels by name (f32, AVX512_BF16,
 * int8 AVX512_VNNI; rows split over the threads as cpu_ops.c does), kernels
 * alternating per round; best GFLOP/s of the rounds per kernel.
 *   build-x/bench_quant few [seconds=0.5] [isa] [threads=2] [q4,q8,mxfp4,bf16,f16,f32]
 * [DxN=3072x1024] The `few` mode times a batched decode step (T = 1..15 tokens, dense bf16 too)
 * with and without the few-token kernels (bench/batched_decode.md).
 */
#define _POSIX_C_SOURCE 200809L
#include "common.h"
#include "compute/backend.h"
#include "compute/cpu/cpu_internal.h"
#include "compute/cpu/quant_kernels.h"
#include "compute/quant.h"
#include "bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>

static double budget = 0.4;

/* median of 5 passes over 512 MiB */
static double read_bandwidth(nmlx_pool *pool, int nth) {
    double gbs[5];
    bench_read_bandwidth(pool, nth, gbs);
    return gbs[2];
}

/* A quantized [D, N] weight of random codes and scales; bytes -> *bytes. */
static nmlx_weight make_q(int bits, int gs, int64_t D, int64_t N, size_t *bytes) {
    return bench_random_affine(bits, gs, D, N, 88172645463325252ull, NULL, bytes);
}

static void free_q(nmlx_weight *w) { bench_free_weight(w); }

static double bench_matvec(nmlx_backend *be, int bits, int64_t D, int64_t N) {
    size_t bytes;
    nmlx_weight w0 = make_q(bits, 64, D, N, &bytes);
    int copies = getenv("BENCH_HOT") ? 1 : (int)((256u << 20) / bytes) + 1;
    nmlx_weight *ws = calloc((size_t)copies, sizeof *ws);
    ws[0] = w0;
    for (int c = 1; c < copies; c++)
        ws[c] = make_q(bits, 64, D, N, &bytes);
    float *x = malloc((size_t)N * sizeof(float)), *y = malloc((size_t)D * sizeof(float));
    for (int64_t i = 0; i < N; i++)
        x[i] = (float)(i % 7) * 0.1f - 0.3f;
    double best = (double)bytes / 1e9 * bench_matmul_rate(be, ws, copies, x, y, 1, 3, budget / 3);
    for (int c = 0; c < copies; c++)
        free_q(&ws[c]);
    free(ws), free(x), free(y);
    return best;
}

static double bench_matmat(nmlx_backend *be, int bits, int64_t D, int64_t N, int64_t T) {
    size_t bytes;
    nmlx_weight w = make_q(bits, 64, D, N, &bytes);
    float *x = malloc((size_t)(T * N) * sizeof(float)),
          *y = malloc((size_t)(T * D) * sizeof(float));
    for (int64_t i = 0; i < T * N; i++)
        x[i] = (float)(i % 13) * 0.01f;
    double best =
        2.0 * (double)(D * N * T) / 1e9 * bench_matmul_rate(be, &w, 1, x, y, T, 2, budget / 2);
    free_q(&w), free(x), free(y);
    return best;
}

/* `bench_quant calls ISA BITS D N T CALLS`: exactly CALLS hot calls on one
 * thread, nothing else, for `perf stat -e cycles:u` (steady under noise). */
static int fixed_calls(char **argv) {
    nmlx_backend *be = NULL;
    int bits = atoi(argv[3]);
    int64_t D = atoll(argv[4]), N = atoll(argv[5]), T = atoll(argv[6]), calls = atoll(argv[7]);
    if (nmlx_backend_cpu_create_isa(1, argv[2], &be) != NMLX_OK) return 1;
    size_t bytes;
    nmlx_weight w0 = make_q(bits, 64, D, N, &bytes);
    /* BENCH_COLD=1: cycle over copies >256 MiB so weights stream from DRAM */
    int copies = getenv("BENCH_COLD") ? (int)((256u << 20) / bytes) + 1 : 1;
    nmlx_weight *ws = calloc((size_t)copies, sizeof *ws);
    ws[0] = w0;
    for (int c = 1; c < copies; c++)
        ws[c] = make_q(bits, 64, D, N, &bytes);
    float *x = malloc((size_t)(T * N) * sizeof(float)),
          *y = malloc((size_t)(T * D) * sizeof(float));
    for (int64_t i = 0; i < T * N; i++)
        x[i] = (float)(i % 13) * 0.01f;
    for (int64_t c = 0; c < calls; c++)
        be->ops->matmul(be, &ws[c % copies], NULL, x, y, T);
    printf("%g\n", (double)y[0]);
    for (int c = 0; c < copies; c++)
        free_q(&ws[c]);
    free(ws), free(x), free(y);
    nmlx_backend_free(be);
    return 0;
}

#if defined(__x86_64__)
typedef struct {
    const nmlx_weight *w;
    const float *x;
    float *y;
    int64_t T;
    int kernel; /* 0 f32, 1 bf16, 2 int8 */
} prefill_job;

static void prefill_task(void *ctx, int ith, int nth) {
    const prefill_job *j = ctx;
    int64_t d0, d1;
    cpu_split(j->w->rows, ith, nth, 16, &d0, &d1);
    if (d0 >= d1) return;
    if (j->kernel == 2 && nmlx_avx512vnni_quant_matmat(j->w, j->x, j->y, j->T, d0, d1)) return;
    if (j->kernel == 3 && nmlx_avx512vnni_quant_matmat16(j->w, j->x, j->y, j->T, d0, d1)) return;
    if (j->kernel == 1)
        nmlx_avx512bf16_quant_matmat(j->w, j->x, j->y, j->T, d0, d1);
    else
        nmlx_avx512f32_quant_matmat(j->w, j->x, j->y, j->T, d0, d1);
}

static int prefill_layers(int argc, char **argv) {
    const int rounds = argc > 2 ? atoi(argv[2]) : 3, bits = argc > 3 ? atoi(argv[3]) : 4;
    const int nth = argc > 4 ? atoi(argv[4]) : 2;
    const int64_t T = argc > 5 ? atoll(argv[5]) : 512;
    const bench_layer *models = bench_layers();
    __builtin_cpu_init();
    const bool have[4] = {__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"),
                          __builtin_cpu_supports("avx512bf16"),
                          __builtin_cpu_supports("avx512vnni"),
                          __builtin_cpu_supports("avx512vnni")};
    const char *names[4] = {"f32", "bf16", "int8", "int16"};
    nmlx_backend *be = NULL;
    if (!have[0] || nmlx_backend_cpu_create(nth, &be) != NMLX_OK) return 1;
    printf("prefill, one layer's 7 matmuls, affine %d-bit g64 bf16 scales, T=%lld, %d threads, "
           "best of %d rounds, GFLOP/s\n",
           bits, (long long)T, nth, rounds);
    for (int mi = 0; mi < 2; mi++) {
        nmlx_weight w[7];
        size_t bytes;
        int64_t macs = 0, nmax = 0;
        for (int i = 0; i < 7; i++) {
            w[i] = make_q(bits, 64, models[mi].dn[i][0], models[mi].dn[i][1], &bytes);
            macs += models[mi].dn[i][0] * models[mi].dn[i][1];
            if (models[mi].dn[i][0] > nmax) nmax = models[mi].dn[i][0];
            if (models[mi].dn[i][1] > nmax) nmax = models[mi].dn[i][1];
        }
        float *x = malloc((size_t)(T * nmax) * sizeof(float));
        float *y = malloc((size_t)(T * nmax) * sizeof(float));
        for (int64_t i = 0; i < T * nmax; i++)
            x[i] = (float)(i % 13) * 0.01f - 0.05f;
        double best[4] = {0, 0, 0, 0};
        for (int r = 0; r < rounds; r++)
            for (int k = 0; k < 4; k++) {
                if (!have[k]) continue;
                double t0 = nmlx_time_seconds();
                for (int i = 0; i < 7; i++) {
                    prefill_job j = {.w = &w[i], .x = x, .y = y, .T = T, .kernel = k};
                    nmlx_pool_run_n(be->pool, prefill_task, &j, nth);
                }
                double gf = 2.0 * (double)macs * (double)T / (nmlx_time_seconds() - t0) / 1e9;
                if (gf > best[k]) best[k] = gf;
            }
        printf("%-13s", models[mi].name);
        for (int k = 0; k < 4; k++)
            if (have[k]) printf("  %s %6.1f", names[k], best[k]);
        printf("  int16/f32 %.2fx  int8/f32 %.2fx  int8/bf16 %.2fx\n", best[3] / best[0],
               best[2] / best[0], best[1] > 0 ? best[2] / best[1] : 0.0);
        for (int i = 0; i < 7; i++)
            free_q(&w[i]);
        free(x), free(y);
    }
    nmlx_backend_free(be);
    return 0;
}
#endif

/* ------------------------------------------------------------ decode kernels */
#if defined(__x86_64__)

/* `decode [rounds=5] [bits=4] [threads=2] [gs=64]`: one decoder layer's
 * seven mat-vecs (T = 1) at Qwen3-0.6B and Llama-3.2-1B shapes, affine
 * bits/gs with bf16 scales, through the avx512 set's decode kernels by name
 * (f32 x, bf16 x where the CPU has AVX512_BF16 and the weight is 4-bit
 * g64/128, int16 x with VNNI), rows split over the threads as cpu_ops.c
 * does; layers cycled over > 256 MiB so the weights stream from DRAM;
 * kernels alternate per round; best of the rounds, microseconds per layer
 * and GB/s of packed weights + scales + biases. */
typedef struct {
    const nmlx_weight *w;
    const float *x;
    float *y;
    int kernel; /* 0 f32, 1 bf16, 2 int16-vnni */
} dec_job;

static void dec_task(void *ctx, int ith, int nth) {
    const dec_job *j = ctx;
    int64_t d0, d1;
    cpu_split(j->w->rows, ith, nth, 16, &d0, &d1);
    if (d0 >= d1) return;
    if (j->kernel == 2)
        nmlx_avx512vnni_quant_matvec16(j->w, j->x, j->y, d0, d1);
    else if (j->kernel == 1)
        nmlx_avx512bf16_quant_matvec(j->w, j->x, j->y, d0, d1);
    else
        nmlx_avx512f32_quant_matvec(j->w, j->x, j->y, d0, d1);
}

static int decode_layers(int argc, char **argv) {
    const int rounds = argc > 2 ? atoi(argv[2]) : 5, bits = argc > 3 ? atoi(argv[3]) : 4;
    const int nth = argc > 4 ? atoi(argv[4]) : 2, gs = argc > 5 ? atoi(argv[5]) : 64;
    const bench_layer *models = bench_layers();
    __builtin_cpu_init();
    const nmlx_weight probe = {
        .mode = NMLX_QUANT_AFFINE, .bits = bits, .group_size = gs, .cols = 1024};
    const bool have[3] = {__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"),
                          __builtin_cpu_supports("avx512bf16") && nmlx_avx512bf16_matvec_ok(&probe),
                          __builtin_cpu_supports("avx512vnni") &&
                              nmlx_avx512vnni_matvec16_ok(&probe)};
    const char *names[3] = {"f32", "bf16", "int16-vnni"};
    nmlx_backend *be = NULL;
    if (!have[0] || nmlx_backend_cpu_create(nth, &be) != NMLX_OK) return 1;
    printf("decode, one layer's 7 mat-vecs, affine %d-bit g%d bf16 scales, %d threads, best of "
           "%d rounds: us per layer (GB/s)\n",
           bits, gs, nth, rounds);
    for (int mi = 0; mi < 2; mi++) {
        size_t layer_bytes = 0, bytes;
        int64_t nmax = 0;
        for (int i = 0; i < 7; i++) {
            const int64_t D = models[mi].dn[i][0], N = models[mi].dn[i][1];
            layer_bytes += (size_t)(D * N * bits / 8) + (size_t)(D * N / gs) * 4;
            nmax = D > nmax ? D : nmax, nmax = N > nmax ? N : nmax;
        }
        /* BENCH_HOT=1: one layer, cache-resident (the kernels' compute speed) */
        const int L = getenv("BENCH_HOT") ? 1 : (int)((256u << 20) / layer_bytes) + 1;
        nmlx_weight *w = calloc((size_t)L * 7, sizeof *w);
        for (int l = 0; l < L; l++)
            for (int i = 0; i < 7; i++)
                w[l * 7 + i] = make_q(bits, gs, models[mi].dn[i][0], models[mi].dn[i][1], &bytes);
        float *x = malloc((size_t)nmax * sizeof(float)), *y = malloc((size_t)nmax * sizeof(float));
        for (int64_t i = 0; i < nmax; i++)
            x[i] = (float)(i % 13) * 0.01f - 0.05f;
        double best[3] = {1e30, 1e30, 1e30};
        for (int r = 0; r < rounds; r++)
            for (int k = 0; k < 3; k++) {
                if (!have[k]) continue;
                const double t0 = nmlx_time_seconds();
                for (int l = 0; l < L; l++)
                    for (int i = 0; i < 7; i++) {
                        dec_job j = {.w = &w[l * 7 + i], .x = x, .y = y, .kernel = k};
                        nmlx_pool_run_n(be->pool, dec_task, &j, nth);
                    }
                const double us = (nmlx_time_seconds() - t0) / L * 1e6;
                if (us < best[k]) best[k] = us;
            }
        printf("%-13s", models[mi].name);
        for (int k = 0; k < 3; k++)
            if (have[k])
                printf("  %s %7.1f (%5.1f)", names[k], best[k],
                       (double)layer_bytes / best[k] / 1e3);
        printf("  f32/int16 %.2fx", best[0] / best[2]);
        if (have[1]) printf("  bf16/int16 %.2fx", best[1] / best[2]);
        printf("\n");
        for (int l = 0; l < L * 7; l++)
            free_q(&w[l]);
        free(w), free(x), free(y);
    }
    nmlx_backend_free(be);
    return 0;
}

/* `decode-acc [bits=4] [gs=64] [D=1024] [N=3072] [tokens=16]`: the decode
 * kernels' error against f64 (W dequantized, exact; x float) on Gaussian
 * weights quantized as MLX does and activation-like x (Gaussian, every
 * 97th column x20: outlier channels): per kernel, the rms and the max of
 * |y - y_exact| over rms(y_exact), over all rows and tokens. */
static int decode_acc(int argc, char **argv) {
    const int bits = argc > 2 ? atoi(argv[2]) : 4, gs = argc > 3 ? atoi(argv[3]) : 64;
    const int64_t D = argc > 4 ? atoll(argv[4]) : 1024, N = argc > 5 ? atoll(argv[5]) : 3072;
    const int T = argc > 6 ? atoi(argv[6]) : 16;
    __builtin_cpu_init();
    float *deq = malloc((size_t)(D * N) * 4);
    uint64_t st = 0x9E3779B97F4A7C15ull;
    nmlx_weight w = bench_gauss_affine(bits, gs, D, N, &st, deq);
    const bool have[3] = {true,
                          __builtin_cpu_supports("avx512bf16") && nmlx_avx512bf16_matvec_ok(&w),
                          __builtin_cpu_supports("avx512vnni") && nmlx_avx512vnni_matvec16_ok(&w)};
    const char *names[3] = {"f32 x", "bf16 x", "int16 x (vnni)"};
    double se[3] = {0}, mx[3] = {0}, sref = 0;
    float *x = malloc((size_t)N * 4), *y = malloc((size_t)D * 4);
    double *ye = malloc((size_t)D * 8);
    for (int t = 0; t < T; t++) {
        for (int64_t k = 0; k < N; k++)
            x[k] = (float)(bench_gauss(&st) * (k % 97 == 5 ? 20.0 : 1.0));
        for (int64_t d = 0; d < D; d++) {
            double s = 0;
            for (int64_t k = 0; k < N; k++)
                s += (double)deq[d * N + k] * x[k];
            ye[d] = s, sref += s * s;
        }
        for (int k = 0; k < 3; k++) {
            if (!have[k]) continue;
            if (k == 0) nmlx_avx512f32_quant_matvec(&w, x, y, 0, D);
            if (k == 1) nmlx_avx512bf16_quant_matvec(&w, x, y, 0, D);
            if (k == 2) nmlx_avx512vnni_quant_matvec16(&w, x, y, 0, D);
            for (int64_t d = 0; d < D; d++) {
                const double e = fabs(y[d] - ye[d]);
                se[k] += e * e, mx[k] = e > mx[k] ? e : mx[k];
            }
        }
    }
    const double rms = sqrt(sref / (double)(T * D));
    printf("decode accuracy, affine %d-bit g%d bf16 scales, %lldx%lld, %d tokens (x Gaussian, "
           "every 97th column x20): |y - y_exact| / rms(y_exact)\n",
           bits, gs, (long long)D, (long long)N, T);
    for (int k = 0; k < 3; k++)
        if (have[k])
            printf("  %-15s rms %.3e  max %.3e\n", names[k], sqrt(se[k] / (double)(T * D)) / rms,
                   mx[k] / rms);
    bench_free_weight(&w), free(deq), free(x), free(y), free(ye);
    return 0;
}
#endif

/* ------------------------------------------------------------ few tokens */

/* A weight of format fmt ("bf16", "f16", "f32": dense, "q4"/"q8": affine g64 with
 * bf16 scales, "mxfp4": g32 E8M0 scales), random; bytes -> *bytes. */
static nmlx_weight make_fmt(const char *fmt, int64_t D, int64_t N, size_t *bytes) {
    if (fmt[0] != 'q' && fmt[0] != 'm') { /* dense: bf16, f16, f32 */
        const nmlx_dtype dt = !strcmp(fmt, "f32")   ? NMLX_DT_F32
                              : !strcmp(fmt, "f16") ? NMLX_DT_F16
                                                    : NMLX_DT_BF16;
        const size_t es = nmlx_dtype_size(dt);
        char *p = malloc((size_t)(D * N) * es);
        uint64_t st = 88172645463325252ull;
        for (int64_t i = 0; i < D * N; i++) {
            float v = (float)(bench_xorshift(&st) >> 40) / 16777216.0f - 0.5f;
            if (dt == NMLX_DT_F32)
                memcpy(p + i * 4, &v, 4);
            else {
                uint16_t h = dt == NMLX_DT_F16 ? nmlx_f32_to_f16(v) : nmlx_f32_to_bf16(v);
                memcpy(p + i * 2, &h, 2);
            }
        }
        *bytes = (size_t)(D * N) * es;
        return (nmlx_weight){.w = {.dtype = dt, .ndim = 2, .shape = {D, N}, .data = p},
                             .mode = NMLX_QUANT_NONE,
                             .rows = D,
                             .cols = N};
    }
    if (!strcmp(fmt, "mxfp4")) {
        nmlx_weight w = make_q(4, 32, D, N, bytes);
        uint8_t *e = malloc((size_t)(D * N / 32));
        for (int64_t i = 0; i < D * N / 32; i++)
            e[i] = (uint8_t)(118 + i % 7);
        free(w.scales.data), free(w.biases.data);
        w.scales = (nmlx_tensor){.dtype = NMLX_DT_U8, .ndim = 2, .shape = {D, N / 32}, .data = e};
        w.biases = (nmlx_tensor){0};
        w.mode = NMLX_QUANT_MXFP4;
        *bytes -= (size_t)(D * N / 32) * 3;
        return w;
    }
    return make_q(fmt[1] == '8' ? 8 : 4, 64, D, N, bytes);
}

/* 1 thread: this thread's CPU time (steady on a shared machine: time
 * when it is not running does not count); else wall time. */
static double few_clock(int nth) { return nth > 1 ? nmlx_time_seconds() : bench_cpu_seconds(); }

/* The backend with its kernel set's few-token kernels switched off: the
 * one-token mat-vec per token over 64-row blocks (cpu_ops.c), the peer. */
static void few_off(nmlx_backend *be) {
    cpu_impl *im = be->impl;
    im->own = *im->k;
    im->own.matmul_few = NULL;
    im->k = &im->own;
}

/* `bench_quant few [seconds] [isa] [threads] [fmt,...] [DxN]`: a batched
 * decode step (T = 1, 2, 4, 8, 15 tokens) through the matmul op, weights
 * cycled over > 256 MiB (from DRAM), ms per call (best of 5 passes, the
 * two paths alternating pass by pass) with the few-token kernels and
 * without them (per-token mat-vecs, as before). One thread: CPU time of
 * the thread (see few_clock); BENCH_HOT=1: one copy (cache-resident). */
static int bench_few(int argc, char **argv) {
    const double secs = argc > 2 ? atof(argv[2]) : 0.5;
    const char *isa = argc > 3 && *argv[3] ? argv[3] : NULL;
    const int nth = argc > 4 ? atoi(argv[4]) : 2;
    char fmts[128] = "q4,q8,bf16";
    if (argc > 5) snprintf(fmts, sizeof fmts, "%s", argv[5]);
    long long Dl = 3072, Nl = 1024;
    if (argc > 6 && sscanf(argv[6], "%lldx%lld", &Dl, &Nl) != 2) return 1;
    const int64_t D = Dl, N = Nl, Ts[] = {1, 2, 4, 8, 15};
    nmlx_backend *be[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++)
        if (nmlx_backend_cpu_create_isa(nth, isa, &be[i]) != NMLX_OK) return 1;
    few_off(be[1]);
    printf("few-token matmul %lldx%lld, set %s, %d threads; ms per call (best of 5)\n", Dl, Nl,
           cpu_kernels_of(be[0])->isa, nth);
    printf("%-6s %3s %9s %9s %8s | %9s %8s %7s\n", "fmt", "T", "few ms", "ms/tok", "x T=1",
           "old ms", "x T=1", "speedup");
    float *x = malloc((size_t)(15 * N) * sizeof(float)), *y = malloc((size_t)(15 * D) * 4);
    for (int64_t i = 0; i < 15 * N; i++)
        x[i] = (float)(i % 13) * 0.01f - 0.06f;
    for (char *f = strtok(fmts, ","); f; f = strtok(NULL, ",")) {
        size_t bytes;
        nmlx_weight w0 = make_fmt(f, D, N, &bytes);
        int copies = getenv("BENCH_HOT") ? 1 : (int)((256u << 20) / bytes) + 1;
        nmlx_weight *ws = calloc((size_t)copies, sizeof *ws);
        ws[0] = w0;
        for (int c = 1; c < copies; c++)
            ws[c] = make_fmt(f, D, N, &bytes);
        double t1[2] = {0, 0};
        for (int ti = 0; ti < 5; ti++) {
            const int64_t T = Ts[ti];
            double best[2] = {1e30, 1e30};
            int64_t at = 0;
            for (int pass = 0; pass < 10; pass++) {
                const int p = pass & 1;
                int64_t calls = 0;
                double t0 = few_clock(nth), dt;
                do {
                    be[p]->ops->matmul(be[p], &ws[at++ % copies], NULL, x, y, T);
                    calls++;
                } while ((dt = few_clock(nth) - t0) < secs / 10);
                if (dt / calls < best[p]) best[p] = dt / calls;
            }
            if (T == 1) t1[0] = best[0], t1[1] = best[1];
            printf("%-6s %3lld %9.4f %9.4f %8.2f | %9.4f %8.2f %7.2f\n", f, (long long)T,
                   1e3 * best[0], 1e3 * best[0] / T, best[0] / t1[0], 1e3 * best[1],
                   best[1] / t1[1], best[1] / best[0]);
            fflush(stdout);
        }
        for (int c = 0; c < copies; c++) {
            if (ws[c].mode == NMLX_QUANT_NONE)
                free(ws[c].w.data);
            else
                free_q(&ws[c]);
        }
        free(ws);
    }
    free(x), free(y);
    nmlx_backend_free(be[0]), nmlx_backend_free(be[1]);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "few")) return bench_few(argc, argv);
    if (argc == 8 && !strcmp(argv[1], "calls")) return fixed_calls(argv);
#if defined(__x86_64__)
    if (argc > 1 && !strcmp(argv[1], "prefill")) return prefill_layers(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "decode")) return decode_layers(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "decode-acc")) return decode_acc(argc, argv);
#endif
    if (argc > 1) budget = atof(argv[1]);
    const char *only = argc > 2 ? argv[2] : "all";
    const char *only_isa = argc > 3 ? argv[3] : "";
    int only_bits = argc > 4 ? atoi(argv[4]) : 0, only_thr = argc > 5 ? atoi(argv[5]) : 0;
    const char *isas[] = {"portable", "avx2", "avx512"};
    const int bitss[] = {4, 8};
    const int64_t shapes[][2] = {{1024, 1024}, {3072, 1024}, {1024, 3072}, {151936, 1024}};
    nmlx_backend *probe = NULL;
    if (nmlx_backend_cpu_create(2, &probe) != NMLX_OK) return 1;
    double bw[3] = {0, read_bandwidth(probe->pool, 1), read_bandwidth(probe->pool, 2)};
    nmlx_backend_free(probe);
    printf("read bandwidth (median of 5 x 512 MiB): 1 thread %.1f GB/s, 2 threads %.1f GB/s\n\n",
           bw[1], bw[2]);
    for (int mat = 0; mat < 2; mat++) { /* mat-vec (portable too), then mat-mat */
        if (!strcmp(only, mat ? "matvec" : "matmat")) continue;
        printf(
            mat ? "\nmat-mat (T=512), affine g64 bf16 scales; GFLOP/s\n"
                : "mat-vec (T=1), affine g64 bf16 scales; GB/s streamed (%% of read bandwidth)\n");
        for (int i = mat; i < 3; i++)
            for (int b = 0; b < 2; b++)
                for (int nth = 1; nth <= 2; nth++) {
                    nmlx_backend *be = NULL;
                    if ((*only_isa && strcmp(only_isa, isas[i])) ||
                        (only_bits && only_bits != bitss[b]) || (only_thr && only_thr != nth))
                        continue;
                    if (nmlx_backend_cpu_create_isa(nth, isas[i], &be) != NMLX_OK) continue;
                    printf("%-8s %d-bit thr %d", isas[i], bitss[b], nth);
                    for (int s = 0; s < (mat ? 3 : 4); s++) {
                        const long long D = shapes[s][0], N = shapes[s][1];
                        if (mat) {
                            printf("  %lldx%lld %6.1f", D, N,
                                   bench_matmat(be, bitss[b], D, N, 512));
                        } else {
                            double g = bench_matvec(be, bitss[b], D, N);
                            printf("  %lldx%lld %5.1f (%3.0f%%)", D, N, g, 100 * g / bw[nth]);
                        }
                        fflush(stdout);
                    }
                    printf("\n");
                    nmlx_backend_free(be);
                }
    }
    return 0;
}
