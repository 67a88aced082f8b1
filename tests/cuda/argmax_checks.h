/* Part of test_cuda_ops.c (included after its helpers: cpu, gpu, check_ok):
 * the argmax op against the CPU's (= nmlx_argmax: the first index of the
 * largest value; -0 equals +0; a NaN at i > 0 never wins, a NaN at 0 makes
 * it 0). Every row is checked at the 4 offsets of a 16-byte boundary (the
 * kernel reads float4s between 0..3 single floats at each end), sizes 1 to
 * 1,000,003 (past one pass of the multi-block grid), with: random rows, a
 * planted maximum with a later tie, ties at thread / warp / block
 * boundaries and far apart (the first must win), the maximum at each end,
 * all equal, signed zeros, -inf everywhere but one, NaNs (quiet, negative,
 * signalling; at 0, next to the maximum, everywhere), values near
 * -FLT_MAX and subnormals. Each case with a planted answer first checks
 * that the CPU agrees with it (the case is what it says). Then the kernel
 * alone recorded in a CUDA graph (nmlx_cuda_argmax_graph_test): three rows
 * of falling maxima, replayed three times, equal the CPU's each time (the
 * state the last block resets). */
#ifndef NMLX_TEST_CUDA_ARGMAX_CHECKS_H
#define NMLX_TEST_CUDA_ARGMAX_CHECKS_H

#include <float.h>

static float *am_buf; /* device: the rows at every misalignment */
static int64_t am_cap;
static int am_off0; /* float offset of am_buf's first 16-byte boundary */

static float am_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* x[0..n) at each offset against the CPU; planted >= 0: the case's answer */
static void argmax_case(const char *what, const float *x, int64_t n, int64_t planted) {
    int32_t want = cpu->ops->argmax(cpu, x, n);
    if (planted >= 0)
        EXPECT(want == planted, "argmax case %s n=%lld: the CPU says %d, planted %lld", what,
               (long long)n, want, (long long)planted);
    for (int k = 0; k < 4; k++) {
        float *d = am_buf + am_off0 + k;
        gpu->ops->upload(gpu, d, x, (size_t)n * sizeof(float));
        int32_t got = gpu->ops->argmax(gpu, d, n);
        EXPECT(got == want, "argmax %s n=%lld at +%d bytes: cuda %d, cpu %d", what, (long long)n,
               4 * k, got, want);
    }
    check_ok("argmax");
}

static void am_fill(float *x, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++)
        x[i] = test_randf(lo, hi);
}

static void argmax_ties(float *x, int64_t n) {
    /* element boundaries of threads (4), warps (128), blocks (1024) and
     * the grid, each shifted by 0..3 (the offsets move them by as much) */
    static const int64_t bases[] = {1, 4, 32, 128, 1024, 2048, 12288, 65536, 131072, 540672};
    char what[64];
    for (size_t b = 0; b < sizeof bases / sizeof bases[0]; b++)
        for (int64_t d = 0; d < 4; d++) {
            int64_t B = bases[b] + d;
            if (B >= n) continue;
            am_fill(x, n, -1, 1);
            x[B - 1] = x[B] = 2.0f; /* neighbours: the earlier wins */
            snprintf(what, sizeof what, "tie at %lld|%lld", (long long)(B - 1), (long long)B);
            argmax_case(what, x, n, B - 1);
            if (B + 1 < n) { /* the same value at the very end too */
                x[B - 1] = 0.0f;
                x[n - 1] = 2.0f;
                snprintf(what, sizeof what, "tie at %lld and the end", (long long)B);
                argmax_case(what, x, n, B);
            }
        }
    if (n >= 3) { /* a tie every 997 elements from a random start */
        am_fill(x, n, -1, 1);
        int64_t s = (int64_t)(test_rand_u64() % (uint64_t)(n - 1)) + 1;
        for (int64_t i = s; i < n; i += 997)
            x[i] = 3.0f;
        argmax_case("ties every 997", x, n, s);
    }
}

static void argmax_ends(float *x, int64_t n) {
    char what[64];
    for (int64_t k = 0; k < n; k++) {
        if (n > 64 && k == 8) k = n - 8; /* the first and last 8 of long rows */
        am_fill(x, n, -1, 1);
        x[k] = 5.0f;
        snprintf(what, sizeof what, "max at %lld", (long long)k);
        argmax_case(what, x, n, k);
    }
}

static void argmax_nans(float *x, int64_t n) {
    const float nans[3] = {NAN, am_bits(0xffffffffu), am_bits(0x7f800001u)};
    for (int q = 0; q < 3; q++) {
        float nan = nans[q];
        am_fill(x, n, -30, 30);
        int64_t at = (int64_t)(test_rand_u64() % (uint64_t)n);
        for (int64_t i = 1; i < n; i += 7)
            x[i] = nan;
        x[at] = 40.0f;
        if (at > 1) x[at - 1] = nan; /* (not x[0]: see below) */
        if (at + 1 < n) x[at + 1] = nan;
        argmax_case("NaNs around the max", x, n, at);
        x[0] = nan; /* nothing is greater than x[0]: 0 */
        argmax_case("NaN at 0", x, n, 0);
        for (int64_t i = 0; i < n; i++)
            x[i] = nan;
        argmax_case("all NaN", x, n, 0);
        x[0] = -5.0f;
        argmax_case("all NaN but x[0]", x, n, 0);
        if (n >= 2) {
            x[n - 1] = -3.0f;
            argmax_case("NaN, x[0] and the last", x, n, n - 1);
            x[0] = -INFINITY;
            x[n - 1] = -INFINITY;
            argmax_case("NaN, -inf at 0 and the last", x, n, 0);
            x[0] = nan;
            x[n - 1] = INFINITY;
            argmax_case("NaN at 0, +inf last", x, n, 0);
        }
    }
}

static void argmax_values(float *x, int64_t n) {
    int64_t k = (int64_t)(test_rand_u64() % (uint64_t)n);
    for (int64_t i = 0; i < n; i++)
        x[i] = 0.5f;
    argmax_case("all equal", x, n, 0);
    for (int64_t i = 0; i < n; i++)
        x[i] = -INFINITY;
    argmax_case("all -inf", x, n, 0);
    x[k] = -1e30f;
    argmax_case("-inf but one", x, n, k);
    x[k] = -INFINITY;
    x[n - 1] = FLT_MAX;
    argmax_case("-inf but the last", x, n, n - 1);
    for (int64_t i = 0; i < n; i++) /* huge negative values */
        x[i] = -test_randf(1e38f, 3.4e38f);
    x[k] = -1e37f;
    argmax_case("huge negatives", x, n, k);
    for (int64_t i = 0; i < n; i++)
        x[i] = i % 3 ? -FLT_MAX : -INFINITY;
    argmax_case("-FLT_MAX and -inf", x, n, n > 1 ? 1 : 0);
    for (int64_t i = 0; i < n; i++) /* subnormals of both signs, and zeros */
        x[i] = am_bits(test_rand_u32() & (i % 5 ? 0x807fffffu : 0x80000000u));
    argmax_case("subnormals", x, n, -1);
    if (n >= 3) { /* -0 and +0 are equal: the first of them wins */
        int64_t a = k < n - 2 ? k : n - 3, b = n - 1;
        for (int q = 0; q < 2; q++) {
            for (int64_t i = 0; i < n; i++)
                x[i] = -1.0f;
            x[a] = q ? 0.0f : -0.0f;
            x[b] = q ? -0.0f : 0.0f;
            argmax_case(q ? "+0 then -0" : "-0 then +0", x, n, a);
        }
    }
    am_fill(x, n, -30, 30); /* the old test: a planted max and a tie 5 later */
    x[k] = 40.0f;
    if (k + 5 < n) x[k + 5] = 40.0f;
    argmax_case("planted", x, n, k);
    am_fill(x, n, -1, 1);
    argmax_case("random", x, n, -1);
}

/* The kernel alone in a recorded graph: three rows, maxima falling, so a
 * state left over from the previous launch would show. */
static void argmax_graph(void) {
    enum { R = 3, RUNS = 3 };
    const int64_t n[R] = {128256, 4097, 31};
    const float top[R] = {40.0f, 10.0f, 1.0f};
    float *rows[R];
    int32_t want[R], ids[R * RUNS];
    for (int r = 0; r < R; r++) {
        float *x = test_rand_floats((size_t)n[r], -1, 0.5f);
        x[(int64_t)(test_rand_u64() % (uint64_t)n[r])] = top[r];
        want[r] = cpu->ops->argmax(cpu, x, n[r]);
        rows[r] = gpu->ops->alloc(gpu, (size_t)(n[r] + 3) * sizeof(float));
        rows[r] += r; /* 0, 4 and 8 bytes past an allocation's start */
        gpu->ops->upload(gpu, rows[r], x, (size_t)n[r] * sizeof(float));
        free(x);
    }
    nmlx_status st = nmlx_cuda_argmax_graph_test(gpu, (const float *const *)rows, n, R, RUNS, ids);
    EXPECT(st == NMLX_OK, "argmax in a graph: %s", nmlx_last_error());
    for (int k = 0; st == NMLX_OK && k < R * RUNS; k++)
        EXPECT(ids[k] == want[k % R], "argmax in a graph, run %d row %d: cuda %d, cpu %d", k / R,
               k % R, ids[k], want[k % R]);
    for (int r = 0; r < R; r++) { /* and the op still agrees afterwards */
        EXPECT(gpu->ops->argmax(gpu, rows[r], n[r]) == want[r], "argmax after the graph, row %d",
               r);
        gpu->ops->free(gpu, rows[r] - r);
    }
    check_ok("argmax graph");
}

static void test_argmax_all(void) {
    static const int64_t sizes[] = {1,  2,    3,    4,    5,      7,      31,     32,
                                    33, 1000, 1025, 4097, 128256, 151936, 262144, 1000003};
    am_cap = 1000003 + 8;
    am_buf = gpu->ops->alloc(gpu, (size_t)am_cap * sizeof(float));
    EXPECT(am_buf != NULL, "argmax: device buffer");
    if (!am_buf) return;
    am_off0 = (int)((16 - (uintptr_t)am_buf % 16) % 16 / 4);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int64_t n = sizes[s];
        float *x = malloc((size_t)n * sizeof(float));
        argmax_values(x, n);
        argmax_ends(x, n);
        argmax_ties(x, n);
        argmax_nans(x, n);
        free(x);
    }
    gpu->ops->free(gpu, am_buf);
    argmax_graph();
}

#endif
