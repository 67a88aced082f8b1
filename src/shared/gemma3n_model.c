/* The Gemma 3n text model (see gemma3n_model.h). */
#include "gemma3n_model.h"
#include "embed_head.h"
#include "io/config_schema.h"
#include "rope_setup.h"

#include "standard_model.h" /* nmlx_parse_activation */

#include <math.h>
#include <stdio.h>
#include <string.h>

enum {
    CHUNK = 256, /* tokens per prefill chunk: bounds activation memory */
    MAX_LAYERS = 4096
};

static const double PI = 3.14159265358979323846;
static const float SQRT1_2 = 0.70710678118654752f;

/* ---- config helpers ------------------------------------------------------ */

double nmlx_normal_quantile(double p) {
    /* Newton on Phi(x) - p from 0; Phi is convex/concave on either side of
     * 0 so the iteration moves monotonically to the root */
    double x = 0;
    for (int i = 0; i < 100; i++) {
        double f = 0.5 * erfc(-x / sqrt(2.0)) - p;
        double d = exp(-0.5 * x * x) / sqrt(2.0 * PI);
        double step = f / d;
        x -= step;
        if (fabs(step) < 1e-15 * (1.0 + fabs(x))) break;
    }
    return x;
}

/* Where the text model's weights live: "model." (causal LM) or the language
 * model of a multimodal checkpoint. */
static const char *weight_prefix(const nmlx_weights *ws) {
    static const char *const prefixes[] = {"model", "model.language_model", "language_model.model"};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        char name[128];
        snprintf(name, sizeof name, "%s.embed_tokens.weight", prefixes[i]);
        if (nmlx_weights_find(ws, name)) return prefixes[i];
    }
    return "model"; /* the load then names the missing tensor */
}

/* Per-layer sliding (1) / full (0) from layer_types, else every
 * full_layer_every-th layer full. */
static nmlx_status read_layer_types(const nmlx_cfg *cfg, const nmlx_g3n_def *def, int64_t L,
                                    bool *sliding) {
    nmlx_status st = NMLX_OK;
    const char **types = nmlx_calloc((size_t)L, sizeof *types);
    size_t n = 0;
    CHECK(types, NMLX_ERR_NOMEM, "out of memory reading layer_types");
    TRY(nmlx_cfg_string_list(cfg, "layer_types", types, (size_t)L, &n));
    if (n == 0) {
        for (int64_t i = 0; i < L; i++) /* full_layer_every 0: all sliding */
            sliding[i] = def->full_layer_every <= 0 || (i + 1) % def->full_layer_every != 0;
        goto cleanup;
    }
    CHECK(n == (size_t)L, NMLX_ERR_INVALID_MODEL,
          "%s: field 'layer_types' has %zu entries for %lld layers", nmlx_cfg_path(cfg), n,
          (long long)L);
    for (int64_t i = 0; i < L; i++) {
        sliding[i] = !strcmp(types[i], "sliding_attention");
        CHECK(sliding[i] || !strcmp(types[i], "full_attention"), NMLX_ERR_UNSUPPORTED,
              "%s: layer_types[%lld] '%s' is not supported (sliding_attention, full_attention)",
              nmlx_cfg_path(cfg), (long long)i, types[i]);
    }
cleanup:
    nmlx_free(types);
    return st;
}

/* ---- build ------------------------------------------------------------------ */

typedef struct layer_cfg {
    int64_t *inter;   /* per layer */
    double *sparsity; /* per layer */
    bool *sliding;
} layer_cfg;

static nmlx_status read_layer_cfg(const nmlx_cfg *cfg, const nmlx_g3n_def *def, int64_t L,
                                  layer_cfg *lc) {
    nmlx_status st = NMLX_OK;
    size_t n = 0;
    lc->inter = nmlx_calloc((size_t)L, sizeof *lc->inter);
    lc->sparsity = nmlx_calloc((size_t)L, sizeof *lc->sparsity);
    lc->sliding = nmlx_calloc((size_t)L, sizeof *lc->sliding);
    CHECK(lc->inter && lc->sparsity && lc->sliding, NMLX_ERR_NOMEM, "out of memory for %lld layers",
          (long long)L);
    CHECK(nmlx_cfg_has(cfg, "intermediate_size"), NMLX_ERR_INVALID_MODEL,
          "%s: missing required field 'intermediate_size'", nmlx_cfg_path(cfg));
    TRY(nmlx_cfg_int_list(cfg, "intermediate_size", lc->inter, (size_t)L, &n));
    CHECK(n == 1 || n == (size_t)L, NMLX_ERR_INVALID_MODEL,
          "%s: field 'intermediate_size' has %zu entries for %lld layers", nmlx_cfg_path(cfg), n,
          (long long)L);
    for (int64_t i = 0; i < L; i++) {
        if (n == 1) lc->inter[i] = lc->inter[0];
        CHECK(lc->inter[i] > 0, NMLX_ERR_INVALID_MODEL,
              "%s: intermediate_size[%lld] must be positive", nmlx_cfg_path(cfg), (long long)i);
    }
    if (def->activation_sparsity) {
        TRY(nmlx_cfg_float_list(cfg, "activation_sparsity_pattern", lc->sparsity, (size_t)L, &n));
        if (n == 0) /* transformers' default: the first 10 layers of deep models */
            for (int64_t i = 0; i < L; i++)
                lc->sparsity[i] = L > 10 && i < 10 ? 0.95 : 0.0;
        else
            CHECK(n == (size_t)L, NMLX_ERR_INVALID_MODEL,
                  "%s: field 'activation_sparsity_pattern' has %zu entries for %lld layers",
                  nmlx_cfg_path(cfg), n, (long long)L);
        for (int64_t i = 0; i < L; i++)
            CHECK(lc->sparsity[i] >= 0 && lc->sparsity[i] < 1, NMLX_ERR_INVALID_MODEL,
                  "%s: activation_sparsity_pattern[%lld] must be in [0, 1)", nmlx_cfg_path(cfg),
                  (long long)i);
    }
    TRY(read_layer_types(cfg, def, L, lc->sliding));
cleanup:
    return st;
}

static void free_layer_cfg(layer_cfg *lc) {
    nmlx_free(lc->inter);
    nmlx_free(lc->sparsity);
    nmlx_free(lc->sliding);
}

static nmlx_status load_norm(nmlx_rmsnorm *n, const nmlx_weights *ws, const char *prefix,
                             const char *what, int64_t dim, float eps) {
    char name[512];
    snprintf(name, sizeof name, "%s.%s", prefix, what);
    return nmlx_rmsnorm_load(n, ws, name, dim, eps, 0.0f); /* Gemma 3n norms scale by w */
}

static nmlx_status load_linear(nmlx_linear *l, const nmlx_weights *ws, const char *prefix,
                               const char *what, int64_t out, int64_t in) {
    char name[512];
    snprintf(name, sizeof name, "%s.%s", prefix, what);
    return nmlx_linear_load(l, ws, name, out, in, false);
}

static nmlx_status load_layer(nmlx_g3n_model *m, const nmlx_g3n_def *def, const nmlx_weights *ws,
                              const char *lp, int64_t i, const layer_cfg *lc, float eps,
                              bool attn_bias) {
    nmlx_status st;
    nmlx_g3n_layer *l = &m->layers[i];
    int64_t D = m->hidden, HD = m->head_dim;
    char ap[256];
    snprintf(ap, sizeof ap, "%s.self_attn", lp);
    if ((st = load_norm(&l->input_norm, ws, lp, "input_layernorm", D, eps))) return st;
    if ((st = load_norm(&l->post_attn_norm, ws, lp, "post_attention_layernorm", D, eps))) return st;
    if ((st = load_norm(&l->pre_ffn_norm, ws, lp, "pre_feedforward_layernorm", D, eps))) return st;
    if ((st = load_norm(&l->post_ffn_norm, ws, lp, "post_feedforward_layernorm", D, eps)))
        return st;
    char name[512];
    snprintf(name, sizeof name, "%s.q_proj", ap);
    if ((st = nmlx_linear_load(&l->q, ws, name, m->heads * HD, D, attn_bias))) return st;
    snprintf(name, sizeof name, "%s.o_proj", ap);
    if ((st = nmlx_linear_load(&l->o, ws, name, D, m->heads * HD, attn_bias))) return st;
    if ((st = load_norm(&l->q_norm, ws, ap, "q_norm", HD, eps))) return st;
    if (l->kv_source < 0) { /* shared layers need no k/v weights (checkpoints may carry them) */
        snprintf(name, sizeof name, "%s.k_proj", ap);
        if ((st = nmlx_linear_load(&l->k, ws, name, m->kv_heads * HD, D, attn_bias))) return st;
        snprintf(name, sizeof name, "%s.v_proj", ap);
        if ((st = nmlx_linear_load(&l->v, ws, name, m->kv_heads * HD, D, attn_bias))) return st;
        if ((st = load_norm(&l->k_norm, ws, ap, "k_norm", HD, eps))) return st;
        l->v_norm = (nmlx_rmsnorm){.w = NULL, .eps = eps, .offset = 0.0f};
    }
    l->rope = l->window > 0 ? &m->local_rope : &m->rope;
    snprintf(name, sizeof name, "%s.mlp", lp);
    if ((st = nmlx_mlp_load(&l->mlp, ws, name, D, lc->inter[i], false, false, m->act))) return st;
    l->sparse = lc->sparsity[i] > 0;
    if (l->sparse) l->sparsity_mult = (float)nmlx_normal_quantile(lc->sparsity[i]);
    snprintf(name, sizeof name, "%s.altup", lp);
    if ((st = nmlx_altup_load(&l->altup, ws, name, D, m->K, m->active, (float)def->altup_coef_clip,
                              eps, def->altup_correct_scale)))
        return st;
    if (def->laurel) {
        snprintf(name, sizeof name, "%s.laurel", lp);
        if ((st = nmlx_laurel_load(&l->laurel, ws, name, D, m->laurel_rank, eps, 0.0f))) return st;
    }
    if (def->per_layer_inputs) {
        if ((st = load_linear(&l->pl_gate, ws, lp, "per_layer_input_gate", m->pl_dim, D)))
            return st;
        if ((st = load_linear(&l->pl_proj, ws, lp, "per_layer_projection", D, m->pl_dim)))
            return st;
        if ((st = load_norm(&l->pl_norm, ws, lp, "post_per_layer_input_norm", D, eps))) return st;
    }
    return NMLX_OK;
}

/* Which earlier layer each KV-shared layer reads: the last layer of the
 * same type before the shared ones (transformers' kv_shared_layer_index). */
static nmlx_status kv_sources(const nmlx_cfg *cfg, const nmlx_g3n_def *def, nmlx_g3n_model *m,
                              const bool *sliding) {
    int64_t L = m->n_layers, shared = 0;
    nmlx_status st = NMLX_OK;
    for (int64_t i = 0; i < L; i++)
        m->layers[i].kv_source = -1;
    if (!def->kv_sharing) return NMLX_OK;
    if ((st = nmlx_cfg_int(cfg, "num_kv_shared_layers", def->num_kv_shared_layers, &shared)))
        return st;
    if (shared < 0 || shared > L)
        return nmlx_fail(NMLX_ERR_INVALID_MODEL, "%s: num_kv_shared_layers %lld out of [0, %lld]",
                         nmlx_cfg_path(cfg), (long long)shared, (long long)L);
    int64_t first = L - shared;
    if (first <= 0) return NMLX_OK; /* transformers shares only when first > 0 */
    for (int64_t i = first; i < L; i++) {
        int64_t src = -1;
        for (int64_t j = first - 1; j >= 0 && src < 0; j--)
            if (sliding[j] == sliding[i]) src = j;
        if (src < 0)
            return nmlx_fail(NMLX_ERR_INVALID_MODEL,
                             "%s: KV-shared layer %lld has no earlier %s layer to share with",
                             nmlx_cfg_path(cfg), (long long)i,
                             sliding[i] ? "sliding_attention" : "full_attention");
        m->layers[i].kv_source = src;
    }
    return NMLX_OK;
}

nmlx_status nmlx_g3n_build(const void *defp, const nmlx_load_ctx *ctx, void **archp,
                           nmlx_arch_info *info) {
    const nmlx_g3n_def *def = defp;
    const nmlx_cfg *cfg = ctx->cfg;
    const nmlx_weights *ws = ctx->weights;
    nmlx_status st = NMLX_OK;
    layer_cfg lc = {0};
    nmlx_rope_config *rc = nmlx_calloc(1, sizeof *rc);
    nmlx_g3n_model *m = nmlx_calloc(1, sizeof *m);
    CHECK(m && rc, NMLX_ERR_NOMEM, "out of memory building the model");
    m->def = def;

    TRY(nmlx_cfg_required_int(cfg, "hidden_size", &m->hidden));
    TRY(nmlx_cfg_required_int(cfg, "num_hidden_layers", &m->n_layers));
    TRY(nmlx_cfg_required_int(cfg, "num_attention_heads", &m->heads));
    TRY(nmlx_cfg_required_int(cfg, "vocab_size", &m->vocab));
    TRY(nmlx_cfg_positive_int(cfg, "num_key_value_heads", m->heads, &m->kv_heads));
    TRY(nmlx_cfg_positive_int(cfg, "head_dim", def->head_dim, &m->head_dim));
    CHECK(m->heads % m->kv_heads == 0, NMLX_ERR_INVALID_MODEL,
          "%s: num_attention_heads (%lld) must be a multiple of num_key_value_heads (%lld)",
          nmlx_cfg_path(cfg), (long long)m->heads, (long long)m->kv_heads);
    CHECK(m->head_dim % 2 == 0, NMLX_ERR_INVALID_MODEL, "%s: head_dim must be even (got %lld)",
          nmlx_cfg_path(cfg), (long long)m->head_dim);
    CHECK(m->n_layers <= MAX_LAYERS && m->vocab <= (1 << 24), NMLX_ERR_INVALID_MODEL,
          "%s: num_hidden_layers or vocab_size out of range", nmlx_cfg_path(cfg));
    TRY(nmlx_cfg_positive_int(cfg, "altup_num_inputs", def->altup_num_inputs, &m->K));
    TRY(nmlx_cfg_int(cfg, "altup_active_idx", def->altup_active_idx, &m->active));
    CHECK(m->K <= NMLX_ALTUP_MAX_INPUTS && m->active >= 0 && m->active < m->K, NMLX_ERR_UNSUPPORTED,
          "%s: altup_num_inputs %lld / altup_active_idx %lld not supported", nmlx_cfg_path(cfg),
          (long long)m->K, (long long)m->active);
    if (def->laurel)
        TRY(nmlx_cfg_positive_int(cfg, "laurel_rank", def->laurel_rank, &m->laurel_rank));
    if (def->per_layer_inputs) {
        TRY(nmlx_cfg_positive_int(cfg, "hidden_size_per_layer_input",
                                  def->hidden_size_per_layer_input, &m->pl_dim));
        TRY(nmlx_cfg_positive_int(cfg, "vocab_size_per_layer_input",
                                  def->vocab_size_per_layer_input, &m->pl_vocab));
    }

    double eps, softcap;
    int64_t window, max_pos;
    bool tied, attn_bias;
    const char *act_name;
    TRY(nmlx_cfg_float(cfg, "rms_norm_eps", def->rms_norm_eps, &eps));
    TRY(nmlx_cfg_float(cfg, "final_logit_softcapping", def->final_logit_softcapping, &softcap));
    CHECK(softcap >= 0, NMLX_ERR_INVALID_MODEL, "%s: final_logit_softcapping must be >= 0",
          nmlx_cfg_path(cfg));
    m->softcap = (float)softcap;
    double attn_cap = 0;
    TRY(nmlx_cfg_float(cfg, "attn_logit_softcapping", 0.0, &attn_cap));
    CHECK(attn_cap == 0, NMLX_ERR_UNSUPPORTED,
          "%s: field 'attn_logit_softcapping' = %g: attention logit soft-capping is not "
          "supported",
          nmlx_cfg_path(cfg), attn_cap);
    TRY(nmlx_cfg_bool(cfg, "tie_word_embeddings", def->tie_word_embeddings, &tied));
    TRY(nmlx_cfg_bool(cfg, "attention_bias", false, &attn_bias));
    TRY(nmlx_cfg_string(cfg, def->act_key, def->hidden_act, &act_name));
    TRY(nmlx_parse_activation(act_name, &m->act));
    TRY(nmlx_cfg_positive_int(cfg, "sliding_window", def->sliding_window, &window));
    TRY(nmlx_cfg_positive_int(cfg, "max_position_embeddings", def->max_position_embeddings,
                              &max_pos));

    TRY(nmlx_cfg_rope(cfg, def->rope_theta, rc));
    int64_t rot = 0;
    TRY(nmlx_rotary_dims(cfg, m->head_dim, rc->partial_rotary_factor, &rot));
    TRY(nmlx_rope_init(&m->rope, ctx->be, rot, rc, max_pos));
    TRY(nmlx_local_rope_init(cfg, def->rope_local_theta, ctx->be, m->head_dim, max_pos,
                             &m->local_rope));

    const char *prefix = weight_prefix(ws);
    TRY(nmlx_check_layer_count(ws, prefix, m->n_layers, nmlx_cfg_path(cfg)));
    char name[192];
    snprintf(name, sizeof name, "%s.embed_tokens", prefix);
    TRY(nmlx_weight_load(&m->embed, ws, name, m->vocab, m->hidden));
    m->embed_scale = (float)sqrt((double)m->hidden);
    if (tied) {
        m->lm_head.w = m->embed;
        m->lm_head.bias = NULL;
    } else {
        TRY(nmlx_linear_load(&m->lm_head, ws, "lm_head", m->vocab, m->hidden, false));
    }
    snprintf(name, sizeof name, "%s.norm", prefix);
    TRY(nmlx_rmsnorm_load(&m->norm, ws, name, m->hidden, (float)eps, 0.0f));
    if (def->per_layer_inputs) {
        int64_t LP = m->n_layers * m->pl_dim;
        snprintf(name, sizeof name, "%s.embed_tokens_per_layer", prefix);
        TRY(nmlx_weight_load(&m->embed_pl, ws, name, m->pl_vocab, LP));
        m->embed_pl_scale = (float)sqrt((double)m->pl_dim);
        snprintf(name, sizeof name, "%s.per_layer_model_projection", prefix);
        TRY(nmlx_linear_load(&m->pl_model_proj, ws, name, LP, m->hidden, false));
        snprintf(name, sizeof name, "%s.per_layer_projection_norm", prefix);
        TRY(nmlx_rmsnorm_load(&m->pl_proj_norm, ws, name, m->pl_dim, (float)eps, 0.0f));
    }
    m->altup_proj = nmlx_calloc((size_t)m->K, sizeof *m->altup_proj);
    m->altup_unembed = nmlx_calloc((size_t)m->K, sizeof *m->altup_unembed);
    m->layers = nmlx_calloc((size_t)m->n_layers, sizeof *m->layers);
    CHECK(m->altup_proj && m->altup_unembed && m->layers, NMLX_ERR_NOMEM,
          "out of memory for %lld layers", (long long)m->n_layers);
    for (int64_t k = 1; k < m->K; k++) {
        snprintf(name, sizeof name, "%s.altup_projections.%lld", prefix, (long long)(k - 1));
        TRY(nmlx_linear_load(&m->altup_proj[k - 1], ws, name, m->hidden, m->hidden, false));
        snprintf(name, sizeof name, "%s.altup_unembed_projections.%lld", prefix,
                 (long long)(k - 1));
        TRY(nmlx_linear_load(&m->altup_unembed[k - 1], ws, name, m->hidden, m->hidden, false));
    }

    TRY(read_layer_cfg(cfg, def, m->n_layers, &lc));
    TRY(kv_sources(cfg, def, m, lc.sliding));
    for (int64_t i = 0; i < m->n_layers; i++) {
        char lp[192];
        snprintf(lp, sizeof lp, "%s.layers.%lld", prefix, (long long)i);
        m->layers[i].window = lc.sliding[i] ? window : 0;
        if (lc.inter[i] > m->max_inter) m->max_inter = lc.inter[i];
        TRY(load_layer(m, def, ws, lp, i, &lc, (float)eps, attn_bias));
    }
    TRY(nmlx_g3n_prepare(m, ctx->be));
    info->vocab_size = m->vocab;
    info->max_position_embeddings = max_pos;
    for (int64_t i = 0; i < m->n_layers; i++) {
        const nmlx_g3n_layer *l = &m->layers[i];
        if (l->kv_source >= 0) continue; /* reads another layer's cache */
        nmlx_arch_info_add_kv(info, m->kv_heads, m->head_dim, l->window > 0, l->window);
    }
    *archp = m;
    m = NULL;
cleanup:
    free_layer_cfg(&lc);
    nmlx_free(rc);
    if (m) nmlx_g3n_destroy(m, ctx->be);
    return st;
}

void nmlx_g3n_destroy(void *archp, nmlx_backend *be) {
    nmlx_g3n_model *m = archp;
    if (!m) return;
    nmlx_rope_free(&m->rope, be);
    nmlx_rope_free(&m->local_rope, be);
    nmlx_free(m->altup_proj);
    nmlx_free(m->altup_unembed);
    nmlx_free(m->layers);
    nmlx_free(m);
}

/* ---- state ---------------------------------------------------------------- */

void nmlx_g3n_state_free(void *statep, nmlx_backend *be) {
    nmlx_g3n_state *s = statep;
    if (!s) return;
    if (s->caches)
        for (int64_t i = 0; i < s->n_layers; i++)
            nmlx_layer_cache_free(&s->caches[i], be);
    nmlx_free(s->caches);
    nmlx_free(s->views);
    nmlx_free(s->pl_ids);
    void *bufs[] = {s->streams, s->pred,   s->pli,      s->pl_emb,      s->xn,
                    s->h,       s->tmp,    s->aux,      s->low,         s->gate,
                    s->up,      s->router, s->plg,      s->logits,      s->attn.q,
                    s->attn.k,  s->attn.v, s->attn.ctx, s->attn.scratch};
    nmlx_backend_free_bufs(be, bufs, sizeof bufs / sizeof bufs[0]);
    nmlx_free(s);
}

nmlx_status nmlx_g3n_state_create(const void *archp, nmlx_backend *be, int64_t max_context,
                                  void **statep) {
    const nmlx_g3n_model *m = archp;
    nmlx_status st = NMLX_OK;
    nmlx_g3n_state *s = nmlx_calloc(1, sizeof *s);
    CHECK(s, NMLX_ERR_NOMEM, "out of memory creating a session");
    s->n_layers = m->n_layers;
    const int64_t chunk = nmlx_backend_prefill_chunk(be, CHUNK);
    s->chunk = max_context < chunk ? max_context : chunk;
    s->caches = nmlx_calloc((size_t)m->n_layers, sizeof *s->caches);
    s->views = nmlx_calloc((size_t)m->n_layers, sizeof *s->views);
    s->pl_ids = nmlx_calloc((size_t)s->chunk, sizeof *s->pl_ids);
    CHECK(s->caches && s->views && s->pl_ids, NMLX_ERR_NOMEM, "out of memory creating a session");
    for (int64_t i = 0; i < m->n_layers; i++) {
        if (m->layers[i].kv_source >= 0) continue; /* a zeroed standard cache: frees as empty */
        TRY(nmlx_layer_cache_init(&s->caches[i], be, m->kv_heads, m->head_dim, m->layers[i].window,
                                  s->chunk, max_context));
    }
    size_t C = (size_t)s->chunk, f = sizeof(float), D = (size_t)m->hidden;
    size_t qdim = (size_t)(m->heads * m->head_dim), kvdim = (size_t)(m->kv_heads * m->head_dim);
    size_t P = m->pl_dim ? (size_t)m->pl_dim : 1, R = m->laurel_rank ? (size_t)m->laurel_rank : 1;
    s->stride = (int64_t)(C * D);
    s->streams = be->ops->alloc(be, (size_t)m->K * C * D * f);
    s->pred = be->ops->alloc(be, (size_t)m->K * C * D * f);
    s->pli = be->ops->alloc(be, C * (size_t)m->n_layers * P * f);
    s->pl_emb = be->ops->alloc(be, C * (size_t)m->n_layers * P * f);
    s->xn = be->ops->alloc(be, C * D * f);
    s->h = be->ops->alloc(be, C * D * f);
    s->tmp = be->ops->alloc(be, C * D * f);
    s->aux = be->ops->alloc(be, C * D * f);
    s->low = be->ops->alloc(be, C * R * f);
    s->gate = be->ops->alloc(be, C * (size_t)m->max_inter * f);
    s->up = be->ops->alloc(be, C * (size_t)m->max_inter * f);
    s->router = be->ops->alloc(be, C * (size_t)m->K * f);
    s->plg = be->ops->alloc(be, C * P * f);
    s->logits = be->ops->alloc(be, NMLX_LOGIT_ROWS * (size_t)m->vocab * f);
    s->attn.q = be->ops->alloc(be, C * qdim * f);
    s->attn.k = be->ops->alloc(be, C * kvdim * f);
    s->attn.v = be->ops->alloc(be, C * kvdim * f);
    s->attn.ctx = be->ops->alloc(be, C * qdim * f);
    s->attn.scratch = nmlx_attention_scratch_alloc(be, m->heads, m->kv_heads, max_context);
    CHECK(s->streams && s->pred && s->pli && s->pl_emb && s->xn && s->h && s->tmp && s->aux &&
              s->low && s->gate && s->up && s->router && s->plg && s->logits && s->attn.q &&
              s->attn.k && s->attn.v && s->attn.ctx && s->attn.scratch,
          NMLX_ERR_NOMEM, "out of memory for session buffers (context %lld)",
          (long long)max_context);
    *statep = s;
    s = NULL;
cleanup:
    if (s) nmlx_g3n_state_free(s, be);
    return st;
}

/* Layer 0 never shares KV (sharing starts at a layer > 0). */
int64_t nmlx_g3n_state_position(const void *statep) {
    const nmlx_g3n_state *s = statep;
    return s->n_layers ? nmlx_layer_cache_offset(&s->caches[0]) : 0;
}

void nmlx_g3n_state_trim(void *statep, int64_t n) {
    nmlx_g3n_state *s = statep;
    for (int64_t i = 0; i < s->n_layers; i++) /* shared layers' empty caches stay at 0 */
        nmlx_layer_cache_trim(&s->caches[i], n);
}

/* ---- blocks ----------------------------------------------------------------- */

void nmlx_g3n_attention(nmlx_backend *be, const nmlx_g3n_model *m, nmlx_g3n_state *s, int64_t layer,
                        const float *xn, float *out, int64_t T) {
    const nmlx_g3n_layer *l = &m->layers[layer];
    const nmlx_attention_buffers *b = &s->attn;
    int64_t H = m->heads, KVH = m->kv_heads, HD = m->head_dim, pos = s->pos;
    const float *freqs = nmlx_rope_freqs(l->rope, pos, T);
    nmlx_linear_forward(be, &l->q, xn, b->q, T);
    nmlx_rmsnorm_forward(be, &l->q_norm, b->q, b->q, T * H, HD);
    be->ops->rope(be, b->q, T, H, HD, l->rope->dims, pos, freqs, l->rope->mscale);
    const nmlx_kv_view *kv;
    if (l->kv_source < 0) {
        nmlx_linear_forward(be, &l->k, xn, b->k, T);
        nmlx_linear_forward(be, &l->v, xn, b->v, T);
        nmlx_rmsnorm_forward(be, &l->k_norm, b->k, b->k, T * KVH, HD);
        if (m->def->v_norm) nmlx_rmsnorm_forward(be, &l->v_norm, b->v, b->v, T * KVH, HD);
        be->ops->rope(be, b->k, T, KVH, HD, l->rope->dims, pos, freqs, l->rope->mscale);
        nmlx_layer_cache_update(&s->caches[layer], be, b->k, b->v, T, &s->views[layer]);
        kv = &s->views[layer];
    } else {
        kv = &s->views[l->kv_source]; /* written earlier in this chunk */
    }
    nmlx_attn_args args = {
        .q = b->q,
        .k = kv->keys,
        .v = kv->values,
        .out = b->ctx,
        .T = T,
        .H = H,
        .KVH = KVH,
        .HD = HD,
        .cap = kv->cap,
        .q_pos = kv->q_row,
        .n_kv = kv->n_kv,
        .scale = 1.0f,
        .window = kv->window,
        .softcap = 0.0f,
        .sinks = NULL,
        .scratch = b->scratch,
        .kv_dtype = kv->dtype,
        .k16 = kv->keys16,
        .v16 = kv->values16,
    };
    be->ops->attention(be, &args);
    nmlx_linear_forward(be, &l->o, b->ctx, out, T);
}

void nmlx_g3n_mlp(nmlx_backend *be, const nmlx_g3n_model *m, nmlx_g3n_state *s, int64_t layer,
                  const float *x, float *out, int64_t T) {
    const nmlx_g3n_layer *l = &m->layers[layer];
    const nmlx_mlp *mlp = &l->mlp;
    if (!l->sparse) {
        nmlx_mlp_forward(be, mlp, x, s->gate, s->up, out, T);
        return;
    }
    nmlx_linear_forward(be, &mlp->gate, x, s->gate, T);
    be->ops->gaussian_topk(be, s->gate, T, mlp->intermediate, l->sparsity_mult);
    nmlx_linear_forward(be, &mlp->up, x, s->up, T);
    be->ops->act_mul(be, mlp->act, s->gate, s->up, s->gate, T * mlp->intermediate);
    nmlx_linear_forward(be, &mlp->down, s->gate, out, T);
}

void nmlx_g3n_per_layer_input(nmlx_backend *be, const nmlx_g3n_model *m, nmlx_g3n_state *s,
                              int64_t layer, const float *first, float *out, int64_t T) {
    const nmlx_g3n_layer *l = &m->layers[layer];
    int64_t D = m->hidden, P = m->pl_dim, L = m->n_layers;
    const float *x = first;
    if (l->altup.out_scale) {
        be->ops->copy(be, s->aux, first, (size_t)(T * D) * sizeof(float));
        be->ops->mul_rows(be, s->aux, l->altup.out_scale, T, D);
        x = s->aux;
    }
    nmlx_linear_forward(be, &l->pl_gate, x, s->plg, T);
    for (int64_t t = 0; t < T; t++) /* act(gate) * this layer's input of token t */
        be->ops->act_mul(be, m->act, s->plg + t * P, s->pli + (t * L + layer) * P, s->plg + t * P,
                         P);
    nmlx_linear_forward(be, &l->pl_proj, s->plg, out, T);
    nmlx_rmsnorm_forward(be, &l->pl_norm, out, out, T, D);
}

/* ---- forward ------------------------------------------------------------------ */

/* Per-layer inputs of C tokens into s->pli [C, L, P]. */
static void per_layer_inputs(nmlx_backend *be, const nmlx_g3n_model *m, nmlx_g3n_state *s,
                             const int32_t *ids, const float *x0, int64_t C) {
    int64_t LP = m->n_layers * m->pl_dim;
    for (int64_t t = 0; t < C; t++) /* multimodal ids past the per-layer table read row 0 */
        s->pl_ids[t] = ids[t] < m->pl_vocab ? ids[t] : 0;
    nmlx_linear_forward(be, &m->pl_model_proj, x0, s->pli, C);
    be->ops->scale(be, s->pli, 1.0f / sqrtf((float)m->hidden), C * LP);
    nmlx_rmsnorm_forward(be, &m->pl_proj_norm, s->pli, s->pli, C * m->n_layers, m->pl_dim);
    be->ops->embed(be, &m->embed_pl, s->pl_ids, C, m->embed_pl_scale, s->pl_emb);
    be->ops->add(be, s->pli, s->pl_emb, s->pli, C * LP);
    be->ops->scale(be, s->pli, SQRT1_2, C * LP);
}

/* The K AltUp streams of C tokens from x0 = stream 0. */
static void embed_streams(nmlx_backend *be, const nmlx_g3n_model *m, nmlx_g3n_state *s, int64_t C) {
    for (int64_t k = 1; k < m->K; k++) {
        float *xk = s->streams + k * s->stride;
        nmlx_linear_forward(be, &m->altup_proj[k - 1], s->streams, xk, C);
        be->ops->rms_match(be, s->streams, xk, C, m->hidden, 1e-5f);
    }
}

/* x [C, hidden] = mean of stream 0 and the unembedded other streams. */
static void unembed_streams(nmlx_backend *be, const nmlx_g3n_model *m, nmlx_g3n_state *s, float *x,
                            int64_t C) {
    int64_t n = C * m->hidden;
    be->ops->copy(be, x, s->streams, (size_t)n * sizeof(float));
    for (int64_t k = 1; k < m->K; k++) {
        nmlx_linear_forward(be, &m->altup_unembed[k - 1], s->streams + k * s->stride, s->tmp, C);
        be->ops->rms_match(be, s->streams, s->tmp, C, m->hidden, 1e-5f);
        be->ops->add(be, x, s->tmp, x, n);
    }
    be->ops->scale(be, x, 1.0f / (float)m->K, n);
}

nmlx_status nmlx_g3n_forward(const void *archp, void *statep, nmlx_backend *be, const int32_t *ids,
                             int64_t T, float *last_logits, float *all_logits,
                             atomic_bool *cancel) {
    const nmlx_g3n_model *m = archp;
    nmlx_g3n_state *s = statep;
    nmlx_status st = NMLX_OK;
    int64_t start = nmlx_g3n_state_position(s);
    const nmlx_text_head head = {&m->norm, &m->lm_head, m->hidden, m->vocab, m->softcap};
    TRY(nmlx_check_ids(ids, T, m->vocab));
    for (int64_t i = 0; i < m->n_layers; i++)
        if (m->layers[i].kv_source < 0) TRY(nmlx_layer_cache_reserve(&s->caches[i], be, T));

    for (int64_t c0 = 0; c0 < T; c0 += s->chunk) {
        int64_t C = T - c0 < s->chunk ? T - c0 : s->chunk;
        s->pos = start + c0;
        be->ops->embed(be, &m->embed, ids + c0, C, m->embed_scale, s->streams);
        if (m->def->per_layer_inputs) per_layer_inputs(be, m, s, ids + c0, s->streams, C);
        embed_streams(be, m, s, C);
        for (int64_t i = 0; i < m->n_layers; i++) {
            CHECK(!(cancel && atomic_load(cancel)), NMLX_ERR_CANCELLED, "cancelled");
            m->def->layer_forward(be, m, s, i, C);
            float *t = s->streams; /* the corrected predictions are the next input */
            s->streams = s->pred;
            s->pred = t;
        }
        unembed_streams(be, m, s, s->h, C);
        nmlx_chunk_logits(be, &head, s->h, s->xn, false, s->logits, c0, C, T, last_logits,
                          all_logits);
    }
cleanup:
    if (st != NMLX_OK) /* roll every cache back to where this call started */
        for (int64_t i = 0; i < m->n_layers; i++)
            if (m->layers[i].kv_source < 0)
                nmlx_layer_cache_trim(&s->caches[i],
                                      nmlx_layer_cache_offset(&s->caches[i]) - start);
    return st;
}
