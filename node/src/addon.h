/* Shared definitions of the Node-API addon over include/nmlx.h: the wrapped
 * handles, error helpers and the module's function table. */
#ifndef NMLX_ADDON_H
#define NMLX_ADDON_H

#define NAPI_VERSION 8
#include <node_api.h>

#include <stdbool.h>
#include <stddef.h>

#include "nmlx.h"

/* A loaded model, wrapped in a JS external. `model` is NULL once freed. */
typedef struct addon_model {
    nmlx_model *model;
} addon_model;

struct gen_job;

/* A session, wrapped in a JS external. A running job holds a reference on the
 * external, so the finalizer never sees a busy session. */
typedef struct addon_session {
    nmlx_session *session; /* NULL once freed */
    const nmlx_tokenizer *tok; /* the model's (kept alive by the session); may be NULL */
    const nmlx_model *model;   /* its model (kept alive by the session) */
    int max_context;           /* the session's context length */
    struct gen_job *job;   /* the generation running on it, or NULL */
    bool free_when_idle;   /* freeSession() was called while busy */
} addon_session;

/* Throws a JS Error with .code = `code` and the message; returns NULL. */
napi_value addon_throw(napi_env env, const char *code, const char *msg);
/* Throws the Error for a failed nmlx call (message from nmlx_last_error()). */
napi_value addon_throw_status(napi_env env, nmlx_status st);
/* The stable JS code of a status ("NMLX_ERR_IO", ...). */
const char *addon_status_code(nmlx_status st);
/* Builds (does not throw) an Error object with .code. */
napi_value addon_make_error(napi_env env, const char *code, const char *msg);

/* Argument helpers: each throws and returns false on a bad argument. */
bool addon_get_model(napi_env env, napi_value v, addon_model **out);
bool addon_get_session(napi_env env, napi_value v, addon_session **out);
bool addon_get_ids(napi_env env, napi_value v, int32_t **ids, size_t *n);

/* Functions exported by gen.c. */
napi_value addon_create_session(napi_env env, napi_callback_info info);
napi_value addon_free_session(napi_env env, napi_callback_info info);
napi_value addon_session_position(napi_env env, napi_callback_info info);
napi_value addon_session_trim(napi_env env, napi_callback_info info);
napi_value addon_session_reset(napi_env env, napi_callback_info info);
napi_value addon_session_cancel(napi_env env, napi_callback_info info);
napi_value addon_generate(napi_env env, napi_callback_info info);

/* Functions exported by sched.c. */
napi_value addon_sched_create(napi_env env, napi_callback_info info);
napi_value addon_sched_submit(napi_env env, napi_callback_info info);
napi_value addon_sched_close(napi_env env, napi_callback_info info);
napi_value addon_sched_stats(napi_env env, napi_callback_info info);

/* crash_trace.c: with NMLX_CRASH_TRACE=1, fatal signals print a backtrace */
void nmlx_addon_crash_trace_install(void);

#define NAPI_TRY(env, call)                                                                        \
    do {                                                                                           \
        if ((call) != napi_ok) {                                                                   \
            addon_throw((env), "NMLX_ERR_INTERNAL", "Node-API call failed: " #call);               \
            return NULL;                                                                           \
        }                                                                                          \
    } while (0)

#endif
