/* The Node-API module: errors, model load (on a libuv worker), model info,
 * tokenizer calls. Generation and sessions live in gen.c. */
#include "addon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *addon_status_code(nmlx_status st) {
    switch (st) {
    case NMLX_OK: return "NMLX_OK";
    case NMLX_ERR_INVALID_ARG: return "NMLX_ERR_INVALID_ARG";
    case NMLX_ERR_IO: return "NMLX_ERR_IO";
    case NMLX_ERR_FORMAT: return "NMLX_ERR_FORMAT";
    case NMLX_ERR_UNSUPPORTED: return "NMLX_ERR_UNSUPPORTED";
    case NMLX_ERR_NOMEM: return "NMLX_ERR_NOMEM";
    case NMLX_ERR_CONTEXT_OVERFLOW: return "NMLX_ERR_CONTEXT_OVERFLOW";
    case NMLX_ERR_CANCELLED: return "NMLX_ERR_CANCELLED";
    case NMLX_ERR_INTERNAL: return "NMLX_ERR_INTERNAL";
    case NMLX_ERR_INVALID_MODEL: return "NMLX_ERR_INVALID_MODEL";
    }
    return "NMLX_ERR_INTERNAL";
}

napi_value addon_make_error(napi_env env, const char *code, const char *msg) {
    napi_value jcode, jmsg, err;
    napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &jcode);
    napi_create_string_utf8(env, msg && *msg ? msg : "unknown error", NAPI_AUTO_LENGTH, &jmsg);
    napi_create_error(env, jcode, jmsg, &err);
    return err;
}

napi_value addon_throw(napi_env env, const char *code, const char *msg) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) napi_throw(env, addon_make_error(env, code, msg));
    return NULL;
}

napi_value addon_throw_status(napi_env env, nmlx_status st) {
    return addon_throw(env, addon_status_code(st), nmlx_last_error());
}

bool addon_get_model(napi_env env, napi_value v, addon_model **out) {
    void *p = NULL;
    napi_valuetype t;
    if (napi_typeof(env, v, &t) != napi_ok || t != napi_external ||
        napi_get_value_external(env, v, &p) != napi_ok || !p) {
        addon_throw(env, "NMLX_ERR_INVALID_ARG", "expected a model handle");
        return false;
    }
    *out = p;
    if (!(*out)->model) {
        addon_throw(env, "NMLX_ERR_UNLOADED", "the model has been unloaded");
        return false;
    }
    return true;
}

bool addon_get_ids(napi_env env, napi_value v, int32_t **ids, size_t *n) {
    bool is_ta = false;
    napi_is_typedarray(env, v, &is_ta);
    napi_typedarray_type type;
    void *data = NULL;
    if (!is_ta || napi_get_typedarray_info(env, v, &type, n, &data, NULL, NULL) != napi_ok ||
        type != napi_int32_array) {
        addon_throw(env, "NMLX_ERR_INVALID_ARG", "expected token ids as an Int32Array");
        return false;
    }
    *ids = data;
    return true;
}

/* ---- loadModel(dir, threads, contextLength, noTokenizer) -> Promise ---- */

typedef struct load_job {
    napi_async_work work;
    napi_deferred deferred;
    char *dir;
    char *device;    /* NULL = the default (cpu) */
    char *precision; /* NULL = the default */
    nmlx_model_params params;
    nmlx_model *model;
    nmlx_status status;
    char message[1024];
} load_job;

static void load_execute(napi_env env, void *data) {
    load_job *j = data;
    j->status = nmlx_model_load(j->dir, &j->params, &j->model);
    if (j->status != NMLX_OK) snprintf(j->message, sizeof j->message, "%s", nmlx_last_error());
}

static void model_finalize(napi_env env, void *data, void *hint) {
    addon_model *m = data;
    nmlx_model_free(m->model); /* deferred by the library while sessions live */
    free(m);
}

static void load_complete(napi_env env, napi_status status, void *data) {
    load_job *j = data;
    if (j->status == NMLX_OK) {
        addon_model *m = calloc(1, sizeof *m);
        napi_value ext;
        if (m && (m->model = j->model) &&
            napi_create_external(env, m, model_finalize, NULL, &ext) == napi_ok) {
            napi_resolve_deferred(env, j->deferred, ext);
        } else {
            nmlx_model_free(j->model);
            free(m);
            napi_reject_deferred(env, j->deferred,
                                 addon_make_error(env, "NMLX_ERR_NOMEM", "out of memory"));
        }
    } else {
        napi_reject_deferred(env, j->deferred,
                             addon_make_error(env, addon_status_code(j->status), j->message));
    }
    napi_delete_async_work(env, j->work);
    free(j->dir);
    free(j->device);
    free(j->precision);
    free(j);
}

static bool get_int(napi_env env, napi_value v, int32_t *out) {
    if (napi_get_value_int32(env, v, out) != napi_ok) {
        addon_throw(env, "NMLX_ERR_INVALID_ARG", "expected an integer");
        return false;
    }
    return true;
}

/* Copies a JS string into a malloc'd NUL-terminated buffer. */
static char *get_string(napi_env env, napi_value v, size_t *len_out) {
    size_t len = 0;
    if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) {
        addon_throw(env, "NMLX_ERR_INVALID_ARG", "expected a string");
        return NULL;
    }
    char *s = malloc(len + 1);
    if (!s) {
        addon_throw(env, "NMLX_ERR_NOMEM", "out of memory");
        return NULL;
    }
    napi_get_value_string_utf8(env, v, s, len + 1, &len);
    if (len_out) *len_out = len;
    return s;
}

/* loadModel(dir, threads, contextLength, noTokenizer[, device[, precision]]) */
static napi_value load_model(napi_env env, napi_callback_info info) {
    size_t argc = 6;
    napi_value argv[6];
    NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 4) return addon_throw(env, "NMLX_ERR_INVALID_ARG", "loadModel: 4 arguments");
    load_job *j = calloc(1, sizeof *j);
    if (!j) return addon_throw(env, "NMLX_ERR_NOMEM", "out of memory");
    j->params = nmlx_model_default_params();
    bool no_tok = false;
    if (!(j->dir = get_string(env, argv[0], NULL)) || !get_int(env, argv[1], &j->params.n_threads) ||
        !get_int(env, argv[2], &j->params.max_context) ||
        napi_get_value_bool(env, argv[3], &no_tok) != napi_ok) {
        free(j->dir);
        free(j);
        return addon_throw(env, "NMLX_ERR_INVALID_ARG", "loadModel: bad arguments");
    }
    j->params.no_tokenizer = no_tok;
    napi_valuetype dt = napi_undefined;
    if (argc >= 5) napi_typeof(env, argv[4], &dt);
    if (dt == napi_string) {
        if (!(j->device = get_string(env, argv[4], NULL))) {
            free(j->dir);
            free(j);
            return NULL;
        }
        j->params.device = j->device;
    }
    dt = napi_undefined;
    if (argc >= 6) napi_typeof(env, argv[5], &dt);
    if (dt == napi_string) {
        if (!(j->precision = get_string(env, argv[5], NULL))) {
            free(j->dir);
            free(j->device);
            free(j);
            return NULL;
        }
        j->params.precision = j->precision;
    }
    napi_value promise, name;
    napi_create_string_utf8(env, "nmlx.loadModel", NAPI_AUTO_LENGTH, &name);
    if (napi_create_promise(env, &j->deferred, &promise) != napi_ok ||
        napi_create_async_work(env, NULL, name, load_execute, load_complete, j, &j->work) !=
            napi_ok ||
        napi_queue_async_work(env, j->work) != napi_ok) {
        free(j->dir);
        free(j->device);
        free(j->precision);
        free(j);
        return addon_throw(env, "NMLX_ERR_INTERNAL", "loadModel: cannot queue the load");
    }
    return promise;
}

/* freeModel(handle): frees now (sessions keep it alive); safe to repeat. */
static napi_value free_model(napi_env env, napi_callback_info info) {
    size_t argc = 1;
    napi_value argv[1];
    void *p = NULL;
    NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 1 || napi_get_value_external(env, argv[0], &p) != napi_ok || !p)
        return addon_throw(env, "NMLX_ERR_INVALID_ARG", "expected a model handle");
    addon_model *m = p;
    nmlx_model_free(m->model);
    m->model = NULL;
    return NULL;
}

static void set_prop(napi_env env, napi_value obj, const char *key, napi_value v) {
    napi_set_named_property(env, obj, key, v);
}

static napi_value num(napi_env env, double d) {
    napi_value v;
    napi_create_double(env, d, &v);
    return v;
}

/* modelInfo(handle) -> { modelType, vocabSize, maxContext, eosIds, bosId,
 * eosId, hasTokenizer, sampler } */
static napi_value model_info(napi_env env, napi_callback_info info) {
    size_t argc = 1;
    napi_value argv[1], obj, str, arr;
    addon_model *m;
    NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 1 || !addon_get_model(env, argv[0], &m)) return NULL;
    NAPI_TRY(env, napi_create_object(env, &obj));
    napi_create_string_utf8(env, nmlx_model_type(m->model), NAPI_AUTO_LENGTH, &str);
    set_prop(env, obj, "modelType", str);
    set_prop(env, obj, "vocabSize", num(env, nmlx_model_vocab_size(m->model)));
    set_prop(env, obj, "maxContext", num(env, nmlx_model_max_context(m->model)));
    const int32_t *eos = NULL;
    size_t n_eos = nmlx_model_eos_ids(m->model, &eos);
    napi_create_array_with_length(env, n_eos, &arr);
    for (size_t i = 0; i < n_eos; i++) napi_set_element(env, arr, (uint32_t)i, num(env, eos[i]));
    set_prop(env, obj, "eosIds", arr);
    const nmlx_tokenizer *tok = nmlx_model_tokenizer(m->model);
    set_prop(env, obj, "bosId", num(env, tok ? nmlx_tokenizer_bos_id(tok) : -1));
    set_prop(env, obj, "eosId", num(env, tok ? nmlx_tokenizer_eos_id(tok) : -1));
    set_prop(env, obj, "tokenizerVocabSize", num(env, tok ? nmlx_tokenizer_vocab_size(tok) : 0));
    napi_value b;
    napi_get_boolean(env, tok != NULL, &b);
    set_prop(env, obj, "hasTokenizer", b);
    nmlx_sampler_params sp = nmlx_model_sampler_params(m->model);
    napi_value so;
    napi_create_object(env, &so);
    set_prop(env, so, "temperature", num(env, sp.temperature));
    set_prop(env, so, "topP", num(env, sp.top_p));
    set_prop(env, so, "topK", num(env, sp.top_k));
    set_prop(env, so, "minP", num(env, sp.min_p));
    set_prop(env, so, "repetitionPenalty", num(env, sp.repetition_penalty));
    set_prop(env, so, "repetitionContextSize", num(env, sp.repetition_context_size));
    set_prop(env, obj, "sampler", so);
    return obj;
}

static const nmlx_tokenizer *need_tokenizer(napi_env env, addon_model *m) {
    const nmlx_tokenizer *tok = nmlx_model_tokenizer(m->model);
    if (!tok)
        addon_throw(env, "NMLX_ERR_NO_TOKENIZER",
                    "the model folder has no tokenizer.json: pass token ids instead of text");
    return tok;
}

/* tokenize(handle, text, addSpecial) -> Int32Array */
static napi_value tokenize(napi_env env, napi_callback_info info) {
    size_t argc = 3, len = 0, n = 0;
    napi_value argv[3], ab, out;
    addon_model *m;
    bool special = false;
    NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 3 || !addon_get_model(env, argv[0], &m)) return NULL;
    const nmlx_tokenizer *tok = need_tokenizer(env, m);
    if (!tok) return NULL;
    napi_get_value_bool(env, argv[2], &special);
    char *text = get_string(env, argv[1], &len);
    if (!text) return NULL;
    int32_t *ids = NULL;
    nmlx_status st = nmlx_tokenize(tok, text, len, special, &ids, &n);
    free(text);
    if (st != NMLX_OK) return addon_throw_status(env, st);
    void *data = NULL;
    if (napi_create_arraybuffer(env, n * sizeof(int32_t), &data, &ab) != napi_ok ||
        napi_create_typedarray(env, napi_int32_array, n, ab, 0, &out) != napi_ok) {
        nmlx_free(ids);
        return addon_throw(env, "NMLX_ERR_NOMEM", "out of memory");
    }
    if (n) memcpy(data, ids, n * sizeof(int32_t));
    nmlx_free(ids);
    return out;
}

/* detokenize(handle, Int32Array, skipSpecial) -> string */
static napi_value detokenize(napi_env env, napi_callback_info info) {
    size_t argc = 3, n = 0, len = 0;
    napi_value argv[3], out;
    addon_model *m;
    int32_t *ids;
    bool skip = false;
    NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 3 || !addon_get_model(env, argv[0], &m)) return NULL;
    const nmlx_tokenizer *tok = need_tokenizer(env, m);
    if (!tok || !addon_get_ids(env, argv[1], &ids, &n)) return NULL;
    napi_get_value_bool(env, argv[2], &skip);
    char *text = NULL;
    nmlx_status st = nmlx_detokenize(tok, ids, n, skip, &text, &len);
    if (st != NMLX_OK) return addon_throw_status(env, st);
    napi_status ns = napi_create_string_utf8(env, text, len, &out);
    nmlx_free(text);
    NAPI_TRY(env, ns);
    return out;
}

/* tokenToId(handle, string) -> number (-1 if none) */
static napi_value token_to_id(napi_env env, napi_callback_info info) {
    size_t argc = 2;
    napi_value argv[2];
    addon_model *m;
    NAPI_TRY(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 2 || !addon_get_model(env, argv[0], &m)) return NULL;
    const nmlx_tokenizer *tok = need_tokenizer(env, m);
    if (!tok) return NULL;
    char *s = get_string(env, argv[1], NULL);
    if (!s) return NULL;
    int32_t id = nmlx_tokenizer_token_to_id(tok, s);
    free(s);
    return num(env, id);
}

static napi_value version(napi_env env, napi_callback_info info) {
    napi_value v;
    napi_create_string_utf8(env, nmlx_version(), NAPI_AUTO_LENGTH, &v);
    return v;
}

static napi_value init(napi_env env, napi_value exports) {
    nmlx_addon_crash_trace_install();
    const napi_property_descriptor fns[] = {
        {"loadModel", NULL, load_model, NULL, NULL, NULL, napi_default, NULL},
        {"freeModel", NULL, free_model, NULL, NULL, NULL, napi_default, NULL},
        {"modelInfo", NULL, model_info, NULL, NULL, NULL, napi_default, NULL},
        {"tokenize", NULL, tokenize, NULL, NULL, NULL, napi_default, NULL},
        {"detokenize", NULL, detokenize, NULL, NULL, NULL, napi_default, NULL},
        {"tokenToId", NULL, token_to_id, NULL, NULL, NULL, napi_default, NULL},
        {"version", NULL, version, NULL, NULL, NULL, napi_default, NULL},
        {"createSession", NULL, addon_create_session, NULL, NULL, NULL, napi_default, NULL},
        {"freeSession", NULL, addon_free_session, NULL, NULL, NULL, napi_default, NULL},
        {"sessionPosition", NULL, addon_session_position, NULL, NULL, NULL, napi_default, NULL},
        {"sessionTrim", NULL, addon_session_trim, NULL, NULL, NULL, napi_default, NULL},
        {"sessionReset", NULL, addon_session_reset, NULL, NULL, NULL, napi_default, NULL},
        {"sessionCancel", NULL, addon_session_cancel, NULL, NULL, NULL, napi_default, NULL},
        {"generate", NULL, addon_generate, NULL, NULL, NULL, napi_default, NULL},
        {"schedCreate", NULL, addon_sched_create, NULL, NULL, NULL, napi_default, NULL},
        {"schedSubmit", NULL, addon_sched_submit, NULL, NULL, NULL, napi_default, NULL},
        {"schedClose", NULL, addon_sched_close, NULL, NULL, NULL, napi_default, NULL},
        {"schedStats", NULL, addon_sched_stats, NULL, NULL, NULL, napi_default, NULL},
    };
    NAPI_TRY(env, napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns));
    return exports;
}

NAPI_MODULE(nmlx, init)
