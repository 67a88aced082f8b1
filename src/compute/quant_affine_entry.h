/* The entry point of a SIMD MLX-affine quantizer (quant_affine_avx2.c,
 * quant_affine_avx512.c), written once: included by each after it defines
 *   INLINE void group(int bits, int gs, nmlx_dtype xdt, const void *src,
 *                     uint8_t *packed, float *scale, float *bias);
 * (one group of gs elements), with QAFFINE_ENTRY set to the entry's name.
 * The hot cases (4 and 8 bits, each source dtype) call `group` with
 * constant bits and dtype, so the compiler specialises them. */
INLINE void groups(int bits, int gs, nmlx_dtype xdt, const void *src, int64_t ng, uint8_t *packed,
                   float *scale, float *bias) {
    const size_t es = nmlx_dtype_size(xdt);
    for (int64_t g = 0; g < ng; g++)
        group(bits, gs, xdt, (const char *)src + (size_t)(g * gs) * es,
              packed + (size_t)(g * gs * bits / 8), scale + g, bias + g);
}

void QAFFINE_ENTRY(int bits, int gs, nmlx_dtype xdt, const void *src, int64_t ng, uint8_t *packed,
                   float *scale, float *bias) {
#define CASE(B, T)                                                                                 \
    if (bits == B && xdt == T) {                                                                   \
        groups(B, gs, T, src, ng, packed, scale, bias);                                            \
        return;                                                                                    \
    }
    CASE(4, NMLX_DT_BF16);
    CASE(8, NMLX_DT_BF16);
    CASE(4, NMLX_DT_F16);
    CASE(8, NMLX_DT_F16);
    CASE(4, NMLX_DT_F32);
    CASE(8, NMLX_DT_F32);
#undef CASE
    groups(bits, gs, xdt, src, ng, packed, scale, bias);
}
