/* Minimal test harness: EXPECT records failures and keeps going; each test
 * binary ends with `return test_summary();`, which prints
 * "N passed, N failed" and returns non-zero on any failure. */
#ifndef NMLX_TEST_HARNESS_H
#define NMLX_TEST_HARNESS_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* atomic: tests may EXPECT from several threads (test_batch_sample, -fsanitize=thread) */
static _Atomic int test_passed_, test_failed_;

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (cond) {                                                                                \
            test_passed_++;                                                                        \
        } else {                                                                                   \
            test_failed_++;                                                                        \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                   \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

static inline int test_summary(void) {
    printf("%d passed, %d failed\n", test_passed_, test_failed_);
    return test_failed_ ? 1 : 0;
}

/* Deterministic xorshift random numbers for test inputs (never zeros). */
static uint64_t test_rng_ = 0x9E3779B97F4A7C15ull;
static inline void test_seed(uint64_t s) { test_rng_ = s ? s : 1; }
static inline uint64_t test_rand_u64(void) {
    test_rng_ ^= test_rng_ << 13;
    test_rng_ ^= test_rng_ >> 7;
    test_rng_ ^= test_rng_ << 17;
    return test_rng_;
}
/* uniform in [lo, hi) */
static inline float test_randf(float lo, float hi) {
    return lo + (hi - lo) * (float)((test_rand_u64() >> 40) * (1.0 / 16777216.0));
}

static inline uint32_t test_rand_u32(void) { return (uint32_t)(test_rand_u64() >> 32); }
/* n floats uniform in [lo, hi), malloc'd (never NULL-sized) */
static inline float *test_rand_floats(size_t n, float lo, float hi) {
    float *v = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; v && i < n; i++)
        v[i] = test_randf(lo, hi);
    return v;
}

/* Path of a file under the source tree (tests run from the source dir). */
static inline const char *test_src_dir(void) {
    const char *d = getenv("NMLX_SOURCE_DIR");
    return d ? d : ".";
}

#endif
