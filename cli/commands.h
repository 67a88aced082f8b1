/* Subcommands of the `nmlx` tool. Each takes argv after the subcommand name
 * (argv[0] is the subcommand), returns the process exit code, prints results
 * on stdout and one-line errors ("nmlx <cmd>: message") on stderr. They use
 * only the public header include/nmlx.h. */
#ifndef NMLX_CLI_COMMANDS_H
#define NMLX_CLI_COMMANDS_H

int cmd_run(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_convert(int argc, char **argv);

#endif
