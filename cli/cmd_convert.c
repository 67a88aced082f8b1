/* nmlx convert: quantize a float HF checkpoint into an MLX affine one. */
#include "args.h"
#include "commands.h"

#include <stdio.h>
#include <string.h>
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
    progress pr = {.tty = isatty(STDERR_FILENO)};
    if (show || pr.tty) cp.on_progress = on_progress, cp.user = &pr;
    nmlx_status st = nmlx_convert(dir, out, &cp);
    if (pr.tty) fputs("\r\033[K", stderr);
    if (st != NMLX_OK) {
        cli_lib_error("convert", "converting");
        return CLI_EXIT_FAIL;
    }
    printf("{\"output\":\"%s\",\"bits\":%d,\"group_size\":%d}\n", out, cp.bits, cp.group_size);
    return CLI_EXIT_OK;
}
