/* A quantized test weight for the CPU kernel tests (test_quant_kernels,
 * test_quant_int8, test_amx_quant_emulated): random rows quantized the
 * way `nmlx convert` writes them. Header-only; include after harness.h. */
#ifndef NMLX_TEST_QUANT_UTIL_H
#define NMLX_TEST_QUANT_UTIL_H

#include "compute/quant.h"

#include <stdlib.h>

/* src [D, N] filled with test_randf(-1, 1) x (1 + 0.3 (i % 7)) and
 * quantized (mode, bits, group gs, scales and biases in sdt; MXFP4: U8
 * scales) into malloc'd codes, scales and biases (biases allocated for
 * every mode). */
static inline nmlx_weight test_quant_weight(nmlx_quant_mode mode, int bits, int gs, nmlx_dtype sdt,
                                            int64_t D, int64_t N, float *src) {
    const int64_t words = nmlx_quant_row_words(N, bits), G = N / gs;
    const nmlx_dtype st = mode == NMLX_QUANT_MXFP4 ? NMLX_DT_U8 : sdt;
    const size_t ses = nmlx_dtype_size(st);
    uint32_t *packed = malloc((size_t)(D * words) * 4);
    char *sc = malloc((size_t)(D * G) * ses), *bi = malloc((size_t)(D * G) * ses);
    for (int64_t i = 0; i < D * N; i++)
        src[i] = test_randf(-1, 1) * (1 + (float)(i % 7) * 0.3f);
    for (int64_t d = 0; d < D; d++)
        nmlx_quant_quantize_row(mode, bits, gs, src + d * N, N, packed + d * words,
                                sc + (size_t)(d * G) * ses, bi + (size_t)(d * G) * ses, sdt);
    nmlx_tensor ts = {.dtype = st, .ndim = 2, .shape = {D, G}, .data = sc}, tb = ts;
    tb.data = bi;
    return (nmlx_weight){
        .w = {.dtype = NMLX_DT_U32, .ndim = 2, .shape = {D, words}, .data = packed},
        .scales = ts,
        .biases = tb,
        .mode = mode,
        .bits = bits,
        .group_size = gs,
        .rows = D,
        .cols = N};
}

#endif
