/* RoPE variants and the initialize_rope factory.
 * Port of mlx-lm mlx_lm/models/rope_utils.py (initialize_rope, Llama3RoPE,
 * nn.RoPE default/linear) at ml-explore/mlx-lm@d78bf58e217c904ec282ed8da9b947491f78c022.
 *
 * SuScaledRoPE (longrope/su) and YarnRoPE at the same commit; where mlx-lm
 * and transformers disagree, transformers wins (see rope.c).
 *
 * mlx-lm keeps per-dimension *periods* (`_freqs = base ** (2i/dims)`, angle
 * = pos / period); the CPU kernel takes the reciprocal (angle = pos * freq),
 * so this file stores 1/period. */
#ifndef NMLX_PORTED_ROPE_H
#define NMLX_PORTED_ROPE_H

#include "common.h"
#include "compute/backend.h"
#include "io/config.h"

typedef struct nmlx_rope {
    int64_t dims;   /* rotated dims (head_dim * partial_rotary_factor) */
    float mscale;   /* multiplies the rotated dims (yarn/longrope); 1 otherwise */
    float *freqs;   /* [dims/2] angle per position, backend buffer */
    float *host_freqs; /* same values on the host (for inspection/tests) */
    /* longrope: a call whose last position is >= long_from uses long_freqs
     * (transformers picks the factors per forward call); 0 = never */
    int64_t long_from;
    float *long_freqs, *host_long_freqs;
} nmlx_rope;

/* The frequency table for a call covering positions [pos0, pos0 + T). */
const float *nmlx_rope_freqs(const nmlx_rope *rope, int64_t pos0, int64_t T);

/* Builds the RoPE of `dims` rotated dimensions from the parsed config.
 * Supports rope types "default", "linear", "llama3", "longrope" (alias
 * "su"), "yarn"; any other type fails
 * with NMLX_ERR_UNSUPPORTED naming it. max_position_embeddings is the
 * model's (used by scaling types that need it). */
nmlx_status nmlx_rope_init(nmlx_rope *rope, nmlx_backend *be, int64_t dims,
                           const nmlx_rope_config *cfg,
                           int64_t max_position_embeddings);
void nmlx_rope_free(nmlx_rope *rope, nmlx_backend *be);

#endif
