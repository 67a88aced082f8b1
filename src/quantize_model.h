/* Quantizing a whole checkpoint the way mlx-lm's convert does (every 2-D
 * float `*.weight` whose input width divides into groups), into a
 * safetensors file: shared by nmlx_convert (a file renamed into place) and
 * quantize-on-load (an anonymous in-memory file, mmapped back). */
#ifndef NMLX_QUANTIZE_MODEL_H
#define NMLX_QUANTIZE_MODEL_H

#include "common.h"
#include "compute/tensor.h"
#include "io/safetensors.h"

/* sdtype: the dtype of unquantized float tensors and scales/biases;
 * NMLX_DT_COUNT = keep each weight's own dtype. Writes to fd. */
nmlx_status nmlx_quantize_weights_fd(const nmlx_weights *ws, int bits, int group_size,
                                     nmlx_dtype sdtype, int fd, const char *label);

/* Quantize-on-load: returns a weights set that holds the quantized tensors
 * (in an anonymous memory file) and every other tensor of ws copied. */
nmlx_status nmlx_quantize_weights_mem(const nmlx_weights *ws, int bits, int group_size,
                                      nmlx_weights **out);

#endif
