/* Gated MLP: down(act(gate(x)) * up(x)), SwiGLU when act = SiLU. */
#ifndef NMLX_MLP_H
#define NMLX_MLP_H

#include "layers.h"

typedef struct nmlx_mlp {
    nmlx_linear gate, up, down;
    nmlx_act act;
    int64_t hidden, intermediate;
} nmlx_mlp;

/* Loads `<prefix>.{gate,up,down}_proj`. */
nmlx_status nmlx_mlp_load(nmlx_mlp *m, const nmlx_weights *ws, const char *prefix,
                          int64_t hidden, int64_t intermediate, bool bias, nmlx_act act);
/* out[T, hidden] = mlp(x[T, hidden]); gate/up are [T, intermediate] buffers. */
void nmlx_mlp_forward(nmlx_backend *be, const nmlx_mlp *m, const float *x, float *gate,
                      float *up, float *out, int64_t T);

#endif
