/* CPU kernel benchmark: memory read bandwidth (the decode ceiling), mat-vec
 * GB/s at Qwen3-0.6B shapes as a fraction of it, and prefill mat-mat
 * GFLOP/s at T=512, for each kernel set, weight dtype and 1..2 threads.
 * Build and run: see bench/kernels.md. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"
#include "compute/backend.h"
#include "compute/cpu/cpu_internal.h"
#include "bench_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static double budget = 0.4; /* seconds per measurement */

/* ---- read bandwidth (the decode ceiling): best of bench_util.h's passes ---- */

static double read_bandwidth(nmlx_pool *pool, int nth) {
    double gbs[5];
    bench_read_bandwidth(pool, nth, gbs);
    return gbs[4];
}

/* ---- FMA peak: 12 independent 8-wide FMA chains (the mat-mat ceiling) ---- */

#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx2,fma"))) static double fma_peak_1thread(void) {
    __m256 a[12];
    for (int i = 0; i < 12; i++)
        a[i] = _mm256_set1_ps((float)i);
    const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    const long iters = 20000000;
    double t0 = nmlx_time_seconds();
    for (long it = 0; it < iters; it++)
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++)
            a[i] = _mm256_fmadd_ps(a[i], m, c);
    double dt = nmlx_time_seconds() - t0;
    float sink = 0;
    for (int i = 0; i < 12; i++)
        sink += _mm256_cvtss_f32(a[i]);
    if (sink == 12345.0f) printf(" ");
    return 2.0 * 8 * 12 * (double)iters / dt / 1e9;
}

__attribute__((target("avx512f"))) static double fma512_peak_1thread(void) {
    __m512 a[12];
    for (int i = 0; i < 12; i++)
        a[i] = _mm512_set1_ps((float)i);
    const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    const long iters = 20000000;
    double t0 = nmlx_time_seconds();
    for (long it = 0; it < iters; it++)
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++)
            a[i] = _mm512_fmadd_ps(a[i], m, c);
    double dt = nmlx_time_seconds() - t0;
    float sink = 0;
    for (int i = 0; i < 12; i++)
        sink += _mm512_reduce_add_ps(a[i]);
    if (sink == 12345.0f) printf(" ");
    return 2.0 * 16 * 12 * (double)iters / dt / 1e9;
}
#endif

/* ---- weights ---- */

/* BENCH_MMAP=1: weights in a file mapping (4 KiB page-cache pages, as a
 * mmapped checkpoint) instead of malloc (anonymous, transparent huge pages
 * where the kernel gives them). */
static void *map_file_copy(const void *src, size_t bytes) {
    char path[] = "/tmp/nmlx-bench-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return NULL;
    unlink(path);
    if (write(fd, src, bytes) != (ssize_t)bytes) {
        close(fd);
        return NULL;
    }
    void *m = mmap(NULL, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    return m == MAP_FAILED ? NULL : m;
}

static void free_weights(void *p, size_t bytes) {
    if (getenv("BENCH_MMAP"))
        munmap(p, bytes);
    else
        free(p);
}

static void *rand_weights(nmlx_dtype dt, int64_t n) {
    size_t es = nmlx_dtype_size(dt);
    char *p = malloc((size_t)n * es);
    uint64_t s = 88172645463325252ull;
    for (int64_t i = 0; i < n; i++) {
        float f = (float)((bench_xorshift(&s) >> 40) * (1.0 / 16777216.0)) - 0.5f;
        if (dt == NMLX_DT_F32)
            ((float *)p)[i] = f;
        else
            ((uint16_t *)p)[i] = dt == NMLX_DT_BF16 ? nmlx_f32_to_bf16(f) : nmlx_f32_to_f16(f);
    }
    if (getenv("BENCH_MMAP")) {
        void *m = map_file_copy(p, (size_t)n * es);
        free(p);
        if (!m) {
            fprintf(stderr, "BENCH_MMAP: cannot map a file copy\n");
            exit(1);
        }
        p = m;
    }
    return p;
}

/* Mat-vec streams weights: cycle over enough copies that they cannot sit in
 * the 32 MiB L3, as in a real decode step over all layers. */
static double bench_matvec(nmlx_backend *be, nmlx_dtype dt, int64_t D, int64_t N) {
    size_t wbytes = (size_t)(D * N) * nmlx_dtype_size(dt);
    int copies = getenv("BENCH_HOT") ? 1 : (int)((256u << 20) / wbytes) + 1;
    nmlx_weight *ws = calloc((size_t)copies, sizeof *ws);
    for (int c = 0; c < copies; c++) {
        ws[c] = (nmlx_weight){.w = {.dtype = dt, .ndim = 2, .shape = {D, N}},
                              .mode = NMLX_QUANT_NONE,
                              .rows = D,
                              .cols = N};
        ws[c].w.data = rand_weights(dt, D * N);
    }
    float *x = malloc((size_t)N * sizeof(float)), *y = malloc((size_t)D * sizeof(float));
    for (int64_t i = 0; i < N; i++)
        x[i] = (float)(i % 7) * 0.1f;
    double best = (double)wbytes / 1e9 * bench_matmul_rate(be, ws, copies, x, y, 1, 3, budget / 3);
    for (int c = 0; c < copies; c++)
        free_weights(ws[c].w.data, wbytes);
    free(ws), free(x), free(y);
    return best;
}

static double bench_matmat(nmlx_backend *be, nmlx_dtype dt, int64_t D, int64_t N, int64_t T) {
    nmlx_weight w = {.w = {.dtype = dt, .ndim = 2, .shape = {D, N}},
                     .mode = NMLX_QUANT_NONE,
                     .rows = D,
                     .cols = N};
    w.w.data = rand_weights(dt, D * N);
    float *x = malloc((size_t)(T * N) * sizeof(float)),
          *y = malloc((size_t)(T * D) * sizeof(float));
    for (int64_t i = 0; i < T * N; i++)
        x[i] = (float)(i % 13) * 0.01f;
    double best =
        2.0 * (double)(D * N * T) / 1e9 * bench_matmul_rate(be, &w, 1, x, y, T, 2, budget / 2);
    free_weights(w.w.data, (size_t)(D * N) * nmlx_dtype_size(dt));
    free(x), free(y);
    return best;
}

#if NMLX_CPU_HAVE_AVX2
/* Every bf16 mat-vec variant of the avx512bf16 set against the avx512 set's
 * widening mat-vec, rounds interleaved so machine noise hits all alike;
 * best of the rounds, GB/s of weights. */
static void bench_bf16_variants(int nth) {
    nmlx_backend *be = NULL, *ref = NULL;
    if (nmlx_backend_cpu_create_isa(nth, "avx512bf16", &be) != NMLX_OK ||
        nmlx_backend_cpu_create_isa(nth, "avx512", &ref) != NMLX_OK) {
        printf("avx512bf16 not available here\n");
        nmlx_backend_free(be);
        return;
    }
    cpu_impl *impl = be->impl;
    const int64_t shapes[][2] = {{3072, 1024}, {1024, 3072}, {2048, 8192}, {151936, 1024}};
    const int nv = nmlx_avx512bf16_matvec_variants();
    double best[64][4] = {{0}}, best_ref[4] = {0};
    for (int round = 0; round < 3; round++)
        for (int s = 0; s < 4; s++) {
            double g = bench_matvec(ref, NMLX_DT_BF16, shapes[s][0], shapes[s][1]);
            if (g > best_ref[s]) best_ref[s] = g;
            for (int v = 0; v < nv && v < 64; v++) {
                impl->own.matvec_bf16_variant = v;
                g = bench_matvec(be, NMLX_DT_BF16, shapes[s][0], shapes[s][1]);
                if (g > best[v][s]) best[v][s] = g;
            }
        }
    printf("bf16 mat-vec variants, %d thread(s), GB/s (best of 3 interleaved rounds)\n", nth);
    printf("%-12s", "variant");
    for (int s = 0; s < 4; s++)
        printf("  %6lldx%-5lld", (long long)shapes[s][0], (long long)shapes[s][1]);
    printf("\n%-12s", "avx512 widen");
    for (int s = 0; s < 4; s++)
        printf("  %12.1f", best_ref[s]);
    printf("\n");
    for (int v = 0; v < nv && v < 64; v++) {
        printf("%-12s", nmlx_avx512bf16_matvec_name(v));
        for (int s = 0; s < 4; s++)
            printf("  %12.1f", best[v][s]);
        printf("\n");
    }
    nmlx_backend_free(be);
    nmlx_backend_free(ref);
}
#endif

/* usage: bench_kernels [seconds-per-measurement] [matvec|matmat] [isa] [dtype] */
int main(int argc, char **argv) {
    if (argc > 1) budget = atof(argv[1]);
    const char *only = argc > 2 ? argv[2] : "";
#if NMLX_CPU_HAVE_AVX2
    if (!strcmp(only, "variants")) { /* bench_kernels S variants [threads] */
        bench_bf16_variants(argc > 3 ? atoi(argv[3]) : 1);
        return 0;
    }
#endif
    const char *only_isa = argc > 3 ? argv[3] : "";
    const char *only_dt = argc > 4 ? argv[4] : ""; /* e.g. BF16 */
    const char *isas[] = {"portable", "avx2", "avx512", "avx512bf16"};
    const int64_t shapes[][2] = {{1024, 1024}, {3072, 1024}, {1024, 3072}, {151936, 1024}};
    const nmlx_dtype dts[] = {NMLX_DT_BF16, NMLX_DT_F16, NMLX_DT_F32};
    nmlx_backend *probe = NULL;
    if (nmlx_backend_cpu_create(2, &probe) != NMLX_OK) return 1;
    double bw[3] = {0, read_bandwidth(probe->pool, 1), read_bandwidth(probe->pool, 2)};
    nmlx_backend_free(probe);
    printf("read bandwidth: 1 thread %.1f GB/s, 2 threads %.1f GB/s\n", bw[1], bw[2]);
#if defined(__x86_64__)
    double peak = __builtin_cpu_supports("fma") ? fma_peak_1thread() : 0;
    double peak512 = __builtin_cpu_supports("avx512f") ? fma512_peak_1thread() : 0;
    printf("FMA peak, 1 thread: AVX2 %.1f GFLOP/s, AVX-512 %.1f GFLOP/s\n", peak, peak512);
#else
    double peak = 0, peak512 = 0;
#endif
    printf("\n");

    printf("mat-vec (T=1), weights cycled over >256 MiB; GB/s of weights read "
           "(fraction of read bandwidth, same thread count)\n");
    printf("%-9s %-5s %-4s", "isa", "dtype", "thr");
    for (int s = 0; s < 4; s++)
        printf("  %6lldx%-5lld      ", (long long)shapes[s][0], (long long)shapes[s][1]);
    printf("\n");
    for (int i = 0; i < 4 && strcmp(only, "matmat"); i++)
        for (int d = 0; d < 3; d++)
            for (int nth = 1; nth <= 2; nth++) {
                nmlx_backend *be = NULL;
                if (*only_isa && strcmp(only_isa, isas[i])) continue;
                if (*only_dt && strcmp(only_dt, nmlx_dtype_name(dts[d]))) continue;
                if (nmlx_backend_cpu_create_isa(nth, isas[i], &be) != NMLX_OK) continue;
                printf("%-9s %-5s %-4d", isas[i], nmlx_dtype_name(dts[d]), nth);
                for (int s = 0; s < 4; s++) {
                    double g = bench_matvec(be, dts[d], shapes[s][0], shapes[s][1]);
                    printf("  %6.1f GB/s (%3.0f%%)", g, 100 * g / bw[nth]);
                    fflush(stdout);
                }
                printf("\n");
                nmlx_backend_free(be);
            }

    printf("\nmat-mat (prefill, T=512): GFLOP/s (2*D*N*T per call); %% of the 1-thread FMA peak "
           "of that ISA times threads\n");
    printf("%-9s %-5s %-4s", "isa", "dtype", "thr");
    for (int s = 0; s < 3; s++)
        printf("  %6lldx%-5lld       ", (long long)shapes[s][0], (long long)shapes[s][1]);
    printf("\n");
    for (int i = 0; i < 4 && strcmp(only, "matvec"); i++)
        for (int d = 0; d < 3; d++)
            for (int nth = 1; nth <= 2; nth++) {
                nmlx_backend *be = NULL;
                if (*only_isa && strcmp(only_isa, isas[i])) continue;
                if (*only_dt && strcmp(only_dt, nmlx_dtype_name(dts[d]))) continue;
                if (nmlx_backend_cpu_create_isa(nth, isas[i], &be) != NMLX_OK) continue;
                printf("%-9s %-5s %-4d", isas[i], nmlx_dtype_name(dts[d]), nth);
                for (int s = 0; s < 3; s++) {
                    double gf = bench_matmat(be, dts[d], shapes[s][0], shapes[s][1], 512);
                    double pk = i == 2 ? peak512 : peak;
                    printf("  %6.1f (%3.0f%%)     ", gf, pk > 0 ? 100 * gf / (pk * nth) : 0.0);
                    fflush(stdout);
                }
                printf("\n");
                nmlx_backend_free(be);
            }
    return 0;
}
