/* Port of mlx-lm mlx_lm/models/cache.py `QuantizedKVCache` (update_and_fetch
 * growth, trim) and `KVCache.to_quantized` at
 * ml-explore/mlx-lm@d78bf58e217c904ec282ed8da9b947491f78c022. */
#include "quantized_kv_cache.h"

#include "compute/quant.h"

#include <string.h>

nmlx_status nmlx_kv_quant_check(const nmlx_kv_quant_params *p, int64_t head_dim) {
    if (!nmlx_quant_bits_ok(NMLX_QUANT_AFFINE, p->bits))
        return nmlx_fail(NMLX_ERR_INVALID_ARG,
                         "kv_bits must be 0 (off), 2, 3, 4, 5, 6 or 8 (got %d)", p->bits);
    int g = p->group_size;
    if (!(g == 8 || g == 16 || g == 32 || g == 64 || g == 128))
        return nmlx_fail(NMLX_ERR_INVALID_ARG,
                         "kv_group_size must be 32, 64 or 128 (or 8, 16) (got %d)", g);
    if (head_dim % g != 0 || head_dim * p->bits % 32 != 0)
        return nmlx_fail(
            NMLX_ERR_UNSUPPORTED,
            "kv_group_size %d with kv_bits %d does not fit the model's head_dim %lld "
            "(it must divide head_dim, and head_dim * bits must fill whole 32-bit words)",
            g, p->bits, (long long)head_dim);
    if (p->start < 0)
        return nmlx_fail(NMLX_ERR_INVALID_ARG, "quantized_kv_start must be >= 0 (got %lld)",
                         (long long)p->start);
    return NMLX_OK;
}

void nmlx_quantized_kv_cache_init(nmlx_quantized_kv_cache *c, int64_t kv_heads, int64_t head_dim,
                                  const nmlx_kv_quant_params *p, int64_t max_capacity) {
    memset(c, 0, sizeof *c);
    c->kv_heads = kv_heads;
    c->head_dim = head_dim;
    c->bits = p->bits;
    c->group_size = p->group_size;
    c->words = nmlx_quant_row_words(head_dim, p->bits);
    c->groups = head_dim / p->group_size;
    c->max_capacity = max_capacity;
}

typedef struct qbufs {
    uint32_t *kc, *vc;
    float *ks, *kb, *vs, *vb;
} qbufs;

static void qbufs_free(qbufs *b) {
    nmlx_free(b->kc);
    nmlx_free(b->vc);
    nmlx_free(b->ks);
    nmlx_free(b->kb);
    nmlx_free(b->vs);
    nmlx_free(b->vb);
    memset(b, 0, sizeof *b);
}

/* Zeroed buffers for `cap` positions (mlx-lm's mx.zeros). */
static nmlx_status qbufs_alloc(const nmlx_quantized_kv_cache *c, int64_t cap, qbufs *b) {
    size_t rows = (size_t)(c->kv_heads * cap);
    memset(b, 0, sizeof *b);
    b->kc = nmlx_calloc(rows * (size_t)c->words, sizeof(uint32_t));
    b->vc = nmlx_calloc(rows * (size_t)c->words, sizeof(uint32_t));
    b->ks = nmlx_calloc(rows * (size_t)c->groups, sizeof(float));
    b->kb = nmlx_calloc(rows * (size_t)c->groups, sizeof(float));
    b->vs = nmlx_calloc(rows * (size_t)c->groups, sizeof(float));
    b->vb = nmlx_calloc(rows * (size_t)c->groups, sizeof(float));
    if (b->kc && b->vc && b->ks && b->kb && b->vs && b->vb) return NMLX_OK;
    qbufs_free(b);
    return nmlx_fail(NMLX_ERR_NOMEM, "quantized KV cache: cannot allocate %lld positions",
                     (long long)cap);
}

static void qbufs_take(nmlx_quantized_kv_cache *c, qbufs *b, int64_t cap) {
    c->k_codes = b->kc;
    c->v_codes = b->vc;
    c->k_scales = b->ks;
    c->k_biases = b->kb;
    c->v_scales = b->vs;
    c->v_biases = b->vb;
    c->capacity = cap;
}

void nmlx_quantized_kv_cache_free(nmlx_quantized_kv_cache *c) {
    qbufs b = {c->k_codes, c->v_codes, c->k_scales, c->k_biases, c->v_scales, c->v_biases};
    qbufs_free(&b);
    c->k_codes = c->v_codes = NULL;
    c->k_scales = c->k_biases = c->v_scales = c->v_biases = NULL;
    c->capacity = c->offset = 0;
}

/* Copies `rows` leading positions of every head between capacities. */
static void copy_rows(void *dst, const void *src, int64_t heads, int64_t new_cap, int64_t old_cap,
                      int64_t rows, size_t row_bytes) {
    for (int64_t h = 0; h < heads; h++)
        memcpy((char *)dst + (size_t)(h * new_cap) * row_bytes,
               (const char *)src + (size_t)(h * old_cap) * row_bytes, (size_t)rows * row_bytes);
}

nmlx_status nmlx_quantized_kv_cache_reserve(nmlx_quantized_kv_cache *c, int64_t n) {
    if (c->offset + n > c->max_capacity)
        return nmlx_fail(NMLX_ERR_CONTEXT_OVERFLOW,
                         "context overflow: %lld tokens held + %lld new > context length %lld",
                         (long long)c->offset, (long long)n, (long long)c->max_capacity);
    if (c->k_codes && c->offset + n <= c->capacity) return NMLX_OK;
    /* mlx-lm: keep the buffer (cut to offset unless offset is a step
     * multiple) and add ceil(n / step) * step rows. */
    int64_t keep = !c->k_codes ? 0 : (c->offset % NMLX_KV_STEP ? c->offset : c->capacity);
    int64_t cap = keep + (NMLX_KV_STEP + n - 1) / NMLX_KV_STEP * NMLX_KV_STEP;
    if (cap > c->max_capacity) cap = c->max_capacity;
    qbufs b;
    nmlx_status st = qbufs_alloc(c, cap, &b);
    if (st != NMLX_OK) return st;
    if (c->k_codes) {
        size_t wb = (size_t)c->words * sizeof(uint32_t), gb = (size_t)c->groups * sizeof(float);
        int64_t H = c->kv_heads, old = c->capacity;
        copy_rows(b.kc, c->k_codes, H, cap, old, keep, wb);
        copy_rows(b.vc, c->v_codes, H, cap, old, keep, wb);
        copy_rows(b.ks, c->k_scales, H, cap, old, keep, gb);
        copy_rows(b.kb, c->k_biases, H, cap, old, keep, gb);
        copy_rows(b.vs, c->v_scales, H, cap, old, keep, gb);
        copy_rows(b.vb, c->v_biases, H, cap, old, keep, gb);
    }
    int64_t offset = c->offset;
    nmlx_quantized_kv_cache_free(c);
    qbufs_take(c, &b, cap);
    c->offset = offset;
    return NMLX_OK;
}

/* Quantizes one row of HD floats into position `pos` of head h. */
static void put_row(nmlx_quantized_kv_cache *c, uint32_t *codes, float *scales, float *biases,
                    int64_t h, int64_t pos, const float *src) {
    size_t r = (size_t)(h * c->capacity + pos);
    nmlx_quant_quantize_row(NMLX_QUANT_AFFINE, c->bits, c->group_size, src, c->head_dim,
                            codes + r * (size_t)c->words, scales + r * (size_t)c->groups,
                            biases + r * (size_t)c->groups, NMLX_DT_F32);
}

void nmlx_quantized_kv_cache_append(nmlx_quantized_kv_cache *c, const float *k, const float *v,
                                    int64_t T) {
    int64_t H = c->kv_heads, HD = c->head_dim;
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            const float *src = k + (t * H + h) * HD;
            put_row(c, c->k_codes, c->k_scales, c->k_biases, h, c->offset + t, src);
            src = v + (t * H + h) * HD;
            put_row(c, c->v_codes, c->v_scales, c->v_biases, h, c->offset + t, src);
        }
    c->offset += T;
}

/* dst[HD] = scale * q + bias per group, for one stored row. */
static void get_row(const nmlx_quantized_kv_cache *c, const uint32_t *codes, const float *scales,
                    const float *biases, float *dst) {
    const int gs = c->group_size, bits = c->bits;
    const uint8_t *q = (const uint8_t *)codes;
    for (int64_t g = 0; g < c->groups; g++) {
        const float s = scales[g], b = biases[g];
        float *d = dst + g * gs;
        int64_t k0 = g * gs;
        if (bits == 8) {
            const uint8_t *p = q + k0;
            for (int j = 0; j < gs; j++)
                d[j] = s * (float)p[j] + b;
        } else if (bits == 4) {
            const uint8_t *p = q + k0 / 2;
            for (int j = 0; j < gs / 2; j++) {
                d[2 * j] = s * (float)(p[j] & 15u) + b;
                d[2 * j + 1] = s * (float)(p[j] >> 4) + b;
            }
        } else {
            for (int j = 0; j < gs; j++)
                d[j] = s * (float)nmlx_quant_code(q, k0 + j, bits) + b;
        }
    }
}

void nmlx_quantized_kv_cache_dequant(const nmlx_quantized_kv_cache *c, float *k, float *v,
                                     int64_t cap) {
    int64_t HD = c->head_dim;
    for (int64_t h = 0; h < c->kv_heads; h++)
        for (int64_t t = 0; t < c->offset; t++) {
            size_t r = (size_t)(h * c->capacity + t);
            size_t w = r * (size_t)c->words, g = r * (size_t)c->groups;
            size_t o = (size_t)((h * cap + t) * HD);
            get_row(c, c->k_codes + w, c->k_scales + g, c->k_biases + g, k + o);
            get_row(c, c->v_codes + w, c->v_scales + g, c->v_biases + g, v + o);
        }
}

int64_t nmlx_quantized_kv_cache_trim(nmlx_quantized_kv_cache *c, int64_t n) {
    if (n > c->offset) n = c->offset;
    if (n < 0) n = 0;
    c->offset -= n;
    return n;
}

nmlx_status nmlx_quantized_kv_cache_from(nmlx_quantized_kv_cache *c, const nmlx_kv_cache *kv) {
    if (!kv->keys) { /* mlx-lm: keys stay None */
        c->offset = kv->offset;
        return NMLX_OK;
    }
    qbufs b;
    nmlx_status st = qbufs_alloc(c, kv->capacity, &b);
    if (st != NMLX_OK) return st;
    qbufs_take(c, &b, kv->capacity);
    c->offset = kv->offset;
    int64_t HD = c->head_dim;
    for (int64_t h = 0; h < c->kv_heads; h++)
        for (int64_t t = 0; t < kv->capacity; t++) {
            const float *src = kv->keys + (h * kv->capacity + t) * HD;
            put_row(c, c->k_codes, c->k_scales, c->k_biases, h, t, src);
            src = kv->values + (h * kv->capacity + t) * HD;
            put_row(c, c->v_codes, c->v_scales, c->v_biases, h, t, src);
        }
    return NMLX_OK;
}

size_t nmlx_quantized_kv_bytes_per_token(const nmlx_quantized_kv_cache *c) {
    size_t row = (size_t)c->words * sizeof(uint32_t) + 2 * (size_t)c->groups * sizeof(float);
    return 2 * (size_t)c->kv_heads * row;
}
