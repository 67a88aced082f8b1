/* The scheduler of the server (lib/scheduler.js): one native thread per
 * scheduler steps every submitted sequence (a generation job on its own
 * session). Each round:
 *   1. every decoding sequence's pending token (sampled last round) is
 *      evaluated in one batched step (nmlx_batch_eval: the weights are read
 *      once for all of them, and on the CPU each sequence's logits equal a
 *      lone eval's bit for bit below 24 sequences);
 *   2. every sequence still prefilling evaluates one prompt chunk of at most
 *      `prefillChunk` tokens, so a new long prompt is prefilled between the
 *      decode steps of running streams instead of stalling them;
 *   3. a token is sampled for every sequence whose forward left logits.
 * If the batched step fails (say one session's context is full), its
 * sequences are evaluated one by one instead, so only the one at fault ends.
 *
 * Each job behaves like nmlx_generate: the session's generator is seeded with
 * the job's seed, tokens are sampled with nmlx_session_sample (repetition
 * penalty over the session's history), the last sampled token is not
 * evaluated (the session holds prompt + all generated tokens but the last),
 * and text, stop strings and delivery to JS go through gen.c's job.
 *
 *   schedCreate(model, prefillChunk, maxBatch) -> handle
 *   schedSubmit(handle, session, ids, opts, onData, onDone)   (as generate())
 *   schedClose(handle)   cancels what runs or waits; the thread ends
 * Cancel one sequence with sessionCancel(session). */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include "job.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct sched {
    napi_ref model_ref; /* keeps the model's external (and model) alive */
    int prefill_chunk;
    int max_batch; /* sequences per batched decode step */
    /* the thread's own: the batched step's buffers (created at first use;
     * NULL if that failed: then sequences decode one by one) */
    nmlx_batch *batch;
    bool batch_tried;
    /* counters for schedStats (read from JS while the thread runs); the
     * *_ns: the thread's time in each part of its rounds, so that a slow
     * server says where its time goes (the batched step, the own forwards,
     * sampling and delivery, or waiting for work) */
    atomic_llong batched_steps, batched_tokens, rounds;
    atomic_llong batch_ns, forward_ns, sample_ns, idle_ns;
    nmlx_session **b_sessions;
    int32_t *b_ids;
    gen_job **b_jobs;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    gen_job *incoming;                     /* submitted, not yet taken by the thread (under mu) */
    bool started, closing, exited, orphan; /* under mu */
} sched;

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* *acc += the nanoseconds since t0 (now_seconds) */
static void add_since(atomic_llong *acc, double t0) {
    atomic_fetch_add(acc, (long long)((now_seconds() - t0) * 1e9));
}

static void finish(gen_job *j, nmlx_status st, nmlx_finish_reason why) {
    double t = now_seconds();
    j->res.n_prompt = j->n_prompt;
    j->res.finish = why;
    j->res.prefill_seconds = (j->res.n_generated ? j->t_first : t) - j->t0;
    j->res.decode_seconds = j->res.n_generated ? t - j->t_first : 0.0;
    gen_job_finish(j, st, &j->res);
}

static bool is_eos(const nmlx_model *m, int32_t id) {
    const int32_t *eos = NULL;
    size_t n = nmlx_model_eos_ids(m, &eos);
    for (size_t i = 0; i < n; i++)
        if (eos[i] == id) return true;
    return false;
}

enum { FWD_DONE, FWD_WAIT, FWD_READY };

/* The forward half of a job's round: one forward pass, a prompt chunk or the
 * token sampled last round. FWD_READY: logits are there to sample from;
 * FWD_WAIT: more prompt to go; FWD_DONE: the job ended (handed back to JS). */
static int forward(sched *sc, gen_job *j) {
    nmlx_session *S = j->sess->session;
    nmlx_status st = NMLX_OK;
    if (!j->started) {
        j->started = true;
        j->t0 = now_seconds();
        if (atomic_load(&j->abort)) return finish(j, NMLX_OK, NMLX_FINISH_CANCELLED), FWD_DONE;
        if (j->sess->tok && (st = nmlx_detokenizer_create(j->sess->tok, 1, &j->detok)) != NMLX_OK)
            return finish(j, st, NMLX_FINISH_CANCELLED), FWD_DONE;
        nmlx_session_seed(S, j->gp.sampler.seed);
    }
    if (atomic_load(&j->abort)) return finish(j, NMLX_OK, NMLX_FINISH_CANCELLED), FWD_DONE;
    if (j->off < j->n_prompt) {
        size_t n = j->n_prompt - j->off;
        if (sc->prefill_chunk > 0 && n > (size_t)sc->prefill_chunk) n = (size_t)sc->prefill_chunk;
        st = nmlx_session_eval(S, j->prompt + j->off, n, 0);
        if (st == NMLX_OK) j->off += n;
        if (st == NMLX_OK && j->off < j->n_prompt) return FWD_WAIT;
    } else if (j->pending >= 0) {
        int32_t id = j->pending;
        j->pending = -1;
        st = nmlx_session_eval(S, &id, 1, 0);
    }
    if (st == NMLX_ERR_CANCELLED || atomic_load(&j->abort))
        return finish(j, NMLX_OK, NMLX_FINISH_CANCELLED), FWD_DONE;
    if (st != NMLX_OK) return finish(j, st, NMLX_FINISH_CANCELLED), FWD_DONE;
    return FWD_READY;
}

/* The sampling half: one token from the job's logits, its text through the
 * job's stop strings to JS; the token becomes the job's pending one (next
 * round's forward) unless the job ends. Returns true when it ended. */
static bool sample(gen_job *j) {
    nmlx_session *S = j->sess->session;
    nmlx_status st = NMLX_OK;
    size_t pos = nmlx_session_position(S);
    if (j->res.n_generated >= (size_t)j->gp.max_tokens || pos >= (size_t)j->sess->max_context)
        return finish(j, NMLX_OK, NMLX_FINISH_LENGTH), true;
    int32_t id = 0;
    if ((st = nmlx_session_sample(S, &j->gp.sampler, &id)) != NMLX_OK)
        return finish(j, st, NMLX_FINISH_CANCELLED), true;
    if (!j->res.n_generated) j->t_first = now_seconds();
    j->res.n_generated++;
    bool eos = !j->gp.ignore_eos && is_eos(j->sess->model, id);
    bool last = eos || j->res.n_generated >= (size_t)j->gp.max_tokens ||
                pos + 1 >= (size_t)j->sess->max_context;
    const char *text = NULL;
    size_t len = 0;
    char *joined = NULL;
    if (j->detok) {
        const char *piece = NULL, *tail = NULL;
        size_t n_tail = 0;
        if ((st = nmlx_detokenizer_push(j->detok, id, &piece, &len)) != NMLX_OK)
            return finish(j, st, NMLX_FINISH_CANCELLED), true;
        text = piece;
        if (last) { /* the piece is invalidated by flush: join them first */
            joined = malloc(len + 1);
            if (!joined) return finish(j, NMLX_ERR_NOMEM, NMLX_FINISH_CANCELLED), true;
            memcpy(joined, piece, len);
            if ((st = nmlx_detokenizer_flush(j->detok, &tail, &n_tail)) != NMLX_OK) {
                free(joined);
                return finish(j, st, NMLX_FINISH_CANCELLED), true;
            }
            char *g = realloc(joined, len + n_tail + 1);
            if (!g) {
                free(joined);
                return finish(j, NMLX_ERR_NOMEM, NMLX_FINISH_CANCELLED), true;
            }
            joined = g;
            memcpy(joined + len, tail, n_tail);
            len += n_tail;
            joined[len] = '\0';
            text = joined;
        }
    }
    int stop = gen_job_on_token(j, id, text, len);
    free(joined);
    if (stop) return finish(j, NMLX_OK, NMLX_FINISH_STOPPED), true;
    if (eos) return finish(j, NMLX_OK, NMLX_FINISH_EOS), true;
    if (last) return finish(j, NMLX_OK, NMLX_FINISH_LENGTH), true;
    j->pending = id;
    return false;
}

/* Can the job's forward this round be its pending token in the batch? */
static bool batchable(const gen_job *j) {
    return j->started && j->off >= j->n_prompt && j->pending >= 0 && !atomic_load(&j->abort);
}

/* Step 1 of a round: the pending tokens of up to max_batch decoding jobs in
 * one batched eval. Marks the jobs it advanced (j->batched); the others run
 * their own forward. */
static void batched_step(sched *sc, gen_job *active) {
    if (!sc->batch_tried) {
        sc->batch_tried = true;
        size_t n = (size_t)sc->max_batch;
        sc->b_sessions = malloc(n * sizeof *sc->b_sessions);
        sc->b_ids = malloc(n * sizeof *sc->b_ids);
        sc->b_jobs = malloc(n * sizeof *sc->b_jobs);
        /* the model of the job's session, alive while the session is; the
         * batch only takes a reference on it (hence the cast) */
        if (sc->b_sessions && sc->b_ids && sc->b_jobs)
            nmlx_batch_create((nmlx_model *)active->sess->model, sc->max_batch, &sc->batch);
    }
    if (!sc->batch) return;
    int k = 0;
    for (gen_job *j = active; j && k < sc->max_batch; j = j->next)
        if (batchable(j)) {
            sc->b_sessions[k] = j->sess->session;
            sc->b_ids[k] = j->pending;
            sc->b_jobs[k++] = j;
        }
    if (k < 2) return; /* one sequence: its own eval is the same work */
    const double t0 = now_seconds();
    const nmlx_status st = nmlx_batch_eval(sc->batch, sc->b_sessions, sc->b_ids, (size_t)k);
    add_since(&sc->batch_ns, t0);
    if (st != NMLX_OK) return;
    for (int i = 0; i < k; i++) {
        sc->b_jobs[i]->pending = -1;
        sc->b_jobs[i]->batched = true;
    }
    atomic_fetch_add(&sc->batched_steps, 1);
    atomic_fetch_add(&sc->batched_tokens, k);
}

static void sched_thread_cleanup(sched *sc) {
    nmlx_batch_free(sc->batch);
    free(sc->b_sessions);
    free(sc->b_ids);
    free(sc->b_jobs);
    sc->batch = NULL;
    sc->b_sessions = NULL, sc->b_ids = NULL, sc->b_jobs = NULL;
}

static void *sched_thread(void *arg) {
    sched *sc = arg;
    gen_job *active = NULL, **tail = &active;
    for (;;) {
        pthread_mutex_lock(&sc->mu);
        const double t_wait = now_seconds();
        while (!active && !sc->incoming && !sc->closing)
            pthread_cond_wait(&sc->cv, &sc->mu);
        add_since(&sc->idle_ns, t_wait);
        *tail = sc->incoming; /* newcomers join at the end, in submission order */
        sc->incoming = NULL;
        bool closing = sc->closing;
        pthread_mutex_unlock(&sc->mu);
        if (closing)
            for (gen_job *j = active; j; j = j->next)
                atomic_store(&j->abort, true);
        if (!active && closing) break;
        /* One round (see the top of the file): the batched decode step,
         * every other job's own forward, then sampling. */
        if (active) batched_step(sc, active);
        atomic_fetch_add(&sc->rounds, 1);
        const double t_fwd = now_seconds();
        gen_job **link = &active;
        while (*link) {
            gen_job *j = *link, *next = j->next; /* a finished j is JS's: not touched again */
            if (j->batched) {
                j->batched = false;
                j->ready = true;
                link = &j->next;
                continue;
            }
            int r = forward(sc, j);
            if (r == FWD_DONE) {
                *link = next;
            } else {
                j->ready = r == FWD_READY;
                link = &j->next;
            }
        }
        add_since(&sc->forward_ns, t_fwd);
        const double t_sample = now_seconds();
        link = &active;
        while (*link) {
            gen_job *j = *link, *next = j->next;
            if (j->ready && sample(j))
                *link = next;
            else
                link = &j->next;
        }
        add_since(&sc->sample_ns, t_sample);
        tail = link;
    }
    sched_thread_cleanup(sc);
    pthread_mutex_lock(&sc->mu);
    sc->exited = true;
    bool orphan = sc->orphan;
    pthread_mutex_unlock(&sc->mu);
    if (orphan) { /* the external was collected while we ran: ours to free */
        pthread_mutex_destroy(&sc->mu);
        pthread_cond_destroy(&sc->cv);
        free(sc);
    }
    return NULL;
}

static void sched_finalize(napi_env env, void *data, void *hint) {
    sched *sc = data;
    napi_delete_reference(env, sc->model_ref);
    pthread_mutex_lock(&sc->mu);
    bool running = sc->started && !sc->exited;
    sc->closing = true;
    sc->orphan = running;
    pthread_cond_signal(&sc->cv);
    pthread_mutex_unlock(&sc->mu);
    if (!running) {
        pthread_mutex_destroy(&sc->mu);
        pthread_cond_destroy(&sc->cv);
        free(sc);
    }
}

static bool get_sched(napi_env env, napi_value v, sched **out) {
    void *p = NULL;
    napi_valuetype t;
    if (napi_typeof(env, v, &t) != napi_ok || t != napi_external ||
        napi_get_value_external(env, v, &p) != napi_ok || !p) {
        addon_throw(env, "NMLX_ERR_INVALID_ARG", "expected a scheduler handle");
        return false;
    }
    *out = p;
    return true;
}

/* schedCreate(model, prefillChunk, maxBatch = 16) -> handle */
napi_value addon_sched_create(napi_env env, napi_callback_info info) {
    size_t argc = 3;
    napi_value argv[3], ext;
    addon_model *m;
    int32_t chunk = 0, max_batch = 16;
    NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 2 || !addon_get_model(env, argv[0], &m)) return NULL;
    if (napi_get_value_int32(env, argv[1], &chunk) != napi_ok || chunk < 0)
        return addon_throw(env, "NMLX_ERR_INVALID_ARG", "schedCreate: prefillChunk must be >= 0");
    if (argc > 2 && (napi_get_value_int32(env, argv[2], &max_batch) != napi_ok || max_batch < 1 ||
                     max_batch > 4096))
        return addon_throw(env, "NMLX_ERR_INVALID_ARG",
                           "schedCreate: maxBatch must be an integer in [1, 4096]");
    sched *sc = calloc(1, sizeof *sc);
    if (!sc) return addon_throw(env, "NMLX_ERR_NOMEM", "out of memory");
    sc->prefill_chunk = chunk;
    sc->max_batch = max_batch;
    pthread_mutex_init(&sc->mu, NULL);
    pthread_cond_init(&sc->cv, NULL);
    if (napi_create_reference(env, argv[0], 1, &sc->model_ref) != napi_ok ||
        napi_create_external(env, sc, sched_finalize, NULL, &ext) != napi_ok) {
        if (sc->model_ref) napi_delete_reference(env, sc->model_ref);
        pthread_mutex_destroy(&sc->mu);
        pthread_cond_destroy(&sc->cv);
        free(sc);
        return addon_throw(env, "NMLX_ERR_NOMEM", "out of memory");
    }
    return ext;
}

/* schedSubmit(handle, session, ids, opts, onData, onDone): like generate(),
 * stepped by the scheduler's thread (started on first use). */
napi_value addon_sched_submit(napi_env env, napi_callback_info info) {
    size_t argc = 6;
    napi_value argv[6];
    sched *sc;
    NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 6) return addon_throw(env, "NMLX_ERR_INVALID_ARG", "schedSubmit: 6 arguments");
    if (!get_sched(env, argv[0], &sc)) return NULL;
    pthread_mutex_lock(&sc->mu);
    bool closing = sc->closing;
    pthread_mutex_unlock(&sc->mu);
    if (closing) return addon_throw(env, "NMLX_ERR_UNLOADED", "the scheduler is closed");
    gen_job *j = gen_job_create(env, argv + 1);
    if (!j) return NULL;
    pthread_mutex_lock(&sc->mu);
    if (!sc->started) {
        pthread_attr_t attr;
        pthread_t th;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&th, &attr, sched_thread, sc);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            pthread_mutex_unlock(&sc->mu);
            gen_job_discard(j);
            return addon_throw(env, "NMLX_ERR_INTERNAL", "schedSubmit: cannot start a thread");
        }
        sc->started = true;
    }
    gen_job **link = &sc->incoming;
    while (*link)
        link = &(*link)->next;
    *link = j;
    pthread_cond_signal(&sc->cv);
    pthread_mutex_unlock(&sc->mu);
    return NULL;
}

/* schedClose(handle): every running or waiting job ends (finish "abort"),
 * later submits throw; the thread exits once they are handed back. */
napi_value addon_sched_close(napi_env env, napi_callback_info info) {
    size_t argc = 1;
    napi_value argv[1];
    sched *sc;
    NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 1 || !get_sched(env, argv[0], &sc)) return NULL;
    pthread_mutex_lock(&sc->mu);
    sc->closing = true;
    for (gen_job *j = sc->incoming; j; j = j->next)
        atomic_store(&j->abort, true);
    pthread_cond_signal(&sc->cv);
    pthread_mutex_unlock(&sc->mu);
    return NULL;
}

/* schedStats(handle) -> { batchedSteps, batchedTokens, rounds, batchSeconds,
 * forwardSeconds, sampleSeconds, idleSeconds }: batched decode steps run so
 * far and the tokens they evaluated; the scheduler's rounds and its thread's
 * seconds in the batched steps, in the sequences' own forwards (prompt
 * chunks, lone decode steps), in sampling and delivering tokens, and
 * waiting for work. */
napi_value addon_sched_stats(napi_env env, napi_callback_info info) {
    size_t argc = 1;
    napi_value argv[1], obj, v;
    sched *sc;
    NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 1 || !get_sched(env, argv[0], &sc)) return NULL;
    NAPI_TRY(env, napi_create_object(env, &obj));
    NAPI_TRY(env, napi_create_int64(env, atomic_load(&sc->batched_steps), &v));
    NAPI_TRY(env, napi_set_named_property(env, obj, "batchedSteps", v));
    NAPI_TRY(env, napi_create_int64(env, atomic_load(&sc->batched_tokens), &v));
    NAPI_TRY(env, napi_set_named_property(env, obj, "batchedTokens", v));
    NAPI_TRY(env, napi_create_int64(env, atomic_load(&sc->rounds), &v));
    NAPI_TRY(env, napi_set_named_property(env, obj, "rounds", v));
    static const char *const names[] = {"batchSeconds", "forwardSeconds", "sampleSeconds",
                                        "idleSeconds"};
    atomic_llong *const ns[] = {&sc->batch_ns, &sc->forward_ns, &sc->sample_ns, &sc->idle_ns};
    for (int i = 0; i < 4; i++) {
        NAPI_TRY(env, napi_create_double(env, (double)atomic_load(ns[i]) * 1e-9, &v));
        NAPI_TRY(env, napi_set_named_property(env, obj, names[i], v));
    }
    return obj;
}
