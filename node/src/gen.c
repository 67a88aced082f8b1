/* Sessions and generation. Each generate() call runs nmlx_generate on its own
 * pthread; tokens reach JS through one thread-safe function. The worker
 * coalesces pieces: it appends to a mutex-guarded outbox and schedules a JS
 * call only if none is pending, so a slow event loop gets batches, never a
 * backlog. Stop strings are matched here, on the worker, so generation stops
 * at the token that completes one and text that may begin a stop string is
 * held back until it cannot. */
#define _GNU_SOURCE /* memmem */
#include "job.h"

#include <stdio.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <stdlib.h>
#include <string.h>

static bool buf_add(buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *g = realloc(b->p, cap);
        if (!g) return false;
        b->p = g;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return true;
}

/* ---- session externals ------------------------------------------------ */

static void session_finalize(napi_env env, void *data, void *hint) {
    addon_session *s = data;
    nmlx_session_free(s->session); /* never busy here: a job holds a reference */
    free(s);
}

bool addon_get_session(napi_env env, napi_value v, addon_session **out) {
    void *p = NULL;
    napi_valuetype t;
    if (napi_typeof(env, v, &t) != napi_ok || t != napi_external ||
        napi_get_value_external(env, v, &p) != napi_ok || !p) {
        addon_throw(env, "NMLX_ERR_INVALID_ARG", "expected a session handle");
        return false;
    }
    *out = p;
    if (!(*out)->session || (*out)->free_when_idle) {
        addon_throw(env, "NMLX_ERR_UNLOADED", "the session has been freed");
        return false;
    }
    return true;
}

/* createSession(model, maxContext) -> handle */
napi_value addon_create_session(napi_env env, napi_callback_info info) {
    size_t argc = 2;
    napi_value argv[2], ext;
    addon_model *m;
    int32_t max_ctx = 0;
    NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 2 || !addon_get_model(env, argv[0], &m)) return NULL;
    if (napi_get_value_int32(env, argv[1], &max_ctx) != napi_ok)
        return addon_throw(env, "NMLX_ERR_INVALID_ARG", "createSession: bad contextLength");
    addon_session *s = calloc(1, sizeof *s);
    if (!s) return addon_throw(env, "NMLX_ERR_NOMEM", "out of memory");
    nmlx_session_params sp = nmlx_session_default_params();
    sp.max_context = max_ctx;
    s->max_context = max_ctx > 0 ? max_ctx : nmlx_model_max_context(m->model);
    s->model = m->model;
    s->tok = nmlx_model_tokenizer(m->model);
    nmlx_status st = nmlx_session_create(m->model, &sp, &s->session);
    if (st != NMLX_OK) {
        free(s);
        return addon_throw_status(env, st);
    }
    if (napi_create_external(env, s, session_finalize, NULL, &ext) != napi_ok) {
        nmlx_session_free(s->session);
        free(s);
        return addon_throw(env, "NMLX_ERR_NOMEM", "out of memory");
    }
    return ext;
}

static bool one_session_arg(napi_env env, napi_callback_info info, addon_session **s, size_t want,
                            napi_value *extra) {
    size_t argc = 2;
    napi_value argv[2];
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) {
        addon_throw(env, "NMLX_ERR_INVALID_ARG", "missing arguments");
        return false;
    }
    if (extra) *extra = argv[1];
    return addon_get_session(env, argv[0], s);
}

/* freeSession(handle): now if idle, else cancels and frees when the job ends.
 * Safe to repeat. */
napi_value addon_free_session(napi_env env, napi_callback_info info) {
    size_t argc = 1;
    napi_value argv[1];
    void *p = NULL;
    NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 1 || napi_get_value_external(env, argv[0], &p) != napi_ok || !p)
        return addon_throw(env, "NMLX_ERR_INVALID_ARG", "expected a session handle");
    addon_session *s = p;
    if (s->job) {
        s->free_when_idle = true;
        atomic_store(&s->job->abort, true);
        nmlx_session_cancel(s->session);
    } else {
        nmlx_session_free(s->session);
        s->session = NULL;
    }
    return NULL;
}

static bool idle_session(napi_env env, addon_session *s) {
    if (s->job) addon_throw(env, "NMLX_ERR_BUSY", "the session is generating");
    return !s->job;
}

napi_value addon_session_position(napi_env env, napi_callback_info info) {
    addon_session *s;
    napi_value v;
    if (!one_session_arg(env, info, &s, 1, NULL)) return NULL;
    napi_create_double(env, (double)nmlx_session_position(s->session), &v);
    return v;
}

napi_value addon_session_trim(napi_env env, napi_callback_info info) {
    addon_session *s;
    napi_value jn;
    int64_t n = 0;
    if (!one_session_arg(env, info, &s, 2, &jn) || !idle_session(env, s)) return NULL;
    if (napi_get_value_int64(env, jn, &n) != napi_ok || n < 0)
        return addon_throw(env, "NMLX_ERR_INVALID_ARG", "sessionTrim: n must be >= 0");
    nmlx_status st = nmlx_session_trim(s->session, (size_t)n);
    return st == NMLX_OK ? NULL : addon_throw_status(env, st);
}

napi_value addon_session_reset(napi_env env, napi_callback_info info) {
    addon_session *s;
    if (!one_session_arg(env, info, &s, 1, NULL) || !idle_session(env, s)) return NULL;
    nmlx_session_reset(s->session);
    return NULL;
}

/* sessionCancel(handle): stops the running generation (finish "abort"). */
napi_value addon_session_cancel(napi_env env, napi_callback_info info) {
    addon_session *s;
    if (!one_session_arg(env, info, &s, 1, NULL)) return NULL;
    if (s->job) {
        atomic_store(&s->job->abort, true);
        nmlx_session_cancel(s->session);
    }
    return NULL;
}

/* ---- the worker ------------------------------------------------------- */

/* Length of the longest suffix of `text` that is a proper prefix of a stop
 * string: that much must be held back. */
static size_t partial_stop_len(const gen_job *j, const char *text, size_t len) {
    size_t keep = 0;
    for (size_t i = 0; i < j->n_stops; i++) {
        size_t sl = j->stop_lens[i];
        size_t max = sl - 1 < len ? sl - 1 : len;
        for (size_t k = max; k > keep; k--)
            if (!memcmp(text + len - k, j->stops[i], k)) {
                keep = k;
                break;
            }
    }
    return keep;
}

/* Finds the earliest stop string in held text; returns its offset or -1. */
static long find_stop(const gen_job *j) {
    long best = -1;
    for (size_t i = 0; i < j->n_stops; i++) {
        const char *hit = memmem(j->held.p, j->held.len, j->stops[i], j->stop_lens[i]);
        if (hit && (best < 0 || hit - j->held.p < best)) best = hit - j->held.p;
    }
    return best;
}

/* Moves `n` released bytes (and optionally one id) to the outbox; schedules
 * a JS call if none is pending. */
static void post(gen_job *j, const char *text, size_t n, int32_t id, bool has_id) {
    bool schedule = false;
    pthread_mutex_lock(&j->mu);
    if (!buf_add(&j->out, text, n)) j->oom = true;
    if (has_id) {
        if (j->n_ids == j->ids_cap) {
            size_t cap = j->ids_cap ? j->ids_cap * 2 : 64;
            int32_t *g = realloc(j->ids, cap * sizeof *g);
            if (g) {
                j->ids = g;
                j->ids_cap = cap;
            }
        }
        if (j->n_ids < j->ids_cap)
            j->ids[j->n_ids++] = id;
        else
            j->oom = true;
    }
    if (!j->scheduled) schedule = j->scheduled = true;
    pthread_mutex_unlock(&j->mu);
    if (schedule) napi_call_threadsafe_function(j->tsfn, NULL, napi_tsfn_nonblocking);
}

int gen_job_on_token(void *user, int32_t id, const char *text, size_t len) {
    gen_job *j = user;
    if (!text) len = 0;
    /* the callback's text skips special tokens; the raw text keeps them, so
     * that it spells exactly what the session holds */
    const char *special = j->sess->tok && nmlx_tokenizer_is_special(j->sess->tok, id)
                              ? nmlx_tokenizer_id_to_token(j->sess->tok, id)
                              : NULL;
    if (!buf_add(&j->raw, text, len) || (special && !buf_add(&j->raw, special, strlen(special))) ||
        !buf_add(&j->held, text, len))
        j->oom = true;
    size_t release = j->held.len;
    if (j->n_stops) {
        long at = find_stop(j);
        if (at >= 0) {
            j->stop_hit = true;
            post(j, j->held.p, (size_t)at, id, true);
            j->held.len = 0;
            return 1;
        }
        release = j->held.len - partial_stop_len(j, j->held.p, j->held.len);
    }
    post(j, j->held.p, release, id, true);
    memmove(j->held.p, j->held.p + release, j->held.len - release);
    j->held.len -= release;
    return atomic_load(&j->abort) || j->oom ? 1 : 0;
}

void gen_job_finish(gen_job *j, nmlx_status st, const nmlx_generate_result *r) {
    if (st == NMLX_OK && !j->stop_hit && j->held.len)
        post(j, j->held.p, j->held.len, 0, false); /* a partial stop that never completed */
    pthread_mutex_lock(&j->mu);
    j->status = j->oom && st == NMLX_OK ? NMLX_ERR_NOMEM : st;
    if (j->status != NMLX_OK)
        snprintf(j->message, sizeof j->message, "%s",
                 st == NMLX_OK ? "out of memory buffering generated text" : nmlx_last_error());
    j->result = *r;
    j->done = true;
    pthread_mutex_unlock(&j->mu);
    napi_call_threadsafe_function(j->tsfn, NULL, napi_tsfn_blocking);
    napi_release_threadsafe_function(j->tsfn, napi_tsfn_release);
    /* the job is freed by tsfn_finalize on the JS thread */
}

static void *worker(void *arg) {
    gen_job *j = arg;
    nmlx_status st = NMLX_OK;
    nmlx_generate_result r = {.n_prompt = j->n_prompt, .finish = NMLX_FINISH_CANCELLED};
    if (!atomic_load(&j->abort))
        st = nmlx_generate(j->sess->session, j->prompt, j->n_prompt, &j->gp, &r);
    gen_job_finish(j, st, &r);
    return NULL;
}

/* ---- the JS side of the job ------------------------------------------- */

static const char *finish_name(const gen_job *j) {
    if (j->stop_hit) return "stop";
    switch (j->result.finish) {
    case NMLX_FINISH_EOS: return "stop";
    case NMLX_FINISH_LENGTH: return "length";
    case NMLX_FINISH_STOPPED: return atomic_load(&j->abort) ? "abort" : "stop";
    case NMLX_FINISH_CANCELLED: return "abort";
    }
    return "abort";
}

static napi_value result_object(napi_env env, gen_job *j) {
    napi_value o, v;
    napi_create_object(env, &o);
    napi_create_string_utf8(env, finish_name(j), NAPI_AUTO_LENGTH, &v);
    napi_set_named_property(env, o, "finishReason", v);
    napi_create_double(env, (double)j->result.n_prompt, &v);
    napi_set_named_property(env, o, "promptTokens", v);
    napi_create_double(env, (double)j->result.n_generated, &v);
    napi_set_named_property(env, o, "completionTokens", v);
    napi_create_double(env, j->result.prefill_seconds, &v);
    napi_set_named_property(env, o, "prefillSeconds", v);
    napi_create_double(env, j->result.decode_seconds, &v);
    napi_set_named_property(env, o, "decodeSeconds", v);
    napi_create_string_utf8(env, j->raw.p ? j->raw.p : "", j->raw.len, &v);
    napi_set_named_property(env, o, "rawText", v);
    return o;
}

static void call_js(napi_env env, napi_value js_cb, void *context, void *data) {
    gen_job *j = context;
    if (!env) return; /* environment shutting down */
    pthread_mutex_lock(&j->mu);
    buf out = j->out;
    int32_t *ids = j->ids;
    size_t n_ids = j->n_ids;
    j->out = (buf){0};
    j->ids = NULL;
    j->n_ids = j->ids_cap = 0;
    j->scheduled = false;
    bool finish = j->done && !j->delivered;
    if (finish) j->delivered = true;
    pthread_mutex_unlock(&j->mu);

    napi_value undef, fn, argv[2], ab;
    napi_get_undefined(env, &undef);
    if (out.len || n_ids) {
        void *data_p = NULL;
        napi_create_string_utf8(env, out.p ? out.p : "", out.len, &argv[0]);
        napi_create_arraybuffer(env, n_ids * sizeof(int32_t), &data_p, &ab);
        if (n_ids) memcpy(data_p, ids, n_ids * sizeof(int32_t));
        napi_create_typedarray(env, napi_int32_array, n_ids, ab, 0, &argv[1]);
        napi_get_reference_value(env, j->on_data, &fn);
        napi_call_function(env, undef, fn, 2, argv, NULL);
    }
    free(out.p);
    free(ids);
    if (finish) {
        /* The session is idle from here on: JS may start the next call. */
        addon_session *s = j->sess;
        s->job = NULL;
        if (s->free_when_idle) {
            nmlx_session_free(s->session);
            s->session = NULL;
        }
        if (j->status != NMLX_OK) {
            argv[0] = addon_make_error(env, addon_status_code(j->status), j->message);
            napi_get_undefined(env, &argv[1]);
        } else {
            napi_get_null(env, &argv[0]);
            argv[1] = result_object(env, j);
        }
        napi_get_reference_value(env, j->on_done, &fn);
        napi_call_function(env, undef, fn, 2, argv, NULL);
    }
}

static void job_free(gen_job *j) {
    if (!j) return;
    for (size_t i = 0; i < j->n_stops; i++) free(j->stops[i]);
    free(j->stops);
    free(j->stop_lens);
    free(j->prompt);
    free(j->held.p);
    free(j->raw.p);
    free(j->out.p);
    free(j->ids);
    nmlx_detokenizer_free(j->detok);
    pthread_mutex_destroy(&j->mu);
    free(j);
#if defined(__GLIBC__)
    /* a generation's buffers come from its own thread's arena; without a
     * trim, thousands of aborted generations creep the RSS up (~1.5 KB
     * each, Node soak); ~15 us here */
    malloc_trim(0);
#endif
}

static void tsfn_finalize(napi_env env, void *data, void *hint) {
    gen_job *j = hint;
    if (j->sess->job == j) j->sess->job = NULL; /* env teardown without delivery */
    napi_delete_reference(env, j->on_data);
    napi_delete_reference(env, j->on_done);
    napi_delete_reference(env, j->sess_ref);
    job_free(j);
}

/* ---- generate(session, ids, opts, onData, onDone) ---------------------- */

static bool opt_number(napi_env env, napi_value o, const char *key, double *out) {
    bool has = false;
    napi_value v;
    napi_valuetype t;
    if (napi_has_named_property(env, o, key, &has) != napi_ok || !has) return true;
    napi_get_named_property(env, o, key, &v);
    napi_typeof(env, v, &t);
    if (t == napi_undefined) return true;
    if (t != napi_number || napi_get_value_double(env, v, out) != napi_ok) {
        char msg[128];
        snprintf(msg, sizeof msg, "option %s must be a number", key);
        addon_throw(env, "NMLX_ERR_INVALID_ARG", msg);
        return false;
    }
    return true;
}

static bool parse_options(napi_env env, napi_value o, gen_job *j) {
    nmlx_generate_params *gp = &j->gp;
    double maxt = gp->max_tokens, temp = gp->sampler.temperature, top_p = gp->sampler.top_p,
           top_k = gp->sampler.top_k, min_p = gp->sampler.min_p,
           rp = gp->sampler.repetition_penalty, rcs = gp->sampler.repetition_context_size,
           ignore = 0;
    if (!opt_number(env, o, "maxTokens", &maxt) || !opt_number(env, o, "temperature", &temp) ||
        !opt_number(env, o, "topP", &top_p) || !opt_number(env, o, "topK", &top_k) ||
        !opt_number(env, o, "minP", &min_p) || !opt_number(env, o, "repetitionPenalty", &rp) ||
        !opt_number(env, o, "repetitionContextSize", &rcs) ||
        !opt_number(env, o, "ignoreEos", &ignore))
        return false;
    if (maxt < 0 || maxt > INT32_MAX || top_k < 0 || top_k > INT32_MAX || rcs < 0 ||
        rcs > INT32_MAX) {
        addon_throw(env, "NMLX_ERR_INVALID_ARG", "maxTokens, topK and repetitionContextSize "
                                                 "must be integers >= 0");
        return false;
    }
    gp->max_tokens = (int)maxt;
    gp->ignore_eos = ignore != 0;
    gp->sampler.temperature = (float)temp;
    gp->sampler.top_p = (float)top_p;
    gp->sampler.top_k = (int)top_k;
    gp->sampler.min_p = (float)min_p;
    gp->sampler.repetition_penalty = (float)rp;
    gp->sampler.repetition_context_size = (int)rcs;

    napi_value v;
    napi_valuetype t;
    bool has = false;
    napi_has_named_property(env, o, "seed", &has);
    if (has) {
        napi_get_named_property(env, o, "seed", &v);
        napi_typeof(env, v, &t);
        bool lossless = true;
        if (t == napi_bigint) {
            napi_get_value_bigint_uint64(env, v, &gp->sampler.seed, &lossless);
        } else if (t == napi_number) {
            double d = 0;
            napi_get_value_double(env, v, &d);
            if (d < 0 || d > 18446744073709551615.0) lossless = false;
            gp->sampler.seed = (uint64_t)d;
        } else if (t != napi_undefined) {
            lossless = false;
        }
        if (!lossless) {
            addon_throw(env, "NMLX_ERR_INVALID_ARG", "seed must be an unsigned 64-bit integer");
            return false;
        }
    }
    has = false;
    napi_has_named_property(env, o, "stop", &has);
    if (has) {
        bool is_arr = false;
        uint32_t n = 0;
        napi_get_named_property(env, o, "stop", &v);
        napi_is_array(env, v, &is_arr);
        if (!is_arr) {
            addon_throw(env, "NMLX_ERR_INVALID_ARG", "stop must be an array of strings");
            return false;
        }
        napi_get_array_length(env, v, &n);
        j->stops = calloc(n ? n : 1, sizeof *j->stops);
        j->stop_lens = calloc(n ? n : 1, sizeof *j->stop_lens);
        if (!j->stops || !j->stop_lens) return addon_throw(env, "NMLX_ERR_NOMEM", "out of memory"), false;
        for (uint32_t i = 0; i < n; i++) {
            napi_value e;
            size_t len = 0;
            napi_get_element(env, v, i, &e);
            if (napi_get_value_string_utf8(env, e, NULL, 0, &len) != napi_ok || len == 0) {
                addon_throw(env, "NMLX_ERR_INVALID_ARG", "stop strings must be non-empty strings");
                return false;
            }
            if (!(j->stops[j->n_stops] = malloc(len + 1)))
                return addon_throw(env, "NMLX_ERR_NOMEM", "out of memory"), false;
            napi_get_value_string_utf8(env, e, j->stops[j->n_stops], len + 1, &len);
            j->stop_lens[j->n_stops++] = len;
        }
    }
    return true;
}

gen_job *gen_job_create(napi_env env, napi_value *argv) {
    size_t n = 0;
    napi_value name;
    addon_session *s;
    int32_t *ids;
    if (!addon_get_session(env, argv[0], &s) || !idle_session(env, s) ||
        !addon_get_ids(env, argv[1], &ids, &n))
        return NULL;
    gen_job *j = calloc(1, sizeof *j);
    if (!j) {
        addon_throw(env, "NMLX_ERR_NOMEM", "out of memory");
        return NULL;
    }
    pthread_mutex_init(&j->mu, NULL);
    atomic_init(&j->abort, false);
    j->sess = s;
    j->pending = -1;
    j->gp = nmlx_generate_default_params();
    j->gp.on_token = gen_job_on_token;
    j->gp.user = j;
    j->n_prompt = n;
    j->prompt = malloc((n ? n : 1) * sizeof(int32_t));
    if (!j->prompt) {
        job_free(j);
        addon_throw(env, "NMLX_ERR_NOMEM", "out of memory");
        return NULL;
    }
    if (n) memcpy(j->prompt, ids, n * sizeof(int32_t));
    if (!parse_options(env, argv[2], j)) {
        job_free(j);
        return NULL;
    }
    napi_create_string_utf8(env, "nmlx.generate", NAPI_AUTO_LENGTH, &name);
    if (napi_create_reference(env, argv[0], 1, &j->sess_ref) != napi_ok ||
        napi_create_reference(env, argv[3], 1, &j->on_data) != napi_ok ||
        napi_create_reference(env, argv[4], 1, &j->on_done) != napi_ok ||
        napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, NULL, tsfn_finalize, j,
                                        call_js, &j->tsfn) != napi_ok) {
        if (j->sess_ref) napi_delete_reference(env, j->sess_ref);
        if (j->on_data) napi_delete_reference(env, j->on_data);
        if (j->on_done) napi_delete_reference(env, j->on_done);
        job_free(j);
        addon_throw(env, "NMLX_ERR_INTERNAL", "generate: cannot create the callback");
        return NULL;
    }
    s->job = j;
    return j;
}

void gen_job_discard(gen_job *j) {
    j->sess->job = NULL;
    napi_release_threadsafe_function(j->tsfn, napi_tsfn_abort); /* finalize frees j */
}

napi_value addon_generate(napi_env env, napi_callback_info info) {
    size_t argc = 5;
    napi_value argv[5];
    NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 5) return addon_throw(env, "NMLX_ERR_INVALID_ARG", "generate: 5 arguments");
    gen_job *j = gen_job_create(env, argv);
    if (!j) return NULL;
    pthread_attr_t attr;
    pthread_t th;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&th, &attr, worker, j);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        gen_job_discard(j);
        return addon_throw(env, "NMLX_ERR_INTERNAL", "generate: cannot start a thread");
    }
    return NULL;
}
