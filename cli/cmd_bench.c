/* `nmlx bench`: prefill and decode speed of a model as one JSON line.
 *
 * Prefill: p pseudo-random ids evaluated in one call from an empty session.
 * Decode: after a 16-token prompt, n tokens generated one at a time (greedy,
 * ignore_eos); the rate counts the n-1 steps between the first and the last
 * token callback, so prompt processing is excluded. With -r > 1 each figure
 * is the median over the repetitions. Ids come from a seeded generator, so
 * no tokenizer is needed and runs are comparable. */
#define _POSIX_C_SOURCE 200809L

#include "args.h"
#include "commands.h"

#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

enum { DECODE_PROMPT = 16 };

static const char usage[] =
    "NAME\n"
    "    nmlx bench - measure prefill and decode speed\n"
    "\n"
    "SYNOPSIS\n"
    "    nmlx bench -m DIR [-p N] [-n N] [-t N] [-r N] [--seed S]\n"
    "\n"
    "DESCRIPTION\n"
    "    Loads the model in DIR and prints one JSON line:\n"
    "      prefill_tok_s  p prompt tokens / seconds of one eval from an empty\n"
    "                     session\n"
    "      decode_tok_s   tokens / second generating n tokens one at a time\n"
    "                     after a 16-token prompt (greedy, end-of-sequence\n"
    "                     ignored); counts the n-1 steps after the first token,\n"
    "                     null if n < 2\n"
    "      load_s         wall time of nmlx_model_load\n"
    "      peak_rss_mb    peak resident memory of the process (MiB)\n"
    "    plus threads, p, n, reps, model_type and vocab. Prompt ids are\n"
    "    pseudo-random in [0, vocab) from --seed, so no tokenizer is needed.\n"
    "    With -r > 1 the rates are medians over the repetitions.\n"
    "    p + 16 + n must fit in the model's context.\n"
    "\n"
    "OPTIONS\n"
    "    -m, --model DIR      model folder (config.json + *.safetensors)\n"
    "    -p, --prompt N       prefill length in tokens, in [1, 1000000] (default 512)\n"
    "    -n, --max-tokens N   decode length in tokens, in [0, 1000000] (default 128)\n"
    "    -t, --threads N      worker threads; 0 = all cores (default: library)\n"
    "    --bits N             quantize float weights on load (MLX affine, group 64)\n"
    "    -r, --reps N         repetitions, in [1, 1000] (default 1)\n"
    "        --seed S         seed of the prompt ids (default 1234)\n"
    CLI_KV_USAGE
    "    -h, --help           show this text\n"
    "\n"
    "EXIT STATUS\n"
    "    0 on success, 1 on failure, 2 on a usage error.\n"
    "\n"
    "EXAMPLE\n"
    "    nmlx bench -m models/qwen3-0.6b -p 512 -n 128 -t 2 -r 3\n";

/* splitmix64: a tiny seeded generator for reproducible prompt ids. */
static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, size_t n) {
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Times the token callbacks of the decode run. */
typedef struct decode_clock {
    size_t count;
    double first, last;
} decode_clock;

static int on_token(void *user, int32_t id, const char *text, size_t len) {
    (void)id;
    (void)text;
    (void)len;
    decode_clock *c = user;
    double t = cli_now();
    if (c->count++ == 0) c->first = t;
    c->last = t;
    return 0;
}

/* Writes s as a JSON string literal. */
static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

int cmd_bench(int argc, char **argv) {
    const char *dir = NULL;
    int threads = -1, p = 512, n = 128, reps = 1;
    uint64_t seed = 1234;
    const cli_option opts[] = {
        {"-m", "--model", CLI_STR, &dir, 0, 0, NULL},
        {"-p", "--prompt", CLI_INT, &p, 1, 1e6, NULL},
        {"-n", "--max-tokens", CLI_INT, &n, 0, 1e6, NULL},
        {"-t", "--threads", CLI_INT, &threads, 0, 1024, NULL},
        {NULL, "--bits", CLI_INT, &cli_quantize_bits, 2, 8, NULL},
        {"-r", "--reps", CLI_INT, &reps, 1, 1000, NULL},
        {NULL, "--seed", CLI_U64, &seed, 0, 0, NULL},
        CLI_KV_OPTIONS,
    };
    int r = cli_parse("bench", usage, argc, argv, opts, sizeof opts / sizeof opts[0]);
    if (r != CLI_PARSED) return r;
    if (!dir) {
        cli_error("bench", "missing -m DIR (see 'nmlx bench --help')");
        return CLI_EXIT_USAGE;
    }

    int rc = CLI_EXIT_FAIL;
    nmlx_session *session = NULL;
    int32_t *ids = NULL;
    double *prefill = NULL, *decode = NULL;
    double load_s = 0;
    nmlx_model *model = cli_load_model("bench", dir, threads, 1, &load_s);
    if (!model) goto cleanup;
    int32_t vocab = nmlx_model_vocab_size(model);
    int64_t ctx = nmlx_model_max_context(model);
    if ((int64_t)p + DECODE_PROMPT + n > ctx) {
        cli_error("bench",
                  "-p %d + %d (decode prompt) + -n %d = %lld tokens exceed the context of %lld; "
                  "lower -p or -n",
                  p, DECODE_PROMPT, n, (long long)p + DECODE_PROMPT + n, (long long)ctx);
        rc = CLI_EXIT_USAGE;
        goto cleanup;
    }
    ids = malloc((size_t)(p > DECODE_PROMPT ? p : DECODE_PROMPT) * sizeof *ids);
    prefill = malloc((size_t)reps * sizeof *prefill);
    decode = malloc((size_t)reps * sizeof *decode);
    if (!ids || !prefill || !decode) {
        cli_error("bench", "out of memory");
        goto cleanup;
    }
    uint64_t state = seed;
    for (int i = 0; i < (p > DECODE_PROMPT ? p : DECODE_PROMPT); i++)
        ids[i] = (int32_t)(splitmix64(&state) % (uint64_t)vocab);
    if (nmlx_session_create(model, cli_session_params(), &session) != NMLX_OK) {
        cli_lib_error("bench", "creating session");
        goto cleanup;
    }

    for (int rep = 0; rep < reps; rep++) {
        nmlx_session_reset(session);
        double t0 = cli_now();
        if (nmlx_session_eval(session, ids, (size_t)p, 0) != NMLX_OK) {
            cli_lib_error("bench", "prefill");
            goto cleanup;
        }
        prefill[rep] = (double)p / (cli_now() - t0);

        nmlx_session_reset(session);
        decode_clock clock = {0};
        nmlx_generate_params gp = nmlx_generate_default_params();
        gp.max_tokens = n;
        gp.ignore_eos = 1;
        gp.sampler = nmlx_sampler_default_params();
        gp.sampler.temperature = 0;
        gp.on_token = on_token;
        gp.user = &clock;
        if (n > 0 && nmlx_generate(session, ids, DECODE_PROMPT, &gp, NULL) != NMLX_OK) {
            cli_lib_error("bench", "decode");
            goto cleanup;
        }
        double span = clock.last - clock.first;
        decode[rep] = clock.count >= 2 && span > 0 ? (double)(clock.count - 1) / span : -1;
    }

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double prefill_med = median(prefill, (size_t)reps), decode_med = median(decode, (size_t)reps);
    printf("{\"model_type\":");
    json_string(stdout, nmlx_model_type(model));
    printf(",\"vocab\":%d,\"threads\":%d,\"p\":%d,\"n\":%d,\"reps\":%d", (int)vocab,
           threads > 0 ? threads : cli_cpu_count(), p, n, reps);
    printf(",\"load_s\":%.6f,\"prefill_tok_s\":%.3f", load_s, prefill_med);
    if (decode_med > 0)
        printf(",\"decode_tok_s\":%.3f", decode_med);
    else
        printf(",\"decode_tok_s\":null");
    if (cli_kv_bits) printf(",\"kv_bits\":%d", cli_kv_bits);
    printf(",\"peak_rss_mb\":%.1f}\n", (double)ru.ru_maxrss / 1024.0);
    if (fflush(stdout) != 0) {
        cli_error("bench", "cannot write to stdout");
        goto cleanup;
    }
    rc = CLI_EXIT_OK;
cleanup:
    free(ids);
    free(prefill);
    free(decode);
    nmlx_session_free(session);
    nmlx_model_free(model);
    return rc;
}
