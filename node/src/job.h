/* A generation job of the addon: a prompt, options, stop strings and the
 * JS callbacks (onData, onDone) of one generate()/schedSubmit() call on one
 * session. gen.c creates it and delivers its text to JS; the text-side
 * stepping is done either by nmlx_generate on the job's own thread (gen.c)
 * or token by token by a scheduler thread (sched.c). */
#ifndef NMLX_ADDON_JOB_H
#define NMLX_ADDON_JOB_H

#include "addon.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

typedef struct gen_job {
    addon_session *sess;
    napi_ref sess_ref, on_data, on_done;
    napi_threadsafe_function tsfn;
    int32_t *prompt;
    size_t n_prompt;
    nmlx_generate_params gp;
    char **stops;
    size_t *stop_lens; /* stop strings may contain NUL */
    size_t n_stops;
    atomic_bool abort;
    /* worker only */
    buf held; /* text not yet released: may begin a stop string */
    buf raw;  /* all generated text: stop text and special tokens included */
    bool stop_hit, oom;
    /* scheduler only (sched.c): the stepping state */
    struct gen_job *next;    /* in the scheduler's lists */
    nmlx_detokenizer *detok; /* the job's own (skip special), or NULL */
    size_t off;              /* prompt tokens evaluated so far */
    int32_t pending;         /* sampled, not yet evaluated; -1 if none */
    bool started, ready;     /* ready: this round's forward left logits to sample */
    bool batched;            /* this round's batched step evaluated its pending token */
    double t0, t_first;
    nmlx_generate_result res;
    /* shared, under mu */
    pthread_mutex_t mu;
    buf out;
    int32_t *ids;
    size_t n_ids, ids_cap;
    bool scheduled, done, delivered;
    nmlx_status status;
    char message[1024];
    nmlx_generate_result result;
} gen_job;

/* Creates the job of generate(session, ids, opts, onData, onDone) (argv[0..4])
 * and marks the session busy with it. Throws and returns NULL on bad
 * arguments or a busy session. */
gen_job *gen_job_create(napi_env env, napi_value *argv);
/* Gives up a created job that never started (the session becomes idle). */
void gen_job_discard(gen_job *j);
/* The token callback (nmlx_token_callback): stop strings, the outbox. */
int gen_job_on_token(void *user, int32_t id, const char *text, size_t len);
/* Ends the job from its worker thread: flushes held text, records the status
 * (a failure's message from nmlx_last_error() of this thread) and result, and
 * hands the job to JS, which calls onDone and frees it. No use of `j` after. */
void gen_job_finish(gen_job *j, nmlx_status st, const nmlx_generate_result *r);

#endif
