/* Batched decode (nmlx.h nmlx_batch_*): several sessions of one model
 * advance by one token each. Families with a forward_batch run the step as
 * one pass; the others evaluate the sessions one after another. On a device
 * backend (CUDA) only the standard families run there at all, and their
 * batched pass drives the backend through its ops alone (device buffers,
 * ids and logits through embed/download), so it runs there too. On backends
 * with an argmax op a session's logits row is not downloaded: the pass
 * copies it on the backend into the session's own row_dev and the session
 * samples it there (session_sample.c) or fetches it when read. */
#include "model.h"
#include "shared/layers.h"
#include "shared/standard_model.h"

#include <string.h>

enum { MAX_BATCH = 4096 };

struct nmlx_batch {
    nmlx_model *model;
    int max_batch;
    void *impl;     /* the family's work buffers; NULL = one session at a time */
    void **states;  /* [max_batch] */
    float **logits; /* [max_batch] */
    float **rows;   /* [max_batch] the sessions' row_dev (NULL: downloaded) */
};

void nmlx_batch_free(nmlx_batch *b) {
    if (!b) return;
    nmlx_model *m = b->model;
    nmlx_backend_enter(m->be);
    if (b->impl) m->family->batch_free(b->impl, m->be);
    nmlx_backend_leave(m->be);
    nmlx_free(b->states);
    nmlx_free(b->logits);
    nmlx_free(b->rows);
    nmlx_free(b);
    nmlx_model_unref(m);
}

nmlx_status nmlx_batch_create(nmlx_model *m, int max_batch, nmlx_batch **out) {
    nmlx_status st = NMLX_OK;
    nmlx_batch *b = NULL;
    CHECK(m && out, NMLX_ERR_INVALID_ARG, "nmlx_batch_create: model and out must not be NULL");
    *out = NULL;
    CHECK(max_batch >= 1 && max_batch <= MAX_BATCH, NMLX_ERR_INVALID_ARG,
          "nmlx_batch_create: max_batch must be in [1, %d] (got %d)", MAX_BATCH, max_batch);
    b = nmlx_calloc(1, sizeof *b);
    CHECK(b, NMLX_ERR_NOMEM, "out of memory creating a batch");
    atomic_fetch_add(&m->refs, 1);
    b->model = m;
    b->max_batch = max_batch;
    b->states = nmlx_calloc((size_t)max_batch, sizeof *b->states);
    b->logits = nmlx_calloc((size_t)max_batch, sizeof *b->logits);
    b->rows = nmlx_calloc((size_t)max_batch, sizeof *b->rows);
    CHECK(b->states && b->logits && b->rows, NMLX_ERR_NOMEM, "out of memory creating a batch");
    const nmlx_family *f = m->family;
    if (f->forward_batch) {
        nmlx_backend_enter(m->be);
        st = f->batch_create(m->arch, m->be, max_batch, &b->impl);
        nmlx_backend_leave(m->be);
        if (st != NMLX_OK) goto cleanup;
    }
    *out = b;
    b = NULL;
cleanup:
    nmlx_batch_free(b);
    return st;
}

/* Everything that can be checked before a step runs. */
static nmlx_status check_args(const nmlx_batch *b, nmlx_session *const *ss, const int32_t *ids,
                              size_t n) {
    if (!b || (n > 0 && (!ss || !ids)))
        return nmlx_fail(NMLX_ERR_INVALID_ARG,
                         "nmlx_batch_eval: batch, sessions and ids must not be NULL");
    if (n > (size_t)b->max_batch)
        return nmlx_fail(NMLX_ERR_INVALID_ARG,
                         "nmlx_batch_eval: %zu sessions, more than the batch's max_batch %d", n,
                         b->max_batch);
    int64_t V = b->model->info.vocab_size;
    for (size_t i = 0; i < n; i++) {
        const nmlx_session *s = ss[i];
        if (!s) return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_batch_eval: session %zu is NULL", i);
        if (s->model != b->model)
            return nmlx_fail(NMLX_ERR_INVALID_ARG,
                             "nmlx_batch_eval: session %zu belongs to another model", i);
        for (size_t j = 0; j < i; j++)
            if (ss[j] == s)
                return nmlx_fail(NMLX_ERR_INVALID_ARG,
                                 "nmlx_batch_eval: sessions %zu and %zu are the same session", j,
                                 i);
        if (ids[i] < 0 || ids[i] >= V)
            return nmlx_fail(NMLX_ERR_INVALID_ARG,
                             "nmlx_batch_eval: session %zu: token id %d is out of range [0, %lld)",
                             i, ids[i], (long long)V);
        if (s->n_history + 1 > (size_t)s->max_context)
            return nmlx_fail(NMLX_ERR_CONTEXT_OVERFLOW,
                             "nmlx_batch_eval: session %zu: context overflow (%zu tokens held, "
                             "context length %lld)",
                             i, s->n_history, (long long)s->max_context);
    }
    return NMLX_OK;
}

/* The bookkeeping of a one-token eval that went through the batched pass;
 * dev: its logits row left on the backend (NULL: downloaded to s->logits). */
static void commit(nmlx_session *s, int32_t id, const float *dev) {
    s->history[s->n_history++] = id;
    s->has_logits = true;
    s->logits_dev = dev;
    s->all_rows = 0;
}

/* The session's backend row for batched decode's logits (allocated once);
 * NULL where the backend cannot keep rows (no argmax: every reader wants
 * host logits) or the allocation failed (the row is downloaded then). */
static float *session_row(nmlx_session *s) {
    nmlx_backend *be = s->model->be;
    if (!be->ops->argmax) return NULL;
    if (!s->row_dev)
        s->row_dev = be->ops->alloc(be, (size_t)s->model->info.vocab_size * sizeof(float));
    return s->row_dev;
}

static nmlx_status batch_eval(nmlx_batch *b, nmlx_session *const *ss, const int32_t *ids, size_t n);

nmlx_status nmlx_batch_eval(nmlx_batch *b, nmlx_session *const *ss, const int32_t *ids, size_t n) {
    nmlx_status st = check_args(b, ss, ids, n);
    if (st != NMLX_OK || n == 0) return st;
    nmlx_backend_enter(b->model->be);
    st = batch_eval(b, ss, ids, n);
    nmlx_backend_leave(b->model->be);
    return st;
}

static nmlx_status batch_eval(nmlx_batch *b, nmlx_session *const *ss, const int32_t *ids,
                              size_t n) {
    nmlx_status st = NMLX_OK;
    for (size_t i = 0; i < n; i++) /* a pending token goes first, on its own */
        if ((st = nmlx_session_eval_tokens(ss[i], NULL, 0, 0)) != NMLX_OK) return st;
    nmlx_model *m = b->model;
    if (b->impl) {
        nmlx_backend *be = m->be;
        for (size_t i = 0; i < n; i++) {
            b->states[i] = ss[i]->state;
            b->logits[i] = ss[i]->logits;
            b->rows[i] = session_row(ss[i]);
            ss[i]->has_logits = false; /* overwritten by the pass */
            ss[i]->logits_dev = NULL;
        }
        /* the rows stay on the backend (layers.h nmlx_lm_head_scatter): a
         * greedy sample downloads one id, not the row (session_sample.c) */
        nmlx_logits_defer *d = nmlx_logits_defer_here(); /* this thread's */
        d->rows = b->rows;
        d->rows_copied = false;
        if (be->ops->decode_step) be->ops->decode_step(be, NMLX_DECODE_BATCH);
        st = m->family->forward_batch(m->arch, b->impl, b->states, be, ids, (int64_t)n, b->logits);
        if (be->ops->decode_step) be->ops->decode_step(be, NMLX_DECODE_END);
        bool copied = d->rows_copied;
        d->rows = NULL;
        d->rows_copied = false;
        if (st != NMLX_OK) return st;
        for (size_t i = 0; i < n; i++)
            commit(ss[i], ids[i], copied ? b->rows[i] : NULL);
        return NMLX_OK;
    }
    for (size_t i = 0; i < n; i++) {
        if ((st = nmlx_session_eval_tokens(ss[i], &ids[i], 1, 0)) == NMLX_OK) continue;
        for (size_t j = 0; j < i; j++)
            nmlx_session_trim(ss[j], 1); /* none has advanced */
        return st;
    }
    return NMLX_OK;
}
