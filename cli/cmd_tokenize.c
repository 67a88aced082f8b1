/* `nmlx tokenize`: tokenizer checks against other implementations.
 *
 *   nmlx tokenize -m DIR [--special]              JSON string per line -> JSON id array per line
 *   nmlx tokenize -m DIR --decode [--skip-special] JSON id array per line -> JSON string per line
 *   nmlx tokenize -m DIR --stream [--skip-special] like --decode, through the streaming
 *                                                 detokenizer (the pieces, joined)
 *
 * DIR needs only tokenizer.json (+ tokenizer_config.json). Uses nmlx.h and
 * jansson (for the JSON lines). */
#define _POSIX_C_SOURCE 200809L
#include "args.h"
#include "commands.h"
#include "nmlx.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: nmlx tokenize -m DIR [--special]\n"
    "       nmlx tokenize -m DIR --decode [--skip-special] [--stream]\n"
    "\n"
    "Reads one JSON value per line on stdin and prints one JSON line per input.\n"
    "Encode (default): a JSON string -> a JSON array of ids.\n"
    "  --special        add the post-processor's special tokens (BOS/EOS), like\n"
    "                   HuggingFace add_special_tokens=True\n"
    "Decode: a JSON array of ids -> a JSON string.\n"
    "  --decode         decode instead of encode\n"
    "  --skip-special   drop special tokens while decoding\n"
    "  --stream         decode through the streaming detokenizer, one id at a time\n"
    "  -m, --model DIR  folder with tokenizer.json (weights not needed)\n";

static int print_ids(const int32_t *ids, size_t n) {
    putchar('[');
    for (size_t i = 0; i < n; i++)
        printf(i ? ",%d" : "%d", (int)ids[i]);
    putchar(']');
    putchar('\n');
    return 0;
}

/* Decodes ids whole or through the streaming detokenizer; *text is malloc'd. */
static nmlx_status decode(const nmlx_tokenizer *tok, const int32_t *ids, size_t n, int skip,
                          int stream, char **text, size_t *len) {
    if (!stream) return nmlx_detokenize(tok, ids, n, skip, text, len);
    nmlx_detokenizer *d = NULL;
    nmlx_status st = nmlx_detokenizer_create(tok, skip, &d);
    if (st != NMLX_OK) return st;
    size_t cap = 64, used = 0;
    char *out = malloc(cap);
    for (size_t i = 0; i <= n && out && st == NMLX_OK; i++) {
        const char *piece;
        size_t pl;
        st = i < n ? nmlx_detokenizer_push(d, ids[i], &piece, &pl)
                   : nmlx_detokenizer_flush(d, &piece, &pl);
        if (st != NMLX_OK) break;
        if (used + pl + 1 > cap) {
            while (used + pl + 1 > cap)
                cap *= 2;
            char *p = realloc(out, cap);
            if (!p) {
                free(out);
                out = NULL;
                break;
            }
            out = p;
        }
        memcpy(out + used, piece, pl);
        used += pl;
    }
    nmlx_detokenizer_free(d);
    if (st == NMLX_OK && !out) st = NMLX_ERR_NOMEM;
    if (st != NMLX_OK) {
        free(out);
        return st;
    }
    out[used] = '\0';
    *text = out;
    *len = used;
    return NMLX_OK;
}

static int decode_line(const nmlx_tokenizer *tok, json_t *v, int skip, int stream, size_t lineno) {
    if (!json_is_array(v)) {
        cli_error("tokenize", "line %zu: expected a JSON array of ids", lineno);
        return 0;
    }
    size_t n = json_array_size(v);
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids) {
        cli_error("tokenize", "out of memory");
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(v, i);
        json_int_t x = json_is_integer(e) ? json_integer_value(e) : -1;
        if (x < 0 || x > INT32_MAX) {
            cli_error("tokenize", "line %zu: element %zu is not a non-negative id", lineno, i);
            free(ids);
            return 0;
        }
        ids[i] = (int32_t)x;
    }
    char *text = NULL;
    size_t len = 0;
    nmlx_status st = decode(tok, ids, n, skip, stream, &text, &len);
    free(ids);
    if (st != NMLX_OK) {
        cli_lib_error("tokenize", "decode");
        return 0;
    }
    json_t *s = json_stringn(text, len);
    nmlx_free(text);
    char *dump = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
    json_decref(s);
    if (!dump) {
        cli_error("tokenize", "line %zu: cannot encode the decoded text as JSON", lineno);
        return 0;
    }
    puts(dump);
    free(dump);
    return 1;
}

static int encode_line(const nmlx_tokenizer *tok, json_t *v, int special, size_t lineno) {
    if (!json_is_string(v)) {
        cli_error("tokenize", "line %zu: expected a JSON string", lineno);
        return 0;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    if (nmlx_tokenize(tok, json_string_value(v), json_string_length(v), special, &ids, &n) !=
        NMLX_OK) {
        cli_lib_error("tokenize", "encode");
        return 0;
    }
    print_ids(ids, n);
    nmlx_free(ids);
    return 1;
}

int cmd_tokenize(int argc, char **argv) {
    const char *dir = NULL;
    int special = 0, do_decode = 0, skip = 0, stream = 0;
    const cli_option opts[] = {
        {"-m", "--model", CLI_STR, &dir, 0, 0, NULL},
        {NULL, "--special", CLI_FLAG, &special, 0, 0, NULL},
        {NULL, "--decode", CLI_FLAG, &do_decode, 0, 0, NULL},
        {NULL, "--skip-special", CLI_FLAG, &skip, 0, 0, NULL},
        {NULL, "--stream", CLI_FLAG, &stream, 0, 0, NULL},
    };
    int r = cli_parse("tokenize", usage, argc, argv, opts, sizeof opts / sizeof opts[0]);
    if (r != CLI_PARSED) return r;
    if (!dir) {
        cli_error("tokenize", "missing -m DIR (see 'nmlx tokenize --help')");
        return CLI_EXIT_USAGE;
    }
    if ((skip || stream) && !do_decode) {
        cli_error("tokenize", "--skip-special and --stream need --decode");
        return CLI_EXIT_USAGE;
    }
    if (special && do_decode) {
        cli_error("tokenize", "--special applies to encoding, not --decode");
        return CLI_EXIT_USAGE;
    }
    nmlx_tokenizer *tok = NULL;
    if (nmlx_tokenizer_load(dir, &tok) != NMLX_OK) {
        cli_lib_error("tokenize", "loading the tokenizer");
        return CLI_EXIT_FAIL;
    }
    int rc = CLI_EXIT_OK;
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t got;
    while ((got = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        json_error_t err;
        json_t *v = json_loadb(line, (size_t)got, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
        if (!v) {
            cli_error("tokenize", "line %zu: invalid JSON: %s", lineno, err.text);
            rc = CLI_EXIT_FAIL;
            break;
        }
        int ok = do_decode ? decode_line(tok, v, skip, stream, lineno)
                           : encode_line(tok, v, special, lineno);
        json_decref(v);
        if (!ok) {
            rc = CLI_EXIT_FAIL;
            break;
        }
    }
    free(line);
    nmlx_tokenizer_free(tok);
    if (fflush(stdout) != 0 && rc == CLI_EXIT_OK) {
        cli_error("tokenize", "cannot write stdout");
        rc = CLI_EXIT_FAIL;
    }
    return rc;
}
