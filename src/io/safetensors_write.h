/* Writing a safetensors file: header JSON (names, dtypes, shapes, offsets,
 * `__metadata__` {"format": "mlx"}), padded to 8 bytes, then the tensors in
 * the order given. Used by `nmlx convert` and quantize-on-load. */
#ifndef NMLX_SAFETENSORS_WRITE_H
#define NMLX_SAFETENSORS_WRITE_H

#include "common.h"
#include "compute/tensor.h"

typedef struct nmlx_st_item {
    const char *name;
    nmlx_dtype dtype;
    int ndim;
    int64_t shape[NMLX_MAX_DIMS];
    const void *data; /* nbytes = numel * dtype size */
} nmlx_st_item;

/* Writes the items to the open file descriptor fd from its current
 * position; `label` names the destination in messages. */
nmlx_status nmlx_st_write_fd(int fd, const char *label, const nmlx_st_item *items, size_t n);

#endif
