/* Laurel (learned augmented residual, Gemma 3n): a low-rank branch beside
 * attention,  out = x + post_laurel_norm(linear_right(linear_left(x)))
 * (HF: Gemma3nTextLaurelBlock; weights <prefix>.{linear_left [rank, hidden],
 * linear_right [hidden, rank], post_laurel_norm}). */
#ifndef NMLX_LAUREL_H
#define NMLX_LAUREL_H

#include "layers.h"

typedef struct nmlx_laurel {
    nmlx_linear left, right;
    nmlx_rmsnorm norm;
    int64_t hidden, rank;
} nmlx_laurel;

nmlx_status nmlx_laurel_load(nmlx_laurel *l, const nmlx_weights *ws, const char *prefix,
                             int64_t hidden, int64_t rank, float eps, float norm_offset);
/* out [T, hidden] = laurel(x); low is a [T, rank] work buffer; out must not alias x. */
void nmlx_laurel_forward(nmlx_backend *be, const nmlx_laurel *l, const float *x, float *low,
                         float *out, int64_t T);

#endif
