/* Loading MLX-quantized weights (docs/quantization.md): `<name>.weight`
 * U32 packed, `<name>.scales`, `<name>.biases` (affine) or U8 scales
 * (mxfp4). Bits and group size follow from the shapes given the logical
 * [out, in]; nmlx_quant_config_check (model load) has already matched them
 * against config.json. */
#ifndef NMLX_QUANT_LAYERS_H
#define NMLX_QUANT_LAYERS_H

#include "common.h"
#include "compute/tensor.h"
#include "io/safetensors.h"

nmlx_status nmlx_quant_weight_load(nmlx_weight *w, const nmlx_weights *ws, const char *name,
                                   int64_t out, int64_t in);

#endif
