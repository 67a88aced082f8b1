/* RoPE setup from config.json shared by the model skeletons: the rotated
 * dims of a head and the separate RoPE of sliding-window layers. */
#ifndef NMLX_ROPE_SETUP_H
#define NMLX_ROPE_SETUP_H

#include "io/config.h"
#include "ported/rope.h"

/* head_dim * partial_rotary_factor, after checking the factor is in (0, 1]. */
nmlx_status nmlx_rotary_dims(const nmlx_cfg *cfg, int64_t head_dim, double factor,
                             int64_t *out);

/* The RoPE of sliding layers: rope_parameters.sliding_attention
 * (transformers 5), else plain RoPE with base rope_local_base_freq (hub),
 * defaulting to local_theta. */
nmlx_status nmlx_local_rope_init(const nmlx_cfg *cfg, double local_theta, nmlx_backend *be,
                                 int64_t head_dim, int64_t max_pos, nmlx_rope *rope);

#endif
