/* The call lock of a backend whose calls share state (backend.h call_lock):
 * recursive, and first come, first served.
 *
 * Why not a plain mutex: a server's scheduler thread makes one library call
 * after another (a batched step, then a sample per sequence), letting go of
 * the lock for a few instructions in between. A plain mutex lets the
 * releasing thread take it straight back, so Node's JS thread, waiting to
 * create a session for a new request, waited through whole rounds with its
 * event loop frozen: requests were admitted one a round or worse, and the
 * batch never filled (nmlx serve on an H100, 8B 4-bit, 32 streams: ~16
 * sequences a step on average). Here each thread takes a ticket and the
 * lock serves tickets in order, so a waiter gets in after the call that
 * holds the lock now.
 *
 * NMLX_CALL_LOCK=barge (read once a lock) restores the plain behaviour: the
 * first thread to ask after a release gets in (for A/B runs). */
#include "common.h"
#include "compute/backend.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct nmlx_call_lock {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t next;    /* the next ticket handed out */
    uint64_t serving; /* the ticket whose turn it is */
    pthread_t owner;  /* valid while depth > 0 */
    int depth;        /* 0: free; else the owner's nesting */
    int waiters;      /* threads in enter, not yet owners */
    bool barge;       /* NMLX_CALL_LOCK=barge: no tickets */
};

nmlx_status nmlx_backend_make_serial(nmlx_backend *be) {
    if (be->call_lock) return NMLX_OK;
    struct nmlx_call_lock *l = nmlx_malloc(sizeof *l);
    if (!l) return nmlx_fail(NMLX_ERR_NOMEM, "backend: out of memory for its call lock");
    memset(l, 0, sizeof *l);
    if (pthread_mutex_init(&l->mu, NULL) != 0) {
        nmlx_free(l);
        return nmlx_fail(NMLX_ERR_INTERNAL, "backend: cannot create its call lock");
    }
    if (pthread_cond_init(&l->cv, NULL) != 0) {
        pthread_mutex_destroy(&l->mu);
        nmlx_free(l);
        return nmlx_fail(NMLX_ERR_INTERNAL, "backend: cannot create its call lock");
    }
    const char *e = getenv("NMLX_CALL_LOCK");
    l->barge = e && strcmp(e, "barge") == 0;
    be->call_lock = l;
    return NMLX_OK;
}

void nmlx_backend_drop_serial(nmlx_backend *be) {
    struct nmlx_call_lock *l = be->call_lock;
    if (!l) return;
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    nmlx_free(l);
    be->call_lock = NULL;
}

void nmlx_backend_enter(nmlx_backend *be) {
    struct nmlx_call_lock *l = be ? be->call_lock : NULL;
    if (!l) return;
    const pthread_t self = pthread_self();
    pthread_mutex_lock(&l->mu);
    if (l->depth > 0 && pthread_equal(l->owner, self)) {
        l->depth++; /* nested: nmlx_generate calls eval */
        pthread_mutex_unlock(&l->mu);
        return;
    }
    l->waiters++;
    if (l->barge) {
        while (l->depth > 0)
            pthread_cond_wait(&l->cv, &l->mu);
    } else {
        const uint64_t ticket = l->next++;
        while (ticket != l->serving)
            pthread_cond_wait(&l->cv, &l->mu);
    }
    l->waiters--;
    l->owner = self;
    l->depth = 1;
    pthread_mutex_unlock(&l->mu);
    if (be->ops && be->ops->bind_thread) be->ops->bind_thread(be);
}

void nmlx_backend_leave(nmlx_backend *be) {
    struct nmlx_call_lock *l = be ? be->call_lock : NULL;
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    if (--l->depth == 0) {
        if (!l->barge) l->serving++;
        /* every waiter checks its ticket (two or three threads, in practice) */
        pthread_cond_broadcast(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
}

bool nmlx_backend_contended(nmlx_backend *be) {
    struct nmlx_call_lock *l = be ? be->call_lock : NULL;
    if (!l) return false;
    pthread_mutex_lock(&l->mu);
    const bool r = l->waiters > 0;
    pthread_mutex_unlock(&l->mu);
    return r;
}
