/* Decode speed at a depth: one session prefilled with D random tokens, then
 * `steps` greedy one-token steps (nmlx_session_eval + nmlx_session_sample,
 * as generation runs them: on CUDA, recorded step graphs), timed after 4
 * warm-up steps; one line per depth. Where `nmlx bench` decodes after a
 * 16-token prompt, this shows how decode slows as the KV cache grows
 * (attention reads the whole cache each step).
 *
 *   bench_decode_depth MODEL_DIR [device=cpu] [depths=16,512,2048,4096] [steps=64]
 *
 * e.g. build-cuda/tests/bench_cuda_depth /tmp/synth-l8b-q4 cuda, and again
 * with NMLX_CUDA_ATTN_DECODE=old (the old decode attention). */
#define _POSIX_C_SOURCE 200809L
#include "nmlx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
    fprintf(stderr, "bench_decode_depth: %s: %s\n", what, nmlx_last_error());
    exit(1);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_decode_depth MODEL_DIR [device=cpu] "
                        "[depths=16,512,2048,4096] [steps=64]\n");
        return 2;
    }
    nmlx_model_params mp = nmlx_model_default_params();
    mp.device = argc > 2 ? argv[2] : NULL;
    char list[256];
    snprintf(list, sizeof list, "%s", argc > 3 ? argv[3] : "16,512,2048,4096");
    const int steps = argc > 4 && atoi(argv[4]) > 0 ? atoi(argv[4]) : 64;
    nmlx_model *m = NULL;
    if (nmlx_model_load(argv[1], &mp, &m) != NMLX_OK) die("load");
    const int32_t V = nmlx_model_vocab_size(m);
    nmlx_sampler_params sampler = nmlx_sampler_default_params(); /* greedy */
    const char *env = getenv("NMLX_CUDA_ATTN_DECODE");
    printf("model %s on %s, %d decode steps a depth%s%s\n", argv[1], mp.device ? mp.device : "cpu",
           steps, env ? ", NMLX_CUDA_ATTN_DECODE=" : "", env ? env : "");
    for (char *t = strtok(list, ","); t; t = strtok(NULL, ",")) {
        const int depth = atoi(t);
        if (depth < 1) continue;
        nmlx_session_params sp = nmlx_session_default_params();
        sp.max_context = depth + steps + 16;
        nmlx_session *s = NULL;
        if (nmlx_session_create(m, &sp, &s) != NMLX_OK) die("session");
        int32_t *p = malloc((size_t)depth * sizeof *p);
        uint64_t r = 0x2545f4914f6cdd1dull;
        for (int i = 0; i < depth; i++) {
            r ^= r << 13, r ^= r >> 7, r ^= r << 17;
            p[i] = (int32_t)((r >> 33) % (uint64_t)V);
        }
        if (nmlx_session_eval(s, p, (size_t)depth, 0) != NMLX_OK) die("prefill");
        free(p);
        int32_t id = 0;
        double t0 = 0;
        for (int i = -4; i < steps; i++) {
            if (i == 0) t0 = now();
            if (nmlx_session_sample(s, &sampler, &id) != NMLX_OK) die("sample");
            if (nmlx_session_eval(s, &id, 1, 0) != NMLX_OK) die("step");
        }
        if (nmlx_session_sample(s, &sampler, &id) != NMLX_OK) die("sample");
        const double dt = now() - t0;
        printf("depth %6d: %8.2f tok/s (%.3f ms a token)\n", depth, steps / dt, 1e3 * dt / steps);
        fflush(stdout);
        nmlx_session_free(s);
    }
    nmlx_model_free(m);
    return 0;
}
