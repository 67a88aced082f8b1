/* Soak test for long-lived processes: several threads each load a model,
 * open sessions, generate and get cancelled at random moments (from the
 * token callback and from a separate canceller thread), then free
 * everything, round after round, across several model families.
 *
 * Checks: every call returns OK or a cancellation; after the workers are
 * joined, open file descriptors and threads are back to their count before
 * the first load; resident memory after the measured rounds stays within 5%
 * of its value after the warm-up rounds (skipped under AddressSanitizer,
 * whose quarantine holds freed memory on purpose; LeakSanitizer covers leaks
 * there).
 *
 * Short by default (CI, ASan included). NMLX_SOAK_ROUNDS=N sets the
 * measured rounds per worker (default 30; the long run in the closing note
 * used 1000). */
#define _DEFAULT_SOURCE
#include "common.h"
#include "harness.h"
#include "nmlx.h"

#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

enum { WORKERS = 3, SESSIONS = 2 };

/* model folders under the source tree: tiny fixtures of several families and
 * the demo model (5.5M parameters, with a tokenizer) */
static const char *const FIXTURES[] = {
    "tests/fixtures/qwen3",     "tests/fixtures/gemma3_text",           "tests/fixtures/gemma3n",
    "tests/fixtures/qwen3_moe", "tests/fixtures/quant_llama_q4g64_f16", "models/demo"};
enum { N_FIXTURES = sizeof FIXTURES / sizeof FIXTURES[0] };

typedef struct worker {
    pthread_t thread;
    int index, rounds;
    uint64_t rng;
    pthread_mutex_t lock;
    nmlx_session *live; /* the session generating now (the canceller's target) */
    /* results, read by the main thread after join */
    long calls, cancelled, failures;
    char first_error[256];
} worker;

static worker workers[WORKERS];
static atomic_bool stop_canceller;

static uint64_t rnd(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static int count_dir(const char *path) {
    DIR *d = opendir(path);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    if (d) closedir(d);
    return n - 1; /* the DIR's own descriptor (for /proc/self/fd) */
}

static int count_threads(void) { return count_dir("/proc/self/task") + 1; }

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &size, &res) != 2) res = 0;
        fclose(f);
    }
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

static void note_failure(worker *w, const char *what, nmlx_status st) {
    w->failures++;
    if (!w->first_error[0])
        snprintf(w->first_error, sizeof w->first_error, "%s: %s: %s", what, nmlx_status_string(st),
                 nmlx_last_error());
}

typedef struct cb_state {
    nmlx_session *s;
    int stop_after; /* cancel from the callback after this many tokens (-1 = no) */
    int seen;
} cb_state;

static int on_token(void *user, int32_t id, const char *text, size_t len) {
    cb_state *c = user;
    (void)id;
    (void)text;
    (void)len;
    if (++c->seen == c->stop_after) nmlx_session_cancel(c->s);
    return 0;
}

static void run_session(worker *w, int32_t V, nmlx_session *s) {
    int32_t prompt[12];
    size_t n = 1 + rnd(&w->rng) % 12;
    for (size_t i = 0; i < n; i++)
        prompt[i] = (int32_t)(rnd(&w->rng) % (uint64_t)V);
    for (int turn = 0; turn < 3; turn++) {
        nmlx_generate_params gp = nmlx_generate_default_params();
        gp.max_tokens = 1 + (int)(rnd(&w->rng) % 24);
        gp.ignore_eos = 1;
        if (rnd(&w->rng) % 2) {
            gp.sampler.temperature = 0.8f;
            gp.sampler.top_k = 20;
            gp.sampler.seed = rnd(&w->rng);
        }
        cb_state cs = {.s = s, .stop_after = rnd(&w->rng) % 3 ? -1 : 1 + (int)(rnd(&w->rng) % 8)};
        gp.on_token = on_token;
        gp.user = &cs;
        pthread_mutex_lock(&w->lock);
        w->live = s;
        pthread_mutex_unlock(&w->lock);
        nmlx_generate_result r;
        /* a prompt every turn: a cancelled prefill or a reset leaves no
         * logits to continue from */
        size_t np = turn ? 1 + rnd(&w->rng) % n : n;
        nmlx_status st = nmlx_generate(s, prompt, np, &gp, &r);
        pthread_mutex_lock(&w->lock);
        w->live = NULL;
        pthread_mutex_unlock(&w->lock);
        w->calls++;
        if (st == NMLX_ERR_CANCELLED || (st == NMLX_OK && r.finish == NMLX_FINISH_CANCELLED))
            w->cancelled++;
        else if (st == NMLX_ERR_CONTEXT_OVERFLOW)
            break;
        else if (st != NMLX_OK)
            note_failure(w, "generate", st);
        if (rnd(&w->rng) % 4 == 0) nmlx_session_reset(s);
    }
}

static void *worker_main(void *arg) {
    worker *w = arg;
    char dir[1024];
    for (int r = 0; r < w->rounds; r++) {
        const char *fx = FIXTURES[(size_t)(w->index + r) % N_FIXTURES];
        snprintf(dir, sizeof dir, "%s/%s", test_src_dir(), fx);
        nmlx_model_params mp = nmlx_model_default_params();
        mp.n_threads = 1 + (int)(rnd(&w->rng) % 2);
        nmlx_model *m = NULL;
        nmlx_status st = nmlx_model_load(dir, &mp, &m);
        if (st != NMLX_OK) {
            note_failure(w, fx, st);
            continue;
        }
        nmlx_session *ss[SESSIONS] = {0};
        nmlx_session_params sp = nmlx_session_default_params();
        sp.max_context = 128;
        for (int i = 0; i < SESSIONS; i++) {
            st = nmlx_session_create(m, &sp, &ss[i]);
            if (st != NMLX_OK) note_failure(w, "session_create", st);
        }
        int32_t V = nmlx_model_vocab_size(m);
        /* free the model first half the time: sessions keep it alive */
        if (rnd(&w->rng) % 2) {
            nmlx_model_free(m);
            m = NULL;
        }
        for (int i = 0; i < SESSIONS; i++)
            if (ss[i]) run_session(w, V, ss[i]);
        for (int i = 0; i < SESSIONS; i++)
            nmlx_session_free(ss[i]);
        nmlx_model_free(m);
    }
    return NULL;
}

/* Cancels a random worker's live session every few hundred microseconds. */
static void *canceller_main(void *arg) {
    uint64_t rng = (uint64_t)(uintptr_t)arg | 1;
    while (!atomic_load(&stop_canceller)) {
        worker *w = &workers[rnd(&rng) % WORKERS];
        pthread_mutex_lock(&w->lock);
        if (w->live) nmlx_session_cancel(w->live);
        pthread_mutex_unlock(&w->lock);
        struct timespec ts = {0, (long)(100000 + rnd(&rng) % 900000)};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void run_phase(int rounds, uint64_t seed) {
    pthread_t canceller;
    atomic_store(&stop_canceller, false);
    for (int i = 0; i < WORKERS; i++) {
        workers[i].index = i;
        workers[i].rounds = rounds;
        workers[i].rng = seed * 7919 + (uint64_t)i * 104729 + 1;
        EXPECT(pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) == 0,
               "start worker %d", i);
    }
    EXPECT(pthread_create(&canceller, NULL, canceller_main, (void *)(uintptr_t)seed) == 0,
           "start canceller");
    for (int i = 0; i < WORKERS; i++)
        pthread_join(workers[i].thread, NULL);
    atomic_store(&stop_canceller, true);
    pthread_join(canceller, NULL);
}

int main(void) {
#ifdef __GLIBC__
    /* glibc gives threads new arenas (up to 8 a core) as more of them run at
     * once; the main phase can reach a concurrency the warm-up did not, and
     * a fresh arena's first pages (1-3 MiB) read as growth. Two arenas: what
     * is left to grow is what the library keeps. */
    mallopt(M_ARENA_MAX, 2);
#endif
    const char *env = getenv("NMLX_SOAK_ROUNDS");
    int rounds = env && atoi(env) > 0 ? atoi(env) : 30;
    for (int i = 0; i < WORKERS; i++)
        pthread_mutex_init(&workers[i].lock, NULL);
    int fds0 = count_dir("/proc/self/fd"), threads0 = count_threads();

    /* warm-up: allocator arenas, lazily built tables, first-touch pages;
     * then a first full phase, whose peak thread concurrency (each new
     * high leaves a cached thread stack and its touched pages) the second
     * one rarely passes: a leak grows in every phase, that residue does not */
    run_phase(N_FIXTURES, 1);
    run_phase(rounds, 3);
    long rss_warm = rss_kib();
    double t0 = nmlx_time_seconds();
    run_phase(rounds, 2);
    double secs = nmlx_time_seconds() - t0;
    long rss_end = rss_kib();

    long calls = 0, cancelled = 0;
    for (int i = 0; i < WORKERS; i++) {
        calls += workers[i].calls;
        cancelled += workers[i].cancelled;
        EXPECT(workers[i].failures == 0, "worker %d: %ld failures, first: %s", i,
               workers[i].failures, workers[i].first_error);
    }
    EXPECT(calls > 0 && cancelled > 0, "calls %ld, cancelled %ld (both must happen)", calls,
           cancelled);
    int fds1 = count_dir("/proc/self/fd"), threads1 = count_threads();
    EXPECT(fds1 == fds0, "open file descriptors: %d before, %d after", fds0, fds1);
    EXPECT(threads1 == threads0, "threads: %d before, %d after", threads0, threads1);
    /* 5% plus 1 MiB: with every model freed, malloc_trim leaves a baseline
     * of a few MiB, where the allocator's per-thread residue alone (arenas
     * of the pool and worker threads, cached thread stacks) is ~0.5 MiB
     * whatever the round count; a leak per round exceeds it within rounds */
    if (!UNDER_ASAN)
        EXPECT(rss_end <= rss_warm + rss_warm / 20 + 1024,
               "RSS %ld KiB after warm-up, %ld KiB at the end", rss_warm, rss_end);
    printf("soak: %d workers x %d rounds (%d fixtures, %d sessions each), %ld generate calls, "
           "%ld cancelled, %.1f s; RSS %ld -> %ld KiB; fds %d -> %d; threads %d -> %d%s\n",
           WORKERS, rounds, N_FIXTURES, SESSIONS, calls, cancelled, secs, rss_warm, rss_end, fds0,
           fds1, threads0, threads1, UNDER_ASAN ? " (ASan: RSS not checked)" : "");
    for (int i = 0; i < WORKERS; i++)
        pthread_mutex_destroy(&workers[i].lock);
    return test_summary();
}
