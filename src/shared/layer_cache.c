/* Per-layer cache kind (see layer_cache.h). */
#include "layer_cache.h"

#include <string.h>

nmlx_status nmlx_layer_cache_init(nmlx_layer_cache *c, nmlx_backend *be, int64_t kv_heads,
                                  int64_t head_dim, int64_t window, int64_t max_tokens,
                                  int64_t max_context) {
    memset(c, 0, sizeof *c);
    c->window = window;
    c->rotating = window > 0 && window < max_context;
    if (c->rotating)
        return nmlx_rotating_kv_cache_init(&c->rot, be, kv_heads, head_dim, window, 0, max_tokens,
                                           max_context);
    nmlx_kv_cache_init(&c->kv, kv_heads, head_dim, max_context);
    return NMLX_OK;
}

void nmlx_layer_cache_free(nmlx_layer_cache *c, nmlx_backend *be) {
    if (c->rotating) nmlx_rotating_kv_cache_free(&c->rot, be);
    else nmlx_kv_cache_free(&c->kv, be);
    nmlx_quantized_kv_cache_free(&c->q);
}

int64_t nmlx_layer_cache_offset(const nmlx_layer_cache *c) {
    if (c->quantized) return c->q.offset;
    return c->rotating ? c->rot.offset : c->kv.offset;
}

nmlx_status nmlx_layer_cache_set_quant(nmlx_layer_cache *c, const nmlx_kv_quant_params *p,
                                       nmlx_kv_dequant *deq) {
    if (c->rotating || p->bits == 0) return NMLX_OK;
    nmlx_status st = nmlx_kv_quant_check(p, c->kv.head_dim);
    if (st != NMLX_OK) return st;
    c->qp = *p;
    c->deq = deq;
    c->kv.dtype = NMLX_DT_F32; /* the quantizer reads an f32 cache */
    return NMLX_OK;
}

void nmlx_layer_cache_set_dtype(nmlx_layer_cache *c, nmlx_dtype dt) {
    if (c->rotating || c->qp.bits || c->kv.keys || c->kv.keys16) return;
    if (dt == NMLX_DT_F32 || dt == NMLX_DT_F16 || dt == NMLX_DT_BF16) c->kv.dtype = dt;
}

void nmlx_kv_dequant_free(nmlx_kv_dequant *d, nmlx_backend *be) {
    if (!d) return;
    if (d->k) be->ops->free(be, d->k);
    if (d->v) be->ops->free(be, d->v);
    nmlx_free(d->host_k);
    nmlx_free(d->host_v);
    nmlx_free(d->host_in);
    d->k = d->v = d->host_k = d->host_v = d->host_in = NULL;
    d->floats = d->in_floats = 0;
}

/* Grows the shared scratch to hold this cache's capacity (no copy: it only
 * ever holds one layer's rows during one attention call). */
static nmlx_status dequant_reserve(nmlx_kv_dequant *d, nmlx_backend *be, const nmlx_layer_cache *c,
                                   int64_t n) {
    size_t need = (size_t)(c->q.kv_heads * c->q.capacity * c->q.head_dim);
    bool host = nmlx_backend_is_host(be);
    if (need > d->floats) {
        float *k = be->ops->alloc(be, need * sizeof(float));
        float *v = be->ops->alloc(be, need * sizeof(float));
        float *hk = host ? NULL : nmlx_calloc(need, sizeof(float));
        float *hv = host ? NULL : nmlx_calloc(need, sizeof(float));
        if (!k || !v || (!host && (!hk || !hv))) {
            if (k) be->ops->free(be, k);
            if (v) be->ops->free(be, v);
            nmlx_free(hk);
            nmlx_free(hv);
            return nmlx_fail(NMLX_ERR_NOMEM,
                             "quantized KV cache: cannot allocate %zu bytes of scratch",
                             2 * need * sizeof(float));
        }
        if (d->k) be->ops->free(be, d->k);
        if (d->v) be->ops->free(be, d->v);
        nmlx_free(d->host_k);
        nmlx_free(d->host_v);
        d->k = k, d->v = v, d->host_k = hk, d->host_v = hv;
        d->floats = need;
    }
    size_t in = 2 * (size_t)(n * c->q.kv_heads * c->q.head_dim); /* device: one call's k, v */
    if (host || in <= d->in_floats) return NMLX_OK;
    float *p = nmlx_malloc(in * sizeof(float));
    if (!p)
        return nmlx_fail(NMLX_ERR_NOMEM, "quantized KV cache: cannot allocate %zu bytes of staging",
                         in * sizeof(float));
    nmlx_free(d->host_in);
    d->host_in = p;
    d->in_floats = in;
    return NMLX_OK;
}

/* to_quantized of a cache in device memory: its buffers through the host. */
static nmlx_status quantize_from_device(nmlx_layer_cache *c, nmlx_backend *be) {
    if (!c->kv.keys) return nmlx_quantized_kv_cache_from(&c->q, &c->kv);
    size_t n = (size_t)(c->kv.kv_heads * c->kv.capacity * c->kv.head_dim);
    nmlx_kv_cache h = c->kv;
    h.keys = nmlx_malloc(n * sizeof(float));
    h.values = nmlx_malloc(n * sizeof(float));
    nmlx_status st = NMLX_OK;
    if (h.keys && h.values) {
        be->ops->download(be, h.keys, c->kv.keys, n * sizeof(float));
        be->ops->download(be, h.values, c->kv.values, n * sizeof(float));
        st = nmlx_quantized_kv_cache_from(&c->q, &h);
    } else {
        st = nmlx_fail(NMLX_ERR_NOMEM, "quantized KV cache: cannot stage %zu bytes",
                       2 * n * sizeof(float));
    }
    nmlx_free(h.keys);
    nmlx_free(h.values);
    return st;
}

/* maybe_quantize_kv_cache, then the quantized cache's growth. */
static nmlx_status quant_reserve(nmlx_layer_cache *c, nmlx_backend *be, int64_t n) {
    nmlx_status st;
    if (!c->quantized) {
        if (c->kv.offset < c->qp.start) return nmlx_kv_cache_reserve(&c->kv, be, n);
        nmlx_quantized_kv_cache_init(&c->q, c->kv.kv_heads, c->kv.head_dim, &c->qp,
                                     c->kv.max_capacity);
        st = nmlx_backend_is_host(be) ? nmlx_quantized_kv_cache_from(&c->q, &c->kv)
                                      : quantize_from_device(c, be);
        if (st != NMLX_OK) return st;
        nmlx_kv_cache_free(&c->kv, be);
        c->quantized = true;
    }
    if ((st = nmlx_quantized_kv_cache_reserve(&c->q, n)) != NMLX_OK) return st;
    return dequant_reserve(c->deq, be, c, n);
}

nmlx_status nmlx_layer_cache_reserve(nmlx_layer_cache *c, nmlx_backend *be, int64_t n) {
    if (c->qp.bits) return quant_reserve(c, be, n);
    return c->rotating ? nmlx_rotating_kv_cache_reserve(&c->rot, n)
                       : nmlx_kv_cache_reserve(&c->kv, be, n);
}

size_t nmlx_layer_cache_bytes(const nmlx_layer_cache *c) {
    if (c->quantized)
        return (size_t)c->q.capacity * nmlx_quantized_kv_bytes_per_token(&c->q);
    if (c->rotating)
        return 2 * (size_t)(c->rot.kv_heads * c->rot.cap * c->rot.head_dim) * sizeof(float);
    size_t es = c->kv.dtype == NMLX_DT_F32 ? sizeof(float) : sizeof(uint16_t);
    return 2 * (size_t)(c->kv.kv_heads * c->kv.capacity * c->kv.head_dim) * es;
}

/* The quantized update on a device backend: k, v [T, KVH, HD] downloaded,
 * quantized and dequantized on the host, the rows uploaded to the scratch. */
static void update_staged(nmlx_layer_cache *c, nmlx_backend *be, const float *k, const float *v,
                          int64_t T) {
    nmlx_kv_dequant *d = c->deq;
    size_t in = (size_t)(T * c->q.kv_heads * c->q.head_dim);
    size_t all = (size_t)(c->q.kv_heads * c->q.capacity * c->q.head_dim);
    be->ops->download(be, d->host_in, k, in * sizeof(float));
    be->ops->download(be, d->host_in + in, v, in * sizeof(float));
    nmlx_quantized_kv_cache_append(&c->q, d->host_in, d->host_in + in, T);
    nmlx_quantized_kv_cache_dequant(&c->q, d->host_k, d->host_v, c->q.capacity);
    be->ops->upload(be, d->k, d->host_k, all * sizeof(float));
    be->ops->upload(be, d->v, d->host_v, all * sizeof(float));
}

void nmlx_layer_cache_update(nmlx_layer_cache *c, nmlx_backend *be, const float *k,
                             const float *v, int64_t T, nmlx_kv_view *view) {
    if (c->rotating) {
        nmlx_rotating_kv_cache_update(&c->rot, be, k, v, T, view);
        return;
    }
    if (c->quantized) {
        int64_t pos = c->q.offset;
        if (nmlx_backend_is_host(be)) {
            nmlx_quantized_kv_cache_append(&c->q, k, v, T);
            nmlx_quantized_kv_cache_dequant(&c->q, c->deq->k, c->deq->v, c->q.capacity);
        } else {
            update_staged(c, be, k, v, T);
        }
        *view = (nmlx_kv_view){.keys = c->deq->k, .values = c->deq->v, .cap = c->q.capacity,
                               .n_kv = c->q.offset, .q_row = pos, .window = c->window};
        return;
    }
    int64_t pos = c->kv.offset;
    nmlx_kv_cache_append(&c->kv, be, k, v, T);
    *view = (nmlx_kv_view){.keys = c->kv.keys, .values = c->kv.values, .cap = c->kv.capacity,
                           .n_kv = c->kv.offset, .q_row = pos, .window = c->window,
                           .dtype = c->kv.dtype, .keys16 = c->kv.keys16,
                           .values16 = c->kv.values16};
}

bool nmlx_layer_cache_rows(const nmlx_layer_cache *c, float **k, float **v, int64_t *cap,
                           int64_t *row0) {
    if (c->rotating || c->quantized || c->kv.dtype != NMLX_DT_F32 || !c->kv.keys) return false;
    *k = c->kv.keys;
    *v = c->kv.values;
    *cap = c->kv.capacity;
    *row0 = c->kv.offset;
    return true;
}

void nmlx_layer_cache_commit(nmlx_layer_cache *c, int64_t T, nmlx_kv_view *view) {
    int64_t pos = c->kv.offset;
    c->kv.offset += T; /* as nmlx_kv_cache_append, whose copies the fused op made */
    *view = (nmlx_kv_view){.keys = c->kv.keys,
                           .values = c->kv.values,
                           .cap = c->kv.capacity,
                           .n_kv = c->kv.offset,
                           .q_row = pos,
                           .window = c->window,
                           .dtype = NMLX_DT_F32};
}

int64_t nmlx_layer_cache_trim(nmlx_layer_cache *c, int64_t n) {
    if (c->quantized) return nmlx_quantized_kv_cache_trim(&c->q, n);
    return c->rotating ? nmlx_rotating_kv_cache_trim(&c->rot, n) : nmlx_kv_cache_trim(&c->kv, n);
}
