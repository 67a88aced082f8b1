/* Greedy generation downloads one id a token, not the logits (backends
 * with an argmax op leave the LM head's row in place: session.c
 * nmlx_session_eval_pending_kept). What users see must not change:
 *  - the ids equal a step-by-step loop of nmlx_session_sample(temperature 0)
 *    and nmlx_session_eval, on random prompts;
 *  - nmlx_session_logits read inside the token callback is the row the id
 *    was picked from (its argmax is the id), bit for bit the loop's row;
 *  - after generate, nmlx_session_logits is the last step's row, and a
 *    following temperature sample, eval or trim sees current logits.
 * Run on families with their own forward code and on a soft-capped head
 * (Gemma: the argmax of capped logits is taken on the host). */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"
#include "model_util.h"
#include "nmlx.h"

#include <stdlib.h>
#include <string.h>

enum { STEPS = 10, PROMPT = 7 };

typedef struct seen {
    nmlx_session *s;
    int32_t vocab;
    int n;
    int32_t ids[STEPS];
    float *rows; /* [STEPS, vocab]: the logits read in the callback */
} seen;

static int on_token(void *user, int32_t id, const char *text, size_t len) {
    (void)text, (void)len;
    seen *w = user;
    const float *l = nmlx_session_logits(w->s);
    EXPECT(l != NULL, "logits readable in the callback (token %d)", w->n);
    if (l && w->n < STEPS) {
        memcpy(w->rows + (size_t)w->n * (size_t)w->vocab, l, (size_t)w->vocab * sizeof(float));
        EXPECT(test_argmax(l, w->vocab) == id, "callback %d: the id %d is the argmax of the logits",
               w->n, id);
        w->ids[w->n] = id;
    }
    w->n++;
    return 0;
}

static void check(const char *name, int max_tokens) {
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = 2;
    mp.no_tokenizer = 1;
    nmlx_model *m = test_load_fixture(name, &mp, NULL);
    nmlx_session *a = NULL, *b = NULL;
    float *rows = NULL;
    if (!m) return;
    int32_t V = nmlx_model_vocab_size(m), prompt[PROMPT];
    for (int i = 0; i < PROMPT; i++)
        prompt[i] = (int32_t)(test_rand_u64() % (uint64_t)V);
    rows = malloc((size_t)STEPS * (size_t)V * sizeof(float));
    EXPECT(rows && nmlx_session_create(m, NULL, &a) == NMLX_OK &&
               nmlx_session_create(m, NULL, &b) == NMLX_OK,
           "%s: sessions", name);
    if (!rows || !a || !b) goto done;

    seen w = {.s = a, .vocab = V, .rows = rows};
    nmlx_generate_params gp = nmlx_generate_default_params();
    gp.max_tokens = max_tokens;
    gp.ignore_eos = 1;
    gp.on_token = on_token;
    gp.user = &w;
    nmlx_generate_result r;
    EXPECT(nmlx_generate(a, prompt, PROMPT, &gp, &r) == NMLX_OK && (int)r.n_generated == max_tokens,
           "%s: generate: %s", name, nmlx_last_error());

    /* the same by hand: sample greedily, evaluate, compare each row */
    nmlx_sampler_params greedy = nmlx_sampler_default_params();
    EXPECT(nmlx_session_eval(b, prompt, PROMPT, 0) == NMLX_OK, "%s: eval", name);
    int steps = max_tokens < STEPS ? max_tokens : STEPS;
    for (int t = 0; t < steps; t++) {
        int32_t id = -1;
        EXPECT(nmlx_session_sample(b, &greedy, &id) == NMLX_OK, "%s: sample %d", name, t);
        EXPECT(id == w.ids[t], "%s step %d: generate picked %d, the loop %d", name, t, w.ids[t],
               id);
        EXPECT(!memcmp(nmlx_session_logits(b), rows + (size_t)t * (size_t)V,
                       (size_t)V * sizeof(float)),
               "%s step %d: the callback's logits equal the loop's bit for bit", name, t);
        if (t + 1 < steps)
            EXPECT(nmlx_session_eval(b, &id, 1, 0) == NMLX_OK, "%s: eval %d", name, t);
    }
    if (steps == max_tokens) /* the row the last id came from, current after generate */
        EXPECT(!memcmp(nmlx_session_logits(a), nmlx_session_logits(b), (size_t)V * sizeof(float)),
               "%s: logits after generate equal the loop's last row", name);

    /* a temperature sample and a further greedy run after it see current logits */
    nmlx_sampler_params hot = nmlx_sampler_default_params();
    hot.temperature = 0.8f;
    hot.seed = 7;
    gp.on_token = NULL;
    gp.max_tokens = 3;
    EXPECT(nmlx_generate(a, NULL, 0, &gp, &r) == NMLX_OK && r.n_generated == 3,
           "%s: continued greedy generate: %s", name, nmlx_last_error());
    int32_t id = -1;
    EXPECT(nmlx_session_sample(a, &hot, &id) != NMLX_OK,
           "%s: sampling with a pending token is refused", name);
    EXPECT(nmlx_session_eval(a, NULL, 0, 0) == NMLX_OK, "%s: eval the pending token", name);
    const float *l = nmlx_session_logits(a);
    EXPECT(l && nmlx_session_sample(a, &hot, &id) == NMLX_OK && id >= 0 && id < V,
           "%s: temperature sample after greedy decode", name);
    EXPECT(nmlx_session_trim(a, 2) == NMLX_OK && nmlx_session_logits(a) == NULL,
           "%s: no logits after trim", name);
done:
    nmlx_session_free(a);
    nmlx_session_free(b);
    nmlx_model_free(m);
    free(rows);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    test_seed(0x9e3779b97f4a7c15ull);
    static const char *const fixtures[] = {"qwen3",   "llama3_tied", "gemma3_text", "gemma3n",
                                           "gpt_oss", "llama4_text", "phi3_short",  NULL};
    for (int i = 0; fixtures[i]; i++) {
        check(fixtures[i], STEPS);
        check(fixtures[i], 1); /* one token: no decode step at all */
    }
    return test_summary();
}
