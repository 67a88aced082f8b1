/* Internal to the CUDA backend: the int16-activation decode mat-vec for
 * MLX affine 4/8-bit weights (cuda_qgemv16.cu). */
#ifndef NMLX_CUDA_QGEMV16_H
#define NMLX_CUDA_QGEMV16_H

#include "compute/cuda/cuda_internal.h"

/* Whether w's format and shape take the int16 mat-vec. */
bool nmlx_cuda_qgemv16_ok(const nmlx_weight *w);

/* y_i = W_i x (+ bias_i) for n (1 to 3) weights of one format and width
 * in one launch; false (nothing launched) when they do not all qualify. */
bool nmlx_cuda_qgemv16(nmlx_backend *be, int n, const nmlx_weight *const *ws,
                       const nmlx_tensor *const *biases, const float *x, float *const *ys);

/* gate = act(G x + bg) * (U x + bu) for G, U of one format and shape: each
 * warp sums gate and up rows in pairs (the sums matmul_multi gives) and
 * writes the product; false (nothing launched) when they do not qualify. */
bool nmlx_cuda_qgemv16_act(nmlx_backend *be, nmlx_act act, const nmlx_weight *g,
                           const nmlx_weight *u, const nmlx_tensor *bg, const nmlx_tensor *bu,
                           const float *x, float *gate);

/* The residual add and norm of backend.h add_rmsnorm_matmul: x[D] += d
 * (d NULL: x already holds the sum), y = rmsnorm(x) with weight w (NULL:
 * none), w_offset, eps; done: a device counter, 0 between launches (the
 * kernel's last block resets it); parts: NULL, or the sums of squares of
 * x that nmlx_cuda_qgemv16_resid wrote while it updated x (then d is NULL
 * and no block sums x itself). */
typedef struct nmlx_cuda_norm_in {
    float *x;
    const float *d;
    const nmlx_tensor *w;
    float w_offset, eps;
    float *y;
    int64_t D;
    unsigned *done;
    const double *parts;
} nmlx_cuda_norm_in;

/* Block sums of squares a residual mat-vec may write (rsum holds
 * NMLX_Q16_RSUM_CAP + 1 doubles) */
enum { NMLX_Q16_RSUM_CAP = 4096 };

/* backend.h matmul_residual for one token: x[D] += W a (+ bias), each
 * row's new value x + (W a + bias) as the unfused add gives it, and each
 * block's sum of squares of the rows it updated in rsum[1 + block] (rsum[0]:
 * the count), for the add_rmsnorm_matmul that reads x next; false (nothing
 * launched) when w does not qualify. */
bool nmlx_cuda_qgemv16_resid(nmlx_backend *be, const nmlx_weight *w, const nmlx_tensor *bias,
                             const float *a, float *x, double *rsum);

/* add_rmsnorm_matmul for one token: the int16 mat-vec (act < 0: n weights
 * as nmlx_cuda_qgemv16; act >= 0: gate/up pairs as nmlx_cuda_qgemv16_act)
 * staging rmsnorm(x + d), x + d and y written by its last block; rope !=
 * NULL (q/k/v): rope_kv folded in (kernel v2, two rows a unit); false
 * (nothing launched) when the weights or the fold do not qualify. */
bool nmlx_cuda_qgemv16_norm(nmlx_backend *be, const nmlx_cuda_norm_in *nrm, int act, int n,
                            const nmlx_weight *const *ws, const nmlx_tensor *const *biases,
                            float *const *ys, const nmlx_rope_kv_args *rope);

#endif
