/* Sessions: one conversation's caches, logits, token history and sampler. */
#define _POSIX_C_SOURCE 200809L
#include "model.h"
#include "shared/layers.h"
#include "shared/sampling.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

nmlx_session_params nmlx_session_default_params(void) {
    return (nmlx_session_params){.max_context = 0,
                                 .kv_bits = 0,
                                 .kv_group_size = 64,
                                 .quantized_kv_start = 0,
                                 .kv_dtype = NULL};
}

void nmlx_session_free(nmlx_session *s) {
    if (!s) return;
    nmlx_model *m = s->model;
    nmlx_backend_enter(m->be);
    if (s->state) m->family->state_free(s->state, m->be);
    if (s->row_dev) m->be->ops->free(m->be, s->row_dev);
    nmlx_kv_dequant_free(&s->kv_deq, m->be);
    nmlx_sampler_free(&s->sampler);
    nmlx_detokenizer_free(s->detok);
    nmlx_free(s->logits);
    nmlx_free(s->all_logits);
    nmlx_free(s->history);
    nmlx_free(s->text);
    nmlx_free(s);
    nmlx_backend_leave(m->be);
    nmlx_model_unref(m); /* may free the backend: after leaving it */
}

/* kv_bits: every layer cache of the state is asked to quantize. */
static nmlx_status setup_kv_quant(nmlx_session *s, const nmlx_session_params *p) {
    const nmlx_family *f = s->model->family;
    if (!f->state_caches)
        return nmlx_fail(NMLX_ERR_UNSUPPORTED, "kv_bits: the %s family has no quantized KV cache",
                         f->name);
    nmlx_kv_quant_params qp = {.bits = p->kv_bits,
                               .group_size = p->kv_group_size ? p->kv_group_size : 64,
                               .start = p->quantized_kv_start};
    /* bits, group and start now (head_dim per layer below), so a bad value
     * fails even when every layer has a rotating cache */
    nmlx_status st = nmlx_kv_quant_check(&qp, qp.group_size);
    if (st != NMLX_OK) return st;
    int64_t n = 0;
    nmlx_layer_cache *caches = f->state_caches(s->state, &n);
    for (int64_t i = 0; i < n; i++) {
        if ((st = nmlx_layer_cache_set_quant(&caches[i], &qp, &s->kv_deq)) != NMLX_OK) return st;
    }
    return NMLX_OK;
}

/* kv_dtype: the standard caches of the state store keys/values in it. */
static nmlx_status setup_kv_dtype(nmlx_session *s, const nmlx_session_params *p) {
    nmlx_model *m = s->model;
    const char *want = p->kv_dtype;
    bool auto_pick = !want || !*want || !strcmp(want, "auto");
    nmlx_dtype dt;
    if (auto_pick)
        dt = m->half_dtype == NMLX_DT_F32 ? NMLX_DT_F32 : NMLX_DT_F16;
    else if (!strcmp(want, "f32"))
        dt = NMLX_DT_F32;
    else if (!strcmp(want, "f16"))
        dt = NMLX_DT_F16;
    else if (!strcmp(want, "bf16"))
        dt = NMLX_DT_BF16;
    else
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "kv_dtype '%s' is not one of auto, f32, f16, bf16",
                         want);
    if (dt == NMLX_DT_F32 || p->kv_bits) return NMLX_OK; /* a quantized cache starts f32 */
    const nmlx_family *f = m->family;
    if (!nmlx_backend_is_host(m->be) || !f->state_caches) {
        if (auto_pick) return NMLX_OK;
        return nmlx_fail(NMLX_ERR_UNSUPPORTED,
                         "kv_dtype %s: half-precision KV caches run on the CPU backend with the "
                         "standard families only (backend '%s', family %s)",
                         want, m->be->ops->name, f->name);
    }
    int64_t n = 0;
    nmlx_layer_cache *caches = f->state_caches(s->state, &n);
    for (int64_t i = 0; i < n; i++)
        nmlx_layer_cache_set_dtype(&caches[i], dt);
    return NMLX_OK;
}

/* Physical memory of the machine in bytes (0 if unknown). A test hook
 * (NMLX_TEST_MEMORY_BYTES) stands in for it so the check can be tested. */
static uint64_t machine_memory(void) {
    const char *fake = getenv("NMLX_TEST_MEMORY_BYTES");
    if (fake && *fake) return strtoull(fake, NULL, 10);
    long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size : 0;
}

nmlx_status nmlx_context_fits(const nmlx_model *m, int64_t ctx, const char *what) {
    const nmlx_arch_info *in = &m->info;
    int64_t window_ctx = in->kv_window > 0 && in->kv_window < ctx ? in->kv_window : ctx;
    /* KV cache at full context + history + attention scratch per thread;
     * long double: the product of hostile values cannot wrap */
    long double need =
        (long double)ctx * (long double)in->kv_full_bytes_per_token +
        (long double)window_ctx * (long double)in->kv_sliding_bytes_per_token +
        (long double)ctx * (sizeof(int32_t) + sizeof(float) * (size_t)m->be->n_threads);
    uint64_t have = machine_memory();
    if (have == 0 || need <= (long double)have) return NMLX_OK;
    return nmlx_fail(NMLX_ERR_NOMEM,
                     "%s: a context of %lld tokens needs %.0Lf bytes (%.1Lf GiB) of KV cache and "
                     "buffers, more than the %llu bytes (%.1f GiB) of memory this machine has; "
                     "ask for a smaller max_context",
                     what, (long long)ctx, need, need / (1024.0L * 1024 * 1024),
                     (unsigned long long)have, (double)have / (1024.0 * 1024 * 1024));
}

nmlx_status nmlx_session_create(nmlx_model *m, const nmlx_session_params *params,
                                nmlx_session **out) {
    nmlx_status st = NMLX_OK;
    nmlx_session *s = NULL;
    bool entered = false;
    CHECK(m && out, NMLX_ERR_INVALID_ARG, "nmlx_session_create: model and out must not be NULL");
    *out = NULL;
    nmlx_session_params p = params ? *params : nmlx_session_default_params();
    CHECK(p.max_context >= 0, NMLX_ERR_INVALID_ARG, "max_context must be >= 0 (got %d)",
          p.max_context);
    nmlx_backend_enter(m->be); /* state_create allocates on it */
    entered = true;
    s = nmlx_calloc(1, sizeof *s);
    CHECK(s, NMLX_ERR_NOMEM, "out of memory creating a session");
    atomic_fetch_add(&m->refs, 1);
    s->model = m;
    s->pending = -1;
    atomic_init(&s->cancel, false);
    s->max_context = p.max_context > 0 ? p.max_context : m->max_context;
    TRY(nmlx_context_fits(m, s->max_context, "nmlx_session_create"));
    int64_t V = m->info.vocab_size;
    s->logits = nmlx_malloc((size_t)V * sizeof(float));
    s->history = nmlx_malloc((size_t)s->max_context * sizeof(int32_t));
    CHECK(s->logits && s->history, NMLX_ERR_NOMEM, "out of memory creating a session");
    TRY(nmlx_sampler_init(&s->sampler, V));
    TRY(m->family->state_create(m->arch, m->be, s->max_context, &s->state));
    if (p.kv_bits) TRY(setup_kv_quant(s, &p));
    TRY(setup_kv_dtype(s, &p));
    if (m->tok) TRY(nmlx_detokenizer_create(m->tok, 1, &s->detok));
    *out = s;
    s = NULL;
cleanup:
    nmlx_session_free(s);
    if (entered) nmlx_backend_leave(m->be);
    return st;
}

/* Evaluates ids after any pending token; keeps all rows' logits if asked. */
nmlx_status nmlx_session_eval_tokens(nmlx_session *s, const int32_t *ids, size_t n,
                                     int all_logits) {
    nmlx_model *m = s->model;
    int64_t V = m->info.vocab_size;
    nmlx_status st = NMLX_OK;
    if (s->pending >= 0) {
        int32_t id = s->pending;
        s->pending = -1;
        s->n_history--; /* counted already; re-added below */
        st = nmlx_session_eval_tokens(s, &id, 1, 0);
        if (st != NMLX_OK) {
            s->pending = id;
            s->n_history++;
            return st;
        }
    }
    if (n == 0) return NMLX_OK;
    if (s->n_history + n > (size_t)s->max_context)
        return nmlx_fail(NMLX_ERR_CONTEXT_OVERFLOW,
                         "context overflow: %zu tokens held + %zu new > context length %lld",
                         s->n_history, n, (long long)s->max_context);
    float *rows = NULL;
    if (all_logits) {
        if (n > s->all_cap) {
            float *grown = nmlx_realloc(s->all_logits, n * (size_t)V * sizeof(float));
            if (!grown) return nmlx_fail(NMLX_ERR_NOMEM, "out of memory for %zu rows of logits", n);
            s->all_logits = grown;
            s->all_cap = n;
        }
        rows = s->all_logits;
    }
    s->has_logits = false;
    s->logits_dev = NULL;
    s->all_rows = 0;
    const bool step = n == 1 && m->be->ops->decode_step;
    if (step) m->be->ops->decode_step(m->be, NMLX_DECODE_ONE);
    st = m->family->forward(m->arch, s->state, m->be, ids, (int64_t)n, s->logits, rows, &s->cancel);
    if (step) m->be->ops->decode_step(m->be, NMLX_DECODE_END);
    if (st != NMLX_OK) return st;
    memcpy(s->history + s->n_history, ids, n * sizeof(int32_t));
    s->n_history += n;
    s->has_logits = true;
    if (all_logits) s->all_rows = n;
    return NMLX_OK;
}

nmlx_status nmlx_session_eval(nmlx_session *s, const int32_t *ids, size_t n, int all_logits) {
    if (!s || (n > 0 && !ids))
        return nmlx_fail(NMLX_ERR_INVALID_ARG,
                         "nmlx_session_eval: session and ids must not be NULL");
    atomic_store(&s->cancel, false);
    nmlx_backend_enter(s->model->be);
    nmlx_status st = nmlx_session_eval_tokens(s, ids, n, all_logits);
    nmlx_backend_leave(s->model->be);
    return st;
}

nmlx_status nmlx_session_eval_pending_kept(nmlx_session *s) {
    nmlx_backend *be = s->model->be;
    if (!be->ops->argmax || s->pending < 0) return nmlx_session_eval_tokens(s, NULL, 0, 0);
    nmlx_logits_defer *d = nmlx_logits_defer_here(); /* this thread's: layers.h */
    d->on = true;
    d->dev = NULL;
    nmlx_status st = nmlx_session_eval_tokens(s, NULL, 0, 0);
    d->on = false;
    const float *dev = d->dev;
    d->dev = NULL;
    if (st != NMLX_OK || !dev) return st;
    if (d->host != s->logits || d->vocab != s->model->info.vocab_size ||
        d->softcap > 0) { /* not the plain row argmax can read: download it */
        nmlx_lm_head_download(be, dev, d->vocab, d->softcap, d->host);
        return NMLX_OK;
    }
    s->logits_dev = dev;
    return NMLX_OK;
}

const float *nmlx_session_logits(const nmlx_session *s) {
    if (!s || !s->has_logits) return NULL;
    /* logically const: logits a greedy generation left on the backend are
     * fetched on first read (sessions are never const objects: nmlx makes them) */
    nmlx_backend_enter(s->model->be);
    nmlx_session_fetch_logits((nmlx_session *)s);
    nmlx_backend_leave(s->model->be);
    return s->logits;
}

const float *nmlx_session_all_logits(const nmlx_session *s, size_t *n_rows) {
    if (n_rows) *n_rows = s ? s->all_rows : 0;
    return s && s->all_rows ? s->all_logits : NULL;
}

size_t nmlx_session_position(const nmlx_session *s) { return s ? s->n_history : 0; }

nmlx_status nmlx_session_trim(nmlx_session *s, size_t n) {
    if (!s) return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_session_trim: session is NULL");
    if (n > s->n_history)
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "cannot trim %zu tokens: the session holds %zu", n,
                         s->n_history);
    if (n == 0) return NMLX_OK;
    if (s->pending >= 0) { /* the pending token is the newest and not in the cache */
        s->pending = -1;
        s->n_history--;
        n--;
    }
    nmlx_backend_enter(s->model->be);
    s->model->family->state_trim(s->state, (int64_t)n);
    nmlx_backend_leave(s->model->be);
    s->n_history -= n;
    s->has_logits = false;
    s->logits_dev = NULL;
    s->all_rows = 0;
    return NMLX_OK;
}

void nmlx_session_reset(nmlx_session *s) {
    if (!s) return;
    s->pending = -1;
    nmlx_backend_enter(s->model->be);
    s->model->family->state_trim(s->state, s->model->family->state_position(s->state));
    nmlx_backend_leave(s->model->be);
    s->n_history = 0;
    s->has_logits = false;
    s->logits_dev = NULL;
    s->all_rows = 0;
    if (s->detok) nmlx_detokenizer_reset(s->detok);
}

void nmlx_session_cancel(nmlx_session *s) {
    if (s) atomic_store(&s->cancel, true);
}

void nmlx_session_seed(nmlx_session *s, uint64_t seed) {
    if (s) nmlx_sampler_seed(&s->sampler, seed);
}
