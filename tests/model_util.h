/* Helpers for the tests that run whole models (tests/ and tests/cuda/):
 * fixture paths and loading, reference files, argmax and logit distances,
 * allocation failures swept over a load, the "no CUDA device" probe.
 * Header-only, like harness.h. */
#ifndef NMLX_TEST_MODEL_UTIL_H
#define NMLX_TEST_MODEL_UTIL_H

#include "common.h" /* nmlx_test_fail_alloc_after */
#include "harness.h"
#include "model.h" /* nmlx_model_load_on */
#include "nmlx.h"

#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* "<source dir>/tests/fixtures/<name>" into buf; returns buf */
static inline char *test_fixture_path(char *buf, size_t cap, const char *name) {
    snprintf(buf, cap, "%s/tests/fixtures/%s", test_src_dir(), name);
    return buf;
}

/* tests/fixtures/<name> loaded with mp (NULL: the defaults), on be where
 * not NULL; a failed load is a test failure naming the fixture, and NULL. */
static inline nmlx_model *test_load_fixture(const char *name, const nmlx_model_params *mp,
                                            nmlx_backend *be) {
    char dir[4096];
    test_fixture_path(dir, sizeof dir, name);
    nmlx_model_params dp = nmlx_model_default_params();
    nmlx_model *m = NULL;
    nmlx_status st = be ? nmlx_model_load_on(dir, mp ? mp : &dp, be, &m)
                        : nmlx_model_load(dir, mp ? mp : &dp, &m);
    EXPECT(st == NMLX_OK, "load %s on %s: %s", name, be ? be->ops->name : "cpu", nmlx_last_error());
    return st == NMLX_OK ? m : NULL;
}

/* A whole file, NUL-terminated (len may be NULL); NULL if it cannot be read. */
static inline char *test_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0)
        buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        if (len) *len = (size_t)n;
    }
    return buf;
}

/* The prompt_ids of <fixture dir>/expected.json, malloc'd (count in *n);
 * NULL (and *n = 0) when they cannot be read. */
static inline int32_t *test_prompt_ids(const char *fixture, size_t *n) {
    char path[4200];
    snprintf(path, sizeof path, "%s/expected.json", fixture);
    json_t *exp = json_load_file(path, 0, NULL);
    json_t *ids = json_object_get(exp, "prompt_ids");
    *n = json_array_size(ids);
    int32_t *p = *n ? malloc(*n * sizeof *p) : NULL;
    for (size_t i = 0; p && i < *n; i++)
        p[i] = (int32_t)json_integer_value(json_array_get(ids, i));
    if (!p) *n = 0;
    json_decref(exp);
    return p;
}

/* A file of exactly `count` little-endian float32s; NULL otherwise. */
static inline float *test_read_floats(const char *path, size_t count) {
    size_t len = 0;
    char *raw = test_read_file(path, &len);
    if (raw && len != count * sizeof(float)) {
        free(raw);
        raw = NULL;
    }
    return (float *)raw; /* malloc'd: aligned for float */
}

/* index of the first largest of x[0..n) */
static inline int32_t test_argmax(const float *x, int64_t n) {
    int32_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = (int32_t)i;
    return best;
}

/* max |a - ref| / max |ref| (a NaN difference: infinity) */
static inline double test_diff_over_max(const float *a, const float *ref, size_t n) {
    double md = 0, mr = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]);
        if (!(d <= md)) md = isnan(d) ? INFINITY : d;
        mr = fmax(mr, fabs((double)ref[i]));
    }
    return md / mr;
}

/* max |a - ref| over the range of ref (a NaN difference: infinity) */
static inline double test_diff_over_range(const float *a, const float *ref, int64_t n) {
    double d = 0, lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - ref[i]);
        if (!(e <= d)) d = isnan(e) ? INFINITY : e;
        lo = fmin(lo, ref[i]), hi = fmax(hi, ref[i]);
    }
    return d / fmax(hi - lo, 1e-30);
}

/* Every allocation of load (mp) + session + eval of ids failing in turn
 * (k = 1, 2, ... below max_k) until one succeeds. True when every failure
 * set a message and a load succeeded; *failed: how many failed in turn. */
static inline bool test_load_fault_sweep(const char *dir, const nmlx_model_params *mp,
                                         const int32_t *ids, size_t n, long max_k, long *failed) {
    bool clean = true, done = false;
    long last = 0;
    for (long k = 1; k < max_k && !done; k++) {
        last = k;
        nmlx_model *m = NULL;
        nmlx_session *s = NULL;
        nmlx_test_fail_alloc_after(k);
        nmlx_status st = nmlx_model_load(dir, mp, &m);
        if (st == NMLX_OK) st = nmlx_session_create(m, NULL, &s);
        if (st == NMLX_OK) st = nmlx_session_eval(s, ids, n, 0);
        nmlx_test_fail_alloc_after(0);
        if (st != NMLX_OK && !nmlx_last_error()[0]) clean = false;
        done = st == NMLX_OK;
        nmlx_session_free(s);
        nmlx_model_free(m);
    }
    *failed = last - 1;
    return clean && done;
}

typedef struct {
    int32_t *ids;
    size_t cap, n; /* n: every id that came, also past cap */
} test_ids;

static inline int test_collect_id(void *user, int32_t id, const char *text, size_t len) {
    (void)text, (void)len;
    test_ids *c = user;
    if (c->n < c->cap) c->ids[c->n] = id;
    c->n++;
    return 0;
}

/* Generation parameters: greedy (temperature 0), n tokens, EOS ignored,
 * each token to on_token(user, ...). */
static inline nmlx_generate_params
test_greedy_params(size_t n, int (*on_token)(void *, int32_t, const char *, size_t), void *user) {
    nmlx_generate_params gp = nmlx_generate_default_params();
    gp.sampler = nmlx_sampler_default_params();
    gp.sampler.temperature = 0.0f;
    gp.max_tokens = (int)n;
    gp.ignore_eos = 1;
    gp.on_token = on_token;
    gp.user = user;
    return gp;
}

/* nmlx_generate on s after prompt, greedy (temperature 0), n tokens, EOS
 * ignored: ids[0..n) (-1 where none came), *n_got how many came, *res (may
 * be NULL) the result. Returns the status. */
static inline nmlx_status test_greedy_ids(nmlx_session *s, const int32_t *prompt, size_t n_prompt,
                                          int32_t *ids, size_t n, size_t *n_got,
                                          nmlx_generate_result *res) {
    for (size_t i = 0; i < n; i++)
        ids[i] = -1;
    test_ids c = {ids, n, 0};
    nmlx_generate_params gp = test_greedy_params(n, test_collect_id, &c);
    nmlx_generate_result r;
    nmlx_status st = nmlx_generate(s, prompt, n_prompt, &gp, res ? res : &r);
    *n_got = c.n;
    return st;
}

/* test_load_fault_sweep over tests/fixtures/<name> with one thread, the
 * count printed; a failure is a test failure. */
static inline void test_fixture_fault_sweep(const char *name, const int32_t *ids, size_t n) {
    char dir[4096];
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = 1;
    long failed = 0;
    bool ok =
        test_load_fault_sweep(test_fixture_path(dir, sizeof dir, name), &mp, ids, n, 5000, &failed);
    printf("  %-20s fault injection: %ld allocations failed in turn\n", name, failed);
    EXPECT(ok, "%s: every failed allocation reports an error, then it loads", name);
}

/* For the CUDA tests: true (after printing SKIP) when loading a fixture on
 * device "cuda" says no CUDA device is usable; they then exit 77. */
static inline bool test_no_cuda_device(void) {
    char dir[4096];
    nmlx_model_params mp = nmlx_model_default_params();
    mp.no_tokenizer = 1;
    mp.device = "cuda";
    nmlx_model *m = NULL;
    if (nmlx_model_load(test_fixture_path(dir, sizeof dir, "qwen3"), &mp, &m) ==
            NMLX_ERR_UNSUPPORTED &&
        strstr(nmlx_last_error(), "device 'cuda")) {
        printf("SKIP: no CUDA device: %s\n", nmlx_last_error());
        return true;
    }
    nmlx_model_free(m);
    return false;
}

#endif
