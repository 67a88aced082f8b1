/* Laurel low-rank residual (see laurel.h). */
#include "laurel.h"

#include <stdio.h>

nmlx_status nmlx_laurel_load(nmlx_laurel *l, const nmlx_weights *ws, const char *prefix,
                             int64_t hidden, int64_t rank, float eps, float norm_offset) {
    char name[512];
    nmlx_status st;
    l->hidden = hidden;
    l->rank = rank;
    snprintf(name, sizeof name, "%s.linear_left", prefix);
    if ((st = nmlx_linear_load(&l->left, ws, name, rank, hidden, false))) return st;
    snprintf(name, sizeof name, "%s.linear_right", prefix);
    if ((st = nmlx_linear_load(&l->right, ws, name, hidden, rank, false))) return st;
    snprintf(name, sizeof name, "%s.post_laurel_norm", prefix);
    return nmlx_rmsnorm_load(&l->norm, ws, name, hidden, eps, norm_offset);
}

void nmlx_laurel_forward(nmlx_backend *be, const nmlx_laurel *l, const float *x, float *low,
                         float *out, int64_t T) {
    nmlx_linear_forward(be, &l->left, x, low, T);
    nmlx_linear_forward(be, &l->right, low, out, T);
    nmlx_rmsnorm_forward(be, &l->norm, out, out, T, l->hidden);
    be->ops->add(be, x, out, out, T * l->hidden);
}
