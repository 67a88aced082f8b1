/* The thread count changes speed, never results: the demo model (bf16, and
 * quantized on load to 4 and 8 bits) prefilled (29 tokens: the blocked
 * prefill kernels) and then decoded greedily gives the same logits bit for
 * bit with 1, 2, 3 and 5 threads, however the ops split rows, heads and
 * tiles over the threads. */
#include "harness.h"
#include "nmlx.h"

#include <stdio.h>
#include <string.h>

enum { PROMPT = 29, STEPS = 10 };

/* logits of the last prompt position, then of each greedy step: (STEPS + 1) x V */
static float *run(const char *dir, int bits, int threads, int *vocab) {
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = threads;
    mp.quantize_bits = bits;
    mp.no_tokenizer = 1;
    nmlx_model *m = NULL;
    nmlx_session *s = NULL;
    float *out = NULL;
    if (nmlx_model_load(dir, &mp, &m) != NMLX_OK) {
        EXPECT(0, "load %s (bits %d): %s", dir, bits, nmlx_last_error());
        return NULL;
    }
    const int V = nmlx_model_vocab_size(m);
    *vocab = V;
    out = calloc((size_t)(STEPS + 1) * (size_t)V, sizeof(float));
    EXPECT(out && nmlx_session_create(m, NULL, &s) == NMLX_OK, "session: %s", nmlx_last_error());
    if (!out || !s) goto done;
    int32_t ids[PROMPT];
    test_seed(7);
    for (int i = 0; i < PROMPT; i++)
        ids[i] = (int32_t)(test_rand_u64() % (uint64_t)V);
    EXPECT(nmlx_session_eval(s, ids, PROMPT, 0) == NMLX_OK, "prefill: %s", nmlx_last_error());
    for (int step = 0; step <= STEPS; step++) {
        const float *l = nmlx_session_logits(s);
        if (!l) break;
        memcpy(out + (size_t)step * V, l, (size_t)V * sizeof(float));
        int32_t best = 0;
        for (int v = 1; v < V; v++)
            if (l[v] > l[best]) best = v;
        if (step < STEPS && nmlx_session_eval(s, &best, 1, 0) != NMLX_OK) {
            EXPECT(0, "decode step %d: %s", step, nmlx_last_error());
            break;
        }
    }
done:
    nmlx_session_free(s);
    nmlx_model_free(m);
    return out;
}

int main(void) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/demo", test_src_dir());
    const int bits[] = {0, 4, 8}, threads[] = {2, 3, 5};
    for (int b = 0; b < 3; b++) {
        int V = 0, V2 = 0;
        float *ref = run(dir, bits[b], 1, &V);
        if (!ref) continue;
        for (int t = 0; t < 3; t++) {
            float *got = run(dir, bits[b], threads[t], &V2);
            if (!got) continue;
            for (int step = 0; step <= STEPS; step++) {
                const size_t off = (size_t)step * (size_t)V;
                EXPECT(!memcmp(ref + off, got + off, (size_t)V * sizeof(float)),
                       "bits %d: %d threads differ from 1 thread at %s %d", bits[b], threads[t],
                       step ? "decode step" : "prefill", step);
            }
            free(got);
        }
        free(ref);
    }
    return test_summary();
}
