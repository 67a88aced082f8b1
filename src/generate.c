/* The generation loop: prefill the prompt, then sample -> callback ->
 * evaluate one token at a time. The last sampled token is left pending in
 * the session (evaluated by the next eval/generate), so generating n tokens
 * costs n - 1 decode steps. */
#include "model.h"

#include <string.h>

nmlx_generate_params nmlx_generate_default_params(void) {
    return (nmlx_generate_params){.max_tokens = 256,
                                  .ignore_eos = 0,
                                  .sampler = nmlx_sampler_default_params(),
                                  .on_token = NULL,
                                  .user = NULL};
}

/* Appends `len` bytes to the session's text buffer at *used. */
static nmlx_status text_append(nmlx_session *s, size_t *used, const char *p, size_t len) {
    if (*used + len + 1 > s->text_cap) {
        size_t cap = (*used + len + 1) * 2;
        char *grown = nmlx_realloc(s->text, cap);
        if (!grown) return nmlx_fail(NMLX_ERR_NOMEM, "out of memory for generated text");
        s->text = grown;
        s->text_cap = cap;
    }
    memcpy(s->text + *used, p, len);
    *used += len;
    s->text[*used] = '\0';
    return NMLX_OK;
}

/* Text completed by `id` (plus the detokenizer's tail if `last`). */
static nmlx_status token_text(nmlx_session *s, int32_t id, bool last, size_t *len) {
    const char *piece = NULL;
    size_t n = 0;
    *len = 0;
    nmlx_status st = nmlx_detokenizer_push(s->detok, id, &piece, &n);
    if (st == NMLX_OK) st = text_append(s, len, piece, n);
    if (st == NMLX_OK && last) {
        st = nmlx_detokenizer_flush(s->detok, &piece, &n);
        if (st == NMLX_OK) st = text_append(s, len, piece, n);
    }
    return st;
}

nmlx_status nmlx_generate(nmlx_session *s, const int32_t *prompt, size_t n_prompt,
                          const nmlx_generate_params *params, nmlx_generate_result *result) {
    nmlx_status st = NMLX_OK;
    nmlx_generate_result r = {.n_prompt = n_prompt, .finish = NMLX_FINISH_LENGTH};
    bool entered = false;
    CHECK(s, NMLX_ERR_INVALID_ARG, "nmlx_generate: session is NULL");
    CHECK(n_prompt == 0 || prompt, NMLX_ERR_INVALID_ARG, "nmlx_generate: prompt is NULL");
    nmlx_generate_params p = params ? *params : nmlx_generate_default_params();
    CHECK(p.max_tokens >= 0, NMLX_ERR_INVALID_ARG, "max_tokens must be >= 0 (got %d)",
          p.max_tokens);
    TRY(nmlx_sampler_validate(&p.sampler));
    /* the whole generation: between an eval and the next pick the logits
     * may sit in the backend's LM-head row, which another session would
     * overwrite (one thread at a time where the backend says so) */
    nmlx_backend_enter(s->model->be);
    entered = true;
    atomic_store(&s->cancel, false);
    nmlx_sampler_seed(&s->sampler, p.sampler.seed);
    if (s->detok) nmlx_detokenizer_reset(s->detok);

    double t0 = nmlx_time_seconds(), t_first = t0;
    st = nmlx_session_eval_tokens(s, prompt, n_prompt, 0);
    if (st == NMLX_ERR_CANCELLED) {
        r.finish = NMLX_FINISH_CANCELLED;
        st = NMLX_OK;
        goto cleanup;
    }
    if (st != NMLX_OK) goto cleanup;
    CHECK(s->has_logits, NMLX_ERR_INVALID_ARG,
          "nmlx_generate: empty prompt and the session has no logits to continue from");

    /* greedy without penalties: on backends with an argmax op the logits stay
     * where the LM head wrote them and one id comes back a token */
    const bool greedy = p.sampler.temperature <= 0.0f && (p.sampler.repetition_penalty == 1.0f ||
                                                          p.sampler.repetition_context_size == 0);
    /* and where the backend samples too (CUDA's sample op), for every sampler */
    const bool keep = greedy || s->model->be->ops->sample;
    for (int i = 0; i < p.max_tokens; i++) {
        if ((size_t)s->n_history >= (size_t)s->max_context) break; /* context full: LENGTH */
        int32_t id = nmlx_session_pick(s, &p.sampler);             /* where the logits lie */
        if (i == 0) t_first = nmlx_time_seconds();
        r.n_generated++;
        bool eos = !p.ignore_eos && nmlx_model_is_eos(s->model, id);
        bool last = eos || i == p.max_tokens - 1 || s->n_history + 1 >= (size_t)s->max_context;
        /* the token joins the session now; its evaluation is deferred */
        s->history[s->n_history++] = id;
        s->pending = id;
        if (p.on_token) {
            size_t len = 0;
            if (s->detok) TRY(token_text(s, id, last, &len));
            /* another thread waits for the backend (say a session created on
             * Node's JS thread): let it in during the callback, with this
             * session's logits on the host first (the backend's LM-head row
             * they may sit in is shared) */
            const bool yield = entered && nmlx_backend_contended(s->model->be);
            if (yield) {
                nmlx_session_fetch_logits(s);
                nmlx_backend_leave(s->model->be);
            }
            const int stop = p.on_token(p.user, id, s->detok ? s->text : NULL, len);
            if (yield) nmlx_backend_enter(s->model->be);
            if (stop) {
                r.finish = NMLX_FINISH_STOPPED;
                break;
            }
        }
        if (eos) {
            r.finish = NMLX_FINISH_EOS;
            break;
        }
        if (last) break;
        /* evaluates the pending token */
        st = keep ? nmlx_session_eval_pending_kept(s) : nmlx_session_eval_tokens(s, NULL, 0, 0);
        if (st == NMLX_ERR_CANCELLED) {
            r.finish = NMLX_FINISH_CANCELLED;
            st = NMLX_OK;
            break;
        }
        if (st != NMLX_OK) goto cleanup;
        if (atomic_load(&s->cancel)) {
            r.finish = NMLX_FINISH_CANCELLED;
            break;
        }
    }
    double t_end = nmlx_time_seconds();
    r.prefill_seconds = (r.n_generated ? t_first : t_end) - t0;
    r.decode_seconds = r.n_generated ? t_end - t_first : 0.0;
cleanup:
    if (s) nmlx_session_fetch_logits(s); /* the session's logits are current again */
    if (entered) nmlx_backend_leave(s->model->be);
    if (result) *result = r;
    return st;
}
