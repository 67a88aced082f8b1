/* Gemma 3n weights handed to the backend once at load (layers.h *_prepare):
 * on the CPU nothing changes; on a device backend every tensor the forward
 * reads then points at the device copy (the tied head shares the
 * embedding's). */
#include "gemma3n_model.h"

static nmlx_status prepare_tensor(nmlx_backend *be, const nmlx_tensor **t) {
    return *t ? be->ops->prepare_tensor(be, *t, t) : NMLX_OK;
}

static nmlx_status prepare_layer(nmlx_backend *be, nmlx_g3n_layer *l) {
    nmlx_status st = NMLX_OK;
    nmlx_rmsnorm *norms[] = {
        &l->input_norm, &l->post_attn_norm, &l->pre_ffn_norm,      &l->post_ffn_norm, &l->q_norm,
        &l->k_norm,     &l->v_norm,         &l->altup.router_norm, &l->laurel.norm,   &l->pl_norm};
    /* fused projections first, so their row views share one copy; absent
     * ones (no data) are skipped */
    nmlx_linear *lins[] = {&l->q,
                           &l->k,
                           &l->v,
                           &l->o,
                           &l->mlp.gate_up,
                           &l->mlp.gate,
                           &l->mlp.up,
                           &l->mlp.down,
                           &l->altup.router,
                           &l->laurel.left,
                           &l->laurel.right,
                           &l->pl_gate,
                           &l->pl_proj};
    const nmlx_tensor **coefs[] = {&l->altup.pred_coefs, &l->altup.corr_coefs, &l->altup.out_scale};
    for (size_t i = 0; st == NMLX_OK && i < sizeof norms / sizeof norms[0]; i++)
        st = nmlx_rmsnorm_prepare(be, norms[i]);
    for (size_t i = 0; st == NMLX_OK && i < sizeof lins / sizeof lins[0]; i++)
        st = nmlx_linear_prepare(be, lins[i]);
    for (size_t i = 0; st == NMLX_OK && i < sizeof coefs / sizeof coefs[0]; i++)
        st = prepare_tensor(be, coefs[i]);
    return st;
}

nmlx_status nmlx_g3n_prepare(nmlx_g3n_model *m, nmlx_backend *be) {
    nmlx_status st = nmlx_weight_prepare(be, &m->embed);
    if (st == NMLX_OK) st = nmlx_weight_prepare(be, &m->embed_pl);
    if (st == NMLX_OK) st = nmlx_linear_prepare(be, &m->lm_head);
    if (st == NMLX_OK) st = nmlx_linear_prepare(be, &m->pl_model_proj);
    if (st == NMLX_OK) st = nmlx_rmsnorm_prepare(be, &m->pl_proj_norm);
    if (st == NMLX_OK) st = nmlx_rmsnorm_prepare(be, &m->norm);
    for (int64_t k = 0; st == NMLX_OK && k + 1 < m->K; k++) {
        st = nmlx_linear_prepare(be, &m->altup_proj[k]);
        if (st == NMLX_OK) st = nmlx_linear_prepare(be, &m->altup_unembed[k]);
    }
    for (int64_t i = 0; st == NMLX_OK && i < m->n_layers; i++)
        st = prepare_layer(be, &m->layers[i]);
    return st;
}
