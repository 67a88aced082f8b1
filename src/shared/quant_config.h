/* config.json `quantization` / `quantization_config` as mlx-lm reads it
 * (docs/quantization.md): global bits / group_size / mode, and per-module
 * overrides keyed by module path (a dict of parameters, or false for a
 * module left unquantized). */
#ifndef NMLX_QUANT_CONFIG_H
#define NMLX_QUANT_CONFIG_H

#include "common.h"
#include "compute/tensor.h"
#include "io/safetensors.h"

typedef struct nmlx_quant_params {
    nmlx_quant_mode mode; /* NMLX_QUANT_NONE: not quantized */
    int bits, group_size;
} nmlx_quant_params;

typedef struct nmlx_quant_config {
    bool present;             /* the config has a quantization entry */
    nmlx_quant_params global; /* mode NONE if !present */
    void *json;               /* private: the parsed entry (per-module lookups) */
} nmlx_quant_config;

/* Reads the quantization entry of config.json at `path` (root
 * `quantization`, else `quantization_config`, else text_config's
 * `quantization_config`). No entry: *qc = {present = false}. Unsupported
 * mode/bits/group size, AWQ/GPTQ methods or malformed values fail naming
 * the field. Free with nmlx_quant_config_free. */
nmlx_status nmlx_quant_config_load(const char *path, nmlx_quant_config *qc);
void nmlx_quant_config_free(nmlx_quant_config *qc);

/* Per-module decision for module path `module` ("model.layers.0.mlp.up_proj"):
 * 1 = named with parameters (*p filled), 0 = named false or covered by the
 * HF mxfp4 config's `modules_to_not_convert` patterns, -1 = not named
 * (mlx-lm then quantizes iff `<module>.scales` exists, with the globals). */
int nmlx_quant_config_module(const nmlx_quant_config *qc, const char *module,
                             nmlx_quant_params *p);

/* Checks every `<module>.scales` of the weights against the config: the
 * module is not configured false, mode/bits/group size from the config
 * match the packed shapes, biases present for affine. Errors name the
 * tensor. `config_path` for messages. */
nmlx_status nmlx_quant_config_check(const nmlx_quant_config *qc, const nmlx_weights *ws,
                                    const char *config_path);

#endif
