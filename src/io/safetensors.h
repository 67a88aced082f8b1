/* safetensors over mmap: one file, or a model folder (model.safetensors,
 * model.safetensors.index.json + shards, or every *.safetensors). Every
 * header is validated: JSON, dtypes, shapes, offsets against the file size,
 * no overlaps. Depends on common.h, compute/tensor.h and jansson.
 *
 * Errors: open/stat/mmap failures NMLX_ERR_IO; malformed headers or index
 * NMLX_ERR_FORMAT; dtypes other than F32 F16 BF16 U32 U8 I8 I32 I64 (F64,
 * F8_*, BOOL...) and more than NMLX_MAX_DIMS dims NMLX_ERR_UNSUPPORTED. The
 * message names the file and the tensor.
 *
 * Data: tensor->data points into a PROT_READ, MAP_PRIVATE map of the file,
 * valid until nmlx_weights_close. Never write through it (it would fault).
 * It is NOT guaranteed to be aligned for its dtype (writers usually pad the
 * header so data starts 8-aligned, but a file may pack, e.g., a U8 tensor of
 * odd length before an F32 one): kernels must not assume alignment.
 * A zero-size tensor has numel 0; a scalar has ndim 0 and numel 1. */
#ifndef NMLX_SAFETENSORS_H
#define NMLX_SAFETENSORS_H

#include "common.h"
#include "compute/tensor.h"

typedef struct nmlx_weights nmlx_weights;

/* Opens one .safetensors file. */
nmlx_status nmlx_weights_open_file(const char *path, nmlx_weights **out);
/* Opens a model folder's weights, first match wins:
 *  1. model.safetensors.index.json: each distinct shard of its weight_map is
 *     opened once (in name order); a missing shard, or a tensor the index
 *     names but its shard lacks, is an error naming both.
 *  2. model.safetensors alone.
 *  3. every *.safetensors in the folder, in name order; none -> NMLX_ERR_IO
 *     "no .safetensors files in DIR".
 * The same tensor name in two files is an error naming both files. */
nmlx_status nmlx_weights_open_dir(const char *dir, nmlx_weights **out);
void nmlx_weights_close(nmlx_weights *w);

size_t nmlx_weights_count(const nmlx_weights *w);
/* i-th tensor (file order: files as opened, within a file by data offset);
 * its name is set and owned by `w`. NULL past the end. */
const nmlx_tensor *nmlx_weights_at(const nmlx_weights *w, size_t i);
/* NULL if absent (no error recorded). O(1) average (hash). */
const nmlx_tensor *nmlx_weights_find(const nmlx_weights *w, const char *name);
/* Like find, but a missing tensor, another number of dims or another shape
 * is an error (NMLX_ERR_FORMAT) naming the tensor and the expected/actual
 * shape. Pass ndim shape values; a negative value accepts any size in that
 * dim. */
nmlx_status nmlx_weights_get(const nmlx_weights *w, const char *name, int ndim,
                             const int64_t *shape, const nmlx_tensor **out);
/* Total bytes of tensor data mapped. */
size_t nmlx_weights_nbytes(const nmlx_weights *w);
/* Drops this process's resident pages of [p, p + bytes) where the range
 * lies in one of w's file mappings (whole pages inside it only): the data
 * stays readable (a later access faults it back in from the page cache),
 * but stops counting in RSS. For one-pass readers such as quantize-on-load.
 * Anything outside w's mappings is left alone. */
void nmlx_weights_release(const nmlx_weights *w, const void *p, size_t bytes);
/* Files changed on disk while mapped (docs/robustness.md): the weights are
 * a MAP_PRIVATE mapping, which does not snapshot the file. A file replaced
 * by a rename (how nmlx convert and the hub cache write) or deleted is
 * harmless: the mapping keeps the old contents. A file truncated in place
 * makes any read of the pages past its new end raise SIGBUS; one rewritten
 * in place shows the new bytes under the old header. nmlx_weights_verify
 * looks again at every mapped file still under its name (same device and
 * inode): shorter than when opened -> NMLX_ERR_IO "truncated on disk";
 * another size or modification time -> NMLX_ERR_IO "modified on disk".
 * A stat per file; model load and nmlx_convert call it when done. */
nmlx_status nmlx_weights_verify(const nmlx_weights *w);
/* The file's __metadata__ string value for key, or NULL. With several
 * files, the first file (in open order) that has the key. */
const char *nmlx_weights_metadata(const nmlx_weights *w, const char *key);

#endif
