/* Persistent worker pool. Jobs are published by bumping a generation
 * counter; workers spin briefly on it (decode issues hundreds of small ops
 * per token, so most jobs arrive while workers are still spinning) and then
 * sleep on a condvar. The caller runs share 0 itself. Every worker takes part
 * in every job's completion count (those with ith >= nth just check in), so
 * a worker can never mistake one job's fields for the next one's. */
#define _POSIX_C_SOURCE 200809L
#include "compute/threadpool.h"

#include "common.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

/* ~150 us of spinning (pause is ~30 ns on Zen, plus a yield every 64
 * steps): a worker that finished its share of a decode op (tens of us) is
 * still awake for the next one; a futex wake-up in a VM costs more. */
enum { SPIN_ITERS = 4096 };

struct nmlx_pool {
    int n;                 /* threads including the caller */
    pthread_t *threads;    /* n - 1 workers */
    struct worker_arg *args;
    pthread_mutex_t run_mu; /* serialises nmlx_pool_run callers */
    pthread_mutex_t mu;     /* guards sleeping on the condvars */
    pthread_cond_t work_cv, done_cv;
    atomic_uint gen;        /* bumped once per job (and at shutdown) */
    atomic_int pending;     /* workers that have not finished this job */
    atomic_bool stop;
    nmlx_pool_fn fn;
    void *ctx;
    int nth;
};

struct worker_arg {
    nmlx_pool *pool;
    int ith;
};

/* One spin step. Every 64th step yields the CPU: if the scheduler has put
 * the thread we wait for on our core (it does, right after wake-ups), pure
 * spinning would only delay it. */
static inline void cpu_relax(int i) {
    if ((i & 63) == 63) {
        sched_yield();
        return;
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static unsigned wait_new_gen(nmlx_pool *p, unsigned seen) {
    for (int i = 0; i < SPIN_ITERS; i++) {
        unsigned g = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (g != seen) return g;
        cpu_relax(i);
    }
    pthread_mutex_lock(&p->mu);
    unsigned g;
    while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen)
        pthread_cond_wait(&p->work_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    return g;
}

static void *worker_main(void *argp) {
    struct worker_arg *arg = argp;
    nmlx_pool *p = arg->pool;
    unsigned seen = 0;
    for (;;) {
        seen = wait_new_gen(p, seen);
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) break;
        if (arg->ith < p->nth) p->fn(p->ctx, arg->ith, p->nth);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

static void stop_workers(nmlx_pool *p, int started) {
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    atomic_fetch_add(&p->gen, 1);
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < started; i++) pthread_join(p->threads[i], NULL);
}

static void destroy(nmlx_pool *p) {
    pthread_mutex_destroy(&p->run_mu);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->work_cv);
    pthread_cond_destroy(&p->done_cv);
    nmlx_free(p->threads);
    nmlx_free(p->args);
    nmlx_free(p);
}

nmlx_pool *nmlx_pool_create(int n_threads) {
    if (n_threads < 1) {
        nmlx_fail(NMLX_ERR_INVALID_ARG, "thread pool: n_threads must be >= 1 (got %d)", n_threads);
        return NULL;
    }
    nmlx_pool *p = nmlx_calloc(1, sizeof *p);
    pthread_t *threads = nmlx_calloc((size_t)n_threads, sizeof *threads);
    struct worker_arg *args = nmlx_calloc((size_t)n_threads, sizeof *args);
    if (!p || !threads || !args) {
        nmlx_free(p);
        nmlx_free(threads);
        nmlx_free(args);
        nmlx_fail(NMLX_ERR_NOMEM, "thread pool: out of memory for %d threads", n_threads);
        return NULL;
    }
    p->n = n_threads;
    p->threads = threads;
    p->args = args;
    pthread_mutex_init(&p->run_mu, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work_cv, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->stop, false);
    for (int i = 0; i < n_threads - 1; i++) {
        p->args[i].pool = p;
        p->args[i].ith = i + 1;
        int rc = pthread_create(&p->threads[i], NULL, worker_main, &p->args[i]);
        if (rc != 0) {
            stop_workers(p, i);
            destroy(p);
            nmlx_fail(NMLX_ERR_INTERNAL, "thread pool: cannot start worker %d of %d: %s", i + 1,
                      n_threads, strerror(rc));
            return NULL;
        }
    }
    return p;
}

void nmlx_pool_free(nmlx_pool *pool) {
    if (!pool) return;
    stop_workers(pool, pool->n - 1);
    destroy(pool);
}

int nmlx_pool_size(const nmlx_pool *pool) { return pool->n; }

void nmlx_pool_run(nmlx_pool *pool, nmlx_pool_fn fn, void *ctx) {
    nmlx_pool_run_n(pool, fn, ctx, pool->n);
}

void nmlx_pool_run_n(nmlx_pool *pool, nmlx_pool_fn fn, void *ctx, int nth) {
    if (nth > pool->n) nth = pool->n;
    if (nth <= 1) { /* nothing shared is touched: no need to wake or lock */
        fn(ctx, 0, 1);
        return;
    }
    nmlx_pool *p = pool;
    pthread_mutex_lock(&p->run_mu);
    p->fn = fn;
    p->ctx = ctx;
    p->nth = nth;
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);

    fn(ctx, 0, nth);

    int spins = 0;
    while (atomic_load_explicit(&p->pending, memory_order_acquire) != 0 && spins < SPIN_ITERS) {
        cpu_relax(spins);
        spins++;
    }
    if (atomic_load_explicit(&p->pending, memory_order_acquire) != 0) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load_explicit(&p->pending, memory_order_acquire) != 0)
            pthread_cond_wait(&p->done_cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_unlock(&p->run_mu);
}
