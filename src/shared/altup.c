/* AltUp (see altup.h). */
#include "altup.h"

#include <stdio.h>

nmlx_status nmlx_altup_load(nmlx_altup *a, const nmlx_weights *ws, const char *prefix,
                            int64_t hidden, int64_t n, int64_t active, float coef_clip, float eps,
                            bool with_out_scale) {
    char name[512];
    nmlx_status st;
    if (n < 1 || n > NMLX_ALTUP_MAX_INPUTS || active < 0 || active >= n)
        return nmlx_fail(NMLX_ERR_UNSUPPORTED,
                         "%s: altup_num_inputs %lld / altup_active_idx %lld not supported "
                         "(1..%d inputs, active below that)",
                         prefix, (long long)n, (long long)active, NMLX_ALTUP_MAX_INPUTS);
    *a = (nmlx_altup){.n = n, .active = active, .hidden = hidden, .coef_clip = coef_clip};
    snprintf(name, sizeof name, "%s.router_norm", prefix);
    if ((st = nmlx_rmsnorm_load(&a->router_norm, ws, name, hidden, eps, 0.0f))) return st;
    snprintf(name, sizeof name, "%s.modality_router", prefix);
    if ((st = nmlx_linear_load(&a->router, ws, name, n, hidden, false))) return st;
    int64_t pshape[2] = {n * n, n}, cshape[2] = {n, n};
    snprintf(name, sizeof name, "%s.prediction_coefs.weight", prefix);
    if ((st = nmlx_get_float_tensor(ws, name, 2, pshape, &a->pred_coefs))) return st;
    snprintf(name, sizeof name, "%s.correction_coefs.weight", prefix);
    if ((st = nmlx_get_float_tensor(ws, name, 2, cshape, &a->corr_coefs))) return st;
    if (with_out_scale) {
        snprintf(name, sizeof name, "%s.correct_output_scale", prefix);
        if ((st = nmlx_get_float_tensor(ws, name, 1, &hidden, &a->out_scale))) return st;
    }
    return NMLX_OK;
}

/* router [T, K] = modality_router(router_norm(x) / hidden) (tanh applied by the ops) */
static void route(nmlx_backend *be, const nmlx_altup *a, const float *x, float *router, float *xn,
                  int64_t T) {
    nmlx_rmsnorm_forward(be, &a->router_norm, x, xn, T, a->hidden);
    be->ops->scale(be, xn, 1.0f / (float)a->hidden, T * a->hidden);
    nmlx_linear_forward(be, &a->router, xn, router, T);
}

void nmlx_altup_predict(nmlx_backend *be, const nmlx_altup *a, const float *x, int64_t stride,
                        float *router, float *xn, float *out, int64_t T) {
    route(be, a, x + a->active * stride, router, xn, T);
    be->ops->altup_predict(be, x, stride, router, a->pred_coefs, out, a->n, T, a->hidden);
}

void nmlx_altup_correct(nmlx_backend *be, const nmlx_altup *a, float *p, int64_t stride,
                        const float *y, float *router, float *xn, int64_t T) {
    route(be, a, y, router, xn, T);
    be->ops->altup_correct(be, p, stride, y, router, a->corr_coefs, a->coef_clip, a->active, a->n,
                           T, a->hidden);
}
