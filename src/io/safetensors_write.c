/* safetensors writer (see safetensors_write.h). */
#define _POSIX_C_SOURCE 200809L
#include "safetensors_write.h"

#include "io/file_write.h"

#include <jansson.h>
#include <string.h>

static size_t item_bytes(const nmlx_st_item *it) {
    size_t n = nmlx_dtype_size(it->dtype);
    for (int d = 0; d < it->ndim; d++) n *= (size_t)it->shape[d];
    return n;
}

nmlx_status nmlx_st_write_fd(int fd, const char *label, const nmlx_st_item *items, size_t n) {
    nmlx_status st = NMLX_OK;
    char *text = NULL, *hdr = NULL;
    json_t *root = json_object(), *meta = json_object();
    CHECK(root && meta, NMLX_ERR_NOMEM, "%s: out of memory", label);
    json_object_set_new(meta, "format", json_string("mlx"));
    json_object_set_new(root, "__metadata__", meta);
    meta = NULL;
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_object(), *shape = json_array(), *offs = json_array();
        CHECK(t && shape && offs, NMLX_ERR_NOMEM, "%s: out of memory", label);
        for (int d = 0; d < items[i].ndim; d++)
            json_array_append_new(shape, json_integer(items[i].shape[d]));
        uint64_t nb = item_bytes(&items[i]);
        json_array_append_new(offs, json_integer((json_int_t)off));
        json_array_append_new(offs, json_integer((json_int_t)(off + nb)));
        off += nb;
        json_object_set_new(t, "dtype", json_string(nmlx_dtype_name(items[i].dtype)));
        json_object_set_new(t, "shape", shape);
        json_object_set_new(t, "data_offsets", offs);
        CHECK(json_object_set_new(root, items[i].name, t) == 0, NMLX_ERR_NOMEM,
              "%s: cannot add tensor '%s'", label, items[i].name);
    }
    text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    CHECK(text, NMLX_ERR_NOMEM, "%s: out of memory", label);
    size_t len = strlen(text), padded = (len + 7) & ~(size_t)7;
    hdr = nmlx_malloc(8 + padded);
    CHECK(hdr, NMLX_ERR_NOMEM, "%s: out of memory", label);
    uint64_t hl = padded; /* little-endian u64 (x86-64 / aarch64 hosts) */
    memcpy(hdr, &hl, 8);
    memcpy(hdr + 8, text, len);
    memset(hdr + 8 + len, ' ', padded - len);
    TRY(nmlx_io_write_all(fd, label, hdr, 8 + padded));
    for (size_t i = 0; i < n; i++) TRY(nmlx_io_write_all(fd, label, items[i].data, item_bytes(&items[i])));
cleanup:
    json_decref(meta);
    json_decref(root);
    free(text);
    nmlx_free(hdr);
    return st;
}
