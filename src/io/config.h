/* config.json / generation_config.json access: typed getters with defaults
 * and validation: a wrong type is NMLX_ERR_FORMAT naming the file and field;
 * a value outside the field's domain (config_schema.h: range, finiteness,
 * enum values) is NMLX_ERR_INVALID_MODEL naming the file, field and value.
 * Defaults are the caller's and are not checked. Depends on common.h,
 * config_schema.h and jansson. */
#ifndef NMLX_CONFIG_H
#define NMLX_CONFIG_H

#include "common.h"

typedef struct nmlx_cfg nmlx_cfg;

/* Parses a JSON object file. If the object has a "text_config" object, the
 * getters look there first, then at the top level (multimodal configs); a
 * key that is null in text_config falls through to the top level. A missing
 * file is NMLX_ERR_IO; bad JSON NMLX_ERR_FORMAT with line and column. Error
 * messages start with the path (or the `name` of nmlx_cfg_parse). */
nmlx_status nmlx_cfg_open(const char *path, nmlx_cfg **out);
/* Same, from a string (tests); `name` is used in messages. */
nmlx_status nmlx_cfg_parse(const char *json, const char *name, nmlx_cfg **out);
void nmlx_cfg_free(nmlx_cfg *cfg);
const char *nmlx_cfg_path(const nmlx_cfg *cfg);

/* True if the key is present with a non-null value. */
bool nmlx_cfg_has(const nmlx_cfg *cfg, const char *key);
/* Missing or null -> default. Wrong type / out of int64 range ->
 * NMLX_ERR_FORMAT "config.json: field 'x' must be an integer"; outside the
 * key's domain -> NMLX_ERR_INVALID_MODEL (list getters check every element
 * and name it, "eos_token_id[1]"). Integers accept JSON integers (and reals
 * with no fractional part); floats accept both. */
nmlx_status nmlx_cfg_int(const nmlx_cfg *cfg, const char *key, int64_t def, int64_t *out);
nmlx_status nmlx_cfg_float(const nmlx_cfg *cfg, const char *key, double def, double *out);
nmlx_status nmlx_cfg_bool(const nmlx_cfg *cfg, const char *key, bool def, bool *out);
/* Sizes: nmlx_cfg_int, then a value <= 0 is NMLX_ERR_INVALID_MODEL
 * "config.json: field 'x' = 0 must be positive" (the default is checked
 * too); required: a missing key is NMLX_ERR_INVALID_MODEL "missing required
 * field 'x'". */
nmlx_status nmlx_cfg_positive_int(const nmlx_cfg *cfg, const char *key, int64_t def, int64_t *out);
nmlx_status nmlx_cfg_required_int(const nmlx_cfg *cfg, const char *key, int64_t *out);
/* *out points into the cfg (valid until nmlx_cfg_free), or is `def`. */
nmlx_status nmlx_cfg_string(const nmlx_cfg *cfg, const char *key, const char *def,
                            const char **out);
/* A scalar or an array of integers (e.g. eos_token_id); *n = 0 if missing
 * or null. More than `cap` values -> NMLX_ERR_UNSUPPORTED. */
nmlx_status nmlx_cfg_int_list(const nmlx_cfg *cfg, const char *key, int64_t *out, size_t cap,
                              size_t *n);
/* The same for numbers (e.g. activation_sparsity_pattern). */
nmlx_status nmlx_cfg_float_list(const nmlx_cfg *cfg, const char *key, double *out, size_t cap,
                                size_t *n);
/* model_type of the top level object ("" if missing). */
const char *nmlx_cfg_model_type(const nmlx_cfg *cfg);

/* RoPE settings in one form, whichever way the file writes them:
 *   hub style:           "rope_theta": 1e6, "rope_scaling": {...} or null
 *   transformers 5 style: "rope_parameters": {"rope_type": ..., "rope_theta": ...}
 * "type" is accepted as an alias of "rope_type"; no scaling -> "default".
 * The type is lowercased and checked against the "rope.type" domain: unknown
 * -> NMLX_ERR_INVALID_MODEL, known but not computed (dynamic, mrope) ->
 * NMLX_ERR_UNSUPPORTED; the keys a type needs (transformers' list) must be
 * present, and every value is checked against its "rope.<key>" domain. rope_parameters wins over
 * rope_scaling; its rope_theta wins over the top-level one. A rope_parameters keyed by layer type
 * (Gemma 3:
 * {"full_attention": {...}, "sliding_attention": {...}}) yields its
 * "full_attention" entry (none -> NMLX_ERR_UNSUPPORTED).
 * original_max_position_embeddings and partial_rotary_factor fall back to
 * the top level (Phi-3). Factor lists longer than NMLX_ROPE_MAX_FACTORS ->
 * NMLX_ERR_UNSUPPORTED. Field names in messages are dotted
 * ("rope_scaling.factor"). On failure *out is untouched. */
enum { NMLX_ROPE_MAX_FACTORS = 512 };
typedef struct nmlx_rope_config {
    char type[32];                            /* "default", "linear", "llama3", "yarn",
                                                 "longrope", "su", "dynamic", "mrope" ... */
    double theta;                             /* base */
    double factor;                            /* 1 if absent */
    double low_freq_factor;                   /* llama3; 1 if absent */
    double high_freq_factor;                  /* llama3; 4 if absent */
    int64_t original_max_position_embeddings; /* 0 if absent */
    double beta_fast, beta_slow;              /* yarn; 32 and 1 if absent */
    double mscale, mscale_all_dim;            /* yarn; 1 and 0 if absent */
    double attention_factor;                  /* yarn/longrope; 0 if absent */
    bool truncate;                            /* yarn; true if absent */
    double partial_rotary_factor;             /* 1 if absent (top level or in params) */
    bool has_mscale;                          /* yarn: "mscale" given (transformers tests it) */
    double llama_4_scaling_beta;              /* Ministral 3 query scaling; 0 if absent */
    size_t n_short, n_long;                   /* longrope factor lists */
    double short_factor[NMLX_ROPE_MAX_FACTORS];
    double long_factor[NMLX_ROPE_MAX_FACTORS];
} nmlx_rope_config;

/* def_theta applies when the file gives no theta at all. */
nmlx_status nmlx_cfg_rope(const nmlx_cfg *cfg, double def_theta, nmlx_rope_config *out);

/* The RoPE settings of one layer type ("sliding_attention") when
 * rope_parameters is keyed by layer type (Gemma 3, transformers 5 style):
 * *found = true and *out filled as nmlx_cfg_rope does. Otherwise *found =
 * false and *out untouched. */
nmlx_status nmlx_cfg_rope_layer(const nmlx_cfg *cfg, const char *layer_type, double def_theta,
                                nmlx_rope_config *out, bool *found);

/* An array of strings (e.g. layer_types); *n = 0 if missing or null. The
 * strings point into the cfg. More than `cap` -> NMLX_ERR_UNSUPPORTED. */
nmlx_status nmlx_cfg_string_list(const nmlx_cfg *cfg, const char *key, const char **out, size_t cap,
                                 size_t *n);

#endif
