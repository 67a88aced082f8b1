/* Batched decode (nmlx_batch_eval) against the same sessions run alone.
 *
 * For fixtures of every kind the standard model handles (dense, sliding
 * window with a rotating cache, MoE, attention sinks, long RoPE, query
 * scaling, quantized weights, quantized KV), Llama 4 (its own batched pass:
 * chunked attention, sigmoid MoE) and one family without a
 * batched pass (Gemma 3n, evaluated one session at a time): sessions with
 * different prompts (random ids of different lengths) decode greedily, in
 * a batch and alone. Sessions join and leave between steps. With fewer than
 * 24 sessions every logit must equal the lone session's bit for bit (the
 * CPU's few-token matmul, nmlx.h); at 24 and more the matmuls take the
 * blocked kernel, so logits must agree to 1e-4 of their range and the
 * greedy ids must match. The single-session path itself is checked against
 * transformers by test_fixtures. Then the error cases: each must leave
 * every session where it was. */
#include "harness.h"
#include "model_util.h"
#include "nmlx.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

typedef struct fixture {
    const char *name; /* under tests/fixtures */
    int kv_bits;      /* quantized KV cache for the odd-numbered sessions */
} fixture;

static const fixture FIXTURES[] = {
    {"qwen3", 0},
    {"llama3_tied", 0},
    {"gemma3_text", 0},
    {"mistral_window", 0},
    {"qwen3_moe", 0},
    {"gpt_oss", 0},
    {"phi3_longrope", 0},
    {"ministral3_yarn", 0},
    {"quant_llama_q4g64_f16", 0},
    {"quant_qwen3_q3g32_bf16", 0},
    {"qwen3_bf16", 0},
    {"llama3_tied", 4},
    {"gemma3n", 0},
    {"llama4_text", 0},
    {"llama4_text_q4g32", 0},
};

enum { MAX_SESSIONS = 24, STEPS = 12 };

typedef struct pair {
    nmlx_session *batched, *alone;
    int32_t next; /* greedy id to feed next step */
    int joins_at, leaves_at;
} pair;

static nmlx_session *new_session(nmlx_model *m, int kv_bits, int max_context) {
    nmlx_session_params sp = nmlx_session_default_params();
    sp.kv_bits = kv_bits;
    sp.kv_group_size = 16; /* the fixtures' head_dim is 16 */
    sp.max_context = max_context;
    nmlx_session *s = NULL;
    nmlx_status st = nmlx_session_create(m, &sp, &s);
    EXPECT(st == NMLX_OK, "session_create: %s", nmlx_last_error());
    return s;
}

/* n sessions, batched vs alone, joining and leaving at different steps. */
static void check_batch(nmlx_model *m, const fixture *f, int n) {
    int64_t V = nmlx_model_vocab_size(m);
    pair ps[MAX_SESSIONS];
    nmlx_batch *batch = NULL;
    EXPECT(nmlx_batch_create(m, n, &batch) == NMLX_OK, "batch_create: %s", nmlx_last_error());
    if (!batch) return;
    for (int i = 0; i < n; i++) {
        int kv = f->kv_bits && i % 2 ? f->kv_bits : 0;
        ps[i].batched = new_session(m, kv, 96);
        ps[i].alone = new_session(m, kv, 96);
        int32_t prompt[40];
        int len = 1 + (int)(test_rand_u32() % 40);
        for (int t = 0; t < len; t++)
            prompt[t] = (int32_t)(test_rand_u32() % (uint32_t)V);
        EXPECT(nmlx_session_eval(ps[i].batched, prompt, (size_t)len, 0) == NMLX_OK, "prefill");
        EXPECT(nmlx_session_eval(ps[i].alone, prompt, (size_t)len, 0) == NMLX_OK, "prefill");
        ps[i].next = test_argmax(nmlx_session_logits(ps[i].alone), V);
        ps[i].joins_at = i == 0 ? 0 : (int)(test_rand_u32() % 4);
        ps[i].leaves_at = i == 0 ? STEPS : STEPS - (int)(test_rand_u32() % 4);
    }
    double worst = 0;
    int bit_diffs = 0, id_diffs = 0, steps_run = 0;
    for (int step = 0; step < STEPS; step++) {
        nmlx_session *ss[MAX_SESSIONS];
        int32_t ids[MAX_SESSIONS], who[MAX_SESSIONS];
        int k = 0;
        for (int i = 0; i < n; i++)
            if (step >= ps[i].joins_at && step < ps[i].leaves_at) {
                ss[k] = ps[i].batched, ids[k] = ps[i].next, who[k++] = i;
            }
        nmlx_status st = nmlx_batch_eval(batch, ss, ids, (size_t)k);
        EXPECT(st == NMLX_OK, "%s: batch of %d, step %d: %s", f->name, k, step, nmlx_last_error());
        if (st != NMLX_OK) break;
        steps_run++;
        for (int j = 0; j < k; j++) {
            pair *p = &ps[who[j]];
            EXPECT(nmlx_session_eval(p->alone, &p->next, 1, 0) == NMLX_OK, "alone: %s",
                   nmlx_last_error());
            const float *a = nmlx_session_logits(p->alone), *b = nmlx_session_logits(p->batched);
            if (!a || !b) {
                EXPECT(0, "%s: no logits after a step", f->name);
                continue;
            }
            if (memcmp(a, b, (size_t)V * sizeof(float))) bit_diffs++;
            worst = fmax(worst, test_diff_over_range(b, a, V));
            int32_t ia = test_argmax(a, V), ib = test_argmax(b, V);
            if (ia != ib) id_diffs++;
            p->next = ia;
            EXPECT(nmlx_session_position(p->alone) == nmlx_session_position(p->batched),
                   "positions differ");
        }
    }
    EXPECT(steps_run == STEPS, "%s: %d of %d steps ran", f->name, steps_run, STEPS);
    if (n < 24)
        EXPECT(bit_diffs == 0,
               "%s: batch of %d: %d session-steps differ from the lone session (worst %.3g)",
               f->name, n, bit_diffs, worst);
    EXPECT(worst <= 1e-4 && id_diffs == 0,
           "%s: batch of %d: max |diff| / range %.3g, %d greedy ids differ", f->name, n, worst,
           id_diffs);
    for (int i = 0; i < n; i++) {
        nmlx_session_free(ps[i].batched);
        nmlx_session_free(ps[i].alone);
    }
    nmlx_batch_free(batch);
}

/* Bad calls fail with the right status and leave the sessions unmoved. */
static void check_errors(nmlx_model *m, nmlx_model *other) {
    int64_t V = nmlx_model_vocab_size(m);
    nmlx_batch *batch = NULL;
    EXPECT(nmlx_batch_create(NULL, 2, &batch) == NMLX_ERR_INVALID_ARG, "NULL model");
    EXPECT(nmlx_batch_create(m, 0, &batch) == NMLX_ERR_INVALID_ARG, "max_batch 0");
    EXPECT(nmlx_batch_create(m, -3, &batch) == NMLX_ERR_INVALID_ARG, "max_batch < 0");
    EXPECT(nmlx_batch_create(m, 1 << 20, &batch) == NMLX_ERR_INVALID_ARG, "huge max_batch");
    EXPECT(!batch, "no batch on failure");
    if (nmlx_batch_create(m, 3, &batch) != NMLX_OK) {
        EXPECT(0, "batch_create: %s", nmlx_last_error());
        return;
    }
    nmlx_session *a = new_session(m, 0, 8), *b = new_session(m, 0, 8);
    nmlx_session *o = new_session(other, 0, 8);
    int32_t p[] = {1, 2, 3};
    nmlx_session_eval(a, p, 3, 0);
    nmlx_session_eval(b, p, 2, 0);
    nmlx_session_eval(o, p, 2, 0);
    int32_t ok_ids[] = {5, 6, 7, 8};
    struct {
        const char *what;
        nmlx_session *ss[4];
        int32_t ids[4];
        size_t n;
        nmlx_status want;
        const char *msg;
    } cases[] = {
        {"too many", {a, b, o, a}, {5, 6, 7, 8}, 4, NMLX_ERR_INVALID_ARG, "max_batch"},
        {"same session twice", {a, b, a}, {5, 6, 7}, 3, NMLX_ERR_INVALID_ARG, "same session"},
        {"another model's session", {a, o}, {5, 6}, 2, NMLX_ERR_INVALID_ARG, "another model"},
        {"NULL session", {a, NULL}, {5, 6}, 2, NMLX_ERR_INVALID_ARG, "NULL"},
        {"id out of range", {a, b}, {5, (int32_t)V}, 2, NMLX_ERR_INVALID_ARG, "out of range"},
        {"negative id", {a, b}, {-1, 5}, 2, NMLX_ERR_INVALID_ARG, "out of range"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        nmlx_status st = nmlx_batch_eval(batch, cases[i].ss, cases[i].ids, cases[i].n);
        EXPECT(st == cases[i].want && strstr(nmlx_last_error(), cases[i].msg),
               "%s: status %d, message '%s'", cases[i].what, (int)st, nmlx_last_error());
        EXPECT(nmlx_session_position(a) == 3 && nmlx_session_position(b) == 2,
               "%s: a session moved", cases[i].what);
    }
    EXPECT(nmlx_batch_eval(NULL, &a, ok_ids, 1) == NMLX_ERR_INVALID_ARG, "NULL batch");
    EXPECT(nmlx_batch_eval(batch, NULL, ok_ids, 1) == NMLX_ERR_INVALID_ARG, "NULL sessions");
    EXPECT(nmlx_batch_eval(batch, &a, NULL, 1) == NMLX_ERR_INVALID_ARG, "NULL ids");
    EXPECT(nmlx_batch_eval(batch, NULL, NULL, 0) == NMLX_OK, "an empty step is a no-op");
    /* a full context: b reaches 8 tokens, then a step with it must fail
     * and leave a unmoved too */
    int32_t fill[] = {4, 4, 4, 4, 4, 4};
    nmlx_session_eval(b, fill, 6, 0);
    nmlx_session *ab[] = {a, b};
    nmlx_status st = nmlx_batch_eval(batch, ab, ok_ids, 2);
    EXPECT(st == NMLX_ERR_CONTEXT_OVERFLOW && strstr(nmlx_last_error(), "session 1"),
           "full context: status %d, '%s'", (int)st, nmlx_last_error());
    EXPECT(nmlx_session_position(a) == 3 && nmlx_session_position(b) == 8, "full context moved");
    /* a pending token left by nmlx_generate is evaluated first */
    nmlx_generate_params gp = nmlx_generate_default_params();
    gp.max_tokens = 2;
    gp.ignore_eos = 1;
    EXPECT(nmlx_generate(a, NULL, 0, &gp, NULL) == NMLX_OK, "generate: %s", nmlx_last_error());
    size_t pos = nmlx_session_position(a);
    EXPECT(nmlx_batch_eval(batch, &a, ok_ids, 1) == NMLX_OK, "after generate: %s",
           nmlx_last_error());
    EXPECT(nmlx_session_position(a) == pos + 1 && nmlx_session_logits(a), "after generate");
    nmlx_session_free(a), nmlx_session_free(b), nmlx_session_free(o);
    nmlx_batch_free(batch);
}

int main(void) {
    const int sizes[] = {1, 3, 7, 15, 16, 20, 24};
    for (size_t f = 0; f < sizeof FIXTURES / sizeof FIXTURES[0]; f++) {
        nmlx_model *m = test_load_fixture(FIXTURES[f].name, NULL, NULL);
        if (!m) continue;
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
            if (sizes[i] <= 7 || f < 2) check_batch(m, &FIXTURES[f], sizes[i]);
        nmlx_model_free(m);
    }
    nmlx_model *m = test_load_fixture("qwen3", NULL, NULL);
    nmlx_model *other = test_load_fixture("llama3_tied", NULL, NULL);
    if (m && other) check_errors(m, other);
    nmlx_model_free(m);
    nmlx_model_free(other);
    return test_summary();
}
