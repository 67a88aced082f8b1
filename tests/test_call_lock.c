/* The backend call lock (src/compute/backend_lock.c): mutual exclusion
 * under contention with nested entries, and first come, first served: a
 * thread that waits gets in before the holder, which lets go and asks again
 * at once (a server's scheduler thread between two calls). A plain mutex
 * fails the second check most of the time. */
#define _POSIX_C_SOURCE 200809L
#include "compute/backend.h"
#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

enum { THREADS = 4, ROUNDS = 20000, HANDOFFS = 200 };

static nmlx_backend be;
static long counter;          /* plain: only the lock protects it */
static atomic_int inside;     /* threads between enter and leave */
static atomic_int overlapped; /* times two were */

static void *hammer(void *arg) {
    (void)arg;
    for (int i = 0; i < ROUNDS; i++) {
        nmlx_backend_enter(&be);
        if (atomic_fetch_add(&inside, 1) != 0) atomic_fetch_add(&overlapped, 1);
        nmlx_backend_enter(&be); /* nested, as nmlx_generate's eval */
        counter++;
        nmlx_backend_leave(&be);
        atomic_fetch_sub(&inside, 1);
        nmlx_backend_leave(&be);
    }
    return NULL;
}

/* the handoff: the waiter records its turn, the holder its re-entry */
static atomic_int order_pos;
static int waiter_at[HANDOFFS], holder_at[HANDOFFS];
static atomic_int round_go;

static void *waiter(void *arg) {
    (void)arg;
    for (int r = 0; r < HANDOFFS; r++) {
        while (atomic_load(&round_go) != r + 1) /* the holder has the lock */
            sched_yield();
        nmlx_backend_enter(&be);
        waiter_at[r] = atomic_fetch_add(&order_pos, 1);
        nmlx_backend_leave(&be);
    }
    return NULL;
}

int main(void) {
    memset(&be, 0, sizeof be);
    EXPECT(nmlx_backend_make_serial(&be) == NMLX_OK, "make_serial");
    EXPECT(be.call_lock != NULL, "a lock");
    EXPECT(nmlx_backend_make_serial(&be) == NMLX_OK, "make_serial twice is a no-op");
    EXPECT(!nmlx_backend_contended(&be), "nobody waits at first");

    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&th[i], NULL, hammer, NULL);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    EXPECT(atomic_load(&overlapped) == 0, "never two threads inside (%d overlaps)",
           atomic_load(&overlapped));
    EXPECT(counter == (long)THREADS * ROUNDS, "every increment kept: %ld of %ld", counter,
           (long)THREADS * ROUNDS);

    pthread_t w;
    pthread_create(&w, NULL, waiter, NULL);
    int fifo = 0;
    for (int r = 0; r < HANDOFFS; r++) {
        nmlx_backend_enter(&be);
        atomic_store(&round_go, r + 1);
        /* hold until the waiter queues (bounded: 2 s) */
        struct timespec t0, t;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        do {
            clock_gettime(CLOCK_MONOTONIC, &t);
        } while (!nmlx_backend_contended(&be) && t.tv_sec - t0.tv_sec < 2);
        EXPECT(nmlx_backend_contended(&be), "round %d: the waiter queued", r);
        nmlx_backend_leave(&be);
        nmlx_backend_enter(&be); /* straight back, as a scheduler's next call */
        holder_at[r] = atomic_fetch_add(&order_pos, 1);
        nmlx_backend_leave(&be);
        while (atomic_load(&order_pos) < 2 * (r + 1)) /* the waiter's turn done */
            sched_yield();
        fifo += waiter_at[r] < holder_at[r];
    }
    pthread_join(w, NULL);
    EXPECT(fifo == HANDOFFS, "the waiter went first in %d of %d handoffs", fifo, HANDOFFS);

    nmlx_backend_drop_serial(&be);
    EXPECT(be.call_lock == NULL, "dropped");
    nmlx_backend_drop_serial(&be); /* safe twice */
    nmlx_backend_enter(&be);       /* no lock: no-ops */
    nmlx_backend_leave(&be);
    EXPECT(!nmlx_backend_contended(&be), "no lock, no waiters");
    return test_summary();
}
