/* Sampling a session's logits where they lie. After a greedy generate step
 * or a batched decode step the LM head's row may still be on the backend
 * (s->logits_dev; model.h): a sample then downloads one id, not the row.
 *  - greedy without a penalty: the backend's argmax;
 *  - anything else, on a backend with a sample op (CUDA): the whole sampler
 *    runs there, with the one uniform draw taken from the session's own
 *    generator, so its random stream is the one the host sampler uses;
 *  - on the CPU backend the row is host memory: the host sampler reads it
 *    in place (no copy);
 *  - else the row is downloaded and sampled on the host.
 * Whoever reads the logits themselves (nmlx_session_logits) gets them
 * downloaded first (nmlx_session_fetch_logits). */
#include "model.h"
#include "shared/layers.h"
#include "shared/sampling.h"

#include <string.h>

/* Greedy with no penalty in effect: the argmax of the logits as they are. */
static bool plain_greedy(const nmlx_sampler_params *p) {
    return p->temperature <= 0.0f &&
           (p->repetition_penalty == 1.0f || p->repetition_context_size == 0);
}

int32_t nmlx_session_greedy_id(nmlx_session *s) {
    if (s->logits_dev)
        return s->model->be->ops->argmax(s->model->be, s->logits_dev, s->model->info.vocab_size);
    return nmlx_argmax(s->logits, s->model->info.vocab_size);
}

void nmlx_session_fetch_logits(nmlx_session *s) {
    if (!s || !s->logits_dev) return;
    nmlx_lm_head_download(s->model->be, s->logits_dev, s->model->info.vocab_size, 0.0f, s->logits);
    s->logits_dev = NULL;
}

int32_t nmlx_session_pick(nmlx_session *s, const nmlx_sampler_params *p) {
    nmlx_backend *be = s->model->be;
    int64_t V = s->model->info.vocab_size;
    if (plain_greedy(p)) return nmlx_session_greedy_id(s);
    if (s->logits_dev && be->ops->sample) {
        uint64_t rng[4]; /* restored if the op cannot run: the host draws again */
        memcpy(rng, s->sampler.rng, sizeof rng);
        double u = p->temperature > 0.0f ? nmlx_sampler_uniform(&s->sampler) : 0.0;
        int32_t id = be->ops->sample(be, s->logits_dev, V, p, s->history, s->n_history, u);
        if (id >= 0 && id < V) return id;
        memcpy(s->sampler.rng, rng, sizeof rng);
    }
    if (s->logits_dev && nmlx_backend_is_host(be)) /* the CPU: the row is host memory */
        return nmlx_sampler_sample(&s->sampler, p, s->logits_dev, s->history, s->n_history);
    nmlx_session_fetch_logits(s);
    return nmlx_sampler_sample(&s->sampler, p, s->logits, s->history, s->n_history);
}

nmlx_status nmlx_session_sample(nmlx_session *s, const nmlx_sampler_params *p, int32_t *out) {
    if (!s || !out) return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_session_sample: NULL argument");
    if (!s->has_logits || s->pending >= 0)
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_session_sample: no logits (evaluate first)");
    nmlx_sampler_params sp = p ? *p : nmlx_sampler_default_params();
    nmlx_status st = nmlx_sampler_validate(&sp);
    if (st != NMLX_OK) return st;
    nmlx_backend_enter(s->model->be);
    *out = nmlx_session_pick(s, &sp);
    nmlx_backend_leave(s->model->be);
    return NMLX_OK;
}
