/* The domain of every value nmlx reads from a model's JSON files
 * (config.json, generation_config.json, the quantization entry of
 * config.json, tokenizer_config.json): one table, one rule.
 *
 * The config getters (config.h) look every key up here and check the value
 * they read against its domain; code that reads JSON by hand (quantization,
 * tokenizer_config) calls the nmlx_domain_check_* functions. A value outside
 * its domain fails with NMLX_ERR_INVALID_MODEL and a message naming the file,
 * the field and the value; an enum value the reference (transformers / MLX)
 * knows but nmlx does not implement fails with NMLX_ERR_UNSUPPORTED. Keys
 * that are not in the table are only type-checked. docs/config_fields.md
 * lists the same table for people. Depends on common.h only. */
#ifndef NMLX_CONFIG_SCHEMA_H
#define NMLX_CONFIG_SCHEMA_H

#include "common.h"

enum {
    NMLX_DOM_INT = 1,     /* an integer in [lo, hi] */
    NMLX_DOM_NUM = 2,     /* a finite number in lo..hi (bounds open per flags) */
    NMLX_DOM_ENUM = 3,    /* one of `known`; nmlx implements `supported` */
    NMLX_DOM_LO_OPEN = 8, /* NUM: lo itself is outside */
    NMLX_DOM_HI_OPEN = 16 /* NUM: hi itself is outside */
};

typedef struct nmlx_domain {
    const char *field; /* key ("hidden_size"), or group.key ("rope.factor") */
    unsigned kind;     /* NMLX_DOM_INT / NUM / ENUM, | LO_OPEN / HI_OPEN */
    double lo, hi;
    const char *const *known;     /* ENUM: every value the reference accepts */
    const char *const *supported; /* ENUM: the subset nmlx computes; NULL = all */
} nmlx_domain;

/* The table entry for a field, or NULL. */
const nmlx_domain *nmlx_domain_find(const char *field);
/* The whole table (NULL-terminated by field == NULL), for tests and docs. */
const nmlx_domain *nmlx_domain_table(void);

/* Checks v against the domain of `key` (no entry: OK). `file` and `shown`
 * (the field as the file spells it, e.g. "rope_parameters.factor") name the
 * value in messages. */
nmlx_status nmlx_domain_check_num(const char *file, const char *shown, const char *key, double v);
nmlx_status nmlx_domain_check_int(const char *file, const char *shown, const char *key, int64_t v);
nmlx_status nmlx_domain_check_str(const char *file, const char *shown, const char *key,
                                  const char *v);

/* A value that disagrees with another field or a tensor shape:
 * NMLX_ERR_INVALID_MODEL with "<file>: <message>". */
nmlx_status nmlx_invalid(const char *file, const char *fmt, ...) NMLX_PRINTF(2, 3);

#endif
