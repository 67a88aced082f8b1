/* libFuzzer harness: the input is a .safetensors file. Opening must fail
 * cleanly, or every tensor it lists must lie inside the file's data region
 * with a consistent size and hold exactly the input's bytes there. ASan
 * does not see reads past an mmap (and bytes past the end of a file read as
 * zeros up to the end of its page), so the bounds are checked against an
 * independent reading of the header here. */
#include "fuzz_util.h"
#include "io/safetensors.h"

#include <jansson.h>

/* The tensor's [begin, end) in the data region, from our own parse of the
 * header; traps unless it lies inside the input and matches the loader. */
static void check_against_input(const json_t *hdr, const nmlx_tensor *t, const uint8_t *data,
                                size_t size, uint64_t hlen) {
    const json_t *offs = json_object_get(json_object_get(hdr, t->name), "data_offsets");
    json_int_t b = json_integer_value(json_array_get(offs, 0));
    json_int_t e = json_integer_value(json_array_get(offs, 1));
    uint64_t region = size - 8 - hlen, nb = nmlx_tensor_nbytes(t);
    if (b < 0 || e < b || (uint64_t)e > region || (uint64_t)(e - b) != nb) __builtin_trap();
    if (nb && memcmp(t->data, data + 8 + hlen + b, nb) != 0) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("model.safetensors", data, size);
    nmlx_weights *w = NULL;
    nmlx_status st = nmlx_weights_open_file(path, &w);
    fuzz_expect_error(st);
    if (st != NMLX_OK) {
        if (w) __builtin_trap();
        return 0;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | data[i];
    if (size < 8 || hlen > size - 8) __builtin_trap(); /* loaded: the header fits */
    json_t *hdr = json_loadb((const char *)data + 8, (size_t)hlen, 0, NULL);
    if (!json_is_object(hdr)) __builtin_trap();
    size_t total = 0;
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < nmlx_weights_count(w); i++) {
        const nmlx_tensor *t = nmlx_weights_at(w, i);
        size_t nb = nmlx_tensor_nbytes(t);
        const uint8_t *p = t->data;
        for (size_t k = 0; k < nb; k++)
            sink ^= p[k];
        total += nb;
        check_against_input(hdr, t, data, size, hlen);
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
    json_decref(hdr);
    nmlx_weights_close(w);
    return 0;
}
