/* MLX quantized weights: see quant.h and docs/quantization.md. */
#include "quant.h"

#include "quant_affine.h"

#include <math.h>
#include <string.h>

bool nmlx_quant_bits_ok(nmlx_quant_mode mode, int bits) {
    if (mode == NMLX_QUANT_AFFINE)
        return bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8;
    if (mode == NMLX_QUANT_MXFP4) return bits == 4;
    return false;
}

bool nmlx_quant_group_ok(nmlx_quant_mode mode, int group_size) {
    if (mode == NMLX_QUANT_AFFINE) return group_size == 32 || group_size == 64 || group_size == 128;
    if (mode == NMLX_QUANT_MXFP4) return group_size == 32;
    return false;
}

const char *nmlx_quant_mode_name(nmlx_quant_mode mode) {
    switch (mode) {
    case NMLX_QUANT_AFFINE: return "affine";
    case NMLX_QUANT_MXFP4: return "mxfp4";
    default: return "none";
    }
}

static const float fp4_table[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                    -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

float nmlx_fp4_value(unsigned code) { return fp4_table[code & 15u]; }

float nmlx_e8m0_value(uint8_t e) { return ldexpf(1.0f, (e == 0 ? 0 : (int)e) - 127); }

static float store_scalar(nmlx_dtype dt, void *p, size_t i, float v) {
    switch (dt) {
    case NMLX_DT_F16: {
        uint16_t h = nmlx_f32_to_f16(v);
        ((uint16_t *)p)[i] = h;
        return nmlx_f16_to_f32(h);
    }
    case NMLX_DT_BF16: {
        uint16_t h = nmlx_f32_to_bf16(v);
        ((uint16_t *)p)[i] = h;
        return nmlx_bf16_to_f32(h);
    }
    default: ((float *)p)[i] = v; return v;
    }
}

void nmlx_quant_dequant_row(const nmlx_weight *w, int64_t row, int64_t k0, int64_t n, float *dst) {
    const int bits = w->bits, gs = w->group_size;
    const int64_t words = nmlx_quant_row_words(w->cols, bits), groups = w->cols / gs;
    const uint8_t *q = (const uint8_t *)((const uint32_t *)w->w.data + row * words);
    if (w->mode == NMLX_QUANT_MXFP4) {
        const uint8_t *sc = (const uint8_t *)w->scales.data + row * groups;
        for (int64_t i = 0; i < n; i++) {
            int64_t k = k0 + i;
            dst[i] = nmlx_fp4_value(nmlx_quant_code(q, k, 4)) * nmlx_e8m0_value(sc[k / gs]);
        }
        return;
    }
    size_t base = (size_t)(row * groups);
    for (int64_t i = 0; i < n;) {
        int64_t k = k0 + i, g = k / gs, end = (g + 1) * gs - k0;
        if (end > n) end = n;
        float s = nmlx_load_f32(w->scales.dtype, w->scales.data, base + (size_t)g);
        float b = nmlx_load_f32(w->biases.dtype, w->biases.data, base + (size_t)g);
        for (; i < end; i++) dst[i] = s * (float)nmlx_quant_code(q, k0 + i, bits) + b;
    }
}

static void put_code(uint8_t *row, int64_t k, int bits, unsigned code) {
    uint64_t bit = (uint64_t)k * (uint64_t)bits;
    uint8_t *p = row + (bit >> 3);
    unsigned sh = (unsigned)(bit & 7), v = code << sh;
    p[0] |= (uint8_t)(v & 0xffu);
    if (sh + (unsigned)bits > 8) p[1] |= (uint8_t)(v >> 8);
}

/* The reference quantizer (nmlx_quant_quantize_row_ref): every faster path
 * must match it byte for byte (tests/test_quant_affine.c). */
static void quantize_affine(int bits, int gs, const float *src, int64_t cols, uint8_t *packed,
                            void *scales, void *biases, nmlx_dtype sdt) {
    const float nbins = (float)((1 << bits) - 1), eps = 1e-7f;
    for (int64_t g = 0; g < cols / gs; g++) {
        const float *w = src + g * gs;
        float lo = INFINITY, hi = -INFINITY;
        for (int j = 0; j < gs; j++) {
            if (w[j] > hi) hi = w[j];
            if (w[j] < lo) lo = w[j];
        }
        bool lo_edge = fabsf(lo) > fabsf(hi);
        float scale = fmaxf((hi - lo) / nbins, eps);
        if (!lo_edge) scale = -scale;
        float edge = lo_edge ? lo : hi, bias = 0.0f;
        float q0 = rintf(edge / scale);
        if (q0 != 0.0f) {
            scale = edge / q0;
            bias = edge;
        }
        for (int j = 0; j < gs; j++) {
            float q = rintf((w[j] - bias) / scale);
            q = fminf(fmaxf(q, 0.0f), nbins);
            put_code(packed, g * gs + j, bits, (unsigned)q);
        }
        store_scalar(sdt, scales, (size_t)g, scale);
        store_scalar(sdt, biases, (size_t)g, bias);
    }
}

static void quantize_mxfp4(int gs, const float *src, int64_t cols, uint8_t *packed,
                           uint8_t *scales) {
    for (int64_t g = 0; g < cols / gs; g++) {
        const float *w = src + g * gs;
        float amax = 0.0f;
        for (int j = 0; j < gs; j++) amax = fmaxf(amax, fabsf(w[j]));
        float sc = amax / 6.0f;
        int e = sc == 0.0f ? 0 : (int)rintf(log2f(sc));
        if (e < -127) e = -127;
        if (e > 127) e = 127;
        scales[g] = (uint8_t)(e + 127);
        float inv = ldexpf(1.0f, -e);
        for (int j = 0; j < gs; j++) {
            float v = w[j] * inv;
            unsigned best = 0;
            float bd = INFINITY;
            for (unsigned c = 0; c < 16; c++) { /* first minimum, like argmin */
                float d = fabsf(v - fp4_table[c]);
                if (d < bd) bd = d, best = c;
            }
            put_code(packed, g * gs + j, 4, best);
        }
    }
}

void nmlx_quant_quantize_row_ref(nmlx_quant_mode mode, int bits, int group_size, const float *src,
                                 int64_t cols, uint32_t *packed, void *scales, void *biases,
                                 nmlx_dtype sdtype) {
    memset(packed, 0, (size_t)nmlx_quant_row_words(cols, bits) * sizeof(uint32_t));
    if (mode == NMLX_QUANT_MXFP4)
        quantize_mxfp4(group_size, src, cols, (uint8_t *)packed, scales);
    else
        quantize_affine(bits, group_size, src, cols, (uint8_t *)packed, scales, biases, sdtype);
}

void nmlx_quant_quantize_row(nmlx_quant_mode mode, int bits, int group_size, const float *src,
                             int64_t cols, uint32_t *packed, void *scales, void *biases,
                             nmlx_dtype sdtype) {
    /* the SIMD quantizer takes groups of 32/64/128; the quantized KV cache
     * also uses 8 and 16 */
    if (mode != NMLX_QUANT_AFFINE || !nmlx_quant_group_ok(NMLX_QUANT_AFFINE, group_size)) {
        nmlx_quant_quantize_row_ref(mode, bits, group_size, src, cols, packed, scales, biases,
                                    sdtype);
        return;
    }
    if (cols % group_size) /* the reference leaves a partial group's words zero */
        memset(packed, 0, (size_t)nmlx_quant_row_words(cols, bits) * sizeof(uint32_t));
    nmlx_qaffine_row(NULL, bits, group_size, NMLX_DT_F32, src, cols, packed, scales, biases,
                     sdtype);
}
