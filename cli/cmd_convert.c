/* nmlx convert: quantize a float HF checkpoint into an MLX affine one.
 *
 * The conversion runs in a child process: nmlx_convert writes into
 * `<OUT>.tmp-<pid>` and removes it on any failure it sees, but a process
 * killed part-way (Ctrl-C, SIGTERM, SIGXFSZ, the OOM killer) sees nothing.
 * The parent waits, passes SIGINT / SIGTERM / SIGHUP / SIGQUIT on to the
 * child, and when the child dies of a signal removes its temporary folder,
 * so an interrupted convert leaves neither OUT nor a partial copy beside it. */
#define _POSIX_C_SOURCE 200809L

#include "args.h"
#include "commands.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char usage[] =
    "usage: nmlx convert -m DIR -o OUT [--bits 4] [--group-size 64] [--dtype bf16] [--progress]\n"
    "\n"
    "Quantizes every Linear/Embedding weight of a float checkpoint (2-D *.weight\n"
    "whose input width is a multiple of the group size) the way mlx-lm does\n"
    "(docs/quantization.md) and writes a checkpoint mlx-lm can load: same tensor\n"
    "names plus .scales/.biases, config.json with `quantization`, tokenizer files\n"
    "copied. OUT must not exist; it appears only when complete.\n"
    "\n"
    "    -m, --model DIR      source folder (config.json + safetensors)\n"
    "    -o, --output OUT     output folder\n"
    "    --bits N             2, 3, 4, 5, 6 or 8 (default 4)\n"
    "    --group-size N       32, 64 or 128 (default 64)\n"
    "    --dtype T            f32|f16|bf16 for scales/biases and unquantized tensors\n"
    "                         (default: as stored)\n"
    "    --progress           one line per tensor on stderr (on a terminal the\n"
    "                         progress is redrawn in place without this flag)\n"
    "\n"
    "On success one JSON line {\"output\",\"bits\",\"group_size\"} goes to stdout.\n";

typedef struct progress {
    int tty; /* redraw one line in place */
} progress;

/* nmlx_convert_params.on_progress: "[ 12/291] name" on stderr. */
static void on_progress(void *user, size_t done, size_t total, const char *name) {
    const progress *p = user;
    int width = snprintf(NULL, 0, "%zu", total);
    if (p->tty) {
        fprintf(stderr, "\rnmlx convert: [%*zu/%zu] %.60s\033[K", width, done, total, name);
        if (done == total) fprintf(stderr, "\rnmlx convert: %zu tensors; writing\033[K", total);
    } else {
        fprintf(stderr, "nmlx convert: [%*zu/%zu] %s\n", width, done, total, name);
    }
    fflush(stderr);
}

/* The conversion itself; returns the exit code. */
static int convert_here(const char *dir, const char *out, nmlx_convert_params *cp, int show) {
    progress pr = {.tty = isatty(STDERR_FILENO)};
    if (show || pr.tty) cp->on_progress = on_progress, cp->user = &pr;
    nmlx_status st = nmlx_convert(dir, out, cp);
    if (pr.tty) fputs("\r\033[K", stderr);
    if (st != NMLX_OK) {
        cli_lib_error("convert", "converting");
        return CLI_EXIT_FAIL;
    }
    printf("{\"output\":\"%s\",\"bits\":%d,\"group_size\":%d}\n", out, cp->bits, cp->group_size);
    return CLI_EXIT_OK;
}

/* Removes the temporary folder nmlx_convert(out) makes in process `pid`,
 * `<out>.tmp-<pid>` (out without trailing slashes), and the files in it. */
static void remove_partial(const char *out, pid_t pid) {
    size_t olen = strlen(out);
    while (olen > 1 && out[olen - 1] == '/')
        olen--;
    size_t cap = olen + 32;
    char *tmp = malloc(cap);
    if (!tmp) return;
    snprintf(tmp, cap, "%.*s.tmp-%ld", (int)olen, out, (long)pid);
    struct stat sb;
    if (lstat(tmp, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(tmp);
        struct dirent *de;
        size_t pcap = strlen(tmp) + 300;
        char *p = malloc(pcap);
        while (d && p && (de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            snprintf(p, pcap, "%s/%s", tmp, de->d_name);
            unlink(p);
        }
        free(p);
        if (d) closedir(d);
        rmdir(tmp);
    }
    free(tmp);
}

static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
enum { N_FORWARDED = sizeof forwarded / sizeof forwarded[0] };
static volatile sig_atomic_t caught, worker;

static void on_signal(int sig) {
    caught = sig;
    if (worker > 0) kill((pid_t)worker, sig);
}

static int convert_supervised(const char *dir, const char *out, nmlx_convert_params *cp, int show) {
    sigset_t block, old;
    sigemptyset(&block);
    for (int i = 0; i < N_FORWARDED; i++)
        sigaddset(&block, forwarded[i]);
    sigprocmask(SIG_BLOCK, &block, &old);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid <= 0) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        if (pid < 0) return convert_here(dir, out, cp, show); /* no child: convert here */
        /* exit, not _exit: stdio flushed, and LeakSanitizer still runs in ASan builds
         * (nmlx_convert has joined its threads by now) */
        exit(convert_here(dir, out, cp, show));
    }
    worker = pid;
    /* signals the caller ignores (a background job's SIGINT) stay ignored,
     * in both processes */
    struct sigaction sa, prev[N_FORWARDED];
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    bool installed[N_FORWARDED] = {false};
    for (int i = 0; i < N_FORWARDED; i++)
        if (sigaction(forwarded[i], NULL, &prev[i]) == 0 && prev[i].sa_handler == SIG_DFL)
            installed[i] = sigaction(forwarded[i], &sa, NULL) == 0;
    sigprocmask(SIG_SETMASK, &old, NULL);
    int status = 0;
    pid_t w;
    while ((w = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
    }
    for (int i = 0; i < N_FORWARDED; i++)
        if (installed[i]) sigaction(forwarded[i], &prev[i], NULL);
    worker = 0;
    if (w == pid && WIFEXITED(status)) return WEXITSTATUS(status);
    int sig = w == pid && WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    remove_partial(out, pid);
    if (caught) raise(caught); /* die of the signal we were sent, as without the child */
    if (sig)
        cli_error("convert", "the conversion was killed by signal %d (%s); nothing was written",
                  sig, strsignal(sig));
    else
        cli_error("convert", "lost the conversion process: %s", strerror(errno));
    return CLI_EXIT_FAIL;
}

int cmd_convert(int argc, char **argv) {
    const char *dir = NULL, *out = NULL, *dtype = NULL;
    int show = 0;
    nmlx_convert_params cp = nmlx_convert_default_params();
    const cli_option opts[] = {
        {"-m", "--model", CLI_STR, &dir, 0, 0, NULL},
        {"-o", "--output", CLI_STR, &out, 0, 0, NULL},
        {NULL, "--bits", CLI_INT, &cp.bits, 2, 8, NULL},
        {NULL, "--group-size", CLI_INT, &cp.group_size, 32, 128, NULL},
        {NULL, "--dtype", CLI_STR, &dtype, 0, 0, NULL},
        {NULL, "--progress", CLI_FLAG, &show, 0, 0, NULL},
    };
    int r = cli_parse("convert", usage, argc, argv, opts, sizeof opts / sizeof opts[0]);
    if (r != CLI_PARSED) return r;
    if (!dir || !out) {
        cli_error("convert", "missing %s (see 'nmlx convert --help')", !dir ? "-m DIR" : "-o OUT");
        return CLI_EXIT_USAGE;
    }
    if (dtype) {
        const char *names[][2] = {{"f32", "float32"},   {"float32", "float32"},
                                  {"f16", "float16"},   {"float16", "float16"},
                                  {"bf16", "bfloat16"}, {"bfloat16", "bfloat16"}};
        cp.dtype = NULL;
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (!strcmp(dtype, names[i][0])) cp.dtype = names[i][1];
        if (!cp.dtype) {
            cli_error("convert", "--dtype must be f32, f16 or bf16 (got '%s')", dtype);
            return CLI_EXIT_USAGE;
        }
    }
    return convert_supervised(dir, out, &cp, show);
}
