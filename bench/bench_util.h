/* Helpers shared by the CPU kernel benchmarks (each built by hand, with
 * -Isrc: see its header): this thread's CPU time, xorshift random numbers
 * and Gaussians, MLX affine weights (bf16 scales and biases), the DRAM read
 * ceiling, and the linear layers of Qwen3-0.6B and Llama-3.2-1B.
 * Header-only; nothing here is timed. */
#ifndef NMLX_BENCH_UTIL_H
#define NMLX_BENCH_UTIL_H

#include "common.h"
#include "compute/backend.h"
#include "compute/quant.h"

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

/* this thread's CPU seconds: time descheduled by other processes (a shared
 * machine) is not counted */
static inline double bench_cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* one xorshift64 step; returns the new state */
static inline uint64_t bench_xorshift(uint64_t *st) {
    *st ^= *st << 13, *st ^= *st >> 7, *st ^= *st << 17;
    return *st;
}

/* uniform in [-1, 1), 24 bits */
static inline float bench_uniform(uint64_t *st) {
    return (float)((int64_t)(bench_xorshift(st) >> 40) - (1 << 23)) / (1 << 23);
}

/* about standard normal: 12 uniforms in [0, 1) summed, minus 6 */
static inline double bench_gauss(uint64_t *st) {
    double u = 0;
    for (int i = 0; i < 12; i++)
        u += (double)(bench_xorshift(st) >> 11) / 9007199254740992.0;
    return u - 6.0;
}

/* An MLX affine [D, N] weight, `bits` bits in groups of gs, bf16 scales and
 * biases, over the given buffers (codes [D, row words], scales and biases
 * [D, N / gs]). */
static inline nmlx_weight bench_affine_weight(int bits, int gs, int64_t D, int64_t N,
                                              uint32_t *codes, uint16_t *scales, uint16_t *biases) {
    const int64_t words = nmlx_quant_row_words(N, bits), G = N / gs;
    return (nmlx_weight){
        .w = {.dtype = NMLX_DT_U32, .ndim = 2, .shape = {D, words}, .data = codes},
        .scales = {.dtype = NMLX_DT_BF16, .ndim = 2, .shape = {D, G}, .data = scales},
        .biases = {.dtype = NMLX_DT_BF16, .ndim = 2, .shape = {D, G}, .data = biases},
        .mode = NMLX_QUANT_AFFINE,
        .bits = bits,
        .group_size = gs,
        .rows = D,
        .cols = N};
}

/* An affine weight of random codes (xorshift from seed) and fixed scales
 * and biases; buffers from alloc (NULL: malloc); *bytes: all three. */
static inline nmlx_weight bench_random_affine(int bits, int gs, int64_t D, int64_t N, uint64_t seed,
                                              void *(*alloc)(size_t), size_t *bytes) {
    if (!alloc) alloc = malloc;
    const int64_t words = nmlx_quant_row_words(N, bits), G = N / gs;
    uint32_t *p = alloc((size_t)(D * words) * 4);
    uint16_t *s = alloc((size_t)(D * G) * 2), *b = alloc((size_t)(D * G) * 2);
    uint64_t st = seed;
    for (int64_t i = 0; i < D * words; i++)
        p[i] = (uint32_t)bench_xorshift(&st);
    for (int64_t i = 0; i < D * G; i++) {
        s[i] = nmlx_f32_to_bf16(0.01f * (float)(i % 5 + 1));
        b[i] = nmlx_f32_to_bf16(-0.05f * (float)(i % 3 + 1));
    }
    *bytes = (size_t)(D * words) * 4 + (size_t)(D * G) * 4;
    return bench_affine_weight(bits, gs, D, N, p, s, b);
}

/* Gaussian weights (sd 0.02, drawn from *st row by row) quantized as MLX
 * does (bf16 scales), malloc'd; deq [D, N]: their dequantized values. */
static inline nmlx_weight bench_gauss_affine(int bits, int gs, int64_t D, int64_t N, uint64_t *st,
                                             float *deq) {
    const int64_t words = nmlx_quant_row_words(N, bits), G = N / gs;
    uint32_t *p = malloc((size_t)(D * words) * 4);
    uint16_t *sc = malloc((size_t)(D * G) * 2), *bi = malloc((size_t)(D * G) * 2);
    float *src = malloc((size_t)N * 4);
    nmlx_weight w = bench_affine_weight(bits, gs, D, N, p, sc, bi);
    for (int64_t d = 0; d < D; d++) {
        for (int64_t k = 0; k < N; k++)
            src[k] = (float)(0.02 * bench_gauss(st));
        nmlx_quant_quantize_row(NMLX_QUANT_AFFINE, bits, gs, src, N, p + d * words, sc + d * G,
                                bi + d * G, NMLX_DT_BF16);
        nmlx_quant_dequant_row(&w, d, 0, N, deq + d * N);
    }
    free(src);
    return w;
}

static inline void bench_free_weight(nmlx_weight *w) {
    free(w->w.data), free(w->scales.data), free(w->biases.data);
}

/* Best calls per second over reps: each rep calls be's matmul (T tokens,
 * no bias) on ws[0], ws[1], ... ws[copies - 1], ws[0], ... until secs of
 * wall time have passed. */
static inline double bench_matmul_rate(nmlx_backend *be, const nmlx_weight *ws, int copies,
                                       const float *x, float *y, int64_t T, int reps, double secs) {
    double best = 0;
    for (int rep = 0; rep < reps; rep++) {
        int64_t calls = 0;
        double t0 = nmlx_time_seconds(), dt;
        do {
            be->ops->matmul(be, &ws[calls % copies], NULL, x, y, T);
            calls++;
        } while ((dt = nmlx_time_seconds() - t0) < secs);
        if ((double)calls / dt > best) best = (double)calls / dt;
    }
    return best;
}

/* ---- the read ceiling: each thread sums its share of a buffer >> L3 ---- */

typedef struct {
    const uint64_t *buf;
    int64_t n;
    uint64_t sums[64];
} bench_read_job;

static inline void bench_read_task(void *ctx, int ith, int nth) {
    bench_read_job *j = ctx;
    int64_t lo = j->n * ith / nth, hi = j->n * (ith + 1) / nth;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int64_t i = lo; i + 4 <= hi; i += 4) {
        s0 += j->buf[i];
        s1 += j->buf[i + 1];
        s2 += j->buf[i + 2];
        s3 += j->buf[i + 3];
    }
    j->sums[ith] = s0 + s1 + s2 + s3;
}

/* GB/s of 5 passes over 512 MiB by nth threads of pool, sorted ascending
 * into gbs[5] (best: gbs[4], median: gbs[2]). The buffer is kept. */
static inline void bench_read_bandwidth(nmlx_pool *pool, int nth, double gbs[5]) {
    const int64_t bytes = (int64_t)512 << 20;
    static uint64_t *buf;
    if (!buf) {
        buf = malloc((size_t)bytes);
        for (int64_t i = 0; i < bytes / 8; i++)
            buf[i] = (uint64_t)i * 2654435761u;
    }
    bench_read_job j = {.buf = buf, .n = bytes / 8};
    for (int rep = 0; rep < 5; rep++) {
        double t0 = nmlx_time_seconds();
        nmlx_pool_run_n(pool, bench_read_task, &j, nth);
        gbs[rep] = (double)bytes / (nmlx_time_seconds() - t0) / 1e9;
    }
    for (int a = 0; a < 5; a++)
        for (int b = a + 1; b < 5; b++)
            if (gbs[b] < gbs[a]) {
                double t = gbs[a];
                gbs[a] = gbs[b], gbs[b] = t;
            }
}

/* ---- model shapes ---- */

/* One decoder layer's seven linear layers, rows x cols of q, k, v, o, gate,
 * up, down: [0] Qwen3-0.6B, [1] Llama-3.2-1B. */
typedef struct {
    const char *name;
    int64_t dn[7][2];
} bench_layer;

static inline const bench_layer *bench_layers(void) {
    static const bench_layer layers[2] = {
        {"Qwen3-0.6B",
         {{2048, 1024},
          {1024, 1024},
          {1024, 1024},
          {1024, 2048},
          {3072, 1024},
          {3072, 1024},
          {1024, 3072}}},
        {"Llama-3.2-1B",
         {{2048, 2048},
          {512, 2048},
          {512, 2048},
          {2048, 2048},
          {8192, 2048},
          {8192, 2048},
          {2048, 8192}}},
    };
    return layers;
}

/* The same layers as distinct shapes, each with how many times it occurs
 * in a layer (per_layer); BENCH_N_SHAPES of them. */
typedef struct {
    const char *model, *name;
    int64_t D, N;
    int per_layer;
} bench_shape;

enum { BENCH_N_SHAPES = 9 };

static inline const bench_shape *bench_shapes(void) {
    static const bench_shape shapes[BENCH_N_SHAPES] = {
        {"qwen3-0.6b", "q", 2048, 1024, 1},     {"qwen3-0.6b", "k,v", 1024, 1024, 2},
        {"qwen3-0.6b", "o", 1024, 2048, 1},     {"qwen3-0.6b", "gate,up", 3072, 1024, 2},
        {"qwen3-0.6b", "down", 1024, 3072, 1},  {"llama-3.2-1b", "q,o", 2048, 2048, 2},
        {"llama-3.2-1b", "k,v", 512, 2048, 2},  {"llama-3.2-1b", "gate,up", 8192, 2048, 2},
        {"llama-3.2-1b", "down", 2048, 8192, 1}};
    return shapes;
}

#endif
