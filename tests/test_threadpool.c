/* Thread pool: each of nth threads runs every job exactly once with the
 * right (ith, nth); results written by workers are visible on return; many
 * jobs in a row; run_n lowers the thread count; concurrent callers are
 * serialised (no two jobs ever overlap). */
#define _POSIX_C_SOURCE 200809L
#include "common.h"
#include "compute/threadpool.h"
#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

enum { MAXT = 8, SLOTS = 64 };

typedef struct {
    atomic_int calls[MAXT];
    atomic_int bad_nth;
    int nth_expected;
    int out[MAXT * SLOTS]; /* plain writes: visibility checked by the caller */
    int seq;
} count_job;

static void count_fn(void *ctx, int ith, int nth) {
    count_job *j = ctx;
    if (nth != j->nth_expected || ith < 0 || ith >= nth) atomic_fetch_add(&j->bad_nth, 1);
    if (ith >= 0 && ith < MAXT) {
        atomic_fetch_add(&j->calls[ith], 1);
        for (int s = 0; s < SLOTS; s++) j->out[ith * SLOTS + s] = j->seq * 1000 + ith;
    }
}

static void test_counts(int size) {
    nmlx_pool *p = nmlx_pool_create(size);
    EXPECT(p != NULL, "create %d: %s", size, nmlx_last_error());
    if (!p) return;
    EXPECT(nmlx_pool_size(p) == size, "size");
    static count_job j;
    int wrong_out = 0;
    const int jobs = 5000;
    for (int it = 0; it < jobs; it++) {
        int nth = (it % 3 == 0) ? size : 1 + it % size; /* mix run and run_n */
        memset(&j, 0, sizeof j);
        j.nth_expected = nth;
        j.seq = it;
        if (nth == size && it % 2 == 0)
            nmlx_pool_run(p, count_fn, &j);
        else
            nmlx_pool_run_n(p, count_fn, &j, nth);
        for (int t = 0; t < MAXT; t++) {
            int want = t < nth ? 1 : 0;
            if (atomic_load(&j.calls[t]) != want) wrong_out++;
        }
        for (int t = 0; t < nth; t++)
            for (int s = 0; s < SLOTS; s++) wrong_out += j.out[t * SLOTS + s] != it * 1000 + t;
        wrong_out += atomic_load(&j.bad_nth);
    }
    EXPECT(wrong_out == 0, "pool %d: %d wrong counts/results over %d jobs", size, wrong_out, jobs);
    /* nth above the size is clamped */
    memset(&j, 0, sizeof j);
    j.nth_expected = size;
    nmlx_pool_run_n(p, count_fn, &j, size + 5);
    EXPECT(atomic_load(&j.bad_nth) == 0 && atomic_load(&j.calls[size - 1]) == 1, "clamp nth");
    nmlx_pool_free(p);
}

/* ---- concurrent callers ---- */

static _Atomic(void *) owner;
static atomic_int overlaps;

typedef struct {
    atomic_int left; /* threads of this job still running */
    atomic_int hits;
} owned_job;

static void owned_fn(void *ctx, int ith, int nth) {
    owned_job *j = ctx;
    (void)ith, (void)nth;
    void *expect = NULL;
    if (!atomic_compare_exchange_strong(&owner, &expect, j) && expect != j)
        atomic_fetch_add(&overlaps, 1);
    for (volatile int i = 0; i < 200; i++) {
    }
    atomic_fetch_add(&j->hits, 1);
    if (atomic_fetch_sub(&j->left, 1) == 1) atomic_store(&owner, NULL);
}

typedef struct {
    nmlx_pool *p;
    int bad;
} caller_arg;

static void *caller_main(void *argp) {
    caller_arg *a = argp;
    int n = nmlx_pool_size(a->p);
    for (int it = 0; it < 2000; it++) {
        owned_job j;
        atomic_init(&j.left, n);
        atomic_init(&j.hits, 0);
        nmlx_pool_run(a->p, owned_fn, &j);
        if (atomic_load(&j.hits) != n) a->bad++;
    }
    return NULL;
}

static void test_concurrent_callers(void) {
    nmlx_pool *p = nmlx_pool_create(3);
    EXPECT(p != NULL, "create");
    if (!p) return;
    pthread_t th[4];
    caller_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (caller_arg){p, 0};
        pthread_create(&th[i], NULL, caller_main, &args[i]);
    }
    int bad = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        bad += args[i].bad;
    }
    EXPECT(bad == 0, "%d jobs missed threads", bad);
    EXPECT(atomic_load(&overlaps) == 0, "%d overlapping jobs from concurrent callers",
           atomic_load(&overlaps));
    nmlx_pool_free(p);
}

static void test_errors(void) {
    EXPECT(nmlx_pool_create(0) == NULL, "0 threads refused");
    EXPECT(strstr(nmlx_last_error(), "n_threads") != NULL, "message: %s", nmlx_last_error());
    for (long n = 1; n <= 3; n++) {
        nmlx_test_fail_alloc_after(n);
        nmlx_pool *p = nmlx_pool_create(2);
        nmlx_test_fail_alloc_after(0);
        EXPECT(p == NULL, "allocation %ld failure reported", n);
        nmlx_pool_free(p);
    }
    nmlx_pool_free(NULL);
    /* create/free repeatedly: clean shutdown, including idle sleeping workers */
    for (int i = 0; i < 20; i++) {
        nmlx_pool *p = nmlx_pool_create(1 + i % 4);
        EXPECT(p != NULL, "create again");
        nmlx_pool_free(p);
    }
}

int main(void) {
    const int sizes[] = {1, 2, 3, 5};
    for (int i = 0; i < 4; i++) test_counts(sizes[i]);
    test_concurrent_callers();
    test_errors();
    return test_summary();
}
