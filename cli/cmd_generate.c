/* `nmlx generate`: prompt ids in, generated ids out as one comma-separated
 * line. Greedy unless --temp is given, so by default it is deterministic. */
#include "args.h"
#include "commands.h"

#include <stdlib.h>

static const char usage[] =
    "NAME\n"
    "    nmlx generate - generate token ids from prompt ids\n"
    "\n"
    "SYNOPSIS\n"
    "    nmlx generate -m DIR --ids ID,ID,... [-n N] [--ignore-eos] [--temp T]\n"
    "                  [--top-p P] [--top-k K] [--min-p P] [--repeat-penalty R]\n"
    "                  [--repeat-last-n N] [--seed S] [-t N]\n"
    "\n"
    "DESCRIPTION\n"
    "    Loads the model in DIR, evaluates the prompt ids and generates up to N\n"
    "    tokens, stopping early at an end-of-sequence id unless --ignore-eos is\n"
    "    given. Prints the generated ids (not the prompt) on one line,\n"
    "    comma-separated; the line is empty if nothing was generated.\n"
    "    Sampling is greedy (--temp 0) unless flags say otherwise; the model's\n"
    "    generation_config.json is not applied here.\n"
    "\n"
    "OPTIONS\n"
    "    -m, --model DIR      model folder (config.json + *.safetensors)\n"
    "        --ids LIST       prompt ids, comma-separated, each in [0, vocab)\n"
    "    -n, --max-tokens N   tokens to generate, in [0, 1000000] (default 16)\n"
    "        --ignore-eos     do not stop at end-of-sequence ids: exactly N tokens\n"
    "                         (fewer only if the context fills up)\n" CLI_SAMPLING_USAGE
    "    -t, --threads N      worker threads; 0 = all cores (default: library)\n"
    CLI_KV_USAGE
    "    -h, --help           show this text\n"
    "\n"
    "EXIT STATUS\n"
    "    0 on success, 1 on failure, 2 on a usage error.\n"
    "\n"
    "EXAMPLE\n"
    "    nmlx generate -m tests/fixtures/llama --ids 1,2,3 -n 16 --ignore-eos\n";

typedef struct collected {
    int32_t *ids;
    size_t n, cap;
} collected;

static int collect(void *user, int32_t id, const char *text, size_t len) {
    (void)text;
    (void)len;
    collected *c = user;
    if (c->n >= c->cap) return 1; /* more than asked for: stop */
    c->ids[c->n++] = id;
    return 0;
}

int cmd_generate(int argc, char **argv) {
    const char *dir = NULL;
    int threads = -1, max_tokens = 16, ignore_eos = 0;
    cli_ids ids = {0};
    cli_sampling samp = {0};
    const cli_option opts[] = {
        {"-m", "--model", CLI_STR, &dir, 0, 0, NULL},
        {NULL, "--ids", CLI_IDS, &ids, 0, 0, NULL},
        {"-n", "--max-tokens", CLI_INT, &max_tokens, 0, 1e6, NULL},
        {NULL, "--ignore-eos", CLI_FLAG, &ignore_eos, 0, 0, NULL},
        {"-t", "--threads", CLI_INT, &threads, 0, 1024, NULL},
        CLI_SAMPLING_OPTIONS(samp),
        CLI_KV_OPTIONS,
    };
    int r = cli_parse("generate", usage, argc, argv, opts, sizeof opts / sizeof opts[0]);
    if (r != CLI_PARSED) return r;

    int rc = CLI_EXIT_USAGE;
    nmlx_model *model = NULL;
    nmlx_session *session = NULL;
    collected out = {0};
    if (!dir || !ids.n) {
        cli_error("generate", "missing %s (see 'nmlx generate --help')",
                  !dir ? "-m DIR" : "--ids LIST");
        goto cleanup;
    }
    rc = CLI_EXIT_FAIL;
    model = cli_load_model("generate", dir, threads, 1, NULL);
    if (!model) goto cleanup;
    if (!cli_check_ids("generate", &ids, nmlx_model_vocab_size(model))) {
        rc = CLI_EXIT_USAGE;
        goto cleanup;
    }
    out.cap = (size_t)max_tokens;
    out.ids = malloc((out.cap ? out.cap : 1) * sizeof *out.ids);
    if (!out.ids) {
        cli_error("generate", "out of memory");
        goto cleanup;
    }
    if (max_tokens > 0) {
        if (nmlx_session_create(model, cli_session_params(), &session) != NMLX_OK) {
            cli_lib_error("generate", "creating session");
            goto cleanup;
        }
        nmlx_generate_params gp = nmlx_generate_default_params();
        gp.max_tokens = max_tokens;
        gp.ignore_eos = ignore_eos;
        gp.sampler = cli_sampler(nmlx_sampler_default_params(), &samp);
        gp.on_token = collect;
        gp.user = &out;
        nmlx_session_seed(session, gp.sampler.seed);
        if (nmlx_generate(session, ids.ids, ids.n, &gp, NULL) != NMLX_OK) {
            cli_lib_error("generate", "generating");
            goto cleanup;
        }
    }
    cli_print_ids(stdout, out.ids, out.n);
    putchar('\n');
    if (fflush(stdout) != 0) {
        cli_error("generate", "cannot write to stdout");
        goto cleanup;
    }
    rc = CLI_EXIT_OK;
cleanup:
    free(out.ids);
    nmlx_session_free(session);
    nmlx_model_free(model);
    cli_ids_free(&ids);
    return rc;
}
