/* Session and generation semantics through the public API, on a tiny
 * random-weight model written by scripts/make_demo_model.mjs:
 * incremental prefill equals one-shot prefill (across chunk boundaries),
 * trim/reset, seeds, eos/length/stop/cancel, context overflow, bad ids,
 * model freed before its session, streamed text equals whole decode, and
 * allocation-failure injection. */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"
#include "nmlx.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void nmlx_test_fail_alloc_after(long n); /* src/common.h test hook */

static char model_dir[256];

static float max_abs_diff(const float *a, const float *b, size_t n, float *scale) {
    float d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        float x = fabsf(a[i] - b[i]);
        if (x > d) d = x;
        if (fabsf(b[i]) > s) s = fabsf(b[i]);
    }
    *scale = s;
    return d;
}

static void random_ids(int32_t *ids, size_t n, int32_t vocab) {
    for (size_t i = 0; i < n; i++) ids[i] = (int32_t)(test_rand_u64() % (uint64_t)vocab);
}

/* prefill in one call == in pieces == token by token, incl. > 256 tokens */
static void test_incremental(nmlx_model *m) {
    enum { T = 300 };
    int32_t V = nmlx_model_vocab_size(m), ids[T];
    random_ids(ids, T, V);
    nmlx_session *a = NULL, *b = NULL;
    EXPECT(nmlx_session_create(m, NULL, &a) == NMLX_OK, "session a");
    EXPECT(nmlx_session_create(m, NULL, &b) == NMLX_OK, "session b");
    EXPECT(nmlx_session_eval(a, ids, T, 1) == NMLX_OK, "one-shot eval: %s", nmlx_last_error());
    size_t rows = 0;
    const float *all = nmlx_session_all_logits(a, &rows);
    EXPECT(all && rows == T, "all logits kept (%zu rows)", rows);
    float worst = 0, scale = 0;
    for (size_t t = 0; t < T && all; t++) {
        EXPECT(nmlx_session_eval(b, &ids[t], 1, 0) == NMLX_OK, "token %zu", t);
        float s, d = max_abs_diff(nmlx_session_logits(b), all + t * (size_t)V, (size_t)V, &s);
        if (d > worst) worst = d;
        if (s > scale) scale = s;
    }
    EXPECT(worst <= 1e-4f * scale, "token-by-token logits match one-shot (diff %g, scale %g)",
           (double)worst, (double)scale);
    EXPECT(nmlx_session_position(b) == T, "position %zu", nmlx_session_position(b));

    /* trim 40 and re-evaluate the same 40 tokens in two pieces */
    EXPECT(nmlx_session_trim(b, 40) == NMLX_OK && nmlx_session_position(b) == T - 40, "trim");
    EXPECT(nmlx_session_logits(b) == NULL, "no stale logits after trim");
    EXPECT(nmlx_session_eval(b, ids + T - 40, 25, 0) == NMLX_OK, "re-eval part 1");
    EXPECT(nmlx_session_eval(b, ids + T - 15, 15, 0) == NMLX_OK, "re-eval part 2");
    float s, d = max_abs_diff(nmlx_session_logits(b), all + (T - 1) * (size_t)V, (size_t)V, &s);
    EXPECT(d <= 1e-4f * s, "logits after trim + re-eval match (diff %g)", (double)d);
    EXPECT(nmlx_session_trim(b, T + 1) == NMLX_ERR_INVALID_ARG, "trim beyond position");

    nmlx_session_reset(b);
    EXPECT(nmlx_session_position(b) == 0 && nmlx_session_logits(b) == NULL, "reset");
    EXPECT(nmlx_session_eval(b, ids, 10, 0) == NMLX_OK, "eval after reset");
    d = max_abs_diff(nmlx_session_logits(b), all + 9 * (size_t)V, (size_t)V, &s);
    EXPECT(d <= 1e-4f * s, "logits after reset match (diff %g)", (double)d);
    nmlx_session_free(a);
    nmlx_session_free(b);
}

typedef struct collect {
    int32_t ids[512];
    int n;
    char text[8192];
    size_t text_len;
    int stop_after;          /* return 1 after this many tokens (0 = never) */
    nmlx_session *cancel_me; /* cancel this session after the 3rd token */
} collect;

static int on_token(void *user, int32_t id, const char *text, size_t len) {
    collect *c = user;
    if (c->n < 512) c->ids[c->n++] = id;
    if (text && c->text_len + len < sizeof c->text) {
        memcpy(c->text + c->text_len, text, len);
        c->text_len += len;
        c->text[c->text_len] = '\0';
    }
    if (c->cancel_me && c->n == 3) nmlx_session_cancel(c->cancel_me);
    return c->stop_after && c->n >= c->stop_after;
}

static void test_generate(nmlx_model *m) {
    int32_t V = nmlx_model_vocab_size(m), prompt[12];
    random_ids(prompt, 12, V);
    nmlx_session *s = NULL;
    EXPECT(nmlx_session_create(m, NULL, &s) == NMLX_OK, "session");
    nmlx_generate_params gp = nmlx_generate_default_params();
    gp.on_token = on_token;
    gp.max_tokens = 20;
    gp.ignore_eos = 1;

    /* greedy generate == manual argmax loop */
    collect g = {0};
    gp.user = &g;
    nmlx_generate_result r;
    EXPECT(nmlx_generate(s, prompt, 12, &gp, &r) == NMLX_OK, "greedy: %s", nmlx_last_error());
    EXPECT(r.n_generated == 20 && g.n == 20 && r.finish == NMLX_FINISH_LENGTH,
           "20 tokens, finish length (%zu, %d)", r.n_generated, (int)r.finish);
    EXPECT(nmlx_session_position(s) == 32, "generated tokens join the session (%zu)",
           nmlx_session_position(s));
    nmlx_session *ref = NULL;
    EXPECT(nmlx_session_create(m, NULL, &ref) == NMLX_OK, "ref session");
    int32_t tok[32];
    memcpy(tok, prompt, sizeof prompt);
    EXPECT(nmlx_session_eval(ref, prompt, 12, 0) == NMLX_OK, "ref prefill");
    int same = 1;
    for (int i = 0; i < 20; i++) {
        int32_t id;
        EXPECT(nmlx_session_sample(ref, NULL, &id) == NMLX_OK, "sample");
        same &= id == g.ids[i];
        EXPECT(nmlx_session_eval(ref, &id, 1, 0) == NMLX_OK, "ref decode");
    }
    EXPECT(same, "generate == manual greedy loop");
    /* the pending last token is evaluated by the next call */
    int32_t next = 5;
    EXPECT(nmlx_session_eval(s, &next, 1, 0) == NMLX_OK && nmlx_session_position(s) == 33,
           "eval after generate");

    /* the same seed gives the same sampled tokens, another seed others */
    gp.sampler.temperature = 1.5f;
    gp.sampler.seed = 99;
    collect s1 = {0}, s2 = {0}, s3 = {0};
    nmlx_session_reset(s);
    gp.user = &s1;
    EXPECT(nmlx_generate(s, prompt, 12, &gp, NULL) == NMLX_OK, "sampled 1");
    nmlx_session_reset(s);
    gp.user = &s2;
    EXPECT(nmlx_generate(s, prompt, 12, &gp, NULL) == NMLX_OK, "sampled 2");
    nmlx_session_reset(s);
    gp.sampler.seed = 100;
    gp.user = &s3;
    EXPECT(nmlx_generate(s, prompt, 12, &gp, NULL) == NMLX_OK, "sampled 3");
    EXPECT(s1.n == 20 && !memcmp(s1.ids, s2.ids, sizeof s1.ids), "same seed, same tokens");
    EXPECT(memcmp(s1.ids, s3.ids, sizeof s1.ids), "other seed, other tokens");

    /* streamed text == detokenized ids */
    const nmlx_tokenizer *tok_ = nmlx_model_tokenizer(m);
    EXPECT(tok_ != NULL, "demo model has a tokenizer");
    if (tok_) {
        char *whole = NULL;
        size_t len = 0;
        EXPECT(nmlx_detokenize(tok_, s1.ids, (size_t)s1.n, 1, &whole, &len) == NMLX_OK,
               "detokenize");
        EXPECT(whole && len == s1.text_len && !memcmp(whole, s1.text, len),
               "streamed text equals the whole decode ('%s' vs '%s')", s1.text,
               whole ? whole : "");
        nmlx_free(whole);
    }

    /* callback stop */
    collect st = {.stop_after = 4};
    gp.user = &st;
    nmlx_session_reset(s);
    EXPECT(nmlx_generate(s, prompt, 12, &gp, &r) == NMLX_OK && r.finish == NMLX_FINISH_STOPPED &&
               r.n_generated == 4,
           "callback stops after 4 (%zu, %d)", r.n_generated, (int)r.finish);

    /* cancel from the callback */
    collect cc = {.cancel_me = s};
    gp.user = &cc;
    nmlx_session_reset(s);
    EXPECT(nmlx_generate(s, prompt, 12, &gp, &r) == NMLX_OK && r.finish == NMLX_FINISH_CANCELLED &&
               r.n_generated == 3,
           "cancel stops after 3 (%zu, %d)", r.n_generated, (int)r.finish);

    /* eos: make the greedy first token an eos and stop there */
    nmlx_session_reset(s);
    gp.sampler = nmlx_sampler_default_params();
    gp.ignore_eos = 0;
    const int32_t *eos = NULL;
    size_t n_eos = nmlx_model_eos_ids(m, &eos);
    EXPECT(n_eos >= 1, "model has eos ids");
    collect e = {0};
    gp.user = &e;
    EXPECT(nmlx_generate(s, prompt, 12, &gp, &r) == NMLX_OK, "generate until eos");
    int eos_at = -1;
    for (int i = 0; i < e.n && eos_at < 0; i++)
        for (size_t k = 0; k < n_eos; k++)
            if (e.ids[i] == eos[k]) eos_at = i;
    if (eos_at >= 0)
        EXPECT(r.finish == NMLX_FINISH_EOS && e.n == eos_at + 1, "stops at the eos token");
    else
        EXPECT(r.finish == NMLX_FINISH_LENGTH, "no eos: length");

    nmlx_session_free(ref);
    nmlx_session_free(s);
}

static void test_limits(nmlx_model *m) {
    int32_t V = nmlx_model_vocab_size(m), ids[16];
    random_ids(ids, 16, V);
    nmlx_session_params sp = nmlx_session_default_params();
    sp.max_context = 10;
    nmlx_session *s = NULL;
    EXPECT(nmlx_session_create(m, &sp, &s) == NMLX_OK, "small session");
    EXPECT(nmlx_session_eval(s, ids, 11, 0) == NMLX_ERR_CONTEXT_OVERFLOW &&
               strstr(nmlx_last_error(), "context"),
           "overflow is an error: %s", nmlx_last_error());
    EXPECT(nmlx_session_position(s) == 0, "failed eval leaves the session unchanged");
    nmlx_generate_params gp = nmlx_generate_default_params();
    gp.max_tokens = 50;
    gp.ignore_eos = 1;
    nmlx_generate_result r;
    EXPECT(nmlx_generate(s, ids, 6, &gp, &r) == NMLX_OK && r.finish == NMLX_FINISH_LENGTH &&
               r.n_generated == 4 && nmlx_session_position(s) == 10,
           "generation ends at a full context (%zu generated)", r.n_generated);
    nmlx_session_reset(s);

    int32_t bad[3] = {1, V, 2};
    EXPECT(nmlx_session_eval(s, bad, 3, 0) == NMLX_ERR_INVALID_ARG &&
               strstr(nmlx_last_error(), "vocabulary"),
           "id out of range: %s", nmlx_last_error());
    bad[1] = -7;
    EXPECT(nmlx_session_eval(s, bad, 3, 0) == NMLX_ERR_INVALID_ARG, "negative id");
    EXPECT(nmlx_session_position(s) == 0, "nothing evaluated");
    int32_t id;
    EXPECT(nmlx_session_sample(s, NULL, &id) == NMLX_ERR_INVALID_ARG, "sample before eval");
    nmlx_generate_params badp = nmlx_generate_default_params();
    badp.sampler.top_p = 2.0f;
    EXPECT(nmlx_generate(s, ids, 2, &badp, NULL) == NMLX_ERR_INVALID_ARG &&
               strstr(nmlx_last_error(), "top_p"),
           "bad sampler params");
    nmlx_session_free(s);
}

static void test_lifetimes(void) {
    nmlx_model *m = NULL;
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = 2;
    EXPECT(nmlx_model_load(model_dir, &mp, &m) == NMLX_OK, "load");
    nmlx_session *s = NULL;
    EXPECT(nmlx_session_create(m, NULL, &s) == NMLX_OK, "session");
    nmlx_model_free(m); /* deferred: the session still holds it */
    int32_t ids[4] = {1, 2, 3, 4};
    EXPECT(nmlx_session_eval(s, ids, 4, 0) == NMLX_OK, "session outlives the model handle");
    nmlx_session_free(s);
    nmlx_model_free(NULL);
    nmlx_session_free(NULL);

    /* every allocation failure is reported cleanly */
    int failures = 0, successes = 0;
    for (long k = 1; k < 400; k++) {
        nmlx_test_fail_alloc_after(k);
        nmlx_model *fm = NULL;
        nmlx_session *fs = NULL;
        nmlx_status st = nmlx_model_load(model_dir, &mp, &fm);
        if (st == NMLX_OK) st = nmlx_session_create(fm, NULL, &fs);
        if (st == NMLX_OK) st = nmlx_session_eval(fs, ids, 4, 0);
        nmlx_test_fail_alloc_after(0);
        if (st == NMLX_OK) successes++;
        else {
            failures++;
            EXPECT(st == NMLX_ERR_NOMEM && nmlx_last_error()[0], "k=%ld: status %d (%s)", k, st,
                   nmlx_last_error());
        }
        nmlx_session_free(fs);
        nmlx_model_free(fm);
        if (successes > 3) break;
    }
    EXPECT(failures > 0 && successes > 0, "fault injection exercised (%d failures)", failures);
}

int main(void) {
    snprintf(model_dir, sizeof model_dir, "/tmp/nmlx-test-session-%d", (int)getpid());
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "node '%s/scripts/make_demo_model.mjs' '%s' --seed 11 2>/dev/null",
             test_src_dir(), model_dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "cannot create the demo model with: %s\n", cmd);
        return 1;
    }
    test_seed(5);
    nmlx_model *m = NULL;
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = 2;
    if (nmlx_model_load(model_dir, &mp, &m) != NMLX_OK) {
        fprintf(stderr, "load %s: %s\n", model_dir, nmlx_last_error());
        return 1;
    }
    test_incremental(m);
    test_generate(m);
    test_limits(m);
    nmlx_model_free(m);
    test_lifetimes();
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", model_dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", model_dir);
    return test_summary();
}
