/* Linear and RMSNorm layers (see layers.h). */
#include "layers.h"

#include "quant_layers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool is_float_dtype(nmlx_dtype dt) {
    return dt == NMLX_DT_F32 || dt == NMLX_DT_F16 || dt == NMLX_DT_BF16;
}

nmlx_status nmlx_get_float_tensor(const nmlx_weights *ws, const char *name, int ndim,
                                  const int64_t *shape, const nmlx_tensor **out) {
    const nmlx_tensor *t = NULL;
    nmlx_status st = nmlx_weights_get(ws, name, ndim, shape, &t);
    if (st != NMLX_OK) return st;
    if (!is_float_dtype(t->dtype))
        return nmlx_fail(NMLX_ERR_UNSUPPORTED,
                         "tensor '%s' has dtype %s; expected F32, F16 or BF16 (quantized "
                         "checkpoints need a 'quantization' entry in config.json)",
                         name, nmlx_dtype_name(t->dtype));
    *out = t;
    return NMLX_OK;
}

nmlx_status nmlx_weight_load(nmlx_weight *wt, const nmlx_weights *ws, const char *name, int64_t out,
                             int64_t in) {
    char key[512];
    const nmlx_tensor *w = NULL;
    snprintf(key, sizeof key, "%s.scales", name);
    if (nmlx_weights_find(ws, key)) /* quantized, as mlx-lm decides: scales present */
        return nmlx_quant_weight_load(wt, ws, name, out, in);
    snprintf(key, sizeof key, "%s.weight", name);
    int64_t wshape[2] = {out, in};
    nmlx_status st = nmlx_get_float_tensor(ws, key, 2, wshape, &w);
    if (st != NMLX_OK) return st;
    *wt = (nmlx_weight){.w = *w, .mode = NMLX_QUANT_NONE, .rows = out, .cols = in};
    return NMLX_OK;
}

nmlx_status nmlx_linear_load(nmlx_linear *l, const nmlx_weights *ws, const char *name, int64_t out,
                             int64_t in, bool has_bias) {
    char key[512];
    nmlx_status st = nmlx_weight_load(&l->w, ws, name, out, in);
    if (st != NMLX_OK) return st;
    l->bias = NULL;
    if (has_bias) {
        snprintf(key, sizeof key, "%s.bias", name);
        st = nmlx_get_float_tensor(ws, key, 1, &out, &l->bias);
        if (st != NMLX_OK) return st;
    }
    return NMLX_OK;
}

/* Row r of a tensor whose first dimension is rows: byte offset r * row size. */
static nmlx_tensor tensor_rows(const nmlx_tensor *t, int64_t row0, int64_t n) {
    nmlx_tensor v = *t;
    size_t row_bytes = t->shape[0] ? nmlx_tensor_nbytes(t) / (size_t)t->shape[0] : 0;
    v.data = (char *)t->data + (size_t)row0 * row_bytes;
    v.shape[0] = n;
    return v;
}

nmlx_status nmlx_linear_rows(const nmlx_linear *src, int64_t row0, int64_t n, const char *name,
                             nmlx_linear *dst) {
    const nmlx_weight *w = &src->w;
    if (row0 < 0 || n <= 0 || row0 + n > w->rows || w->w.ndim != 2 || w->w.shape[0] != w->rows)
        return nmlx_fail(NMLX_ERR_FORMAT, "tensor '%s': rows %lld..%lld do not fit its %lld rows",
                         name, (long long)row0, (long long)(row0 + n), (long long)w->rows);
    *dst = *src;
    dst->w.w = tensor_rows(&w->w, row0, n);
    if (w->mode != NMLX_QUANT_NONE) {
        dst->w.scales = tensor_rows(&w->scales, row0, n);
        if (w->mode == NMLX_QUANT_AFFINE) dst->w.biases = tensor_rows(&w->biases, row0, n);
    }
    dst->w.rows = n;
    dst->bias = NULL;
    if (src->bias) {
        /* a view of a bias slice: the tensor struct must outlive the layer,
         * so fused biases are not supported here */
        return nmlx_fail(NMLX_ERR_UNSUPPORTED, "tensor '%s': a fused projection with a bias", name);
    }
    return NMLX_OK;
}

void nmlx_linear_forward(nmlx_backend *be, const nmlx_linear *l, const float *x, float *y,
                         int64_t T) {
    be->ops->matmul(be, &l->w, l->bias, x, y, T);
}

void nmlx_linear_forward_multi(nmlx_backend *be, int n, const nmlx_linear *const *ls,
                               const float *x, float *const *ys, int64_t T) {
    if (be->ops->matmul_multi && n <= NMLX_MATMUL_MULTI_MAX) {
        const nmlx_weight *ws[NMLX_MATMUL_MULTI_MAX];
        const nmlx_tensor *bs[NMLX_MATMUL_MULTI_MAX];
        for (int i = 0; i < n; i++)
            ws[i] = &ls[i]->w, bs[i] = ls[i]->bias;
        be->ops->matmul_multi(be, n, ws, bs, x, ys, T);
        return;
    }
    for (int i = 0; i < n; i++)
        be->ops->matmul(be, &ls[i]->w, ls[i]->bias, x, ys[i], T);
}

nmlx_status nmlx_rmsnorm_load(nmlx_rmsnorm *n, const nmlx_weights *ws, const char *name,
                              int64_t dim, float eps, float offset) {
    char key[512];
    snprintf(key, sizeof key, "%s.weight", name);
    n->eps = eps;
    n->offset = offset;
    return nmlx_get_float_tensor(ws, key, 1, &dim, &n->w);
}

void nmlx_rmsnorm_forward(nmlx_backend *be, const nmlx_rmsnorm *n, const float *x, float *y,
                          int64_t R, int64_t dim) {
    be->ops->rmsnorm(be, x, n->w, n->offset, n->eps, y, R, dim);
}

bool nmlx_linear_forward_residual(nmlx_backend *be, const nmlx_linear *l, const float *x, float *y,
                                  float *resid, int64_t T) {
    if (resid && be->ops->matmul_residual &&
        be->ops->matmul_residual(be, &l->w, l->bias, x, resid, T))
        return true;
    nmlx_linear_forward(be, l, x, y, T);
    return false;
}

void nmlx_residual_norm(nmlx_backend *be, float *x, const float *d, const nmlx_rmsnorm *norm,
                        float *xn, int64_t T, int64_t D) {
    if (!d) { /* the add is done */
        if (norm) nmlx_rmsnorm_forward(be, norm, x, xn, T, D);
        return;
    }
    if (norm && be->ops->add_rmsnorm) {
        be->ops->add_rmsnorm(be, x, d, norm->w, norm->offset, norm->eps, xn, T, D);
        return;
    }
    be->ops->add(be, x, d, x, T * D);
    if (norm) nmlx_rmsnorm_forward(be, norm, x, xn, T, D);
}

/* p's add + norm and the n linears as one add_rmsnorm_matmul (rope: with
 * rope_kv folded in); false: nothing done */
static bool fused_norm_matmul(nmlx_backend *be, const nmlx_pending_norm *p, int act, int n,
                              const nmlx_linear *const *ls, float *const *ys,
                              const nmlx_rope_kv_args *rope) {
    if (!be->ops->add_rmsnorm_matmul || n < 1 || n > NMLX_MATMUL_MULTI_MAX) return false;
    const nmlx_weight *ws[NMLX_MATMUL_MULTI_MAX];
    const nmlx_tensor *bs[NMLX_MATMUL_MULTI_MAX];
    for (int i = 0; i < n; i++)
        ws[i] = &ls[i]->w, bs[i] = ls[i]->bias;
    const nmlx_rmsnorm *nm = p->norm;
    return be->ops->add_rmsnorm_matmul(be, p->x, p->d, nm->w, nm->offset, nm->eps, p->xn, p->D, act,
                                       n, ws, bs, ys, rope);
}

bool nmlx_pending_norm_run(nmlx_backend *be, const nmlx_pending_norm *p, int act, int n,
                           const nmlx_linear *const *ls, float *const *ys, int64_t T) {
    if (!p) return false;
    if (T == 1 && fused_norm_matmul(be, p, act, n, ls, ys, NULL)) return true;
    nmlx_residual_norm(be, p->x, p->d, p->norm, p->xn, T, p->D);
    return false;
}

bool nmlx_pending_norm_rope_kv(nmlx_backend *be, const nmlx_pending_norm *p,
                               const nmlx_linear *const *qkv, float *const *ys,
                               const nmlx_rope_kv_args *rope) {
    return p && rope->T == 1 && !rope->qk_norm && fused_norm_matmul(be, p, -1, 3, qkv, ys, rope);
}

static nmlx_status prepare_one(nmlx_backend *be, nmlx_tensor *t) {
    const nmlx_tensor *p = NULL;
    if (!t->data) return NMLX_OK; /* absent part (scales/biases of dense weights) */
    nmlx_status st = be->ops->prepare_tensor(be, t, &p);
    if (st == NMLX_OK) *t = *p;
    return st;
}

nmlx_status nmlx_weight_prepare(nmlx_backend *be, nmlx_weight *w) {
    nmlx_status st = prepare_one(be, &w->w);
    if (st == NMLX_OK && w->mode != NMLX_QUANT_NONE) st = prepare_one(be, &w->scales);
    if (st == NMLX_OK && w->mode == NMLX_QUANT_AFFINE) st = prepare_one(be, &w->biases);
    return st;
}

nmlx_status nmlx_linear_prepare(nmlx_backend *be, nmlx_linear *l) {
    nmlx_status st = nmlx_weight_prepare(be, &l->w);
    if (st == NMLX_OK && l->bias) st = be->ops->prepare_tensor(be, l->bias, &l->bias);
    return st;
}

nmlx_status nmlx_rmsnorm_prepare(nmlx_backend *be, nmlx_rmsnorm *n) {
    if (!n->w) return NMLX_OK;
    return be->ops->prepare_tensor(be, n->w, &n->w);
}

/* Row r of the logits goes to host_rows ? host_rows[r] : host_out + r * vocab. */
void nmlx_lm_head_device(nmlx_backend *be, const nmlx_linear *head, const float *xn, int64_t rows,
                         float *dev) {
    /* every family's head (tied or not) comes here: its input stays f32,
     * since top-2 logit margins can be far below bf16's 2^-9 */
    nmlx_linear h = *head;
    h.w.f32_input = true;
    nmlx_linear_forward(be, &h, xn, dev, rows);
}

static _Thread_local nmlx_logits_defer defer_here;

nmlx_logits_defer *nmlx_logits_defer_here(void) { return &defer_here; }

void nmlx_lm_head_download(nmlx_backend *be, const float *dev, int64_t vocab, float softcap,
                           float *host) {
    nmlx_logits_defer *d = &defer_here;
    if (d->on) {      /* a greedy step: the session takes the argmax on the backend */
        if (d->dev) { /* a second row in one step: the first one is fetched */
            d->on = false;
            nmlx_lm_head_download(be, d->dev, d->vocab, d->softcap, d->host);
            d->on = true;
        }
        d->dev = dev;
        d->host = host;
        d->vocab = vocab;
        d->softcap = softcap;
        return;
    }
    be->ops->download(be, host, dev, (size_t)vocab * sizeof(float));
    if (softcap > 0) /* Gemma: cap * tanh(logits / cap), on the host copy */
        for (int64_t i = 0; i < vocab; i++)
            host[i] = softcap * tanhf(host[i] / softcap);
}

static void lm_head(nmlx_backend *be, const nmlx_linear *head, const float *xn, int64_t rows,
                    int64_t hidden, int64_t vocab, float softcap, float *dev, float *host_out,
                    float *const *host_rows) {
    for (int64_t r0 = 0; r0 < rows; r0 += NMLX_LOGIT_ROWS) {
        int64_t n = rows - r0 < NMLX_LOGIT_ROWS ? rows - r0 : NMLX_LOGIT_ROWS;
        nmlx_lm_head_device(be, head, xn + r0 * hidden, n, dev);
        for (int64_t r = 0; r < n; r++) {
            /* batched decode: the row stays on the backend, in the session's
             * buffer (dev is reused by the next chunk and the next step) */
            float *keep =
                host_rows && defer_here.rows && softcap <= 0 ? defer_here.rows[r0 + r] : NULL;
            if (keep) {
                be->ops->copy(be, keep, dev + r * vocab, (size_t)vocab * sizeof(float));
                defer_here.rows_copied = true;
                continue;
            }
            nmlx_lm_head_download(be, dev + r * vocab, vocab, softcap,
                                  host_rows ? host_rows[r0 + r] : host_out + (r0 + r) * vocab);
        }
    }
}

void nmlx_lm_head_rows(nmlx_backend *be, const nmlx_linear *head, const float *xn, int64_t rows,
                       int64_t hidden, int64_t vocab, float softcap, float *dev, float *host_out) {
    lm_head(be, head, xn, rows, hidden, vocab, softcap, dev, host_out, NULL);
}

void nmlx_lm_head_scatter(nmlx_backend *be, const nmlx_linear *head, const float *xn, int64_t rows,
                          int64_t hidden, int64_t vocab, float softcap, float *dev,
                          float *const *host_rows) {
    lm_head(be, head, xn, rows, hidden, vocab, softcap, dev, NULL, host_rows);
}

nmlx_status nmlx_check_ids(const int32_t *ids, int64_t T, int64_t vocab) {
    for (int64_t t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= vocab)
            return nmlx_fail(NMLX_ERR_INVALID_ARG,
                             "token id %d at index %lld is outside the vocabulary [0, %lld)",
                             ids[t], (long long)t, (long long)vocab);
    return NMLX_OK;
}

nmlx_status nmlx_check_batch(const int32_t *ids, int64_t B, int64_t max_batch, int64_t vocab) {
    if (B < 1 || B > max_batch)
        return nmlx_fail(NMLX_ERR_INVALID_ARG,
                         "batched decode of %lld sessions: the batch holds 1 to %lld", (long long)B,
                         (long long)max_batch);
    return nmlx_check_ids(ids, B, vocab);
}

nmlx_status nmlx_check_layer_count(const nmlx_weights *ws, const char *prefix, int64_t n_layers,
                                   const char *config_path) {
    char head[160];
    int hn = snprintf(head, sizeof head, "%s.layers.", prefix);
    if (hn < 0 || (size_t)hn >= sizeof head) return NMLX_OK; /* the loads name what is missing */
    long long top = -1;
    size_t n = nmlx_weights_count(ws);
    for (size_t i = 0; i < n; i++) {
        const char *name = nmlx_weights_at(ws, i)->name;
        if (strncmp(name, head, (size_t)hn) != 0) continue;
        char *end = NULL;
        long long l = strtoll(name + hn, &end, 10);
        if (end != name + hn && *end == '.' && l > top) top = l;
    }
    if (top + 1 >= n_layers) return NMLX_OK;
    if (top < 0)
        return nmlx_fail(NMLX_ERR_INVALID_MODEL,
                         "%s: field 'num_hidden_layers' = %lld, but the checkpoint has no '%s*' "
                         "tensors",
                         config_path, (long long)n_layers, head);
    return nmlx_fail(
        NMLX_ERR_INVALID_MODEL,
        "%s: field 'num_hidden_layers' = %lld, but the checkpoint has tensors for %lld "
        "layers ('%s0.' to '%s%lld.')",
        config_path, (long long)n_layers, top + 1, head, head, top);
}
