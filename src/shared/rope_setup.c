/* RoPE setup from config.json (see rope_setup.h). */
#include "rope_setup.h"

#include <stdio.h>

nmlx_status nmlx_rotary_dims(const nmlx_cfg *cfg, int64_t head_dim, double factor,
                             int64_t *out) {
    if (!(factor > 0 && factor <= 1))
        return nmlx_fail(NMLX_ERR_INVALID_MODEL,
                         "%s: partial_rotary_factor must be in (0, 1] (got %g)", nmlx_cfg_path(cfg),
                         factor);
    *out = (int64_t)((double)head_dim * factor);
    return NMLX_OK;
}

nmlx_status nmlx_local_rope_init(const nmlx_cfg *cfg, double local_theta, nmlx_backend *be,
                                 int64_t head_dim, int64_t max_pos, nmlx_rope *rope) {
    nmlx_status st = NMLX_OK;
    bool found = false;
    int64_t rot = 0;
    nmlx_rope_config *rc = nmlx_calloc(1, sizeof *rc);
    CHECK(rc, NMLX_ERR_NOMEM, "out of memory building the model");
    TRY(nmlx_cfg_rope_layer(cfg, "sliding_attention", local_theta, rc, &found));
    if (!found) {
        snprintf(rc->type, sizeof rc->type, "default");
        rc->factor = 1.0;
        rc->partial_rotary_factor = 1.0;
        TRY(nmlx_cfg_float(cfg, "rope_local_base_freq", local_theta, &rc->theta));
    }
    TRY(nmlx_rotary_dims(cfg, head_dim, rc->partial_rotary_factor, &rot));
    TRY(nmlx_rope_init(rope, be, rot, rc, max_pos));
cleanup:
    nmlx_free(rc);
    return st;
}
