/* One decode step's quantized matmuls at real model shapes, nothing else:
 * every layer's q, k, v, o, gate, up, down and the LM head, through the
 * backend's matmul op (pool split, kernel pick) on 1-token x, weights laid
 * out as a model's (each matmul its own allocation; the whole set far
 * larger than the caches, so every step streams them from DRAM). Prints
 * tokens/s of matmuls alone and GB/s of weights + scales + biases read,
 * per matmul kind and in all: the ceiling the end-to-end decode
 * (`nmlx bench`) can reach, and where the time goes.
 *
 *   gcc -std=c11 -O2 -Iinclude -Isrc bench/bench_decode.c build/libnmlx.a \
 *       $(pkg-config --libs jansson libpcre2-8 libutf8proc) -lpthread -lm -o build/bench_decode
 *   build/bench_decode [qwen|llama] [bits=8] [threads=2] [steps=20] [isa]
 */
#define _DEFAULT_SOURCE
#include "common.h"
#include "compute/backend.h"
#include "compute/cpu/cpu_internal.h"
#include "compute/quant.h"
#include "bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* BENCH_HUGE=1: weights on transparent huge pages (madvise) */
static void *alloc_w(size_t n) {
    if (!getenv("BENCH_HUGE")) return malloc(n);
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    madvise(p, n, MADV_HUGEPAGE);
    return p;
}

/* random codes, seeded by the shape */
static nmlx_weight make_q(int bits, int gs, int64_t D, int64_t N, size_t *bytes) {
    return bench_random_affine(bits, gs, D, N, 88172645463325252ull ^ (uint64_t)(D * 31 + N),
                               alloc_w, bytes);
}

/* `hot BITS D N [isa]`: one thread, one weight small enough for L2, called
 * repeatedly: the kernel's arithmetic ceiling in weights/s */
static int hot(int argc, char **argv) {
    const int bits = atoi(argv[2]);
    const int64_t D = atoll(argv[3]), N = atoll(argv[4]);
    nmlx_backend *be = NULL;
    if ((argc > 5 ? nmlx_backend_cpu_create_isa(1, argv[5], &be)
                  : nmlx_backend_cpu_create(1, &be)) != NMLX_OK)
        return 1;
    size_t bytes;
    nmlx_weight w = make_q(bits, 64, D, N, &bytes);
    float *x = malloc((size_t)N * sizeof(float)), *y = malloc((size_t)D * sizeof(float));
    for (int64_t i = 0; i < N; i++)
        x[i] = (float)(i % 7) * 0.1f - 0.3f;
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        int64_t calls = 0;
        double t0 = nmlx_time_seconds(), dt;
        do {
            for (int i = 0; i < 16; i++)
                be->ops->matmul(be, &w, NULL, x, y, 1);
            calls += 16;
        } while ((dt = nmlx_time_seconds() - t0) < 0.1);
        double g = (double)(D * N) * (double)calls / dt / 1e9;
        if (g > best) best = g;
    }
    printf("hot %d-bit %lldx%lld (%.0f KiB): %.1f Gweights/s, %.1f GB/s\n", bits, (long long)D,
           (long long)N, bytes / 1024.0, best, best * (double)bytes / (double)(D * N));
    free(w.w.data), free(w.scales.data), free(w.biases.data), free(x), free(y);
    nmlx_backend_free(be);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 4 && !strcmp(argv[1], "hot")) return hot(argc, argv);
    const bool llama = argc > 1 && !strcmp(argv[1], "llama");
    const int bits = argc > 2 ? atoi(argv[2]) : 8, nth = argc > 3 ? atoi(argv[3]) : 2;
    const int steps = argc > 4 ? atoi(argv[4]) : 20;
    const char *isa = argc > 5 ? argv[5] : NULL;
    /* rows x cols of q, k, v, o, gate, up, down; layers; LM head rows */
    static const char *kinds[8] = {"q", "k", "v", "o", "gate", "up", "down", "head"};
    const int64_t(*dn)[2] = bench_layers()[llama].dn;
    const int L = llama ? 16 : 28;
    const int64_t V = llama ? 128256 : 151936, H = llama ? 2048 : 1024;
    nmlx_backend *be = NULL;
    nmlx_status st =
        isa ? nmlx_backend_cpu_create_isa(nth, isa, &be) : nmlx_backend_cpu_create(nth, &be);
    if (st != NMLX_OK) return 1;
    const int nw = L * 7 + 1;
    nmlx_weight *w = calloc((size_t)nw, sizeof *w);
    size_t *bytes = calloc((size_t)nw, sizeof *bytes), total = 0;
    for (int l = 0; l < L; l++)
        for (int k = 0; k < 7; k++)
            w[l * 7 + k] = make_q(bits, 64, dn[k][0], dn[k][1], &bytes[l * 7 + k]);
    w[nw - 1] = make_q(bits, 64, V, H, &bytes[nw - 1]);
    w[nw - 1].f32_input = true;
    for (int i = 0; i < nw; i++)
        total += bytes[i];
    float *x = malloc(8192 * sizeof(float)), *y = malloc((size_t)V * sizeof(float));
    for (int i = 0; i < 8192; i++)
        x[i] = (float)(i % 7) * 0.1f - 0.3f;
    double kt[8] = {0}, best = 1e30;
    size_t kb[8] = {0};
    for (int i = 0; i < nw; i++)
        kb[i == nw - 1 ? 7 : i % 7] += bytes[i];
    for (int s = 0; s < steps + 1; s++) {
        double t0 = nmlx_time_seconds(), tk[8] = {0};
        for (int i = 0; i < nw; i++) {
            double a = nmlx_time_seconds();
            be->ops->matmul(be, &w[i], NULL, x, y, 1);
            tk[i == nw - 1 ? 7 : i % 7] += nmlx_time_seconds() - a;
        }
        double t = nmlx_time_seconds() - t0;
        if (s == 0) continue; /* first touch */
        if (t < best) best = t;
        for (int k = 0; k < 8; k++)
            kt[k] += tk[k] / steps;
    }
    printf(
        "%s %d-bit g64, %d threads%s%s: %.1f MB per step, best %.2f ms = %.1f tok/s, %.1f GB/s\n",
        llama ? "Llama-3.2-1B" : "Qwen3-0.6B", bits, nth, isa ? ", isa " : "", isa ? isa : "",
        total / 1e6, best * 1e3, 1 / best, total / best / 1e9);
    for (int k = 0; k < 8; k++)
        printf("  %-5s %7.3f ms/step (mean)  %5.1f GB/s\n", kinds[k], kt[k] * 1e3,
               kb[k] / kt[k] / 1e9);
    if (!getenv("BENCH_HUGE"))
        for (int i = 0; i < nw; i++)
            free(w[i].w.data), free(w[i].scales.data), free(w[i].biases.data);
    free(w), free(bytes), free(x), free(y);
    nmlx_backend_free(be);
    return 0;
}
