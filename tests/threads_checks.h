/* Threads sharing one model (tests/test_threads.c on the CPU,
 * tests/cuda/test_cuda_threads.c on the GPU): nmlx.h promises that a model
 * may be shared by threads, each session used by one thread at a time.
 *
 * check_fixture(device, fixture, seed), at the same time on one model:
 *   - 4 threads each create a session, generate 12 greedy tokens from their
 *     own random prompt, free the session, three times over: every id must
 *     equal that prompt's ids generated alone beforehand;
 *   - a thread creates and frees sessions 40 times, each evaluating 5
 *     random ids, reading the logits (all finite) and sampling at
 *     temperature 0.8 (an id in the vocabulary);
 *   - a thread decodes 3 sessions in batches (nmlx_batch_eval): each
 *     session's greedy ids must equal its prompt's lone ids.
 * Include after harness.h, model_util.h and nmlx.h. */
#ifndef NMLX_TEST_THREADS_CHECKS_H
#define NMLX_TEST_THREADS_CHECKS_H

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum { GEN_THREADS = 4, PROMPTS = GEN_THREADS + 3, NEW = 12, ROUNDS = 3, CHURN = 40 };

typedef struct shared {
    nmlx_model *m;
    int32_t vocab;
    int32_t prompt[PROMPTS][24];
    size_t n_prompt[PROMPTS];
    int32_t ref[PROMPTS][NEW];
} shared;

typedef struct job {
    shared *sh;
    int which;       /* the prompt (generators) */
    unsigned seed;   /* churn */
    int errors;      /* calls that failed */
    int mismatches;  /* ids unlike the lone run's */
    int bad_values;  /* non-finite logits, ids out of range */
    char first[256]; /* the first problem, for the report */
} job;

static void note(job *j, const char *what) {
    if (!j->first[0]) snprintf(j->first, sizeof j->first, "%s: %s", what, nmlx_last_error());
}

static void *generator(void *arg) {
    job *j = arg;
    shared *sh = j->sh;
    for (int r = 0; r < ROUNDS; r++) {
        nmlx_session *s = NULL;
        if (nmlx_session_create(sh->m, NULL, &s) != NMLX_OK) {
            j->errors++, note(j, "create");
            continue;
        }
        int32_t ids[NEW];
        size_t got = 0;
        if (test_greedy_ids(s, sh->prompt[j->which], sh->n_prompt[j->which], ids, NEW, &got,
                            NULL) != NMLX_OK)
            j->errors++, note(j, "generate");
        for (int i = 0; i < NEW; i++)
            if (ids[i] != sh->ref[j->which][i]) {
                j->mismatches++;
                if (!j->first[0])
                    snprintf(j->first, sizeof j->first, "prompt %d token %d: %d, alone %d",
                             j->which, i, ids[i], sh->ref[j->which][i]);
            }
        nmlx_session_free(s);
    }
    return NULL;
}

static void *churn(void *arg) {
    job *j = arg;
    shared *sh = j->sh;
    nmlx_sampler_params sp = nmlx_sampler_default_params();
    sp.temperature = 0.8f;
    for (int r = 0; r < CHURN; r++) {
        nmlx_session *s = NULL;
        if (nmlx_session_create(sh->m, NULL, &s) != NMLX_OK) {
            j->errors++, note(j, "create");
            continue;
        }
        int32_t ids[5];
        for (int i = 0; i < 5; i++)
            ids[i] = (int32_t)(rand_r(&j->seed) % (unsigned)sh->vocab);
        if (nmlx_session_eval(s, ids, 5, 0) != NMLX_OK) {
            j->errors++, note(j, "eval");
        } else {
            const float *lg = nmlx_session_logits(s);
            for (int32_t v = 0; lg && v < sh->vocab; v++)
                if (!isfinite(lg[v])) {
                    j->bad_values++;
                    break;
                }
            if (!lg) j->errors++, note(j, "logits");
            int32_t id = -1;
            if (nmlx_session_sample(s, &sp, &id) != NMLX_OK)
                j->errors++, note(j, "sample");
            else if (id < 0 || id >= sh->vocab)
                j->bad_values++;
        }
        nmlx_session_free(s);
    }
    return NULL;
}

static void *batched(void *arg) {
    job *j = arg;
    shared *sh = j->sh;
    enum { NB = 3 };
    nmlx_batch *b = NULL;
    nmlx_session *ss[NB] = {0};
    int32_t ids[NB];
    nmlx_sampler_params greedy = nmlx_sampler_default_params();
    greedy.temperature = 0.0f;
    if (nmlx_batch_create(sh->m, NB, &b) != NMLX_OK) {
        j->errors++, note(j, "batch_create");
        return NULL;
    }
    for (int i = 0; i < NB; i++) {
        const int p = GEN_THREADS + i;
        if (nmlx_session_create(sh->m, NULL, &ss[i]) != NMLX_OK ||
            nmlx_session_eval(ss[i], sh->prompt[p], sh->n_prompt[p], 0) != NMLX_OK ||
            nmlx_session_sample(ss[i], &greedy, &ids[i]) != NMLX_OK) {
            j->errors++, note(j, "prefill");
            goto done;
        }
    }
    for (int t = 0; t < NEW; t++) {
        for (int i = 0; i < NB; i++)
            if (ids[i] != sh->ref[GEN_THREADS + i][t]) {
                j->mismatches++;
                if (!j->first[0])
                    snprintf(j->first, sizeof j->first, "batched prompt %d token %d: %d, alone %d",
                             GEN_THREADS + i, t, ids[i], sh->ref[GEN_THREADS + i][t]);
            }
        if (t == NEW - 1) break;
        if (nmlx_batch_eval(b, ss, ids, NB) != NMLX_OK) {
            j->errors++, note(j, "batch_eval");
            break;
        }
        for (int i = 0; i < NB; i++)
            if (nmlx_session_sample(ss[i], &greedy, &ids[i]) != NMLX_OK)
                j->errors++, note(j, "sample");
    }
done:
    for (int i = 0; i < NB; i++)
        nmlx_session_free(ss[i]);
    nmlx_batch_free(b);
    return NULL;
}

static void check_fixture(const char *device, const char *name, unsigned seed) {
    char dir[4096];
    nmlx_model_params mp = nmlx_model_default_params();
    mp.no_tokenizer = 1;
    mp.device = device;
    shared sh = {0};
    if (nmlx_model_load(test_fixture_path(dir, sizeof dir, name), &mp, &sh.m) != NMLX_OK) {
        EXPECT(0, "%s loads on %s: %s", name, device, nmlx_last_error());
        return;
    }
    sh.vocab = nmlx_model_vocab_size(sh.m);
    for (int p = 0; p < PROMPTS; p++) { /* random prompts of 3 to 20 ids, each's lone ids */
        sh.n_prompt[p] = 3 + rand_r(&seed) % 18;
        for (size_t i = 0; i < sh.n_prompt[p]; i++)
            sh.prompt[p][i] = (int32_t)(rand_r(&seed) % (unsigned)sh.vocab);
        nmlx_session *s = NULL;
        size_t got = 0;
        bool ok = nmlx_session_create(sh.m, NULL, &s) == NMLX_OK &&
                  test_greedy_ids(s, sh.prompt[p], sh.n_prompt[p], sh.ref[p], NEW, &got, NULL) ==
                      NMLX_OK &&
                  got == NEW;
        nmlx_session_free(s);
        EXPECT(ok, "%s: prompt %d alone: %s", name, p, nmlx_last_error());
        if (!ok) {
            nmlx_model_free(sh.m);
            return;
        }
    }
    job jobs[GEN_THREADS + 2];
    pthread_t th[GEN_THREADS + 2];
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < GEN_THREADS + 2; i++) {
        jobs[i].sh = &sh;
        jobs[i].which = i;
        jobs[i].seed = seed + 101u * (unsigned)i;
    }
    int started = 0;
    for (int i = 0; i < GEN_THREADS + 2; i++) {
        void *(*fn)(void *) = i < GEN_THREADS ? generator : i == GEN_THREADS ? churn : batched;
        if (pthread_create(&th[i], NULL, fn, &jobs[i]) != 0) break;
        started++;
    }
    EXPECT(started == GEN_THREADS + 2, "%s: %d threads started", name, started);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    static const char *what[] = {"generator", "generator", "generator",
                                 "generator", "churn",     "batch"};
    for (int i = 0; i < started; i++) {
        const job *j = &jobs[i];
        EXPECT(j->errors == 0 && j->mismatches == 0 && j->bad_values == 0,
               "%s %s thread %d: %d failed calls, %d ids unlike alone, %d bad values (%s)", name,
               what[i], i, j->errors, j->mismatches, j->bad_values, j->first);
    }
    printf("%-28s %d threads on one %s model: %s\n", name, started, device,
           test_failed_ ? "problems above" : "every thread's ids equal the lone runs'");
    nmlx_model_free(sh.m);
}

#endif
