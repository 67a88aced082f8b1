/* `nmlx` command-line tool: dispatches to the subcommands in cli/cmd_*.c. */
#include "commands.h"
#include "nmlx.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} commands[] = {
    {"run", cmd_run, "generate text from a prompt (-p TEXT [-m DIR]; default: the demo model)"},
    {"generate", cmd_generate, "generate ids from prompt ids (-m DIR --ids 1,2,3 -n N)"},
    {"logits", cmd_logits, "write prompt logits as float32 [T, vocab] (-m DIR --ids .. -o FILE)"},
    {"bench", cmd_bench, "prefill/decode speed as one JSON line (-m DIR -p 512 -n 128)"},
    {"convert", cmd_convert, "quantize a float checkpoint to MLX affine (-m DIR -o OUT --bits 4)"},
    {"tokenize", cmd_tokenize, "JSON strings on stdin -> JSON id arrays (-m DIR [--special] [--decode])"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: nmlx <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-9s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n`nmlx <command> --help` shows a command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("nmlx %s\n", nmlx_version());
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "nmlx: unknown command '%s' (try nmlx --help)\n", argv[1]);
    return 2;
}
