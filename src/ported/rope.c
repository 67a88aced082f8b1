/* Port of mlx-lm mlx_lm/models/rope_utils.py at
 * ml-explore/mlx-lm@d78bf58e217c904ec282ed8da9b947491f78c022: initialize_rope
 * dispatch, nn.RoPE (default, linear: positions scaled by 1/factor) and
 * Llama3RoPE (per-frequency smooth interpolation). */
#include "rope.h"

#include <math.h>
#include <string.h>

/* Llama3RoPE.__init__: periods of the lowest frequencies are stretched by
 * `factor`, the highest kept, the band between interpolated smoothly. */
static void llama3_periods(double *period, int64_t half, const nmlx_rope_config *c) {
    double factor = c->factor;
    double low = c->low_freq_factor, high = c->high_freq_factor;
    double old_ctx = c->original_max_position_embeddings > 0
                         ? (double)c->original_max_position_embeddings
                         : 8192.0;
    double low_wavelen = old_ctx / low, high_wavelen = old_ctx / high;
    for (int64_t i = 0; i < half; i++) {
        double f = period[i];
        double wavelen = 2.0 * 3.14159265358979323846 * f;
        double scaled = wavelen > low_wavelen ? f * factor : f;
        if (wavelen > high_wavelen && wavelen < low_wavelen) {
            double smooth = (old_ctx / wavelen - low) / (high - low);
            scaled = scaled / ((1.0 - smooth) / factor + smooth);
        }
        period[i] = scaled;
    }
}

nmlx_status nmlx_rope_init(nmlx_rope *rope, nmlx_backend *be, int64_t dims,
                           const nmlx_rope_config *cfg,
                           int64_t max_position_embeddings) {
    nmlx_status st = NMLX_OK;
    double *period = NULL;
    memset(rope, 0, sizeof *rope);
    const char *type = cfg->type[0] ? cfg->type : "default";
    CHECK(dims > 0 && dims % 2 == 0, NMLX_ERR_FORMAT,
          "rope: rotated dimension count %lld must be positive and even", (long long)dims);
    CHECK(cfg->theta > 0, NMLX_ERR_FORMAT, "rope: rope_theta must be positive (got %g)",
          cfg->theta);
    int64_t half = dims / 2;
    period = nmlx_malloc((size_t)half * sizeof *period);
    CHECK(period, NMLX_ERR_NOMEM, "rope: out of memory");
    for (int64_t i = 0; i < half; i++)
        period[i] = pow(cfg->theta, (double)(2 * i) / (double)dims);

    double pos_scale = 1.0; /* nn.RoPE's `scale`: multiplies positions */
    if (!strcmp(type, "default")) {
        /* plain RoPE */
    } else if (!strcmp(type, "linear")) {
        CHECK(cfg->factor > 0, NMLX_ERR_FORMAT, "rope: linear scaling needs factor > 0");
        pos_scale = 1.0 / cfg->factor;
    } else if (!strcmp(type, "llama3")) {
        CHECK(cfg->factor > 0 && cfg->high_freq_factor != cfg->low_freq_factor,
              NMLX_ERR_FORMAT, "rope: llama3 scaling needs factor > 0 and high_freq_factor != "
                               "low_freq_factor");
        llama3_periods(period, half, cfg);
    } else {
        CHECK(0, NMLX_ERR_UNSUPPORTED, "rope: rope type '%s' is not supported", type);
    }
    (void)max_position_embeddings;

    rope->dims = dims;
    rope->mscale = 1.0f;
    rope->host_freqs = nmlx_malloc((size_t)half * sizeof(float));
    rope->freqs = be->ops->alloc(be, (size_t)half * sizeof(float));
    CHECK(rope->host_freqs && rope->freqs, NMLX_ERR_NOMEM, "rope: out of memory");
    for (int64_t i = 0; i < half; i++) rope->host_freqs[i] = (float)(pos_scale / period[i]);
    be->ops->upload(be, rope->freqs, rope->host_freqs, (size_t)half * sizeof(float));

cleanup:
    nmlx_free(period);
    if (st != NMLX_OK) nmlx_rope_free(rope, be);
    return st;
}

void nmlx_rope_free(nmlx_rope *rope, nmlx_backend *be) {
    if (!rope) return;
    if (rope->freqs) be->ops->free(be, rope->freqs);
    nmlx_free(rope->host_freqs);
    memset(rope, 0, sizeof *rope);
}
