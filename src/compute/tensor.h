/* Tensors and dtypes: the data description every layer shares.
 * Depends on nothing else in the project. */
#ifndef NMLX_TENSOR_H
#define NMLX_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum nmlx_dtype {
    NMLX_DT_F32 = 0,
    NMLX_DT_F16,
    NMLX_DT_BF16,
    NMLX_DT_U32,
    NMLX_DT_U8,
    NMLX_DT_I8,
    NMLX_DT_I32,
    NMLX_DT_I64,
    NMLX_DT_COUNT
} nmlx_dtype;

size_t nmlx_dtype_size(nmlx_dtype dt);
const char *nmlx_dtype_name(nmlx_dtype dt); /* "F32", "BF16", ... as in safetensors */

/* A contiguous row-major tensor. `data` lives in backend memory (on the CPU:
 * a host pointer, often into a read-only mmap). Tensors never own data. */
enum { NMLX_MAX_DIMS = 4 };
typedef struct nmlx_tensor {
    nmlx_dtype dtype;
    int ndim;
    int64_t shape[NMLX_MAX_DIMS];
    void *data;
    const char *name; /* for messages; not owned, may be NULL */
} nmlx_tensor;

int64_t nmlx_tensor_numel(const nmlx_tensor *t);
size_t nmlx_tensor_nbytes(const nmlx_tensor *t);

/* How a linear layer's weight is stored. Dense: `w` is [out, in] in
 * F32/F16/BF16. Quantized modes (later): `w` packed, plus scales/biases. */
typedef enum nmlx_quant_mode {
    NMLX_QUANT_NONE = 0,
    NMLX_QUANT_AFFINE, /* MLX affine: w = scale * q + bias per group */
    NMLX_QUANT_MXFP4
} nmlx_quant_mode;

typedef struct nmlx_weight {
    nmlx_tensor w;
    nmlx_tensor scales; /* quantized only */
    nmlx_tensor biases; /* quantized affine only */
    nmlx_quant_mode mode;
    int bits, group_size;
    int64_t rows, cols; /* logical [out, in] */
    /* Keep this matmul's input x in f32: no bf16 rounding of x in the CPU
     * quantized prefill (the LM head: docs/quantization.md, precision). */
    bool f32_input;
} nmlx_weight;

/* Scalar conversions (round-to-nearest-even for narrowing). */
float nmlx_bf16_to_f32(uint16_t h);
uint16_t nmlx_f32_to_bf16(float f);
float nmlx_f16_to_f32(uint16_t h);
uint16_t nmlx_f32_to_f16(float f);
/* Converts n elements of a float dtype (F32/F16/BF16) to f32. */
void nmlx_to_f32(nmlx_dtype dt, const void *src, float *dst, size_t n);
/* Reads element i of a float-dtype buffer as f32. */
float nmlx_load_f32(nmlx_dtype dt, const void *src, size_t i);

#endif
