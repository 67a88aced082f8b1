/* Batched decode throughput: aggregate tokens/s when N sessions of one model
 * advance together (nmlx_batch_eval), against one session decoding alone
 * (nmlx_session_eval, one token per call), measured in the same run.
 *
 *   bench_batch MODEL_DIR [steps=64] [threads=0] [sizes=1,2,4,8,16] [device=cpu]
 *
 * Each session is prefilled with its own 32-token prompt (random ids), then
 * decodes greedily; time covers the decode steps only (sampling included:
 * nmlx_session_sample per session, as the server's scheduler does, so a
 * batched step's rows stay on a device backend and one id a session comes
 * back; BENCH_TEMPERATURE=T samples at temperature T with top_p 0.9 instead,
 * on the device where the backend has a sample op). Rounds alternate between the lone baseline and
 * the batch sizes so machine noise hits all alike; medians of 3 rounds. */
#define _POSIX_C_SOURCE 200809L
#include "nmlx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { PROMPT = 32, MAX_N = 64, ROUNDS = 3 };

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static nmlx_sampler_params sampler;

static int32_t pick(nmlx_session *s) {
    int32_t id = 0;
    if (nmlx_session_sample(s, &sampler, &id) != NMLX_OK) {
        fprintf(stderr, "bench_batch: sample: %s\n", nmlx_last_error());
        exit(1);
    }
    return id;
}

static void die(const char *what) {
    fprintf(stderr, "bench_batch: %s: %s\n", what, nmlx_last_error());
    exit(1);
}

/* Aggregate decode tokens/s of n sessions over `steps` steps; n = 0 is the
 * lone baseline (one session, nmlx_session_eval). */
static double run(nmlx_model *m, int n, int steps) {
    int lone = n == 0;
    if (lone) n = 1;
    int32_t V = nmlx_model_vocab_size(m);
    nmlx_session *ss[MAX_N];
    int32_t ids[MAX_N];
    nmlx_session_params sp = nmlx_session_default_params();
    sp.max_context = PROMPT + steps + 8;
    uint64_t r = 0x2545f4914f6cdd1dull;
    for (int i = 0; i < n; i++) {
        if (nmlx_session_create(m, &sp, &ss[i]) != NMLX_OK) die("session");
        int32_t p[PROMPT];
        for (int t = 0; t < PROMPT; t++) {
            r ^= r << 13, r ^= r >> 7, r ^= r << 17;
            p[t] = (int32_t)((r >> 33) % (uint64_t)V);
        }
        if (nmlx_session_eval(ss[i], p, PROMPT, 0) != NMLX_OK) die("prefill");
        nmlx_session_seed(ss[i], (uint64_t)i);
        ids[i] = pick(ss[i]);
    }
    nmlx_batch *b = NULL;
    if (!lone && nmlx_batch_create(m, n, &b) != NMLX_OK) die("batch");
    double t0 = now();
    for (int s = 0; s < steps; s++) {
        nmlx_status st =
            lone ? nmlx_session_eval(ss[0], ids, 1, 0) : nmlx_batch_eval(b, ss, ids, (size_t)n);
        if (st != NMLX_OK) die("step");
        for (int i = 0; i < n; i++)
            ids[i] = pick(ss[i]);
    }
    double dt = now() - t0;
    nmlx_batch_free(b);
    for (int i = 0; i < n; i++)
        nmlx_session_free(ss[i]);
    return (double)n * steps / dt;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_batch MODEL_DIR [steps=64] [threads=0] [sizes=1,2,4,8,16] "
                        "[device=cpu]\n");
        return 2;
    }
    int steps = argc > 2 ? atoi(argv[2]) : 64;
    sampler = nmlx_sampler_default_params();
    const char *temp = getenv("BENCH_TEMPERATURE");
    if (temp && *temp) {
        sampler.temperature = (float)atof(temp);
        sampler.top_p = 0.9f;
    }
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = argc > 3 ? atoi(argv[3]) : 0;
    mp.device = argc > 5 ? argv[5] : NULL;
    int sizes[16], n_sizes = 0;
    char list[256];
    snprintf(list, sizeof list, "%s", argc > 4 ? argv[4] : "1,2,4,8,16");
    for (char *t = strtok(list, ","); t && n_sizes < 16; t = strtok(NULL, ",")) {
        int v = atoi(t);
        if (v >= 1 && v <= MAX_N) sizes[n_sizes++] = v;
    }
    nmlx_model *m = NULL;
    if (nmlx_model_load(argv[1], &mp, &m) != NMLX_OK) die("load");
    double res[17][ROUNDS];
    run(m, 1, 4); /* warm-up: page in the weights */
    for (int round = 0; round < ROUNDS; round++) {
        res[0][round] = run(m, 0, steps);
        for (int i = 0; i < n_sizes; i++)
            res[i + 1][round] = run(m, sizes[i], steps);
    }
    for (int i = 0; i <= n_sizes; i++)
        qsort(res[i], ROUNDS, sizeof(double), cmp);
    double base = res[0][ROUNDS / 2];
    printf("model %s on %s, %d decode steps, medians of %d rounds\n", argv[1],
           mp.device ? mp.device : "cpu", steps, ROUNDS);
    printf("lone session (nmlx_session_eval): %.2f tok/s\n", base);
    printf("| sessions | aggregate tok/s | per session tok/s | vs lone |\n| --- | --- | --- | --- "
           "|\n");
    for (int i = 0; i < n_sizes; i++) {
        double v = res[i + 1][ROUNDS / 2];
        printf("| %d | %.2f | %.2f | %.2fx |\n", sizes[i], v, v / sizes[i], v / base);
    }
    nmlx_model_free(m);
    return 0;
}
