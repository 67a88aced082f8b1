/* `nmlx logits`: evaluate prompt ids and write every position's logits as
 * little-endian float32 [T, vocab], row-major. The file appears atomically:
 * it is written to FILE.tmp.XXXXXX beside FILE and renamed on success, and
 * the temporary file is removed on any failure. */
#define _POSIX_C_SOURCE 200809L

#include "args.h"
#include "commands.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char usage[] =
    "NAME\n"
    "    nmlx logits - write the logits of every prompt position to a file\n"
    "\n"
    "SYNOPSIS\n"
    "    nmlx logits -m DIR --ids ID,ID,... -o FILE [-t N]\n"
    "\n"
    "DESCRIPTION\n"
    "    Loads the model in DIR, evaluates the prompt ids from an empty session\n"
    "    and writes their logits to FILE as little-endian float32, shape\n"
    "    [T, vocab], row-major (T = number of ids). FILE is written to a\n"
    "    temporary file beside it and renamed when complete, so it either\n"
    "    appears whole or not at all.\n"
    "\n"
    "OPTIONS\n"
    "    -m, --model DIR      model folder (config.json + *.safetensors)\n"
    "        --ids LIST       prompt ids, comma-separated, each in [0, vocab)\n"
    "    -o, --output FILE    where to write the logits\n"
    "    -t, --threads N      worker threads; 0 = all cores (default: library)\n"
    "    --bits N             quantize float weights on load (MLX affine, group 64)\n"
    CLI_KV_USAGE
    "    -h, --help           show this text\n"
    "\n"
    "EXIT STATUS\n"
    "    0 on success, 1 on failure, 2 on a usage error.\n"
    "\n"
    "EXAMPLE\n"
    "    nmlx logits -m tests/fixtures/llama --ids 1,2,3 -o /tmp/logits.bin\n";

static int host_is_little_endian(void) {
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

/* Writes n floats as little-endian float32; 0 on a write error. */
static int write_f32_le(FILE *f, const float *x, size_t n) {
    if (host_is_little_endian()) return fwrite(x, sizeof *x, n, f) == n;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        unsigned char b[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16),
                              (unsigned char)(u >> 24)};
        if (fwrite(b, 1, 4, f) != 4) return 0;
    }
    return 1;
}

static int write_logits_unblocked(const char *path, const float *x, size_t count);

/* Writes rows x vocab floats to `path` atomically (temp file + rename).
 * While the temporary file exists the signals that end the process wait
 * (SIGINT, SIGTERM, SIGHUP, SIGQUIT: delivered once FILE is complete or
 * removed) and a file-size limit is an EFBIG write error (its SIGXFSZ is
 * dropped): a killed process left FILE.tmp.XXXXXX half-written. */
static int write_logits(const char *path, const float *x, size_t count) {
    sigset_t block, old, xfsz;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    sigaddset(&block, SIGQUIT);
    sigaddset(&block, SIGXFSZ);
    sigprocmask(SIG_BLOCK, &block, &old);
    int ok = write_logits_unblocked(path, x, count);
    sigemptyset(&xfsz);
    sigaddset(&xfsz, SIGXFSZ);
    const struct timespec zero = {0, 0};
    while (sigtimedwait(&xfsz, NULL, &zero) == SIGXFSZ) {
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    return ok;
}

static int write_logits_unblocked(const char *path, const float *x, size_t count) {
    size_t len = strlen(path);
    char *tmp = malloc(len + sizeof ".tmp.XXXXXX");
    if (!tmp) {
        cli_error("logits", "out of memory");
        return 0;
    }
    memcpy(tmp, path, len);
    memcpy(tmp + len, ".tmp.XXXXXX", sizeof ".tmp.XXXXXX");
    int fd = mkstemp(tmp);
    if (fd < 0) {
        cli_error("logits", "cannot write '%s': %s", path, strerror(errno));
        free(tmp);
        return 0;
    }
    /* mkstemp makes the file 0600; give it the mode a plain fopen would. */
    mode_t mask = umask(0);
    umask(mask);
    fchmod(fd, 0666 & ~mask);
    FILE *f = fdopen(fd, "wb");
    int ok = f != NULL;
    if (!f) close(fd);
    if (ok && !write_f32_le(f, x, count)) ok = 0;
    if (f && fclose(f) != 0) ok = 0;
    if (!ok) {
        cli_error("logits", "cannot write '%s': %s", path, strerror(errno));
    } else if (rename(tmp, path) != 0) {
        cli_error("logits", "cannot write '%s': %s", path, strerror(errno));
        ok = 0;
    }
    if (!ok) unlink(tmp);
    free(tmp);
    return ok;
}

int cmd_logits(int argc, char **argv) {
    const char *dir = NULL, *out = NULL;
    int threads = -1;
    cli_ids ids = {0};
    const cli_option opts[] = {
        {"-m", "--model", CLI_STR, &dir, 0, 0, NULL},
        {NULL, "--ids", CLI_IDS, &ids, 0, 0, NULL},
        {"-o", "--output", CLI_STR, &out, 0, 0, NULL},
        {"-t", "--threads", CLI_INT, &threads, 0, 1024, NULL},
        {NULL, "--bits", CLI_INT, &cli_quantize_bits, 2, 8, NULL},
        CLI_KV_OPTIONS,
    };
    int r = cli_parse("logits", usage, argc, argv, opts, sizeof opts / sizeof opts[0]);
    if (r != CLI_PARSED) return r;

    int rc = CLI_EXIT_USAGE;
    nmlx_model *model = NULL;
    nmlx_session *session = NULL;
    if (!dir || !ids.n || !out) {
        cli_error("logits", "missing %s (see 'nmlx logits --help')",
                  !dir     ? "-m DIR"
                  : !ids.n ? "--ids LIST"
                           : "-o FILE");
        goto cleanup;
    }
    rc = CLI_EXIT_FAIL;
    model = cli_load_model("logits", dir, threads, 1, NULL);
    if (!model) goto cleanup;
    int32_t vocab = nmlx_model_vocab_size(model);
    if (!cli_check_ids("logits", &ids, vocab)) {
        rc = CLI_EXIT_USAGE;
        goto cleanup;
    }
    if (nmlx_session_create(model, cli_session_params(), &session) != NMLX_OK) {
        cli_lib_error("logits", "creating session");
        goto cleanup;
    }
    if (nmlx_session_eval(session, ids.ids, ids.n, 1) != NMLX_OK) {
        cli_lib_error("logits", "evaluating prompt");
        goto cleanup;
    }
    size_t rows = 0;
    const float *all = nmlx_session_all_logits(session, &rows);
    if (!all || rows != ids.n) {
        cli_error("logits", "library returned %zu logit rows for %zu ids", all ? rows : 0, ids.n);
        goto cleanup;
    }
    if (!write_logits(out, all, rows * (size_t)vocab)) goto cleanup;
    rc = CLI_EXIT_OK;
cleanup:
    nmlx_session_free(session);
    nmlx_model_free(model);
    cli_ids_free(&ids);
    return rc;
}
