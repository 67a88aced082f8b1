/* Option parsing and small helpers shared by the `nmlx` subcommands.
 *
 * Each subcommand describes its options in a table of cli_option and calls
 * cli_parse(); values are range-checked while parsing, so a command only sees
 * valid numbers. Usage errors print one line "nmlx <cmd>: <message>" on
 * stderr and make the command exit with CLI_EXIT_USAGE. Uses only nmlx.h. */
#ifndef NMLX_CLI_ARGS_H
#define NMLX_CLI_ARGS_H

#include "nmlx.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#if defined(__GNUC__)
#define CLI_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define CLI_PRINTF(a, b)
#endif

enum { CLI_EXIT_OK = 0, CLI_EXIT_FAIL = 1, CLI_EXIT_USAGE = 2 };

typedef enum cli_kind {
    CLI_FLAG,  /* no value; *(int *)dest = 1 */
    CLI_STR,   /* *(const char **)dest = the argv string */
    CLI_INT,   /* *(int *)dest, within [min, max] */
    CLI_FLOAT, /* *(float *)dest, finite, within [min, max] */
    CLI_U64,   /* *(uint64_t *)dest, any unsigned decimal */
    CLI_IDS    /* *(cli_ids *)dest, "1,2,3": non-negative int32 list */
} cli_kind;

/* A parsed --ids list; ids is malloc'd (free with cli_ids_free). */
typedef struct cli_ids {
    int32_t *ids;
    size_t n;
} cli_ids;

typedef struct cli_option {
    const char *short_name; /* "-m", or NULL */
    const char *long_name;  /* "--model" */
    cli_kind kind;
    void *dest;
    double min, max; /* inclusive range for CLI_INT / CLI_FLOAT */
    int *given;      /* set to 1 when the option appears; may be NULL */
} cli_option;

/* Result of cli_parse(): CLI_PARSED to go on, CLI_HELP after printing the
 * usage text (exit 0), CLI_BAD after printing a usage error (exit 2). */
enum { CLI_PARSED = -1, CLI_HELP = 0, CLI_BAD = CLI_EXIT_USAGE };

/* Parses argv[1..argc) against `opts`. Accepts "--opt value", "--opt=value"
 * and "-o value"; -h / --help prints `usage` to stdout. Any positional
 * argument, unknown option or missing value is a usage error. On CLI_BAD the
 * CLI_IDS outputs are already freed. */
int cli_parse(const char *cmd, const char *usage, int argc, char **argv, const cli_option *opts,
              size_t n_opts);

/* "1,2,3" -> ids. Rejects empty lists and items, signs, spaces, non-digits
 * and values above INT32_MAX; on error writes a message into err. */
int cli_parse_ids(const char *s, cli_ids *out, char *err, size_t err_size);
void cli_ids_free(cli_ids *ids);
/* Usage error (returns 0) if an id is >= vocab. */
int cli_check_ids(const char *cmd, const cli_ids *ids, int32_t vocab);

/* Sampling flags shared by `generate` and `run`: each overrides the base
 * sampler (greedy defaults or the model's generation_config) only if given. */
typedef struct cli_sampling {
    float temp, top_p, min_p, repeat_penalty;
    int top_k, repeat_last_n;
    uint64_t seed;
    int has_temp, has_top_p, has_min_p, has_repeat_penalty, has_top_k, has_repeat_last_n, has_seed;
} cli_sampling;

/* cli_option table entries for a cli_sampling `s`. */
// clang-format off
#define CLI_SAMPLING_OPTIONS(s)                                                                    \
    {NULL, "--temp", CLI_FLOAT, &(s).temp, 0, 100, &(s).has_temp},                                 \
    {NULL, "--top-p", CLI_FLOAT, &(s).top_p, 0, 1, &(s).has_top_p},                                \
    {NULL, "--top-k", CLI_INT, &(s).top_k, 0, 1e9, &(s).has_top_k},                                \
    {NULL, "--min-p", CLI_FLOAT, &(s).min_p, 0, 1, &(s).has_min_p},                                \
    {NULL, "--repeat-penalty", CLI_FLOAT, &(s).repeat_penalty, 1e-3, 100, &(s).has_repeat_penalty},\
    {NULL, "--repeat-last-n", CLI_INT, &(s).repeat_last_n, 0, 1e6, &(s).has_repeat_last_n},        \
    {NULL, "--seed", CLI_U64, &(s).seed, 0, 0, &(s).has_seed}
// clang-format on

/* Usage lines for CLI_SAMPLING_OPTIONS. */
#define CLI_SAMPLING_USAGE                                                                         \
    "        --temp T         temperature in [0, 100]; 0 = greedy (argmax)\n"                      \
    "        --top-p P        nucleus sampling in [0, 1]; 1 = off\n"                               \
    "        --top-k K        keep the K most likely tokens; 0 = off\n"                            \
    "        --min-p P        drop tokens below P x the top probability; 0 = off\n"                \
    "        --repeat-penalty R  penalty in [0.001, 100] on recent tokens; 1 = off\n"              \
    "        --repeat-last-n N   tokens looked back for the penalty\n"                             \
    "        --seed S         random seed (unsigned 64-bit); same seed, same tokens\n"

/* Applies the given sampling flags on top of `base`. */
nmlx_sampler_params cli_sampler(nmlx_sampler_params base, const cli_sampling *s);

/* "nmlx <cmd>: <message>\n" on stderr. */
void cli_error(const char *cmd, const char *fmt, ...) CLI_PRINTF(2, 3);
/* cli_error with nmlx_last_error() appended after "what: ". */
void cli_lib_error(const char *cmd, const char *what);

/* The built-in demo model folder for a command given no -m: prints one line
 * "nmlx: no model given; using the built-in demo model at DIR ..." on stderr
 * and returns DIR ($NMLX_DEMO_MODEL, else the folder compiled in), or prints
 * "nmlx <cmd>: ..." and returns NULL if it has no config.json. */
const char *cli_demo_model(const char *cmd);

/* Loads a model (n_threads < 0: the library's default) and prints the library's error on failure;
 * *load_seconds (may be NULL) gets the wall time of nmlx_model_load. */
/* --bits N of logits/bench: quantize a float checkpoint on load (0 = off). */
extern int cli_quantize_bits;
nmlx_model *cli_load_model(const char *cmd, const char *dir, int n_threads, int no_tokenizer,
                           double *load_seconds);

/* Quantized KV cache flags of generate/run/bench/logits (nmlx_session_params
 * kv_bits, kv_group_size, quantized_kv_start); cli_session_params() returns
 * the session params they give (static storage). */
extern int cli_kv_bits, cli_kv_group_size, cli_quantized_kv_start;
/* --device NAME (nmlx_model_params.device; NULL = cpu), taken by the same
 * commands as the KV flags. */
extern const char *cli_device;
/* --kv-type auto|f32|f16|bf16 (nmlx_session_params.kv_dtype; NULL = auto) */
extern const char *cli_kv_type;
/* --precision default|int8 (nmlx_model_params.precision) */
extern const char *cli_precision;
// clang-format off
#define CLI_KV_OPTIONS                                                                             \
    {NULL, "--kv-bits", CLI_INT, &cli_kv_bits, 0, 8, NULL},                                        \
    {NULL, "--kv-group-size", CLI_INT, &cli_kv_group_size, 8, 128, NULL},                          \
    {NULL, "--quantized-kv-start", CLI_INT, &cli_quantized_kv_start, 0, 1e9, NULL},             \
    {NULL, "--device", CLI_STR, &cli_device, 0, 0, NULL},                                          \
    {NULL, "--kv-type", CLI_STR, &cli_kv_type, 0, 0, NULL},                                        \
    {NULL, "--precision", CLI_STR, &cli_precision, 0, 0, NULL}
// clang-format on
#define CLI_KV_USAGE                                                                               \
    "        --kv-bits N      quantize the KV cache to 2, 3, 4, 5, 6 or 8 bits; 0 = off\n"       \
    "        --kv-group-size N  KV quantization group: 32, 64 (default) or 128\n"               \
    "        --quantized-kv-start N  keep the KV cache full precision until it holds\n"       \
    "                         N tokens (default 0)\n"                                          \
    "        --device NAME    cpu (default), cuda or cuda:N (a build with -DNMLX_CUDA=ON)\n"      \
    "        --kv-type T      KV cache precision: auto (default: the checkpoint's, f16 for\n"  \
    "                         half-precision and quantized ones), f32, f16 or bf16\n"      \
    "        --precision P    activations of the prefill matmuls: default (quantized:\n"     \
    "                         int16 on AVX512_VNNI CPUs; bf16: bf16 on AVX512_BF16),\n"   \
    "                         int8 (quantized, AVX512_VNNI; faster, less precise) or\n"   \
    "                         f32 (exact, slowest)\n"
const nmlx_session_params *cli_session_params(void);

/* Monotonic wall clock in seconds. */
double cli_now(void);
/* Online CPUs (what -t 0 means); at least 1. */
int cli_cpu_count(void);

/* Prints `ids` as "1,2,3" (no newline). */
void cli_print_ids(FILE *f, const int32_t *ids, size_t n);

#endif
