/* AltUp (alternating updates, Gemma 3n): the residual stream is widened to
 * K streams; each layer runs on one (the active stream, a prediction from
 * all K) and its output corrects all K. A router reads a normed stream:
 *   router(x) = modality_router(router_norm(x) / hidden)     [T, K], tanh'd
 *   predict:  p_i = x_i + sum_j c_ij x_j,  c = prediction_coefs @ tanh(router(x_active))
 *   correct:  p_i += (c_i + 1) (y - p_active),  c = correction_coefs @ tanh(router(y))
 * (HF: Gemma3nTextAltUp; weights <prefix>.{router_norm, modality_router,
 * prediction_coefs, correction_coefs, correct_output_scale}). The streams
 * are K buffers [T, hidden] at `stride` floats from each other. */
#ifndef NMLX_ALTUP_H
#define NMLX_ALTUP_H

#include "layers.h"

enum { NMLX_ALTUP_MAX_INPUTS = 16 };

typedef struct nmlx_altup {
    int64_t n, active, hidden; /* altup_num_inputs, altup_active_idx */
    float coef_clip;           /* correction coefficients clipped to +-clip; 0 = none */
    nmlx_rmsnorm router_norm;
    nmlx_linear router;                  /* modality_router [K, hidden] */
    const nmlx_tensor *pred_coefs;       /* prediction_coefs [K*K, K] */
    const nmlx_tensor *corr_coefs;       /* correction_coefs [K, K] */
    const nmlx_tensor *out_scale;        /* correct_output_scale [hidden], or NULL */
} nmlx_altup;

/* Loads `<prefix>.*`; correct_output_scale only if with_out_scale. */
nmlx_status nmlx_altup_load(nmlx_altup *a, const nmlx_weights *ws, const char *prefix,
                            int64_t hidden, int64_t n, int64_t active, float coef_clip, float eps,
                            bool with_out_scale);
/* out [K streams] = predict(x [K streams]); router [T, K] and xn [T, hidden]
 * are work buffers. */
void nmlx_altup_predict(nmlx_backend *be, const nmlx_altup *a, const float *x, int64_t stride,
                        float *router, float *xn, float *out, int64_t T);
/* Corrects the K predicted streams p in place with the layer output y [T, hidden]. */
void nmlx_altup_correct(nmlx_backend *be, const nmlx_altup *a, float *p, int64_t stride,
                        const float *y, float *router, float *xn, int64_t T);

#endif
