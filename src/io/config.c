/* config.json / generation_config.json typed access (see config.h).
 *
 * Lookup order for every getter: the "text_config" object if the file has
 * one (multimodal configs nest the language model there), then the top
 * level. A key that is missing or null in text_config falls through to the
 * top level; missing or null everywhere gives the caller's default. */
#define _POSIX_C_SOURCE 200809L
#include "io/config.h"

#include "io/config_schema.h"
#include "io/file_util.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

enum { MAX_CONFIG_BYTES = 64 * 1000 * 1000 };

struct nmlx_cfg {
    json_t *root;
    const json_t *text; /* root's "text_config" object, or NULL */
    char *path;         /* file path (or the name given to nmlx_cfg_parse) */
};

static nmlx_status cfg_from_json(json_t *root, const char *name, nmlx_cfg **out) {
    if (!json_is_object(root)) {
        json_decref(root);
        return nmlx_fail(NMLX_ERR_FORMAT, "%s: top level must be a JSON object", name);
    }
    const json_t *text = json_object_get(root, "text_config");
    if (text && !json_is_null(text) && !json_is_object(text)) {
        json_decref(root);
        return nmlx_fail(NMLX_ERR_FORMAT, "%s: field 'text_config' must be an object", name);
    }
    nmlx_cfg *c = nmlx_calloc(1, sizeof *c);
    char *path = nmlx_strdup(name);
    if (!c || !path) {
        nmlx_free(c);
        nmlx_free(path);
        json_decref(root);
        return nmlx_fail(NMLX_ERR_NOMEM, "%s: out of memory", name);
    }
    c->root = root;
    c->text = json_is_object(text) ? text : NULL;
    c->path = path;
    *out = c;
    return NMLX_OK;
}

/* The member name whose value holds byte `pos` of a JSON text that failed to
 * parse (NaN, Infinity, 1e400 ...), for the message: the nearest
 * `"key" :` before pos, not crossing an object's opening brace. "" if none. */
static void field_at(const char *text, size_t len, int pos, char *key, size_t cap) {
    key[0] = '\0';
    size_t i = pos > 0 && (size_t)pos <= len ? (size_t)pos : len;
    size_t stop = i > 4096 ? i - 4096 : 0;
    while (i > stop && text[i - 1] != ':') {
        if (text[i - 1] == '{') return;
        i--;
    }
    if (i <= stop) return;
    i--; /* at ':' */
    while (i > 0 && (text[i - 1] == ' ' || text[i - 1] == '\t' || text[i - 1] == '\n' ||
                     text[i - 1] == '\r'))
        i--;
    if (i == 0 || text[i - 1] != '"') return;
    size_t end = --i, start = i;
    while (start > 0 && !(text[start - 1] == '"' && (start < 2 || text[start - 2] != '\\')))
        start--;
    if (start == 0 || end - start >= cap) return;
    memcpy(key, text + start, end - start);
    key[end - start] = '\0';
}

static nmlx_status json_error(const char *name, const char *text, size_t len,
                              const json_error_t *err) {
    char key[128];
    field_at(text, len, err->position, key, sizeof key);
    if (key[0])
        return nmlx_fail(NMLX_ERR_FORMAT, "%s: invalid JSON at line %d, column %d (field '%s'): %s",
                         name, err->line, err->column, key, err->text);
    return nmlx_fail(NMLX_ERR_FORMAT, "%s: invalid JSON at line %d, column %d: %s", name, err->line,
                     err->column, err->text);
}

nmlx_status nmlx_cfg_parse(const char *json, const char *name, nmlx_cfg **out) {
    if (!name) name = "config";
    if (!json || !out) return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_cfg_parse: NULL argument");
    json_error_t err;
    json_t *root = json_loads(json, 0, &err);
    if (!root) return json_error(name, json, strlen(json), &err);
    return cfg_from_json(root, name, out);
}

nmlx_status nmlx_cfg_open(const char *path, nmlx_cfg **out) {
    if (!path || !out) return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_cfg_open: NULL argument");
    char *text = NULL;
    size_t len = 0;
    nmlx_status st = nmlx_io_read_file(path, MAX_CONFIG_BYTES, &text, &len);
    if (st != NMLX_OK) return st;
    json_error_t err;
    json_t *root = json_loadb(text, len, 0, &err);
    if (!root) st = json_error(path, text, len, &err);
    nmlx_free(text);
    if (!root) return st;
    return cfg_from_json(root, path, out);
}

void nmlx_cfg_free(nmlx_cfg *cfg) {
    if (!cfg) return;
    json_decref(cfg->root);
    nmlx_free(cfg->path);
    nmlx_free(cfg);
}

const char *nmlx_cfg_path(const nmlx_cfg *cfg) { return cfg ? cfg->path : ""; }

/* The value for key (text_config first), or NULL if missing or null. */
static const json_t *lookup(const nmlx_cfg *cfg, const char *key) {
    if (!cfg || !key) return NULL;
    const json_t *v = cfg->text ? json_object_get(cfg->text, key) : NULL;
    if (!v || json_is_null(v)) v = json_object_get(cfg->root, key);
    return v && !json_is_null(v) ? v : NULL;
}

bool nmlx_cfg_has(const nmlx_cfg *cfg, const char *key) { return lookup(cfg, key) != NULL; }

/* ---- conversions shared by the getters and the rope reader ------------ */

/* JSON integer, or a real with no fractional part inside the int64 range. */
static bool as_int(const json_t *v, int64_t *out) {
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return true;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        /* 2^63 is exactly representable; the range is [-2^63, 2^63) */
        if (d != floor(d) || d < -9223372036854775808.0 || d >= 9223372036854775808.0) return false;
        *out = (int64_t)d;
        return true;
    }
    return false;
}

static nmlx_status type_error(const nmlx_cfg *cfg, const char *key, const char *what) {
    return nmlx_fail(NMLX_ERR_FORMAT, "%s: field '%s' must be %s", cfg->path, key, what);
}

/* The getters below read a value, check its JSON type (NMLX_ERR_FORMAT)
 * and then its domain from config_schema.c under the key `dom`
 * (NMLX_ERR_INVALID_MODEL); `key` is the field as the file spells it.
 * Defaults are the caller's and are not checked. */
static nmlx_status get_int(const nmlx_cfg *cfg, const json_t *v, const char *key, const char *dom,
                           int64_t def, int64_t *out) {
    int64_t x = def;
    if (v && !json_is_null(v)) {
        if (!as_int(v, &x)) return type_error(cfg, key, "an integer");
        nmlx_status st = nmlx_domain_check_int(cfg->path, key, dom, x);
        if (st != NMLX_OK) return st;
    }
    *out = x;
    return NMLX_OK;
}

static nmlx_status get_float(const nmlx_cfg *cfg, const json_t *v, const char *key, const char *dom,
                             double def, double *out) {
    double x = def;
    if (v && !json_is_null(v)) {
        if (!json_is_number(v)) return type_error(cfg, key, "a number");
        x = json_number_value(v);
        nmlx_status st = nmlx_domain_check_num(cfg->path, key, dom, x);
        if (st != NMLX_OK) return st;
    }
    *out = x;
    return NMLX_OK;
}

static nmlx_status get_bool(const nmlx_cfg *cfg, const json_t *v, const char *key, bool def,
                            bool *out) {
    bool x = def;
    if (v && !json_is_null(v)) {
        if (!json_is_boolean(v)) return type_error(cfg, key, "true or false");
        x = json_is_true(v);
    }
    *out = x;
    return NMLX_OK;
}

/* ---- public getters --------------------------------------------------- */

nmlx_status nmlx_cfg_int(const nmlx_cfg *cfg, const char *key, int64_t def, int64_t *out) {
    if (!cfg || !key || !out) return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_cfg_int: NULL argument");
    return get_int(cfg, lookup(cfg, key), key, key, def, out);
}

nmlx_status nmlx_cfg_positive_int(const nmlx_cfg *cfg, const char *key, int64_t def, int64_t *out) {
    nmlx_status st = nmlx_cfg_int(cfg, key, def, out);
    if (st == NMLX_OK && *out <= 0)
        return nmlx_invalid(nmlx_cfg_path(cfg), "field '%s' = %lld must be positive", key,
                            (long long)*out);
    return st;
}

nmlx_status nmlx_cfg_required_int(const nmlx_cfg *cfg, const char *key, int64_t *out) {
    if (!nmlx_cfg_has(cfg, key))
        return nmlx_invalid(nmlx_cfg_path(cfg), "missing required field '%s'", key);
    return nmlx_cfg_positive_int(cfg, key, 0, out);
}

nmlx_status nmlx_cfg_float(const nmlx_cfg *cfg, const char *key, double def, double *out) {
    if (!cfg || !key || !out)
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_cfg_float: NULL argument");
    return get_float(cfg, lookup(cfg, key), key, key, def, out);
}

nmlx_status nmlx_cfg_bool(const nmlx_cfg *cfg, const char *key, bool def, bool *out) {
    if (!cfg || !key || !out)
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_cfg_bool: NULL argument");
    return get_bool(cfg, lookup(cfg, key), key, def, out);
}

nmlx_status nmlx_cfg_string(const nmlx_cfg *cfg, const char *key, const char *def,
                            const char **out) {
    if (!cfg || !key || !out)
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_cfg_string: NULL argument");
    const json_t *v = lookup(cfg, key);
    if (v && !json_is_string(v)) return type_error(cfg, key, "a string");
    if (v) {
        nmlx_status st = nmlx_domain_check_str(cfg->path, key, key, json_string_value(v));
        if (st != NMLX_OK) return st;
    }
    *out = v ? json_string_value(v) : def;
    return NMLX_OK;
}

/* nmlx_cfg_int_list (ints) and nmlx_cfg_float_list: a scalar or an array,
 * each element's type then domain checked (as "key[i]" in an array) before
 * any is stored in iout / fout. */
static nmlx_status number_list(const nmlx_cfg *cfg, const char *key, bool ints, int64_t *iout,
                               double *fout, size_t cap, size_t *n) {
    const json_t *v = lookup(cfg, key);
    if (!v) {
        *n = 0;
        return NMLX_OK;
    }
    bool array = json_is_array(v);
    size_t len = array ? json_array_size(v) : 1;
    if (array && len > cap)
        return nmlx_fail(NMLX_ERR_UNSUPPORTED, "%s: field '%s' has %zu values (at most %zu)",
                         cfg->path, key, len, cap);
    for (size_t i = 0; i < len; i++) {
        const json_t *e = array ? json_array_get(v, i) : v;
        int64_t x = 0;
        if (ints ? !as_int(e, &x) : !json_is_number(e))
            return type_error(cfg, key,
                              ints ? "an integer or an array of integers"
                                   : "a number or an array of numbers");
        char shown[160];
        snprintf(shown, sizeof shown, "%s[%zu]", key, i);
        const char *name = array ? shown : key;
        nmlx_status st = ints ? nmlx_domain_check_int(cfg->path, name, key, x)
                              : nmlx_domain_check_num(cfg->path, name, key, json_number_value(e));
        if (st != NMLX_OK) return st;
    }
    if (!array && cap < 1)
        return nmlx_fail(NMLX_ERR_UNSUPPORTED, "%s: field '%s' has more than %zu values", cfg->path,
                         key, cap);
    for (size_t i = 0; i < len; i++) {
        const json_t *e = array ? json_array_get(v, i) : v;
        if (ints)
            as_int(e, &iout[i]);
        else
            fout[i] = json_number_value(e);
    }
    *n = len;
    return NMLX_OK;
}

nmlx_status nmlx_cfg_int_list(const nmlx_cfg *cfg, const char *key, int64_t *out, size_t cap,
                              size_t *n) {
    if (!cfg || !key || !n || (cap && !out))
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_cfg_int_list: NULL argument");
    return number_list(cfg, key, true, out, NULL, cap, n);
}

nmlx_status nmlx_cfg_float_list(const nmlx_cfg *cfg, const char *key, double *out, size_t cap,
                                size_t *n) {
    if (!cfg || !key || !n || (cap && !out))
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_cfg_float_list: NULL argument");
    return number_list(cfg, key, false, NULL, out, cap, n);
}

const char *nmlx_cfg_model_type(const nmlx_cfg *cfg) {
    const json_t *v = cfg ? json_object_get(cfg->root, "model_type") : NULL;
    return json_is_string(v) ? json_string_value(v) : "";
}

/* ---- RoPE ------------------------------------------------------------- */

/* Reads a number from the rope parameter object (field named
 * "<obj_name>.<key>" in messages), falling back to `def`. */
static nmlx_status rope_float(const nmlx_cfg *cfg, const json_t *params, const char *obj_name,
                              const char *key, double def, double *out) {
    char field[96], dom[64];
    snprintf(field, sizeof field, "%s.%s", obj_name, key);
    snprintf(dom, sizeof dom, "rope.%s", key);
    return get_float(cfg, params ? json_object_get(params, key) : NULL, field, dom, def, out);
}

static nmlx_status rope_factors(const nmlx_cfg *cfg, const json_t *params, const char *obj_name,
                                const char *key, double *dst, size_t *n) {
    const json_t *v = params ? json_object_get(params, key) : NULL;
    *n = 0;
    if (!v || json_is_null(v)) return NMLX_OK;
    if (!json_is_array(v))
        return nmlx_fail(NMLX_ERR_FORMAT, "%s: field '%s.%s' must be an array of numbers",
                         cfg->path, obj_name, key);
    size_t len = json_array_size(v);
    if (len > NMLX_ROPE_MAX_FACTORS)
        return nmlx_fail(NMLX_ERR_UNSUPPORTED,
                         "%s: field '%s.%s' has %zu values (at most %d supported)", cfg->path,
                         obj_name, key, len, (int)NMLX_ROPE_MAX_FACTORS);
    for (size_t i = 0; i < len; i++) {
        const json_t *x = json_array_get(v, i);
        if (!json_is_number(x))
            return nmlx_fail(NMLX_ERR_FORMAT, "%s: field '%s.%s' must be an array of numbers",
                             cfg->path, obj_name, key);
        char shown[128], dom[64];
        snprintf(shown, sizeof shown, "%s.%s[%zu]", obj_name, key, i);
        snprintf(dom, sizeof dom, "rope.%s", key);
        nmlx_status st = nmlx_domain_check_num(cfg->path, shown, dom, json_number_value(x));
        if (st != NMLX_OK) return st;
        dst[i] = json_number_value(x);
    }
    *n = len;
    return NMLX_OK;
}

/* Finds the rope parameter object and its name for messages:
 *  - "rope_parameters" (transformers 5), flat or keyed by layer type, in
 *    which case the "full_attention" entry is used;
 *  - else "rope_scaling" (hub), which may be null or absent. */
static nmlx_status rope_params(const nmlx_cfg *cfg, const char *layer_type, const json_t **params,
                               const char **name) {
    const json_t *rp = lookup(cfg, "rope_parameters");
    *params = NULL;
    *name = "rope_scaling";
    if (rp) {
        *name = "rope_parameters";
        if (!json_is_object(rp)) return type_error(cfg, "rope_parameters", "an object");
        bool flat = json_object_get(rp, "rope_type") || json_object_get(rp, "type") ||
                    json_object_get(rp, "rope_theta");
        bool per_layer = !flat && json_object_size(rp) > 0;
        const char *k;
        const json_t *v;
        json_object_foreach((json_t *)rp, k, v) {
            if (!json_is_object(v)) per_layer = false;
        }
        if (per_layer) {
            const json_t *full = json_object_get(rp, layer_type);
            if (!full)
                return nmlx_fail(NMLX_ERR_INVALID_MODEL,
                                 "%s: field 'rope_parameters' is keyed by layer type but has no "
                                 "'%s' entry",
                                 cfg->path, layer_type);
            *name = !strcmp(layer_type, "full_attention") ? "rope_parameters.full_attention"
                                                          : "rope_parameters.sliding_attention";
            rp = full;
        }
        *params = rp;
        return NMLX_OK;
    }
    const json_t *rs = lookup(cfg, "rope_scaling");
    if (rs && !json_is_object(rs)) return type_error(cfg, "rope_scaling", "an object or null");
    *params = rs;
    return NMLX_OK;
}

static nmlx_status rope_read(const nmlx_cfg *cfg, const char *layer_type, double def_theta,
                             nmlx_rope_config *out);

nmlx_status nmlx_cfg_rope(const nmlx_cfg *cfg, double def_theta, nmlx_rope_config *out) {
    if (!cfg || !out) return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_cfg_rope: NULL argument");
    return rope_read(cfg, "full_attention", def_theta, out);
}

nmlx_status nmlx_cfg_rope_layer(const nmlx_cfg *cfg, const char *layer_type, double def_theta,
                                nmlx_rope_config *out, bool *found) {
    if (!cfg || !layer_type || !out || !found)
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_cfg_rope_layer: NULL argument");
    *found = false;
    const json_t *rp = lookup(cfg, "rope_parameters");
    const json_t *entry = json_is_object(rp) ? json_object_get(rp, layer_type) : NULL;
    if (!json_is_object(entry)) return NMLX_OK;
    nmlx_status st = rope_read(cfg, layer_type, def_theta, out);
    if (st == NMLX_OK) *found = true;
    return st;
}

nmlx_status nmlx_cfg_string_list(const nmlx_cfg *cfg, const char *key, const char **out, size_t cap,
                                 size_t *n) {
    if (!cfg || !key || !n)
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_cfg_string_list: NULL argument");
    *n = 0;
    const json_t *v = lookup(cfg, key);
    if (!v) return NMLX_OK;
    if (!json_is_array(v)) return type_error(cfg, key, "an array of strings");
    size_t len = json_array_size(v);
    for (size_t i = 0; i < len; i++)
        if (!json_is_string(json_array_get(v, i)))
            return type_error(cfg, key, "an array of strings");
    for (size_t i = 0; i < len; i++) {
        char shown[160];
        snprintf(shown, sizeof shown, "%s[%zu]", key, i);
        nmlx_status st =
            nmlx_domain_check_str(cfg->path, shown, key, json_string_value(json_array_get(v, i)));
        if (st != NMLX_OK) return st;
    }
    if (len > cap)
        return nmlx_fail(NMLX_ERR_UNSUPPORTED,
                         "%s: field '%s' has %zu values (at most %zu supported)", cfg->path, key,
                         len, cap);
    for (size_t i = 0; i < len; i++)
        out[i] = json_string_value(json_array_get(v, i));
    *n = len;
    return NMLX_OK;
}

static nmlx_status rope_read(const nmlx_cfg *cfg, const char *layer_type, double def_theta,
                             nmlx_rope_config *out) {
    nmlx_status st = NMLX_OK;
    const json_t *p = NULL;
    const char *pn = NULL;
    char field[96];
    /* filled in a scratch copy so a failure leaves *out untouched; the
     * struct is large (two factor arrays), so reuse `out` only at the end */
    nmlx_rope_config *r = nmlx_calloc(1, sizeof *r);
    if (!r) return nmlx_fail(NMLX_ERR_NOMEM, "%s: out of memory reading RoPE settings", cfg->path);
    TRY(rope_params(cfg, layer_type, &p, &pn));

    /* type: rope_type, or the legacy "type"; lowercased; none -> default */
    const json_t *t = p ? json_object_get(p, "rope_type") : NULL;
    const char *tkey = "rope_type";
    if (!t || json_is_null(t)) {
        t = p ? json_object_get(p, "type") : NULL;
        tkey = "type";
    }
    snprintf(field, sizeof field, "%s.%s", pn, tkey);
    if (t && !json_is_null(t)) {
        CHECK(json_is_string(t), NMLX_ERR_FORMAT, "%s: field '%s' must be a string", cfg->path,
              field);
        const char *s = json_string_value(t);
        size_t len = strlen(s);
        if (len >= sizeof r->type) TRY(nmlx_domain_check_str(cfg->path, field, "rope.type", s));
        for (size_t i = 0; i <= len; i++)
            r->type[i] = (char)tolower((unsigned char)s[i]);
        TRY(nmlx_domain_check_str(cfg->path, field, "rope.type", r->type));
    } else {
        snprintf(r->type, sizeof r->type, "default");
    }

    /* theta: inside rope_parameters, else the top-level rope_theta */
    const json_t *th =
        p && !strncmp(pn, "rope_parameters", 15) ? json_object_get(p, "rope_theta") : NULL;
    if (th && !json_is_null(th)) {
        snprintf(field, sizeof field, "%s.rope_theta", pn);
        TRY(get_float(cfg, th, field, "rope.rope_theta", def_theta, &r->theta));
    } else {
        TRY(nmlx_cfg_float(cfg, "rope_theta", def_theta, &r->theta));
    }

    TRY(rope_float(cfg, p, pn, "factor", 1.0, &r->factor));
    TRY(rope_float(cfg, p, pn, "low_freq_factor", 1.0, &r->low_freq_factor));
    TRY(rope_float(cfg, p, pn, "high_freq_factor", 4.0, &r->high_freq_factor));
    TRY(rope_float(cfg, p, pn, "beta_fast", 32.0, &r->beta_fast));
    TRY(rope_float(cfg, p, pn, "beta_slow", 1.0, &r->beta_slow));
    TRY(rope_float(cfg, p, pn, "mscale", 1.0, &r->mscale));
    r->has_mscale =
        p && json_object_get(p, "mscale") && !json_is_null(json_object_get(p, "mscale"));
    TRY(rope_float(cfg, p, pn, "llama_4_scaling_beta", 0.0, &r->llama_4_scaling_beta));
    TRY(rope_float(cfg, p, pn, "mscale_all_dim", 0.0, &r->mscale_all_dim));
    TRY(rope_float(cfg, p, pn, "attention_factor", 0.0, &r->attention_factor));
    snprintf(field, sizeof field, "%s.truncate", pn);
    TRY(get_bool(cfg, p ? json_object_get(p, "truncate") : NULL, field, true, &r->truncate));

    /* these two may sit inside the rope object or at the top level (Phi-3) */
    int64_t top_ompe = 0;
    double top_prf = 1.0;
    TRY(nmlx_cfg_int(cfg, "original_max_position_embeddings", 0, &top_ompe));
    TRY(nmlx_cfg_float(cfg, "partial_rotary_factor", 1.0, &top_prf));
    snprintf(field, sizeof field, "%s.original_max_position_embeddings", pn);
    TRY(get_int(cfg, p ? json_object_get(p, "original_max_position_embeddings") : NULL, field,
                "rope.original_max_position_embeddings", top_ompe,
                &r->original_max_position_embeddings));
    TRY(rope_float(cfg, p, pn, "partial_rotary_factor", top_prf, &r->partial_rotary_factor));

    TRY(rope_factors(cfg, p, pn, "short_factor", r->short_factor, &r->n_short));
    TRY(rope_factors(cfg, p, pn, "long_factor", r->long_factor, &r->n_long));
    /* mrope_section and other keys are ignored here */

    /* keys each type needs (transformers refuses the config without them) */
    static const struct {
        const char *type, *keys[4];
    } need[] = {
        {"linear", {"factor"}},
        {"dynamic", {"factor"}},
        {"yarn", {"factor"}},
        {"llama3",
         {"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"}},
        {"longrope", {"short_factor", "long_factor"}},
        {"su", {"short_factor", "long_factor"}}};
    for (size_t i = 0; p && i < sizeof need / sizeof need[0]; i++) {
        if (strcmp(need[i].type, r->type)) continue;
        for (size_t k = 0; k < 4 && need[i].keys[k]; k++) {
            const json_t *v = json_object_get(p, need[i].keys[k]);
            CHECK(v && !json_is_null(v), NMLX_ERR_INVALID_MODEL,
                  "%s: field '%s.%s' is missing (RoPE type '%s' needs it)", cfg->path, pn,
                  need[i].keys[k], r->type);
        }
    }

    *out = *r;
cleanup:
    nmlx_free(r);
    return st;
}
