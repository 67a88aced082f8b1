/* Option parsing and helpers shared by the `nmlx` subcommands (see args.h). */
#define _POSIX_C_SOURCE 200809L

#include "args.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void cli_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "nmlx %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

void cli_lib_error(const char *cmd, const char *what) {
    const char *msg = nmlx_last_error();
    cli_error(cmd, "%s: %s", what, msg && *msg ? msg : "unknown error");
}

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int cli_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

void cli_print_ids(FILE *f, const int32_t *ids, size_t n) {
    for (size_t i = 0; i < n; i++)
        fprintf(f, i ? ",%" PRId32 : "%" PRId32, ids[i]);
}

void cli_ids_free(cli_ids *ids) {
    free(ids->ids);
    ids->ids = NULL;
    ids->n = 0;
}

int cli_parse_ids(const char *s, cli_ids *out, char *err, size_t err_size) {
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) {
        snprintf(err, err_size, "out of memory");
        return 0;
    }
    size_t n = 0;
    const char *p = s;
    for (;;) {
        /* One item: 1..10 decimal digits, value <= INT32_MAX. */
        if (*p < '0' || *p > '9') {
            if (*p == ',' || *p == '\0')
                snprintf(err, err_size, "empty id at position %zu in '%s'", n + 1, s);
            else
                snprintf(err, err_size, "'%c' in '%s': ids are non-negative integers like 1,2,3",
                         *p, s);
            free(ids);
            return 0;
        }
        int64_t v = 0;
        while (*p >= '0' && *p <= '9') {
            v = v * 10 + (*p++ - '0');
            if (v > INT32_MAX) {
                snprintf(err, err_size, "id at position %zu in '%s' is too large", n + 1, s);
                free(ids);
                return 0;
            }
        }
        ids[n++] = (int32_t)v;
        if (*p == '\0') break;
        if (*p != ',') {
            snprintf(err, err_size, "'%c' in '%s': ids are non-negative integers like 1,2,3", *p,
                     s);
            free(ids);
            return 0;
        }
        p++;
    }
    out->ids = ids;
    out->n = n;
    return 1;
}

int cli_check_ids(const char *cmd, const cli_ids *ids, int32_t vocab) {
    for (size_t i = 0; i < ids->n; i++) {
        if (ids->ids[i] >= vocab) {
            cli_error(cmd, "--ids: id %" PRId32 " at position %zu is out of range [0, %" PRId32 ")",
                      ids->ids[i], i + 1, vocab);
            return 0;
        }
    }
    return 1;
}

/* Parses one option value into opt->dest; prints a usage error on failure. */
static int parse_value(const char *cmd, const cli_option *opt, const char *name, int nl,
                       const char *v) {
    char *end = NULL;
    errno = 0;
    if (opt->kind != CLI_STR && opt->kind != CLI_FLAG && isspace((unsigned char)*v)) {
        cli_error(cmd, "%.*s: '%s' is not a number", nl, name, v);
        return 0;
    }
    switch (opt->kind) {
    case CLI_FLAG: *(int *)opt->dest = 1; return 1;
    case CLI_STR:
        if (!*v) {
            cli_error(cmd, "%.*s: empty value", nl, name);
            return 0;
        }
        *(const char **)opt->dest = v;
        return 1;
    case CLI_INT: {
        long x = strtol(v, &end, 10);
        if (!*v || *end || errno == ERANGE) {
            cli_error(cmd, "%.*s: '%s' is not an integer", nl, name, v);
            return 0;
        }
        if ((double)x < opt->min || (double)x > opt->max) {
            cli_error(cmd, "%.*s: %ld is out of range [%.0f, %.0f]", nl, name, x, opt->min,
                      opt->max);
            return 0;
        }
        *(int *)opt->dest = (int)x;
        return 1;
    }
    case CLI_FLOAT: {
        double x = strtod(v, &end);
        if (!*v || *end || errno == ERANGE || !isfinite(x)) {
            cli_error(cmd, "%.*s: '%s' is not a finite number", nl, name, v);
            return 0;
        }
        if (x < opt->min || x > opt->max) {
            cli_error(cmd, "%.*s: %g is out of range [%g, %g]", nl, name, x, opt->min, opt->max);
            return 0;
        }
        *(float *)opt->dest = (float)x;
        return 1;
    }
    case CLI_U64: {
        unsigned long long x = strtoull(v, &end, 10);
        if (*v < '0' || *v > '9' || *end || errno == ERANGE) {
            cli_error(cmd, "%.*s: '%s' is not an unsigned integer", nl, name, v);
            return 0;
        }
        *(uint64_t *)opt->dest = (uint64_t)x;
        return 1;
    }
    case CLI_IDS: {
        char err[256];
        cli_ids parsed;
        if (!cli_parse_ids(v, &parsed, err, sizeof err)) {
            cli_error(cmd, "%.*s: %s", nl, name, err);
            return 0;
        }
        cli_ids_free(opt->dest); /* a repeated --ids replaces the earlier one */
        *(cli_ids *)opt->dest = parsed;
        return 1;
    }
    }
    return 0;
}

static void free_ids_outputs(const cli_option *opts, size_t n_opts) {
    for (size_t k = 0; k < n_opts; k++)
        if (opts[k].kind == CLI_IDS) cli_ids_free(opts[k].dest);
}

int cli_parse(const char *cmd, const char *usage, int argc, char **argv, const cli_option *opts,
              size_t n_opts) {
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            fputs(usage, stdout);
            free_ids_outputs(opts, n_opts);
            return CLI_HELP;
        }
        if (arg[0] != '-' || arg[1] == '\0') {
            cli_error(cmd, "unexpected argument '%s' (see 'nmlx %s --help')", arg, cmd);
            goto bad;
        }
        /* "--name=value" carries its value inline. */
        const char *eq = arg[1] == '-' ? strchr(arg, '=') : NULL;
        size_t name_len = eq ? (size_t)(eq - arg) : strlen(arg);
        const cli_option *opt = NULL;
        for (size_t k = 0; k < n_opts && !opt; k++) {
            const char *s = opts[k].short_name, *l = opts[k].long_name;
            if ((s && strlen(s) == name_len && !strncmp(arg, s, name_len)) ||
                (l && strlen(l) == name_len && !strncmp(arg, l, name_len)))
                opt = &opts[k];
        }
        if (!opt) {
            cli_error(cmd, "unknown option '%.*s' (see 'nmlx %s --help')", (int)name_len, arg, cmd);
            goto bad;
        }
        const char *value = NULL;
        if (opt->kind == CLI_FLAG) {
            if (eq) {
                cli_error(cmd, "%.*s takes no value", (int)name_len, arg);
                goto bad;
            }
        } else if (eq) {
            value = eq + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            cli_error(cmd, "%.*s needs a value (see 'nmlx %s --help')", (int)name_len, arg, cmd);
            goto bad;
        }
        if (!parse_value(cmd, opt, arg, (int)name_len, value)) goto bad;
        if (opt->given) *opt->given = 1;
    }
    return CLI_PARSED;
bad:
    free_ids_outputs(opts, n_opts);
    return CLI_BAD;
}

int cli_quantize_bits;
int cli_kv_bits, cli_kv_group_size = 64, cli_quantized_kv_start;
const char *cli_device;
const char *cli_kv_type;
const char *cli_precision;

const nmlx_session_params *cli_session_params(void) {
    static nmlx_session_params sp;
    sp = nmlx_session_default_params();
    sp.kv_bits = cli_kv_bits;
    sp.kv_group_size = cli_kv_group_size;
    sp.quantized_kv_start = cli_quantized_kv_start;
    sp.kv_dtype = cli_kv_type;
    return &sp;
}

nmlx_model *cli_load_model(const char *cmd, const char *dir, int n_threads, int no_tokenizer,
                           double *load_seconds) {
    nmlx_model_params mp = nmlx_model_default_params();
    mp.quantize_bits = cli_quantize_bits;
    if (n_threads >= 0) mp.n_threads = n_threads;
    mp.no_tokenizer = no_tokenizer;
    mp.device = cli_device;
    mp.precision = cli_precision;
    nmlx_model *model = NULL;
    double t0 = cli_now();
    if (nmlx_model_load(dir, &mp, &model) != NMLX_OK) {
        const char *msg = nmlx_last_error();
        cli_error(cmd, "cannot load model '%s': %s", dir, msg && *msg ? msg : "unknown error");
        return NULL;
    }
    if (load_seconds) *load_seconds = cli_now() - t0;
    return model;
}

nmlx_sampler_params cli_sampler(nmlx_sampler_params base, const cli_sampling *s) {
    if (s->has_temp) base.temperature = s->temp;
    if (s->has_top_p) base.top_p = s->top_p;
    if (s->has_top_k) base.top_k = s->top_k;
    if (s->has_min_p) base.min_p = s->min_p;
    if (s->has_repeat_penalty) base.repetition_penalty = s->repeat_penalty;
    if (s->has_repeat_last_n) base.repetition_context_size = s->repeat_last_n;
    if (s->has_seed) base.seed = s->seed;
    return base;
}
