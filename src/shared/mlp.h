/* Gated MLP: down(act(gate(x)) * up(x)), SwiGLU when act = SiLU. gate and
 * up may be one fused `gate_up_proj` (gate rows first, Phi-3). */
#ifndef NMLX_MLP_H
#define NMLX_MLP_H

#include "layers.h"

typedef struct nmlx_mlp {
    nmlx_linear gate, up, down;
    nmlx_linear gate_up; /* fused: gate and up are row views of it */
    nmlx_act act;
    int64_t hidden, intermediate;
} nmlx_mlp;

/* Loads `<prefix>.{gate,up,down}_proj` (or `gate_up_proj` + `down_proj`). */
nmlx_status nmlx_mlp_load(nmlx_mlp *m, const nmlx_weights *ws, const char *prefix, int64_t hidden,
                          int64_t intermediate, bool bias, bool fused_gate_up, nmlx_act act);
/* out[T, hidden] = mlp(x[T, hidden]); gate/up are [T, intermediate] buffers. */
void nmlx_mlp_forward(nmlx_backend *be, const nmlx_mlp *m, const float *x, float *gate, float *up,
                      float *out, int64_t T);
/* The same with pending != NULL: x is pending->xn, written first by the
 * pending residual add and norm (layers.h nmlx_pending_norm_run: fused
 * with gate/up where the backend can). resid != NULL: the down projection
 * may add into resid instead of writing out: true when it did. */
bool nmlx_mlp_forward_pending(nmlx_backend *be, const nmlx_mlp *m, const nmlx_pending_norm *pending,
                              const float *x, float *gate, float *up, float *out, float *resid,
                              int64_t T);

#endif
