/* `nmlx run`: text in, streamed text out. Tokenizes the prompt with the
 * model's tokenizer (or takes --ids), generates with the model's recommended
 * sampling (generation_config.json) unless flags override it, streams each
 * token's text to stdout as it comes and prints a stats line on stderr.
 * Ctrl-C stops generation after the current token. */
#define _POSIX_C_SOURCE 200809L

#include "args.h"
#include "commands.h"

#include <inttypes.h>
#include <signal.h>
#include <string.h>

static const char usage[] =
    "NAME\n"
    "    nmlx run - generate text from a prompt, streaming it to stdout\n"
    "\n"
    "SYNOPSIS\n"
    "    nmlx run [-m DIR] -p TEXT [-n N] [--raw] [--temp T] [--top-p P] [--top-k K]\n"
    "             [--min-p P] [--repeat-penalty R] [--repeat-last-n N] [--seed S]\n"
    "             [--ignore-eos] [-t N]\n"
    "    nmlx run -m DIR --ids ID,ID,... [options]\n"
    "\n"
    "DESCRIPTION\n"
    "    Loads the model in DIR, tokenizes TEXT with the model's tokenizer\n"
    "    (adding its special tokens, e.g. BOS) and streams the generated text\n"
    "    to stdout. With --ids the prompt is given as token ids instead; a model\n"
    "    without a tokenizer then prints the generated ids, space-separated.\n"
    "    Sampling follows the model's generation_config.json; each flag below\n"
    "    overrides one setting. At the end a line of statistics (prompt tokens,\n"
    "    prefill and decode speed, why generation stopped) goes to stderr.\n"
    "    Ctrl-C stops generation after the current token.\n"
    "\n"
    "OPTIONS\n"
    "    -m, --model DIR      model folder (config.json + *.safetensors + tokenizer);\n"
    "                         without it, the built-in demo model ($NMLX_DEMO_MODEL\n"
    "                         or the folder this build was configured with)\n"
    "    -p, --prompt TEXT    the prompt\n"
    "        --ids LIST       prompt ids instead of TEXT, comma-separated\n"
    "    -n, --max-tokens N   most tokens to generate, in [0, 1000000] (default 256)\n"
    "        --raw            use the prompt text as is (no chat template); chat\n"
    "                         templates are not applied yet, so this is the\n"
    "                         current behaviour either way\n"
    "        --ignore-eos     do not stop at end-of-sequence ids\n" CLI_SAMPLING_USAGE
    "    -t, --threads N      worker threads; 0 = all cores (default: library)\n" CLI_KV_USAGE
    "    -h, --help           show this text\n"
    "\n"
    "EXIT STATUS\n"
    "    0 on success (also when stopped by Ctrl-C), 1 on failure, 2 on a usage\n"
    "    error.\n"
    "\n"
    "EXAMPLE\n"
    "    nmlx run -m models/qwen3-0.6b -p \"The capital of France is\" -n 32\n";

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

typedef struct stream {
    int print_ids; /* no tokenizer: print ids instead of text */
    size_t n;
    int ends_with_newline;
    int write_failed;
} stream;

static int on_token(void *user, int32_t id, const char *text, size_t len) {
    stream *s = user;
    if (s->print_ids) {
        if (printf(s->n ? " %" PRId32 : "%" PRId32, id) < 0) s->write_failed = 1;
        s->ends_with_newline = 0;
    } else if (text && len) {
        if (fwrite(text, 1, len, stdout) != len) s->write_failed = 1;
        s->ends_with_newline = text[len - 1] == '\n';
    }
    s->n++;
    if (fflush(stdout) != 0) s->write_failed = 1;
    return interrupted || s->write_failed;
}

static const char *finish_name(nmlx_finish_reason f) {
    switch (f) {
    case NMLX_FINISH_EOS: return "eos";
    case NMLX_FINISH_LENGTH: return "length";
    case NMLX_FINISH_STOPPED: return "stopped";
    case NMLX_FINISH_CANCELLED: return "cancelled";
    }
    return "?";
}

int cmd_run(int argc, char **argv) {
    const char *dir = NULL, *prompt = NULL;
    int threads = -1, max_tokens = 256, raw = 0, ignore_eos = 0;
    cli_ids ids = {0};
    cli_sampling samp = {0};
    const cli_option opts[] = {
        {"-m", "--model", CLI_STR, &dir, 0, 0, NULL},
        {"-p", "--prompt", CLI_STR, &prompt, 0, 0, NULL},
        {NULL, "--ids", CLI_IDS, &ids, 0, 0, NULL},
        {"-n", "--max-tokens", CLI_INT, &max_tokens, 0, 1e6, NULL},
        {NULL, "--raw", CLI_FLAG, &raw, 0, 0, NULL},
        {NULL, "--ignore-eos", CLI_FLAG, &ignore_eos, 0, 0, NULL},
        {"-t", "--threads", CLI_INT, &threads, 0, 1024, NULL},
        CLI_SAMPLING_OPTIONS(samp),
        CLI_KV_OPTIONS,
    };
    int r = cli_parse("run", usage, argc, argv, opts, sizeof opts / sizeof opts[0]);
    if (r != CLI_PARSED) return r;
    (void)raw; /* no chat templates yet: every prompt is used raw */

    int rc = CLI_EXIT_USAGE;
    nmlx_model *model = NULL;
    nmlx_session *session = NULL;
    int32_t *tokens = NULL; /* from nmlx_tokenize */
    if ((!prompt && !ids.n) || (prompt && ids.n)) {
        cli_error("run", "%s (see 'nmlx run --help')",
                  prompt ? "give either -p TEXT or --ids LIST, not both"
                         : "missing -p TEXT or --ids LIST");
        goto cleanup;
    }
    rc = CLI_EXIT_FAIL;
    if (!dir && !(dir = cli_demo_model("run"))) goto cleanup;
    model = cli_load_model("run", dir, threads, 0, NULL);
    if (!model) goto cleanup;
    const nmlx_tokenizer *tok = nmlx_model_tokenizer(model);
    const int32_t *prompt_ids = ids.ids;
    size_t n_prompt = ids.n;
    if (prompt) {
        if (!tok) {
            cli_error("run", "model '%s' has no tokenizer (tokenizer.json); use --ids", dir);
            goto cleanup;
        }
        if (nmlx_tokenize(tok, prompt, strlen(prompt), 1, &tokens, &n_prompt) != NMLX_OK) {
            cli_lib_error("run", "tokenizing the prompt");
            goto cleanup;
        }
        if (n_prompt == 0) {
            cli_error("run", "the prompt tokenizes to no tokens");
            goto cleanup;
        }
        prompt_ids = tokens;
    } else if (!cli_check_ids("run", &ids, nmlx_model_vocab_size(model))) {
        rc = CLI_EXIT_USAGE;
        goto cleanup;
    }
    if (nmlx_session_create(model, cli_session_params(), &session) != NMLX_OK) {
        cli_lib_error("run", "creating session");
        goto cleanup;
    }

    stream st = {.print_ids = tok == NULL, .ends_with_newline = 1};
    nmlx_generate_params gp = nmlx_generate_default_params();
    gp.max_tokens = max_tokens;
    gp.ignore_eos = ignore_eos;
    gp.sampler = cli_sampler(nmlx_model_sampler_params(model), &samp);
    gp.on_token = on_token;
    gp.user = &st;
    nmlx_session_seed(session, gp.sampler.seed);

    struct sigaction sa, old_sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_sa);
    nmlx_generate_result res = {0};
    nmlx_status gs =
        max_tokens > 0 ? nmlx_generate(session, prompt_ids, n_prompt, &gp, &res) : NMLX_OK;
    sigaction(SIGINT, &old_sa, NULL);
    if (!st.ends_with_newline) putchar('\n');
    fflush(stdout);
    if (gs != NMLX_OK) {
        cli_lib_error("run", "generating");
        goto cleanup;
    }
    if (st.write_failed) {
        cli_error("run", "cannot write to stdout");
        goto cleanup;
    }
    /* The first token's time is prefill; decode covers the n-1 after it. */
    double pre = res.prefill_seconds, dec = res.decode_seconds;
    fprintf(stderr,
            "[%zu prompt tokens, %.2f tok/s prefill | %zu generated, %.2f tok/s decode | "
            "stop: %s]\n",
            n_prompt, pre > 0 ? (double)n_prompt / pre : 0.0, res.n_generated,
            dec > 0 && res.n_generated > 1 ? (double)(res.n_generated - 1) / dec : 0.0,
            max_tokens > 0 ? finish_name(res.finish) : "length");
    rc = CLI_EXIT_OK;
cleanup:
    nmlx_free(tokens);
    nmlx_session_free(session);
    nmlx_model_free(model);
    cli_ids_free(&ids);
    return rc;
}
