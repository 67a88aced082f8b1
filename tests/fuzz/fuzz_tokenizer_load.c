/* libFuzzer harness: the input is a tokenizer.json. Loading must fail
 * cleanly or give a tokenizer that encodes and decodes a fixed text without
 * crashing, and whose streamed decode matches the whole decode. */
#include "fuzz_util.h"

static const char TEXT[] =
    "Hello, world! 123 4567 \xc3\xa9t\xc3\xa9  \t\n<s></s><|endoftext|> "
    "\xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80 don't <unk> \xff\xfe end";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_write("tokenizer.json", data, size);
    nmlx_tokenizer *tok = NULL;
    nmlx_status st = nmlx_tokenizer_load(fuzz_dir(), &tok);
    fuzz_expect_error(st);
    if (st != NMLX_OK) {
        if (tok) __builtin_trap(); /* output untouched on failure */
        return 0;
    }
    fuzz_exercise_tokenizer(tok, TEXT, sizeof TEXT - 1);
    nmlx_tokenizer_free(tok);
    return 0;
}
