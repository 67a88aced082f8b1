/* Internal definitions of the public handles (nmlx_model, nmlx_session). */
#ifndef NMLX_MODEL_H
#define NMLX_MODEL_H

#include "common.h"
#include "compute/backend.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "shared/family.h"
#include "shared/layer_cache.h"
#include "shared/sampling.h"

#include <stdatomic.h>

enum { NMLX_MAX_EOS = 16 };

struct nmlx_model {
    atomic_int refs; /* 1 for the owner + 1 per live session */
    char *dir;
    char model_type[64];
    nmlx_cfg *cfg;
    nmlx_weights *weights;
    nmlx_backend *be;
    const nmlx_family *family;
    void *arch;
    nmlx_arch_info info;
    int64_t max_context;
    int32_t eos[NMLX_MAX_EOS];
    size_t n_eos;
    nmlx_sampler_params sampler_defaults;
    nmlx_tokenizer *tok; /* NULL if the folder has none */
    nmlx_dtype half_dtype; /* the checkpoint's float dtype: sessions' default KV dtype */
    bool be_borrowed;      /* nmlx_model_load_on: the caller frees be */
};

struct nmlx_session {
    nmlx_model *model;
    void *state;
    int64_t max_context;
    float *logits; /* [vocab] host */
    bool has_logits;
    /* Greedy generation: the logits row the LM head left on the backend,
     * not yet in `logits` (NULL: `logits` is current). nmlx_session_fetch_logits. */
    const float *logits_dev;
    /* [vocab] backend buffer, allocated on first need: where batched decode
     * leaves this session's row (batch.c), since the head's own buffer is
     * reused by the next chunk of rows and the next step. Freed with the
     * session. */
    float *row_dev;
    float *all_logits; /* [all_rows, vocab] host */
    size_t all_rows, all_cap;
    int32_t *history; /* every token in the session, [max_context] */
    size_t n_history;
    int32_t pending; /* sampled by generate, not yet evaluated; -1 if none */
    nmlx_sampler sampler;
    atomic_bool cancel;
    nmlx_detokenizer *detok;
    char *text;      /* callback text assembly */
    size_t text_cap;
    nmlx_kv_dequant kv_deq; /* quantized KV: attention's dequantized rows */
};

/* Fails with NMLX_ERR_NOMEM, giving the numbers, when a session of `ctx`
 * tokens could never fit: its KV cache and per-token buffers at full
 * context exceed the machine's physical memory. `what` names the caller. */
nmlx_status nmlx_context_fits(const nmlx_model *m, int64_t ctx, const char *what);
/* nmlx_model_load on a backend the caller made and frees after the model
 * (tests: the emulated device, tests/device_emu.h); params->device is
 * ignored. */
nmlx_status nmlx_model_load_on(const char *dir, const nmlx_model_params *params, nmlx_backend *be,
                               nmlx_model **out);
/* Drops one model reference; frees the model at zero. */
void nmlx_model_unref(nmlx_model *m);
bool nmlx_model_is_eos(const nmlx_model *m, int32_t id);
/* nmlx_session_eval without clearing the cancel flag (generate's loop). */
nmlx_status nmlx_session_eval_tokens(nmlx_session *s, const int32_t *ids, size_t n,
                                     int all_logits);
/* Generation's decode step where the backend can pick the next id itself
 * (argmax for greedy; its sample op, where it has one, for every sampler):
 * evaluates the pending token, keeping the logits row on the backend
 * (logits_dev) when it is plainly the LM head's (no soft-cap), so picking
 * the next id (nmlx_session_pick) downloads one id instead of the row. */
nmlx_status nmlx_session_eval_pending_kept(nmlx_session *s);
/* session_sample.c: the id greedy sampling without penalties picks from
 * the current logits; */
int32_t nmlx_session_greedy_id(nmlx_session *s);
/* brings logits left on the backend into s->logits (no-op if current); */
void nmlx_session_fetch_logits(nmlx_session *s);
/* nmlx_sampler_sample on the current logits (p valid), wherever they lie:
 * on the backend where it can (argmax, sample op), the same ids and the
 * same random stream as the host sampler. */
int32_t nmlx_session_pick(nmlx_session *s, const nmlx_sampler_params *p);

#endif
