/* config.json quantization entries (see quant_config.h). */
#include "quant_config.h"

#include "compute/quant.h"
#include "io/config_schema.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* One quantization entry: the global one (def NULL) or a per-module one
 * (def = the globals). mlx passes a per-module entry to to_quantized as
 * keyword arguments, so a missing "mode" is affine whatever the global mode
 * (gpt-oss MXFP4 checkpoints: global mxfp4, router entries {"group_size":
 * 64, "bits": 8}). Missing bits / group size come from the globals where the
 * entry's mode is the global mode, else from the mode's defaults (affine 4
 * and 64, mxfp4 4 and 32), as to_quantized's. */
static nmlx_status parse_params(const json_t *o, const nmlx_quant_params *def, const char *where,
                                const char *path, nmlx_quant_params *p) {
    const json_t *mode = json_object_get(o, "mode");
    nmlx_quant_mode m = NMLX_QUANT_AFFINE;
    char field[600];
    nmlx_status st;
    if (mode) {
        snprintf(field, sizeof field, "%s.mode", where);
        if (!json_is_string(mode))
            return nmlx_fail(NMLX_ERR_FORMAT, "%s: field '%s' must be a string", path, field);
        const char *ms = json_string_value(mode);
        if ((st = nmlx_domain_check_str(path, field, "quantization.mode", ms))) return st;
        m = strcmp(ms, "affine") ? NMLX_QUANT_MXFP4 : NMLX_QUANT_AFFINE;
    }
    if (def && def->mode == m)
        *p = *def;
    else
        *p = m == NMLX_QUANT_MXFP4 ? (nmlx_quant_params){NMLX_QUANT_MXFP4, 4, 32}
                                   : (nmlx_quant_params){NMLX_QUANT_AFFINE, 4, 64};
    const char *keys[2] = {"bits", "group_size"};
    const char *doms[2] = {"quantization.bits", "quantization.group_size"};
    int *vals[2] = {&p->bits, &p->group_size};
    for (int i = 0; i < 2; i++) {
        const json_t *v = json_object_get(o, keys[i]);
        if (!v) continue;
        snprintf(field, sizeof field, "%s.%s", where, keys[i]);
        if (!json_is_integer(v))
            return nmlx_fail(NMLX_ERR_FORMAT, "%s: field '%s' must be an integer", path, field);
        json_int_t x = json_integer_value(v);
        if ((st = nmlx_domain_check_int(path, field, doms[i], (int64_t)x))) return st;
        *vals[i] = (int)x;
    }
    if (!nmlx_quant_bits_ok(p->mode, p->bits))
        return nmlx_fail(NMLX_ERR_UNSUPPORTED,
                         "%s: %s: %d-bit %s quantization is not supported (affine: 2, 3, 4, 5, 6, "
                         "8; mxfp4: 4)",
                         path, where, p->bits, nmlx_quant_mode_name(p->mode));
    if (!nmlx_quant_group_ok(p->mode, p->group_size))
        return nmlx_fail(NMLX_ERR_UNSUPPORTED,
                         "%s: %s: group size %d is not supported for %s (affine: 32, 64, 128; "
                         "mxfp4: 32)",
                         path, where, p->group_size, nmlx_quant_mode_name(p->mode));
    return NMLX_OK;
}

nmlx_status nmlx_quant_config_load(const char *path, nmlx_quant_config *qc) {
    memset(qc, 0, sizeof *qc);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) return nmlx_fail(NMLX_ERR_FORMAT, "%s: line %d: %s", path, jerr.line, jerr.text);
    nmlx_status st = NMLX_OK;
    const char *where = "quantization";
    json_t *q = json_object_get(root, "quantization");
    if (!q) q = json_object_get(root, "quantization_config"), where = "quantization_config";
    if (!q) {
        json_t *tc = json_object_get(root, "text_config");
        q = tc ? json_object_get(tc, "quantization_config") : NULL;
        where = "text_config.quantization_config";
    }
    if (!q || json_is_null(q) || json_is_false(q)) goto done;
    CHECK(json_is_object(q), NMLX_ERR_FORMAT, "%s: '%s' must be an object", path, where);
    const json_t *method = json_object_get(q, "quant_method");
    if (method && !json_object_get(q, "bits")) {
        const char *m = json_string_value(method);
        char field[64];
        snprintf(field, sizeof field, "%s.quant_method", where);
        CHECK(m, NMLX_ERR_FORMAT, "%s: field '%s' must be a string", path, field);
        st = nmlx_domain_check_str(path, field, "quantization.quant_method", m);
        if (st == NMLX_ERR_UNSUPPORTED)
            st = nmlx_fail(NMLX_ERR_UNSUPPORTED,
                           "%s: field '%s' = '%s' is not supported (MLX affine and mxfp4 "
                           "checkpoints are; convert with nmlx convert or mlx_lm.convert)",
                           path, field, m);
        TRY(st);
        qc->global = (nmlx_quant_params){NMLX_QUANT_MXFP4, 4, 32};
    } else {
        TRY(parse_params(q, NULL, where, path, &qc->global));
    }
    /* read by every module lookup, whichever form the entry has */
    const json_t *skip = json_object_get(q, "modules_to_not_convert");
    size_t i;
    const json_t *pat;
    CHECK(!skip || json_is_null(skip) || json_is_array(skip), NMLX_ERR_FORMAT,
          "%s: %s.modules_to_not_convert must be a list of module names", path, where);
    json_array_foreach(skip, i, pat)
        CHECK(json_is_string(pat), NMLX_ERR_FORMAT,
              "%s: %s.modules_to_not_convert[%zu] must be a string", path, where, i);
    /* validate every per-module entry now, so lookups cannot fail later */
    const char *key;
    json_t *v;
    json_object_foreach(q, key, v) {
        if (!json_is_object(v)) continue; /* globals, true/false */
        char w[512];
        snprintf(w, sizeof w, "%s[\"%s\"]", where, key);
        nmlx_quant_params p;
        TRY(parse_params(v, &qc->global, w, path, &p));
    }
    qc->present = true;
    qc->json = json_incref(q);
done:
cleanup:
    json_decref(root);
    return st;
}

void nmlx_quant_config_free(nmlx_quant_config *qc) {
    if (!qc) return;
    json_decref(qc->json);
    qc->json = NULL;
}

/* One path component: `pat` (pn chars, where `*` stands for any run of
 * characters) matches all of `s` (sn chars). Greedy with one backtrack
 * point, so O(pn * sn) whatever the stars: a pattern of many stars from a
 * hostile config.json cannot take exponential time. */
static bool glob_component(const char *pat, size_t pn, const char *s, size_t sn) {
    size_t pi = 0, si = 0, star = SIZE_MAX, mark = 0;
    while (si < sn) {
        if (pi < pn && pat[pi] == '*') {
            star = pi++;
            mark = si;
        } else if (pi < pn && pat[pi] == s[si]) {
            pi++, si++;
        } else if (star != SIZE_MAX) {
            pi = star + 1;
            si = ++mark;
        } else {
            return false;
        }
    }
    while (pi < pn && pat[pi] == '*')
        pi++;
    return pi == pn;
}

/* HF `modules_to_not_convert` entry `pat` covers `module`: pat (where `*`
 * stands for one path component's characters) matches the whole path or a
 * prefix of it ending at a '.' ("model.layers.*.self_attn" covers
 * "model.layers.3.self_attn.q_proj"). Compared component by component. */
static bool covers(const char *pat, const char *module) {
    if (!pat) return false;
    for (;;) {
        const char *pe = strchr(pat, '.'), *me = strchr(module, '.');
        size_t pn = pe ? (size_t)(pe - pat) : strlen(pat);
        size_t mn = me ? (size_t)(me - module) : strlen(module);
        if (!glob_component(pat, pn, module, mn)) return false;
        if (!pe) return true; /* the pattern ends where a component of module does */
        if (!me) return false;
        pat = pe + 1;
        module = me + 1;
    }
}

int nmlx_quant_config_module(const nmlx_quant_config *qc, const char *module,
                             nmlx_quant_params *p) {
    if (!qc->present) return -1;
    size_t i;
    const json_t *pat;
    json_array_foreach(json_object_get(qc->json, "modules_to_not_convert"), i,
                       pat) if (covers(json_string_value(pat), module)) return 0;
    const json_t *v = json_object_get(qc->json, module);
    if (!v) return -1;
    if (json_is_false(v)) return 0;
    *p = qc->global;
    if (json_is_object(v)) parse_params(v, &qc->global, module, "", p); /* checked at load */
    return 1;
}

nmlx_status nmlx_quant_config_check(const nmlx_quant_config *qc, const nmlx_weights *ws,
                                    const char *config_path) {
    size_t n = nmlx_weights_count(ws);
    for (size_t i = 0; i < n; i++) {
        const nmlx_tensor *s = nmlx_weights_at(ws, i);
        size_t len = strlen(s->name);
        if (len < 8 || strcmp(s->name + len - 7, ".scales") != 0) continue;
        char module[512], key[560];
        snprintf(module, sizeof module, "%.*s", (int)(len - 7), s->name);
        nmlx_quant_params p = qc->global;
        int named = nmlx_quant_config_module(qc, module, &p);
        if (named == 0)
            return nmlx_fail(NMLX_ERR_INVALID_MODEL,
                             "%s: module '%s' is configured unquantized (false) but tensor '%s' "
                             "exists",
                             config_path, module, s->name);
        if (!qc->present)
            return nmlx_fail(NMLX_ERR_INVALID_MODEL,
                             "tensor '%s' looks quantized but %s has no 'quantization' entry",
                             s->name, config_path);
        snprintf(key, sizeof key, "%s.weight", module);
        const nmlx_tensor *w = nmlx_weights_find(ws, key);
        if (!w) return nmlx_fail(NMLX_ERR_FORMAT, "tensor '%s' has no '%s'", s->name, key);
        if (w->dtype != NMLX_DT_U32 || w->ndim < 2 || s->ndim != w->ndim)
            return nmlx_fail(NMLX_ERR_FORMAT,
                             "tensor '%s': a quantized weight must be U32 with the rank of '%s' "
                             "(got %s, rank %d vs %d)",
                             key, s->name, nmlx_dtype_name(w->dtype), w->ndim, s->ndim);
        int64_t words = w->shape[w->ndim - 1], groups = s->shape[s->ndim - 1];
        int64_t in = groups * p.group_size;
        if (words * 32 != in * p.bits)
            return nmlx_fail(NMLX_ERR_INVALID_MODEL,
                             "tensor '%s': %lld packed words per row do not match %d-bit "
                             "group-%d quantization of %lld inputs ('%s' has %lld groups; %s)",
                             key, (long long)words, p.bits, p.group_size, (long long)in, s->name,
                             (long long)groups, config_path);
        if (p.mode == NMLX_QUANT_MXFP4 && s->dtype != NMLX_DT_U8)
            return nmlx_fail(NMLX_ERR_FORMAT, "tensor '%s': mxfp4 scales must be U8 (got %s)",
                             s->name, nmlx_dtype_name(s->dtype));
        if (p.mode == NMLX_QUANT_AFFINE) {
            snprintf(key, sizeof key, "%s.biases", module);
            if (!nmlx_weights_find(ws, key))
                return nmlx_fail(NMLX_ERR_FORMAT,
                                 "tensor '%s' is missing (affine quantization of '%s' needs "
                                 "scales and biases)",
                                 key, module);
        }
    }
    return NMLX_OK;
}
