/* Gated MLP (see mlp.h). */
#include "mlp.h"

#include <stdio.h>

nmlx_status nmlx_mlp_load(nmlx_mlp *m, const nmlx_weights *ws, const char *prefix, int64_t hidden,
                          int64_t intermediate, bool bias, bool fused_gate_up, nmlx_act act) {
    char name[512];
    nmlx_status st;
    m->act = act;
    m->hidden = hidden;
    m->intermediate = intermediate;
    if (fused_gate_up) {
        snprintf(name, sizeof name, "%s.gate_up_proj", prefix);
        if ((st = nmlx_linear_load(&m->gate_up, ws, name, 2 * intermediate, hidden, bias)))
            return st;
        if ((st = nmlx_linear_rows(&m->gate_up, 0, intermediate, name, &m->gate))) return st;
        if ((st = nmlx_linear_rows(&m->gate_up, intermediate, intermediate, name, &m->up)))
            return st;
    } else {
        snprintf(name, sizeof name, "%s.gate_proj", prefix);
        if ((st = nmlx_linear_load(&m->gate, ws, name, intermediate, hidden, bias))) return st;
        snprintf(name, sizeof name, "%s.up_proj", prefix);
        if ((st = nmlx_linear_load(&m->up, ws, name, intermediate, hidden, bias))) return st;
    }
    snprintf(name, sizeof name, "%s.down_proj", prefix);
    return nmlx_linear_load(&m->down, ws, name, hidden, intermediate, bias);
}

bool nmlx_mlp_forward_pending(nmlx_backend *be, const nmlx_mlp *m, const nmlx_pending_norm *pending,
                              const float *x, float *gate, float *up, float *out, float *resid,
                              int64_t T) {
    const nmlx_linear *ls[2] = {&m->gate, &m->up};
    float *ys[2] = {gate, up};
    if (be->ops->gate_up_act) { /* the two steps below as one op (backend.h) */
        if (!nmlx_pending_norm_run(be, pending, (int)m->act, 2, ls, ys, T))
            be->ops->gate_up_act(be, m->act, &m->gate.w, &m->up.w, m->gate.bias, m->up.bias, x,
                                 gate, up, T);
    } else {
        if (!nmlx_pending_norm_run(be, pending, -1, 2, ls, ys, T))
            nmlx_linear_forward_multi(be, 2, ls, x, ys, T);
        be->ops->act_mul(be, m->act, gate, up, gate, T * m->intermediate);
    }
    return nmlx_linear_forward_residual(be, &m->down, gate, out, resid, T);
}

void nmlx_mlp_forward(nmlx_backend *be, const nmlx_mlp *m, const float *x, float *gate, float *up,
                      float *out, int64_t T) {
    nmlx_mlp_forward_pending(be, m, NULL, x, gate, up, out, NULL, T);
}
