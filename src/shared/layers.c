/* Linear and RMSNorm layers (see layers.h). */
#include "layers.h"

#include <stdio.h>

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

nmlx_status nmlx_linear_load(nmlx_linear *l, const nmlx_weights *ws, const char *name,
                             int64_t out, int64_t in, bool has_bias) {
    char key[512];
    const nmlx_tensor *w = NULL;
    snprintf(key, sizeof key, "%s.weight", name);
    int64_t wshape[2] = {out, in};
    nmlx_status st = nmlx_get_float_tensor(ws, key, 2, wshape, &w);
    if (st != NMLX_OK) return st;
    l->w = (nmlx_weight){.w = *w, .mode = NMLX_QUANT_NONE, .rows = out, .cols = in};
    l->bias = NULL;
    if (has_bias) {
        snprintf(key, sizeof key, "%s.bias", name);
        st = nmlx_get_float_tensor(ws, key, 1, &out, &l->bias);
        if (st != NMLX_OK) return st;
    }
    return NMLX_OK;
}

void nmlx_linear_forward(nmlx_backend *be, const nmlx_linear *l, const float *x, float *y,
                         int64_t T) {
    be->ops->matmul(be, &l->w, l->bias, x, y, T);
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
