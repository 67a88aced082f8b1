/* libFuzzer harness: arbitrary id sequences (negative and out-of-range ids
 * included) into nmlx_detokenize and the streaming detokenizer of real
 * tokenizers. Byte 0 picks the tokenizer; then each 3-byte group is an id:
 * mostly inside the vocabulary, sometimes near its edges or far outside. */
#include "fuzz_util.h"

enum { MAX_IDS = 512 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!fuzz_n_toks) fuzz_load_tokenizers();
    if (size < 1) return 0;
    const nmlx_tokenizer *tok = fuzz_toks[data[0] % fuzz_n_toks];
    int32_t V = nmlx_tokenizer_vocab_size(tok);
    int32_t ids[MAX_IDS];
    size_t n = 0;
    for (size_t i = 1; i + 3 <= size && n < MAX_IDS; i += 3) {
        uint32_t v = (uint32_t)data[i] | (uint32_t)data[i + 1] << 8 | (uint32_t)data[i + 2] << 16;
        switch (v >> 22) { /* top 2 bits of 24: where the id lands */
        case 0:
        case 1: ids[n++] = (int32_t)(v % (uint32_t)V); break;
        case 2: ids[n++] = V - 8 + (int32_t)(v & 15); break; /* around the end */
        default: ids[n++] = (int32_t)(v * 2654435761u); break; /* anywhere, negative too */
        }
    }
    fuzz_check_decode(tok, ids, n);
    return 0;
}
