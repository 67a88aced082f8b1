/* libFuzzer harness: arbitrary bytes (invalid UTF-8 included) through
 * nmlx_tokenize of real tokenizers, then decoded whole and streamed. The
 * first byte picks the tokenizer (see fuzz_load_tokenizers). */
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!fuzz_n_toks) fuzz_load_tokenizers();
    if (size < 1) return 0;
    const nmlx_tokenizer *tok = fuzz_toks[data[0] % fuzz_n_toks];
    fuzz_exercise_tokenizer(tok, (const char *)data + 1, size - 1);
    return 0;
}
