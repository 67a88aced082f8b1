/* The Llama 4 text model (see llama4_model.h).
 *
 * Forward pass for T tokens, in pieces of at most PIECE tokens:
 *   x = embed(ids)
 *   for each layer: x += attn(norm1(x)); x += ffn(norm2(x))
 *   logits = lm_head(norm(x))             (only the rows that are asked for) */
#include "llama4_model_impl.h"

#include "attention.h"
#include "embed_head.h"
#include "io/config_schema.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* attn_temperature_tuning: transformers types it bool; hub configs (and
 * mlx-lm) write a number (4), meaning on when nonzero. */
static nmlx_status temperature_flag(const nmlx_cfg *cfg, nmlx_feature f, bool *out) {
    if (f != NMLX_FEATURE_FROM_CONFIG || !nmlx_cfg_has(cfg, "attn_temperature_tuning"))
        return nmlx_cfg_feature(cfg, f, "attn_temperature_tuning", true, out);
    double v = 0;
    if (nmlx_cfg_bool(cfg, "attn_temperature_tuning", true, out) == NMLX_OK) return NMLX_OK;
    nmlx_status st = nmlx_cfg_float(cfg, "attn_temperature_tuning", 0.0, &v);
    if (st == NMLX_OK) *out = v != 0;
    return st;
}

/* RoPE per layer (config no_rope_layers: 1 = RoPE, at least one entry per
 * layer; absent or empty: every no_rope_layer_interval-th layer is NoPE)
 * and chunked attention (config layer_types, else the RoPE layers). */
static nmlx_status layer_kinds(const nmlx_cfg *cfg, const nmlx_l4_def *def, int64_t L,
                               bool *use_rope, bool *chunked) {
    nmlx_status st = NMLX_OK;
    int64_t *flags = NULL;
    const char **types = NULL;
    size_t n = 0;
    const char *path = nmlx_cfg_path(cfg);
    for (int64_t i = 0; i < L; i++)
        use_rope[i] = true;
    if (def->no_rope_layers != NMLX_FEATURE_OFF) {
        flags = nmlx_calloc(MAX_LIST, sizeof *flags);
        CHECK(flags, NMLX_ERR_NOMEM, "out of memory reading no_rope_layers");
        TRY(nmlx_cfg_int_list(cfg, "no_rope_layers", flags, MAX_LIST, &n));
        if (n > 0) {
            CHECK(n >= (size_t)L, NMLX_ERR_INVALID_MODEL,
                  "%s: field 'no_rope_layers' has %zu entries for %lld layers", path, n,
                  (long long)L);
            for (int64_t i = 0; i < L; i++)
                use_rope[i] = flags[i] != 0;
        } else {
            int64_t every;
            TRY(nmlx_cfg_int(cfg, "no_rope_layer_interval", def->no_rope_layer_interval, &every));
            for (int64_t i = 0; i < L; i++)
                use_rope[i] = (i + 1) % every != 0;
        }
    }
    for (int64_t i = 0; i < L; i++)
        chunked[i] = def->chunked_attention && use_rope[i];
    if (def->chunked_attention && nmlx_cfg_has(cfg, "layer_types")) {
        types = nmlx_calloc(MAX_LIST, sizeof *types);
        CHECK(types, NMLX_ERR_NOMEM, "out of memory reading layer_types");
        TRY(nmlx_cfg_string_list(cfg, "layer_types", types, MAX_LIST, &n));
        CHECK(n == (size_t)L, NMLX_ERR_INVALID_MODEL,
              "%s: field 'layer_types' has %zu entries for %lld layers", path, n, (long long)L);
        for (int64_t i = 0; i < L; i++) {
            chunked[i] = !strcmp(types[i], "chunked_attention");
            CHECK(chunked[i] || !strcmp(types[i], "full_attention"), NMLX_ERR_UNSUPPORTED,
                  "%s: layer_types[%lld] '%s' is not supported (chunked_attention, "
                  "full_attention)",
                  path, (long long)i, types[i]);
        }
    }
cleanup:
    nmlx_free(flags);
    nmlx_free(types);
    return st;
}

/* MoE layers: config moe_layers (indices; may be empty), else every
 * interleave_moe_layer_step-th layer counting from step - 1. */
static nmlx_status moe_layers(const nmlx_cfg *cfg, const nmlx_l4_def *def, int64_t L, bool *moe) {
    nmlx_status st = NMLX_OK;
    int64_t *list = NULL;
    const char *path = nmlx_cfg_path(cfg);
    for (int64_t i = 0; i < L; i++)
        moe[i] = false;
    if (def->moe_layers == NMLX_FEATURE_OFF) return NMLX_OK;
    if (def->moe_layers == NMLX_FEATURE_ON) {
        for (int64_t i = 0; i < L; i++)
            moe[i] = true;
        return NMLX_OK;
    }
    if (nmlx_cfg_has(cfg, "moe_layers")) {
        size_t n = 0;
        list = nmlx_calloc(MAX_LIST, sizeof *list);
        CHECK(list, NMLX_ERR_NOMEM, "out of memory reading moe_layers");
        TRY(nmlx_cfg_int_list(cfg, "moe_layers", list, MAX_LIST, &n));
        for (size_t j = 0; j < n; j++) {
            CHECK(list[j] < L, NMLX_ERR_INVALID_MODEL,
                  "%s: moe_layers[%zu] = %lld is not a layer index (%lld layers)", path, j,
                  (long long)list[j], (long long)L);
            moe[list[j]] = true;
        }
    } else {
        int64_t step;
        TRY(nmlx_cfg_int(cfg, "interleave_moe_layer_step", def->interleave_moe_layer_step, &step));
        for (int64_t i = step - 1; i < L; i += step)
            moe[i] = true;
    }
cleanup:
    nmlx_free(list);
    return st;
}

static nmlx_status load_norm(nmlx_rmsnorm *n, const nmlx_weights *ws, nmlx_backend *be,
                             const char *name, int64_t dim, float eps) {
    nmlx_status st = nmlx_rmsnorm_load(n, ws, name, dim, eps, 0.0f);
    return st ? st : nmlx_rmsnorm_prepare(be, n);
}

static nmlx_status load_layer(l4_model *m, l4_layer *l, const nmlx_load_ctx *ctx,
                              const nmlx_l4_def *def, const char *lp, bool bias, float eps,
                              nmlx_act act) {
    char name[256];
    nmlx_status st;
    const nmlx_weights *ws = ctx->weights;
    snprintf(name, sizeof name, "%s.input_layernorm", lp);
    if ((st = load_norm(&l->input_norm, ws, ctx->be, name, m->hidden, eps))) return st;
    snprintf(name, sizeof name, "%s.post_attention_layernorm", lp);
    if ((st = load_norm(&l->post_attn_norm, ws, ctx->be, name, m->hidden, eps))) return st;
    snprintf(name, sizeof name, "%s.self_attn", lp);
    if ((st = nmlx_l4_attention_load(&l->attn, ws, name, bias))) return st;
    nmlx_linear *al[4] = {&l->attn.q, &l->attn.k, &l->attn.v, &l->attn.o};
    for (int i = 0; i < 4; i++)
        if ((st = nmlx_linear_prepare(ctx->be, al[i]))) return st;
    snprintf(name, sizeof name, "%s.%s", lp, def->ffn_module);
    if (l->is_moe)
        return nmlx_l4_moe_load(&l->moe, ws, ctx->be, name, &m->moe, def->moe_shared_expert, act);
    if ((st = nmlx_mlp_load(&l->mlp, ws, name, m->hidden, m->inter_mlp, false, false, act)))
        return st;
    nmlx_linear *ml[3] = {&l->mlp.gate, &l->mlp.up, &l->mlp.down};
    for (int i = 0; i < 3; i++)
        if ((st = nmlx_linear_prepare(ctx->be, ml[i]))) return st;
    return NMLX_OK;
}

nmlx_status nmlx_l4_build(const void *defp, const nmlx_load_ctx *ctx, void **archp,
                          nmlx_arch_info *info) {
    const nmlx_l4_def *def = defp;
    const nmlx_cfg *cfg = ctx->cfg;
    const nmlx_weights *ws = ctx->weights;
    const char *path = nmlx_cfg_path(cfg);
    nmlx_status st = NMLX_OK;
    l4_model *m = nmlx_calloc(1, sizeof *m);
    nmlx_rope_config *rc = nmlx_calloc(1, sizeof *rc);
    bool *use_rope = NULL, *chunked = NULL, *moe = NULL;
    CHECK(m && rc, NMLX_ERR_NOMEM, "out of memory building the model");

    TRY(nmlx_cfg_required_int(cfg, "hidden_size", &m->hidden));
    TRY(nmlx_cfg_required_int(cfg, "num_hidden_layers", &m->n_layers));
    TRY(nmlx_cfg_required_int(cfg, "num_attention_heads", &m->heads));
    TRY(nmlx_cfg_required_int(cfg, "vocab_size", &m->vocab));
    TRY(nmlx_cfg_required_int(cfg, "intermediate_size", &m->inter));
    TRY(nmlx_cfg_int(cfg, "num_key_value_heads", m->heads, &m->kv_heads));
    TRY(nmlx_cfg_int(cfg, "head_dim", def->head_dim ? def->head_dim : m->hidden / m->heads,
                     &m->head_dim));
    TRY(nmlx_cfg_int(cfg, def->dense_size_key,
                     def->intermediate_size_mlp ? def->intermediate_size_mlp : m->inter,
                     &m->inter_mlp));
    CHECK(m->kv_heads > 0 && m->heads % m->kv_heads == 0, NMLX_ERR_INVALID_MODEL,
          "%s: num_attention_heads (%lld) must be a multiple of num_key_value_heads (%lld)", path,
          (long long)m->heads, (long long)m->kv_heads);
    CHECK(m->head_dim > 0 && m->head_dim % 2 == 0, NMLX_ERR_INVALID_MODEL,
          "%s: field 'head_dim' = %lld must be positive and even", path, (long long)m->head_dim);
    TRY(nmlx_cfg_int(cfg, "attention_chunk_size", def->attention_chunk_size, &m->chunk));

    double eps, floor_scale, attn_scale;
    bool tied, bias, qk_norm, tune;
    const char *act_name;
    nmlx_act act;
    int64_t max_pos;
    TRY(nmlx_cfg_float(cfg, "rms_norm_eps", def->rms_norm_eps, &eps));
    TRY(nmlx_cfg_bool(cfg, "tie_word_embeddings", def->tie_word_embeddings, &tied));
    TRY(nmlx_cfg_string(cfg, "hidden_act", def->hidden_act, &act_name));
    TRY(nmlx_parse_activation(act_name, &act));
    TRY(nmlx_cfg_feature(cfg, def->attention_bias, "attention_bias", false, &bias));
    TRY(nmlx_cfg_feature(cfg, def->qk_l2_norm, "use_qk_norm", true, &qk_norm));
    TRY(temperature_flag(cfg, def->attn_temperature_tuning, &tune));
    TRY(nmlx_cfg_float(cfg, "floor_scale", def->floor_scale, &floor_scale));
    TRY(nmlx_cfg_float(cfg, "attn_scale", def->attn_scale, &attn_scale));
    TRY(nmlx_cfg_int(cfg, "max_position_embeddings", def->max_position_embeddings, &max_pos));
    const char *prefix = NULL, *head_name = NULL;
    nmlx_text_weight_prefix(ws, &prefix, &head_name);
    TRY(nmlx_check_layer_count(ws, prefix, m->n_layers, path));

    TRY(nmlx_cfg_rope(cfg, def->rope_theta, rc));
    TRY(nmlx_rope_init(&m->rope, ctx->be, m->head_dim, rc, max_pos));

    TRY(nmlx_embed_head_load(ctx->be, ws, prefix, head_name, m->vocab, m->hidden, tied, &m->embed,
                             &m->lm_head));
    char name[192];
    snprintf(name, sizeof name, "%s.norm", prefix);
    TRY(load_norm(&m->norm, ws, ctx->be, name, m->hidden, (float)eps));

    int64_t L = m->n_layers;
    m->layers = nmlx_calloc((size_t)L, sizeof *m->layers);
    use_rope = nmlx_calloc((size_t)L, sizeof *use_rope);
    chunked = nmlx_calloc((size_t)L, sizeof *chunked);
    moe = nmlx_calloc((size_t)L, sizeof *moe);
    CHECK(m->layers && use_rope && chunked && moe, NMLX_ERR_NOMEM, "out of memory for %lld layers",
          (long long)L);
    TRY(layer_kinds(cfg, def, L, use_rope, chunked));
    TRY(moe_layers(cfg, def, L, moe));
    for (int64_t i = 0; i < L; i++)
        m->has_moe = m->has_moe || moe[i];
    if (m->has_moe) {
        m->moe = (nmlx_moe_shape){
            .hidden = m->hidden,
            .routing = NMLX_MOE_TOPK_SIGMOID,
            .act = NMLX_SWITCH_SWIGLU,
            .router_name = def->router_name,
            .stacked_name = def->stacked_name,
            .gate_up_halves = true,
        };
        TRY(nmlx_cfg_required_int(cfg, "num_local_experts", &m->moe.n_experts));
        TRY(nmlx_cfg_required_int(cfg, "num_experts_per_tok", &m->moe.top_k));
        TRY(nmlx_cfg_required_int(cfg, def->expert_size_key, &m->moe.expert_hidden));
        CHECK(m->moe.top_k <= m->moe.n_experts, NMLX_ERR_INVALID_MODEL,
              "%s: num_experts_per_tok (%lld) must not exceed num_local_experts (%lld)", path,
              (long long)m->moe.top_k, (long long)m->moe.n_experts);
    }
    for (int64_t i = 0; i < L; i++) {
        l4_layer *l = &m->layers[i];
        char lp[160];
        snprintf(lp, sizeof lp, "%s.layers.%lld", prefix, (long long)i);
        l->attn = (nmlx_l4_attention){
            .hidden = m->hidden,
            .heads = m->heads,
            .kv_heads = m->kv_heads,
            .head_dim = m->head_dim,
            .rope = use_rope[i] ? &m->rope : NULL,
            .interleaved = def->rope_interleaved,
            .qk_norm = use_rope[i] && qk_norm,
            .norm_eps = (float)eps,
            .tune = !use_rope[i] && tune,
            .floor_scale = floor_scale,
            .attn_scale = attn_scale,
            .chunked = chunked[i],
        };
        l->is_moe = moe[i];
        TRY(load_layer(m, l, ctx, def, lp, bias, (float)eps, act));
    }
    info->vocab_size = m->vocab;
    info->max_position_embeddings = max_pos;
    for (int64_t i = 0; i < L; i++) /* chunked: the live chunk and the one before
                                     * (chunked_kv_cache.h) */
        nmlx_arch_info_add_kv(info, m->kv_heads, m->head_dim, chunked[i], 2 * m->chunk);
    *archp = m;
    m = NULL;
cleanup:
    nmlx_free(rc);
    nmlx_free(use_rope);
    nmlx_free(chunked);
    nmlx_free(moe);
    if (m) nmlx_l4_destroy(m, ctx->be);
    return st;
}

void nmlx_l4_destroy(void *archp, nmlx_backend *be) {
    l4_model *m = archp;
    if (!m) return;
    nmlx_rope_free(&m->rope, be);
    if (m->layers)
        for (int64_t i = 0; i < m->n_layers; i++)
            if (m->layers[i].is_moe) nmlx_l4_moe_free(&m->layers[i].moe, be);
    nmlx_free(m->layers);
    nmlx_free(m);
}

void nmlx_l4_state_free(void *statep, nmlx_backend *be) {
    l4_state *s = statep;
    if (!s) return;
    if (s->caches)
        for (int64_t i = 0; i < s->n_layers; i++) {
            if (s->caches[i].chunked)
                nmlx_chunked_kv_cache_free(&s->caches[i].ck, be);
            else
                nmlx_layer_cache_free(&s->caches[i].full, be);
        }
    nmlx_free(s->caches);
    l4_buffers_free(&s->w, be);
    nmlx_free(s);
}

bool l4_buffers_alloc(const l4_model *m, nmlx_backend *be, int64_t rows, l4_buffers *w) {
    size_t R = (size_t)rows, f = sizeof(float), D = (size_t)m->hidden;
    size_t qdim = (size_t)(m->heads * m->head_dim), kvdim = (size_t)(m->kv_heads * m->head_dim);
    size_t inter = (size_t)(m->inter > m->inter_mlp ? m->inter : m->inter_mlp);
    w->x = be->ops->alloc(be, R * D * f);
    w->logits = be->ops->alloc(be, NMLX_LOGIT_ROWS * (size_t)m->vocab * f);
    w->xn = be->ops->alloc(be, R * D * f);
    w->tmp = be->ops->alloc(be, R * D * f);
    w->gate = be->ops->alloc(be, R * inter * f);
    w->up = be->ops->alloc(be, R * inter * f);
    w->ab.q = be->ops->alloc(be, R * qdim * f);
    w->ab.k = be->ops->alloc(be, R * kvdim * f);
    w->ab.v = be->ops->alloc(be, R * kvdim * f);
    w->ab.ctx = be->ops->alloc(be, R * qdim * f);
    return w->x && w->logits && w->xn && w->tmp && w->gate && w->up && w->ab.q && w->ab.k &&
           w->ab.v && w->ab.ctx;
}

nmlx_status l4_moe_buffers_alloc(const l4_model *m, nmlx_backend *be, int64_t rows, l4_buffers *w) {
    if (!m->has_moe) return NMLX_OK;
    nmlx_status st = nmlx_l4_moe_buffers_alloc(&w->mb, be, rows, &m->moe);
    w->has_mb = st == NMLX_OK;
    return st;
}

void l4_buffers_free(l4_buffers *w, nmlx_backend *be) {
    if (w->has_mb) nmlx_l4_moe_buffers_free(&w->mb, be);
    void *bufs[] = {w->x,    w->logits, w->xn,   w->tmp,    w->gate,      w->up,
                    w->ab.q, w->ab.k,   w->ab.v, w->ab.ctx, w->ab.scratch};
    nmlx_backend_free_bufs(be, bufs, sizeof bufs / sizeof bufs[0]);
}

nmlx_status nmlx_l4_state_create(const void *archp, nmlx_backend *be, int64_t max_context,
                                 void **statep) {
    const l4_model *m = archp;
    nmlx_status st = NMLX_OK;
    l4_state *s = nmlx_calloc(1, sizeof *s);
    CHECK(s, NMLX_ERR_NOMEM, "out of memory creating a session");
    s->n_layers = m->n_layers;
    s->piece = max_context < PIECE ? max_context : PIECE;
    s->caches = nmlx_calloc((size_t)m->n_layers, sizeof *s->caches);
    CHECK(s->caches, NMLX_ERR_NOMEM, "out of memory creating a session");
    for (int64_t i = 0; i < m->n_layers; i++) {
        nmlx_l4_cache *c = &s->caches[i];
        c->chunked = m->layers[i].attn.chunked;
        if (c->chunked)
            TRY(nmlx_chunked_kv_cache_init(&c->ck, be, m->kv_heads, m->head_dim, m->chunk,
                                           max_context));
        else
            TRY(nmlx_layer_cache_init(&c->full, be, m->kv_heads, m->head_dim, 0, s->piece,
                                      max_context));
    }
    bool ok = l4_buffers_alloc(m, be, s->piece, &s->w);
    s->w.ab.scratch = nmlx_attention_scratch_alloc(be, m->heads, m->kv_heads, max_context);
    CHECK(ok && s->w.ab.scratch, NMLX_ERR_NOMEM, "out of memory for session buffers (context %lld)",
          (long long)max_context);
    TRY(l4_moe_buffers_alloc(m, be, s->piece, &s->w));
    *statep = s;
    s = NULL;
cleanup:
    if (s) nmlx_l4_state_free(s, be);
    return st;
}

int64_t nmlx_l4_state_position(const void *statep) {
    const l4_state *s = statep;
    return s->n_layers ? nmlx_l4_cache_offset(&s->caches[0]) : 0;
}

void nmlx_l4_state_trim(void *statep, int64_t n) {
    l4_state *s = statep;
    for (int64_t i = 0; i < s->n_layers; i++)
        nmlx_l4_cache_trim(&s->caches[i], n);
}

void l4_ffn_residual(nmlx_backend *be, const l4_model *m, const l4_layer *l, l4_buffers *w,
                     int64_t T) {
    int64_t D = m->hidden;
    nmlx_rmsnorm_forward(be, &l->post_attn_norm, w->x, w->xn, T, D);
    if (l->is_moe)
        nmlx_l4_moe_forward(be, &l->moe, &w->mb, w->xn, w->gate, w->up, w->tmp, T);
    else
        nmlx_mlp_forward(be, &l->mlp, w->xn, w->gate, w->up, w->tmp, T);
    be->ops->add(be, w->x, w->tmp, w->x, T * D);
}

static void layer_forward(nmlx_backend *be, const l4_model *m, l4_state *s, int64_t i, int64_t T) {
    const l4_layer *l = &m->layers[i];
    l4_buffers *w = &s->w;
    int64_t D = m->hidden;
    nmlx_rmsnorm_forward(be, &l->input_norm, w->x, w->xn, T, D);
    nmlx_l4_attention_forward(be, &l->attn, &s->caches[i], &w->ab, w->xn, w->tmp, T);
    be->ops->add(be, w->x, w->tmp, w->x, T * D);
    l4_ffn_residual(be, m, l, w, T);
}

nmlx_status nmlx_l4_forward(const void *archp, void *statep, nmlx_backend *be, const int32_t *ids,
                            int64_t T, float *last_logits, float *all_logits, atomic_bool *cancel) {
    const l4_model *m = archp;
    l4_state *s = statep;
    nmlx_status st = NMLX_OK;
    int64_t start = nmlx_l4_state_position(s);
    const nmlx_text_head head = {&m->norm, &m->lm_head, m->hidden, m->vocab, 0.0f};
    TRY(nmlx_check_ids(ids, T, m->vocab));
    /* check every cache first, so a failure leaves nothing half-done */
    for (int64_t i = 0; i < m->n_layers; i++)
        TRY(nmlx_l4_cache_reserve(&s->caches[i], be, T));
    for (int64_t c0 = 0; c0 < T; c0 += s->piece) {
        int64_t C = T - c0 < s->piece ? T - c0 : s->piece;
        be->ops->embed(be, &m->embed, ids + c0, C, 1.0f, s->w.x);
        for (int64_t i = 0; i < m->n_layers; i++) {
            /* one token (decode): only before it starts, so a cancelled step
             * never needs a rollback (which a new attention chunk would make
             * lossy: llama4_model.h) */
            if (T > 1 || (c0 == 0 && i == 0))
                CHECK(!(cancel && atomic_load(cancel)), NMLX_ERR_CANCELLED, "cancelled");
            layer_forward(be, m, s, i, C);
        }
        nmlx_chunk_logits(be, &head, s->w.x, s->w.xn, false, s->w.logits, c0, C, T, last_logits,
                          all_logits);
    }
cleanup:
    if (st != NMLX_OK) /* roll every cache back to where this call started */
        for (int64_t i = 0; i < m->n_layers; i++)
            nmlx_l4_cache_trim(&s->caches[i], nmlx_l4_cache_offset(&s->caches[i]) - start);
    return st;
}
