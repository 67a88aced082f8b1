/* Port of mlx-lm mlx_lm/models/rope_utils.py at
 * ml-explore/mlx-lm@d78bf58e217c904ec282ed8da9b947491f78c022: initialize_rope
 * dispatch, nn.RoPE (default, linear: positions scaled by 1/factor) and
 * Llama3RoPE (per-frequency smooth interpolation), SuScaledRoPE (longrope)
 * and YarnRoPE.
 *
 * Deviations from mlx-lm, following transformers 5 (the reference):
 *  - llama3 with low_freq_factor == high_freq_factor (Llama 4) is accepted:
 *    no smoothing band (mlx-lm divides by zero there, unused by its where).
 *  - longrope: mlx-lm always applies long_factor; transformers applies
 *    short_factor unless the call reaches past original_max_position_embeddings.
 *    Both tables are kept; nmlx_rope_freqs() picks one per call. The
 *    attention factor uses rope "factor" if given, else max_position /
 *    original (transformers), and is 1 when that is <= 1.
 *  - yarn: the correction range is truncated to integers only when
 *    "truncate" is true; the attention factor follows transformers
 *    (attention_factor if given; mscale / mscale_all_dim when both are set;
 *    else 0.1 ln(factor) + 1). */
#include "rope.h"

#include <math.h>
#include <string.h>

#define M_PI_ 3.14159265358979323846

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

/* YarnRoPE: blend of interpolated (period * factor) and extrapolated
 * periods over a linear ramp between the correction dims. */
static void yarn_periods(double *period, int64_t half, int64_t dims, const nmlx_rope_config *c,
                         double orig) {
    double base = c->theta, factor = c->factor;
    double lo = (double)dims * log(orig / (c->beta_fast * 2.0 * M_PI_)) / (2.0 * log(base));
    double hi = (double)dims * log(orig / (c->beta_slow * 2.0 * M_PI_)) / (2.0 * log(base));
    if (c->truncate) {
        lo = floor(lo);
        hi = ceil(hi);
    }
    if (lo < 0) lo = 0;
    if (hi > (double)(dims - 1)) hi = (double)(dims - 1);
    if (lo == hi) hi += 0.001;
    for (int64_t i = 0; i < half; i++) {
        double ramp = ((double)i - lo) / (hi - lo);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        double extra = 1.0 - ramp; /* weight of the extrapolated frequency */
        double inv = (1.0 / (factor * period[i])) * (1.0 - extra) + (1.0 / period[i]) * extra;
        period[i] = 1.0 / inv;
    }
}

static double yarn_get_mscale(double scale, double m) {
    return scale <= 1.0 ? 1.0 : 0.1 * m * log(scale) + 1.0;
}

const float *nmlx_rope_freqs(const nmlx_rope *rope, int64_t pos0, int64_t T) {
    if (rope->long_from > 0 && pos0 + T > rope->long_from) return rope->long_freqs;
    return rope->freqs;
}

nmlx_status nmlx_rope_init(nmlx_rope *rope, nmlx_backend *be, int64_t dims,
                           const nmlx_rope_config *cfg,
                           int64_t max_position_embeddings) {
    nmlx_status st = NMLX_OK;
    double *period = NULL;
    memset(rope, 0, sizeof *rope);
    const char *type = cfg->type[0] ? cfg->type : "default";
    CHECK(dims > 0 && dims % 2 == 0 && dims <= 65536, NMLX_ERR_INVALID_MODEL,
          "config.json: head_dim x partial_rotary_factor = %lld rotated dimensions must be "
          "positive, even and <= 65536",
          (long long)dims);
    CHECK(cfg->theta > 0, NMLX_ERR_INVALID_MODEL,
          "config.json: field 'rope_theta' = %g must be positive", cfg->theta);
    int64_t half = dims / 2;
    period = nmlx_malloc((size_t)half * sizeof *period);
    CHECK(period, NMLX_ERR_NOMEM, "rope: out of memory");
    for (int64_t i = 0; i < half; i++)
        period[i] = pow(cfg->theta, (double)(2 * i) / (double)dims);

    double pos_scale = 1.0; /* nn.RoPE's `scale`: multiplies positions */
    double mscale = 1.0;
    double orig = cfg->original_max_position_embeddings > 0
                      ? (double)cfg->original_max_position_embeddings
                      : (double)max_position_embeddings;
    bool longrope = !strcmp(type, "longrope") || !strcmp(type, "su");
    if (!strcmp(type, "default")) {
        /* plain RoPE */
    } else if (!strcmp(type, "linear")) {
        CHECK(cfg->factor > 0, NMLX_ERR_INVALID_MODEL,
              "config.json: RoPE field 'factor' = %g must be > 0 for linear scaling", cfg->factor);
        pos_scale = 1.0 / cfg->factor;
    } else if (!strcmp(type, "llama3")) {
        /* low_freq_factor == high_freq_factor (Llama 4) leaves no smoothing
         * band: every frequency is kept or divided, nothing is divided by
         * high - low (llama3_periods' band test is then never true) */
        CHECK(cfg->factor > 0 && cfg->low_freq_factor > 0 && cfg->high_freq_factor > 0,
              NMLX_ERR_INVALID_MODEL,
              "config.json: llama3 RoPE fields 'factor' = %g, 'low_freq_factor' = %g and "
              "'high_freq_factor' = %g must be > 0",
              cfg->factor, cfg->low_freq_factor, cfg->high_freq_factor);
        llama3_periods(period, half, cfg);
    } else if (longrope) {
        CHECK(cfg->n_short == (size_t)half && cfg->n_long == (size_t)half, NMLX_ERR_INVALID_MODEL,
              "config.json: longrope RoPE fields 'short_factor' and 'long_factor' need %lld values "
              "each (head_dim / 2; got %zu and %zu)",
              (long long)half, cfg->n_short, cfg->n_long);
        CHECK(orig > 0, NMLX_ERR_INVALID_MODEL,
              "config.json: longrope RoPE needs 'original_max_position_embeddings' > 0");
        /* transformers: "factor" if given, else the context extension ratio */
        double factor = cfg->factor != 1.0 ? cfg->factor : (double)max_position_embeddings / orig;
        if (cfg->attention_factor > 0) mscale = cfg->attention_factor;
        else if (factor > 1.0) mscale = sqrt(1.0 + log(factor) / log(orig));
        rope->long_from = (int64_t)orig;
    } else if (!strcmp(type, "yarn")) {
        CHECK(cfg->factor > 0 && cfg->beta_fast > 0 && cfg->beta_slow > 0 && orig > 0,
              NMLX_ERR_INVALID_MODEL,
              "config.json: yarn RoPE fields 'factor' = %g, 'beta_fast' = %g, 'beta_slow' = %g and "
              "'original_max_position_embeddings' = %g must be > 0",
              cfg->factor, cfg->beta_fast, cfg->beta_slow, orig);
        yarn_periods(period, half, dims, cfg, orig);
        if (cfg->attention_factor > 0) mscale = cfg->attention_factor;
        else if (cfg->has_mscale && cfg->mscale != 0 && cfg->mscale_all_dim != 0)
            mscale = yarn_get_mscale(cfg->factor, cfg->mscale) /
                     yarn_get_mscale(cfg->factor, cfg->mscale_all_dim);
        else mscale = yarn_get_mscale(cfg->factor, 1.0);
    } else {
        CHECK(0, NMLX_ERR_UNSUPPORTED, "rope: rope type '%s' is not supported", type);
    }

    rope->dims = dims;
    rope->mscale = (float)mscale;
    rope->host_freqs = nmlx_malloc((size_t)half * sizeof(float));
    rope->freqs = be->ops->alloc(be, (size_t)half * sizeof(float));
    CHECK(rope->host_freqs && rope->freqs, NMLX_ERR_NOMEM, "rope: out of memory");
    for (int64_t i = 0; i < half; i++)
        rope->host_freqs[i] = (float)(pos_scale / (longrope ? cfg->short_factor[i] * period[i]
                                                            : period[i]));
    be->ops->upload(be, rope->freqs, rope->host_freqs, (size_t)half * sizeof(float));
    if (longrope) {
        rope->host_long_freqs = nmlx_malloc((size_t)half * sizeof(float));
        rope->long_freqs = be->ops->alloc(be, (size_t)half * sizeof(float));
        CHECK(rope->host_long_freqs && rope->long_freqs, NMLX_ERR_NOMEM, "rope: out of memory");
        for (int64_t i = 0; i < half; i++)
            rope->host_long_freqs[i] = (float)(1.0 / (cfg->long_factor[i] * period[i]));
        be->ops->upload(be, rope->long_freqs, rope->host_long_freqs, (size_t)half * sizeof(float));
    }

cleanup:
    nmlx_free(period);
    if (st != NMLX_OK) nmlx_rope_free(rope, be);
    return st;
}

void nmlx_rope_free(nmlx_rope *rope, nmlx_backend *be) {
    if (!rope) return;
    if (rope->freqs) be->ops->free(be, rope->freqs);
    if (rope->long_freqs) be->ops->free(be, rope->long_freqs);
    nmlx_free(rope->host_freqs);
    nmlx_free(rope->host_long_freqs);
    memset(rope, 0, sizeof *rope);
}
