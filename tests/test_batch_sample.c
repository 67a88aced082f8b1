/* Batched decode and sampling where the logits lie (batch.c leaves each
 * session's row on the backend; session_sample.c samples it there: argmax,
 * or the backend's sample op with the session's own uniform draw). What
 * users see must not change, so on the CPU backend and on the emulated
 * device (tests/device_emu.h: device memory the host cannot touch; its
 * sample op runs the CPU sampler on the arena's row with the draw it is
 * given) for standard and Llama 4 fixtures, plus soft-capped Gemma 3 (rows
 * downloaded) and Gemma 3n (no batched pass):
 *  - sessions with different prompts, seeds and samplers (greedy, greedy
 *    with a penalty, temperature, top-k, top-p, min-p, penalties) decode in
 *    batches as node/src/sched.c drives them (nmlx_batch_eval, then
 *    nmlx_session_sample), joining late and freed mid-batch in any order:
 *    every id equals the same session run alone on the CPU through
 *    nmlx_session_eval + nmlx_session_sample, and the logits read before or
 *    after a sample (or never) equal the lone run's bit for bit;
 *  - on emu, a batch whose logits nobody reads downloads no logits row,
 *    and the argmax / sample ops did run;
 *  - trim, reset and eval after a batched step see current logits;
 *  - nmlx_generate with a temperature sampler on emu (sample op) gives the
 *    CPU's ids;
 *  - must fail: an emu whose sample ignores the host's draw, or whose copy
 *    does nothing (stale rows), is caught;
 *  - threads: while one thread runs greedy generations (rows left on the
 *    backend), another's evals and batched steps of the same model still
 *    see their own logits (what is deferred is per thread: layers.h). */
#define _GNU_SOURCE
#include "device_emu.h"
#include "harness.h"
#include "model_util.h"
#include "model.h"
#include "nmlx.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

enum { N = 6, STEPS = 9, PROMPT_MAX = 12 };

/* f32 KV caches everywhere: a device backend has no other, and the CPU
 * picks f16 for half-precision checkpoints by default */
static nmlx_session *new_session(nmlx_model *m) {
    nmlx_session_params sp = nmlx_session_default_params();
    sp.kv_dtype = "f32";
    nmlx_session *s = NULL;
    EXPECT(nmlx_session_create(m, &sp, &s) == NMLX_OK, "session: %s", nmlx_last_error());
    return s;
}

/* Session i's sampler: every kind the server passes, two greedy. */
static nmlx_sampler_params params_of(int i) {
    nmlx_sampler_params p = nmlx_sampler_default_params();
    p.seed = 1000u + (uint64_t)i;
    switch (i % N) {
    case 0: break;                              /* greedy: argmax on the backend */
    case 1: p.repetition_penalty = 1.3f; break; /* greedy with a penalty: sample op */
    case 2: p.temperature = 0.8f; break;
    case 3: p.temperature = 1.1f, p.top_k = 5; break;
    case 4: p.temperature = 0.7f, p.top_p = 0.9f, p.min_p = 0.05f; break;
    case 5: p.temperature = 1.0f, p.top_k = 40, p.top_p = 0.5f, p.repetition_penalty = 1.3f; break;
    }
    return p;
}

typedef struct plan {
    int32_t prompt[N][PROMPT_MAX];
    int len[N], joins[N], steps[N];
    int32_t ids[N][STEPS]; /* the lone run's */
    float *rows;           /* [N, STEPS, V] the logits each id came from */
} plan;

static float *row_of(plan *pl, int64_t V, int i, int t) {
    return pl->rows + ((size_t)i * STEPS + (size_t)t) * (size_t)V;
}

/* Every session alone on the CPU: eval, sample, eval ... */
static void run_alone(nmlx_model *cpu, plan *pl, int64_t V) {
    for (int i = 0; i < N; i++) {
        nmlx_sampler_params sp = params_of(i);
        nmlx_session *s = new_session(cpu);
        if (!s) continue;
        nmlx_session_seed(s, sp.seed);
        nmlx_status st = nmlx_session_eval(s, pl->prompt[i], (size_t)pl->len[i], 0);
        for (int t = 0; t < pl->steps[i] && st == NMLX_OK; t++) {
            memcpy(row_of(pl, V, i, t), nmlx_session_logits(s), (size_t)V * sizeof(float));
            st = nmlx_session_sample(s, &sp, &pl->ids[i][t]);
            if (st == NMLX_OK && t + 1 < pl->steps[i])
                st = nmlx_session_eval(s, &pl->ids[i][t], 1, 0);
        }
        EXPECT(st == NMLX_OK, "alone: %s", nmlx_last_error());
        nmlx_session_free(s);
    }
}

/* The same sessions batched on model m, as sched.c drives them; reads the
 * logits before the sample, after it, or not at all (reads = false: never).
 * Returns the number of ids and rows that differ from the lone run. */
static int run_batched(nmlx_model *m, plan *pl, int64_t V, bool reads, long *row_downloads) {
    nmlx_session *ss[N] = {0};
    nmlx_sampler_params sp[N];
    int t_of[N] = {0}, diffs = 0;
    nmlx_batch *b = NULL;
    EXPECT(nmlx_batch_create(m, N, &b) == NMLX_OK, "batch_create: %s", nmlx_last_error());
    if (!b) return 1;
    emu_state *e = strcmp(m->be->ops->name, "emu") ? NULL : emu_of(m->be);
    *row_downloads = 0;
    if (e) e->watch_bytes = (size_t)V * sizeof(float);
    for (int step = 0;; step++) {
        nmlx_session *act[N];
        int32_t next[N];
        int k = 0, live = 0;
        for (int i = 0; i < N; i++) {
            if (step == pl->joins[i]) { /* joins: its prompt alone, then sampled below */
                sp[i] = params_of(i);
                if (!(ss[i] = new_session(m))) return diffs + 1;
                nmlx_session_seed(ss[i], sp[i].seed);
                EXPECT(nmlx_session_eval(ss[i], pl->prompt[i], (size_t)pl->len[i], 0) == NMLX_OK,
                       "prefill: %s", nmlx_last_error());
            }
            if (!ss[i]) continue;
            live++;
            int t = t_of[i], how = reads ? (i + t) % 3 : 2;
            const float *want = row_of(pl, V, i, t), *got = NULL;
            long before = e ? e->watched : 0;
            if (how == 0) got = nmlx_session_logits(ss[i]);
            int32_t id = -1;
            EXPECT(nmlx_session_sample(ss[i], &sp[i], &id) == NMLX_OK, "sample: %s",
                   nmlx_last_error());
            if (how == 1) got = nmlx_session_logits(ss[i]);
            if (e && t > 0 && how == 2) *row_downloads += e->watched - before;
            diffs += id != pl->ids[i][t];
            if (how != 2) diffs += !got || memcmp(got, want, (size_t)V * sizeof(float)) != 0;
            if (++t_of[i] == pl->steps[i]) { /* done: freed mid-batch, in any order */
                nmlx_session_free(ss[i]);
                ss[i] = NULL;
                continue;
            }
            act[k] = ss[i], next[k++] = pl->ids[i][t];
        }
        bool more = false; /* sessions still to join */
        for (int i = 0; i < N; i++)
            more |= pl->joins[i] > step;
        if (!live && !more) break;
        long before = e ? e->watched : 0;
        EXPECT(nmlx_batch_eval(b, act, next, (size_t)k) == NMLX_OK, "batch_eval: %s",
               nmlx_last_error());
        if (e && !reads) *row_downloads += e->watched - before;
    }
    nmlx_batch_free(b);
    return diffs;
}

/* After a batched step: trim drops the logits, eval brings the same row
 * back, reset drops them again. */
static void check_trim_reset(nmlx_model *m, int64_t V, const char *name) {
    nmlx_session *s = NULL;
    nmlx_batch *b = NULL;
    float *row = malloc((size_t)V * sizeof(float));
    int32_t p[] = {3, 1, 4, 1, 5}, id = 9 % (int32_t)V, got = -1;
    if (!row || !(s = new_session(m)) || nmlx_batch_create(m, 2, &b)) {
        EXPECT(0, "%s: setup", name);
        goto done;
    }
    for (int i = 0; i < 5; i++)
        p[i] %= (int32_t)V;
    EXPECT(nmlx_session_eval(s, p, 5, 0) == NMLX_OK && nmlx_batch_eval(b, &s, &id, 1) == NMLX_OK &&
               nmlx_batch_eval(b, &s, &id, 1) == NMLX_OK,
           "%s: eval, two batched steps", name);
    memcpy(row, nmlx_session_logits(s), (size_t)V * sizeof(float));
    EXPECT(nmlx_session_trim(s, 1) == NMLX_OK && !nmlx_session_logits(s), "%s: trim", name);
    EXPECT(nmlx_session_sample(s, NULL, &got) != NMLX_OK, "%s: no sample after trim", name);
    EXPECT(nmlx_session_eval(s, &id, 0, 0) == NMLX_OK && !nmlx_session_logits(s),
           "%s: an empty eval brings no logits", name);
    EXPECT(nmlx_batch_eval(b, &s, &id, 1) == NMLX_OK, "%s: batch after trim", name);
    EXPECT(!memcmp(nmlx_session_logits(s), row, (size_t)V * sizeof(float)),
           "%s: trim and the same batched step again: the same row", name);
    nmlx_session_reset(s);
    EXPECT(!nmlx_session_logits(s), "%s: no logits after reset", name);
done:
    nmlx_batch_free(b);
    nmlx_session_free(s);
    free(row);
}

static int on_token(void *user, int32_t id, const char *text, size_t len) {
    (void)text, (void)len;
    int32_t *ids = user;
    if (ids[0] < STEPS) ids[1 + ids[0]++] = id;
    return 0;
}

/* nmlx_generate with a temperature sampler: the same ids on m and the CPU. */
static void check_generate(nmlx_model *cpu, nmlx_model *m, const plan *pl, const char *name) {
    int32_t ids[2][1 + STEPS] = {{0}};
    nmlx_model *ms[2] = {cpu, m};
    for (int k = 0; k < 2; k++) {
        nmlx_session *s = new_session(ms[k]);
        nmlx_generate_params gp = nmlx_generate_default_params();
        gp.max_tokens = STEPS;
        gp.ignore_eos = 1;
        gp.sampler = params_of(5);
        gp.on_token = on_token;
        gp.user = ids[k];
        EXPECT(s && nmlx_generate(s, pl->prompt[0], (size_t)pl->len[0], &gp, NULL) == NMLX_OK,
               "%s: generate: %s", name, nmlx_last_error());
        nmlx_session_free(s);
    }
    EXPECT(!memcmp(ids[0], ids[1], sizeof ids[0]), "%s: sampled generate on %s equals the CPU's",
           name, m->be->ops->name);
}

typedef struct gen_loop {
    nmlx_model *m;
    atomic_bool stop;
} gen_loop;

static void *generate_loop(void *arg) {
    gen_loop *g = arg;
    nmlx_session *s = new_session(g->m);
    int32_t prompt[] = {1, 2, 3, 4, 5};
    nmlx_generate_params gp = nmlx_generate_default_params();
    gp.max_tokens = 8;
    gp.ignore_eos = 1;
    while (s && !atomic_load(&g->stop)) {
        nmlx_session_reset(s);
        nmlx_generate(s, prompt, 5, &gp, NULL);
    }
    nmlx_session_free(s);
    return NULL;
}

/* Two prompts, evaluated then advanced by a batched step, alternately,
 * while another thread generates greedily: each read equals its row. */
static void check_threads(nmlx_model *m, const char *name) {
    int64_t V = nmlx_model_vocab_size(m);
    int32_t p[2][3] = {{7 % V, 8 % V, 9 % V}, {10 % V, 11 % V, 12 % V}}, next = 3 % (int32_t)V;
    float *want = malloc(4 * (size_t)V * sizeof(float));
    nmlx_session *s = new_session(m);
    nmlx_batch *b = NULL;
    if (!want || !s || nmlx_batch_create(m, 1, &b) != NMLX_OK) {
        EXPECT(0, "%s: threads: setup", name);
        goto done;
    }
    for (int k = 0; k < 2; k++) { /* [2k]: after the prompt, [2k+1]: after a batched step */
        nmlx_session_reset(s);
        nmlx_session_eval(s, p[k], 3, 0);
        memcpy(want + 2 * k * V, nmlx_session_logits(s), (size_t)V * sizeof(float));
        nmlx_batch_eval(b, &s, &next, 1);
        memcpy(want + (2 * k + 1) * V, nmlx_session_logits(s), (size_t)V * sizeof(float));
    }
    gen_loop g = {.m = m};
    atomic_init(&g.stop, false);
    pthread_t t;
    EXPECT(pthread_create(&t, NULL, generate_loop, &g) == 0, "thread");
    int bad = 0;
    for (int i = 0; i < 300; i++) {
        int k = i & 1;
        nmlx_session_reset(s);
        nmlx_session_eval(s, p[k], 3, 0);
        const float *l = nmlx_session_logits(s);
        bad += !l || memcmp(l, want + 2 * k * V, (size_t)V * sizeof(float)) != 0;
        nmlx_batch_eval(b, &s, &next, 1);
        l = nmlx_session_logits(s);
        bad += !l || memcmp(l, want + (2 * k + 1) * V, (size_t)V * sizeof(float)) != 0;
    }
    atomic_store(&g.stop, true);
    pthread_join(t, NULL);
    EXPECT(bad == 0, "%s: %d of 600 reads saw another thread's logits", name, bad);
done:
    nmlx_batch_free(b);
    nmlx_session_free(s);
    free(want);
}

static nmlx_model *load(const char *name, nmlx_backend *be) {
    nmlx_model_params mp = nmlx_model_default_params();
    mp.n_threads = 2;
    mp.no_tokenizer = 1;
    return test_load_fixture(name, &mp, be);
}

static void check(nmlx_backend *cpu_be, const char *name, bool batched_pass) {
    nmlx_backend *emu = NULL;
    nmlx_model *cpu = load(name, NULL), *em = NULL;
    plan pl = {0};
    if (emu_create(cpu_be, &emu) == NMLX_OK) em = load(name, emu);
    int64_t V = cpu ? nmlx_model_vocab_size(cpu) : 0;
    if (!cpu || !em || !(pl.rows = malloc((size_t)N * STEPS * (size_t)V * sizeof(float)))) {
        EXPECT(0, "%s: setup", name);
        goto done;
    }
    for (int i = 0; i < N; i++) {
        pl.len[i] = 1 + (int)(test_rand_u64() % PROMPT_MAX);
        for (int t = 0; t < pl.len[i]; t++)
            pl.prompt[i][t] = (int32_t)(test_rand_u64() % (uint64_t)V);
        pl.joins[i] = i < 3 ? 0 : 1 + i % 3;
        pl.steps[i] = 3 + (int)(test_rand_u64() % (STEPS - 2));
    }
    pl.steps[0] = STEPS;
    run_alone(cpu, &pl, V);
    long rows_down = 0;
    int d = run_batched(cpu, &pl, V, true, &rows_down);
    EXPECT(d == 0, "%s on cpu: %d ids or logits rows differ from the lone runs", name, d);
    emu_state *e = emu_of(emu);
    d = run_batched(em, &pl, V, true, &rows_down);
    EXPECT(d == 0, "%s on emu: %d ids or logits rows differ from the lone runs", name, d);
    long argmaxes = e->argmaxes, samples = e->samples;
    d = run_batched(em, &pl, V, false, &rows_down);
    EXPECT(d == 0, "%s on emu, no reads: %d ids differ", name, d);
    if (batched_pass) { /* soft-capped heads download their rows */
        EXPECT(e->argmaxes > argmaxes && e->samples > samples,
               "%s: the device argmax and sample ran (%ld, %ld calls)", name,
               e->argmaxes - argmaxes, e->samples - samples);
        EXPECT(rows_down == 0, "%s: batched steps whose logits nobody read downloaded %ld rows",
               name, rows_down);
    }
    EXPECT(emu_violations(emu) == 0, "%s: emu violations: %s", name, emu_first_violation(emu));
    check_trim_reset(cpu, V, name);
    check_threads(cpu, name);
    check_trim_reset(em, V, name);
    check_generate(cpu, em, &pl, name);

    /* must fail: a broken device sampler or copy is caught (where rows are
     * kept on the backend: elsewhere neither op is on the path) */
    if (batched_pass) {
        e->break_sample = true;
        d = run_batched(em, &pl, V, false, &rows_down);
        EXPECT(d > 0, "%s: must fail: an emu sampler ignoring the host's draw went unnoticed",
               name);
        e->break_sample = false;
        e->break_copy = true;
        d = run_batched(em, &pl, V, true, &rows_down);
        EXPECT(d > 0, "%s: must fail: stale logits rows (copy off) went unnoticed", name);
        e->break_copy = false;
    }
done:
    nmlx_model_free(em);
    nmlx_model_free(cpu);
    emu_free(emu);
    free(pl.rows);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    test_seed(0x5eed5a3b1e);
    nmlx_backend *cpu = NULL;
    EXPECT(nmlx_backend_cpu_create(2, &cpu) == NMLX_OK, "cpu backend");
    if (!cpu) return test_summary();
    static const struct {
        const char *name;
        bool batched; /* rows kept on the backend by the batched pass */
    } fx[] = {{"qwen3", true},        {"llama3_tied", true},           {"llama4_text", true},
              {"gemma3_text", false}, {"quant_llama_q4g64_f16", true}, {"gemma3n", false}};
    for (size_t i = 0; i < sizeof fx / sizeof fx[0]; i++)
        check(cpu, fx[i].name, fx[i].batched);
    nmlx_backend_free(cpu);
    return test_summary();
}
