/* dtype sizes/names, tensor sizes and the scalar float conversions every
 * layer uses (bf16/f16 <-> f32, round-to-nearest-even, NaN/inf safe). */
#include "compute/tensor.h"

#include <string.h>

size_t nmlx_dtype_size(nmlx_dtype dt) {
    switch (dt) {
    case NMLX_DT_F32: return 4;
    case NMLX_DT_F16: return 2;
    case NMLX_DT_BF16: return 2;
    case NMLX_DT_U32: return 4;
    case NMLX_DT_U8: return 1;
    case NMLX_DT_I8: return 1;
    case NMLX_DT_I32: return 4;
    case NMLX_DT_I64: return 8;
    case NMLX_DT_COUNT: break;
    }
    return 0;
}

const char *nmlx_dtype_name(nmlx_dtype dt) {
    switch (dt) {
    case NMLX_DT_F32: return "F32";
    case NMLX_DT_F16: return "F16";
    case NMLX_DT_BF16: return "BF16";
    case NMLX_DT_U32: return "U32";
    case NMLX_DT_U8: return "U8";
    case NMLX_DT_I8: return "I8";
    case NMLX_DT_I32: return "I32";
    case NMLX_DT_I64: return "I64";
    case NMLX_DT_COUNT: break;
    }
    return "?";
}

int64_t nmlx_tensor_numel(const nmlx_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t nmlx_tensor_nbytes(const nmlx_tensor *t) {
    return (size_t)nmlx_tensor_numel(t) * nmlx_dtype_size(t->dtype);
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float nmlx_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t nmlx_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even; overflow rounds to inf */
    return (uint16_t)(u >> 16);
}

float nmlx_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13)); /* inf / nan */
    if (exp == 0) {
        /* zero or subnormal: man * 2^-24, exact in f32 */
        float v = (float)man * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

uint16_t nmlx_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu)); /* NaN */
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: inf */
    if (a < 0x38800000u) {
        /* result is subnormal or zero: value / 2^-24 rounded to nearest even */
        if (a < 0x33000000u) return sign; /* < 2^-25: rounds to zero */
        uint32_t e = a >> 23;              /* 102..112 */
        uint32_t m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e; /* value = m * 2^(e-150); want units of 2^-24 */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    /* normal: rebias exponent, round mantissa from 23 to 10 bits (a carry
     * into the exponent is correct rounding) */
    uint32_t r = a - 0x38000000u; /* exponent bias 127 -> 15 */
    r += 0xfffu + ((r >> 13) & 1u);
    return (uint16_t)(sign | (r >> 13));
}

void nmlx_to_f32(nmlx_dtype dt, const void *src, float *dst, size_t n) {
    switch (dt) {
    case NMLX_DT_F32: memcpy(dst, src, n * sizeof(float)); return;
    case NMLX_DT_F16: {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = nmlx_f16_to_f32(s[i]);
        return;
    }
    case NMLX_DT_BF16: {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = nmlx_bf16_to_f32(s[i]);
        return;
    }
    default:
        for (size_t i = 0; i < n; i++) dst[i] = nmlx_load_f32(dt, src, i);
        return;
    }
}

float nmlx_load_f32(nmlx_dtype dt, const void *src, size_t i) {
    switch (dt) {
    case NMLX_DT_F32: return ((const float *)src)[i];
    case NMLX_DT_F16: return nmlx_f16_to_f32(((const uint16_t *)src)[i]);
    case NMLX_DT_BF16: return nmlx_bf16_to_f32(((const uint16_t *)src)[i]);
    case NMLX_DT_U32: return (float)((const uint32_t *)src)[i];
    case NMLX_DT_U8: return (float)((const uint8_t *)src)[i];
    case NMLX_DT_I8: return (float)((const int8_t *)src)[i];
    case NMLX_DT_I32: return (float)((const int32_t *)src)[i];
    case NMLX_DT_I64: return (float)((const int64_t *)src)[i];
    case NMLX_DT_COUNT: break;
    }
    return 0.0f;
}
