/* safetensors over mmap: one file, or a model folder (model.safetensors,
 * model.safetensors.index.json + shards, or every *.safetensors). Every
 * header is validated: JSON, dtypes, shapes, offsets against the file size,
 * no overlaps. Depends on common.h, compute/tensor.h and jansson. */
#ifndef NMLX_SAFETENSORS_H
#define NMLX_SAFETENSORS_H

#include "common.h"
#include "compute/tensor.h"

typedef struct nmlx_weights nmlx_weights;

/* Opens one .safetensors file. */
nmlx_status nmlx_weights_open_file(const char *path, nmlx_weights **out);
/* Opens a model folder's weights (see above). */
nmlx_status nmlx_weights_open_dir(const char *dir, nmlx_weights **out);
void nmlx_weights_close(nmlx_weights *w);

size_t nmlx_weights_count(const nmlx_weights *w);
/* i-th tensor (file order); its name is set and owned by `w`. */
const nmlx_tensor *nmlx_weights_at(const nmlx_weights *w, size_t i);
/* NULL if absent (no error recorded). O(1) average (hash). */
const nmlx_tensor *nmlx_weights_find(const nmlx_weights *w, const char *name);
/* Like find, but a missing tensor, another number of dims or another shape
 * is an error naming the tensor and the expected/actual shape. Pass ndim
 * shape values; a negative value accepts any size in that dim. */
nmlx_status nmlx_weights_get(const nmlx_weights *w, const char *name,
                             int ndim, const int64_t *shape,
                             const nmlx_tensor **out);
/* Total bytes of tensor data mapped. */
size_t nmlx_weights_nbytes(const nmlx_weights *w);
/* The file's __metadata__ string value for key, or NULL. */
const char *nmlx_weights_metadata(const nmlx_weights *w, const char *key);

#endif
