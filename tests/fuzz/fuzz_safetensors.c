/* libFuzzer harness: the input is a .safetensors file. Opening must fail
 * cleanly, or every tensor it lists must lie inside the file (every byte is
 * read, so ASan sees any pointer past the map) with a consistent size. */
#include "fuzz_util.h"
#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("model.safetensors", data, size);
    nmlx_weights *w = NULL;
    nmlx_status st = nmlx_weights_open_file(path, &w);
    fuzz_expect_error(st);
    if (st != NMLX_OK) {
        if (w) __builtin_trap();
        return 0;
    }
    size_t total = 0;
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < nmlx_weights_count(w); i++) {
        const nmlx_tensor *t = nmlx_weights_at(w, i);
        size_t nb = nmlx_tensor_nbytes(t);
        const uint8_t *p = t->data;
        for (size_t k = 0; k < nb; k++)
            sink ^= p[k];
        total += nb;
        if (nmlx_weights_find(w, t->name) != t) __builtin_trap();
        const nmlx_tensor *g;
        int64_t shape[NMLX_MAX_DIMS];
        for (int d = 0; d < t->ndim; d++)
            shape[d] = -1;
        if (nmlx_weights_get(w, t->name, t->ndim, shape, &g) != NMLX_OK || g != t)
            __builtin_trap();
    }
    if (total != nmlx_weights_nbytes(w) || total > size) __builtin_trap();
    (void)nmlx_weights_metadata(w, "format");
    (void)sink;
    nmlx_weights_close(w);
    return 0;
}
