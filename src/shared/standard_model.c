/* The standard decoder-only transformer (see standard_model.h).
 *
 * Forward pass for T tokens, in chunks of at most CHUNK tokens:
 *   x = embed(ids)
 *   for each layer: x = layer(x)          (decoder_layer.c)
 *   logits = lm_head(norm(x))             (only the rows that are asked for)
 */
#include "standard_model.h"
#include "standard_model_impl.h"

#include "decoder_layer.h"
#include "embed_head.h"
#include "io/config_schema.h"
#include "rope_setup.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Maps a hidden_act name to the kernel. The config getter has already
 * checked it against its domain (known to transformers, implemented here). */
nmlx_status nmlx_parse_activation(const char *name, nmlx_act *out) {
    if (!strcmp(name, "silu") || !strcmp(name, "swish"))
        *out = NMLX_ACT_SILU;
    else if (!strcmp(name, "gelu_pytorch_tanh") || !strcmp(name, "gelu_new"))
        *out = NMLX_ACT_GELU_TANH;
    else if (!strcmp(name, "gelu"))
        *out = NMLX_ACT_GELU_ERF;
    else
        return nmlx_domain_check_str("config.json", "hidden_act", "hidden_act", name) == NMLX_OK
                   ? nmlx_fail(NMLX_ERR_UNSUPPORTED,
                               "config.json: hidden_act '%s' is not supported (silu, gelu, "
                               "gelu_pytorch_tanh, gelu_new)",
                               name)
                   : NMLX_ERR_INVALID_MODEL;
    return NMLX_OK;
}

nmlx_status nmlx_cfg_feature(const nmlx_cfg *cfg, nmlx_feature f, const char *key, bool def,
                             bool *out) {
    if (f != NMLX_FEATURE_FROM_CONFIG) {
        *out = f == NMLX_FEATURE_ON;
        return NMLX_OK;
    }
    return nmlx_cfg_bool(cfg, key, def, out);
}

/* Sliding window size per the family's rule; 0 = full attention. */
static nmlx_status read_window(const nmlx_cfg *cfg, const nmlx_std_def *def, int64_t *window) {
    nmlx_status st;
    *window = 0;
    if (def->sliding_window == NMLX_FEATURE_OFF) return NMLX_OK;
    if (def->sliding_window == NMLX_FEATURE_FROM_CONFIG) {
        bool use = false;
        if ((st = nmlx_cfg_bool(cfg, "use_sliding_window", false, &use))) return st;
        if (!use) return NMLX_OK;
        if (nmlx_cfg_has(cfg, "max_window_layers"))
            return nmlx_fail(NMLX_ERR_UNSUPPORTED,
                             "%s: use_sliding_window with max_window_layers is not supported yet",
                             nmlx_cfg_path(cfg));
    }
    if ((st = nmlx_cfg_int(cfg, "sliding_window", def->sliding_window_default, window))) return st;
    if (*window < 0)
        return nmlx_fail(NMLX_ERR_INVALID_MODEL, "%s: field 'sliding_window' must be >= 0",
                         nmlx_cfg_path(cfg));
    return NMLX_OK;
}

/* Per-layer window: config layer_types ("sliding_attention" gets the
 * window), else a sliding_window_pattern (every pattern-th layer full),
 * else the same window for every layer. */
static nmlx_status layer_windows(const nmlx_cfg *cfg, const nmlx_std_def *def, int64_t n_layers,
                                 int64_t window, int64_t *windows) {
    nmlx_status st = NMLX_OK;
    const char **types = NULL;
    size_t n = 0;
    if (def->layer_types && nmlx_cfg_has(cfg, "layer_types")) {
        types = nmlx_calloc((size_t)n_layers, sizeof *types);
        CHECK(types, NMLX_ERR_NOMEM, "out of memory reading layer_types");
        TRY(nmlx_cfg_string_list(cfg, "layer_types", types, (size_t)n_layers, &n));
        CHECK(n == (size_t)n_layers, NMLX_ERR_INVALID_MODEL,
              "%s: field 'layer_types' has %zu entries for %lld layers", nmlx_cfg_path(cfg), n,
              (long long)n_layers);
        for (int64_t i = 0; i < n_layers; i++) {
            bool sliding = !strcmp(types[i], "sliding_attention");
            CHECK(sliding || !strcmp(types[i], "full_attention"), NMLX_ERR_UNSUPPORTED,
                  "%s: layer_types[%lld] '%s' is not supported (sliding_attention, "
                  "full_attention)",
                  nmlx_cfg_path(cfg), (long long)i, types[i]);
            windows[i] = sliding ? window : 0;
        }
    } else if (def->sliding_window_pattern > 0) {
        int64_t pattern;
        TRY(nmlx_cfg_int(cfg, "sliding_window_pattern", def->sliding_window_pattern, &pattern));
        CHECK(pattern > 0, NMLX_ERR_INVALID_MODEL, "%s: sliding_window_pattern must be positive",
              nmlx_cfg_path(cfg));
        for (int64_t i = 0; i < n_layers; i++)
            windows[i] = (i + 1) % pattern ? window : 0;
    } else {
        for (int64_t i = 0; i < n_layers; i++)
            windows[i] = window;
    }
cleanup:
    nmlx_free(types);
    return st;
}

/* Which layers apply RoPE: all, or per config no_rope_layers (1 = RoPE),
 * or all but every no_rope_layer_interval-th. */
static nmlx_status rope_layers(const nmlx_cfg *cfg, const nmlx_std_def *def, int64_t n_layers,
                               bool *use_rope) {
    nmlx_status st = NMLX_OK;
    int64_t *flags = NULL;
    for (int64_t i = 0; i < n_layers; i++)
        use_rope[i] = true;
    if (def->no_rope_layers == NMLX_FEATURE_OFF) return NMLX_OK;
    if (nmlx_cfg_has(cfg, "no_rope_layers")) {
        size_t n = 0;
        flags = nmlx_calloc((size_t)n_layers, sizeof *flags);
        CHECK(flags, NMLX_ERR_NOMEM, "out of memory reading no_rope_layers");
        TRY(nmlx_cfg_int_list(cfg, "no_rope_layers", flags, (size_t)n_layers, &n));
        CHECK(n == (size_t)n_layers, NMLX_ERR_INVALID_MODEL,
              "%s: field 'no_rope_layers' has %zu entries for %lld layers", nmlx_cfg_path(cfg), n,
              (long long)n_layers);
        for (int64_t i = 0; i < n_layers; i++)
            use_rope[i] = flags[i] != 0;
    } else {
        int64_t every;
        TRY(nmlx_cfg_int(cfg, "no_rope_layer_interval", def->no_rope_layer_interval, &every));
        CHECK(every > 0, NMLX_ERR_INVALID_MODEL, "%s: no_rope_layer_interval must be positive",
              nmlx_cfg_path(cfg));
        for (int64_t i = 0; i < n_layers; i++)
            use_rope[i] = (i + 1) % every != 0;
    }
cleanup:
    nmlx_free(flags);
    return st;
}

/* The MoE block's shape from config (def->moe) and which layers get it:
 * all, or per decoder_sparse_step / mlp_only_layers (Qwen MoE rule: layer i
 * is sparse unless listed, when (i + 1) % step == 0). */
static nmlx_status moe_config(const nmlx_cfg *cfg, const nmlx_std_moe *d, int64_t hidden,
                              int64_t n_layers, nmlx_moe_shape *ms, bool *sparse) {
    nmlx_status st = NMLX_OK;
    int64_t *only = NULL;
    const char *ekey = nmlx_cfg_has(cfg, "num_experts") ? "num_experts" : "num_local_experts";
    double limit = 0;
    *ms = (nmlx_moe_shape){
        .hidden = hidden,
        .routing = d->routing,
        .router_bias = d->router_bias,
        .expert_bias = d->expert_bias,
        .alpha = 1.702f,
        .router_name = d->router_name,
        .stacked_name = d->stacked_name,
        .act = d->clipped_swiglu ? NMLX_SWITCH_SWIGLU_CLIPPED : NMLX_SWITCH_SWIGLU,
    };
    TRY(nmlx_cfg_required_int(cfg, ekey, &ms->n_experts));
    TRY(nmlx_cfg_required_int(cfg, "num_experts_per_tok", &ms->top_k));
    TRY(nmlx_cfg_required_int(cfg, d->expert_size_key, &ms->expert_hidden));
    CHECK(ms->top_k <= ms->n_experts && ms->n_experts <= (1 << 16), NMLX_ERR_INVALID_MODEL,
          "%s: num_experts_per_tok (%lld) must not exceed %s (%lld, at most 65536)",
          nmlx_cfg_path(cfg), (long long)ms->top_k, ekey, (long long)ms->n_experts);
    TRY(nmlx_cfg_feature(cfg, d->norm_topk, "norm_topk_prob", false, &ms->norm_topk));
    if (d->clipped_swiglu) {
        TRY(nmlx_cfg_float(cfg, "swiglu_limit", d->swiglu_limit_default, &limit));
        CHECK(limit > 0, NMLX_ERR_INVALID_MODEL, "%s: swiglu_limit must be positive",
              nmlx_cfg_path(cfg));
        ms->limit = (float)limit;
    }
    for (int64_t i = 0; i < n_layers; i++)
        sparse[i] = true;
    if (d->sparse_layers) {
        int64_t step;
        size_t n = 0;
        TRY(nmlx_cfg_int(cfg, "decoder_sparse_step", 1, &step));
        CHECK(step > 0, NMLX_ERR_INVALID_MODEL, "%s: decoder_sparse_step must be positive",
              nmlx_cfg_path(cfg));
        for (int64_t i = 0; i < n_layers; i++)
            sparse[i] = (i + 1) % step == 0;
        if (nmlx_cfg_has(cfg, "mlp_only_layers")) {
            only = nmlx_calloc((size_t)n_layers + 1, sizeof *only);
            CHECK(only, NMLX_ERR_NOMEM, "out of memory reading mlp_only_layers");
            TRY(nmlx_cfg_int_list(cfg, "mlp_only_layers", only, (size_t)n_layers + 1, &n));
            for (size_t j = 0; j < n; j++) {
                CHECK(only[j] >= 0 && only[j] < n_layers, NMLX_ERR_INVALID_MODEL,
                      "%s: mlp_only_layers[%zu] = %lld is not a layer index", nmlx_cfg_path(cfg), j,
                      (long long)only[j]);
                sparse[only[j]] = false;
            }
        }
    }
cleanup:
    nmlx_free(only);
    return st;
}

/* `<prefix>.layers.<i>.self_attn.sinks` [heads] of every layer, as f32 in
 * one backend buffer the attentions point into. */
static nmlx_status load_sinks(std_model *m, const nmlx_weights *ws, nmlx_backend *be,
                              const char *prefix) {
    nmlx_status st = NMLX_OK;
    size_t n = (size_t)(m->n_layers * m->heads);
    float *host = nmlx_malloc(n * sizeof *host);
    m->sinks = be->ops->alloc(be, n * sizeof(float));
    CHECK(host && m->sinks, NMLX_ERR_NOMEM, "out of memory for attention sinks");
    for (int64_t i = 0; i < m->n_layers; i++) {
        char name[192];
        const nmlx_tensor *t = NULL;
        snprintf(name, sizeof name, "%s.layers.%lld.self_attn.sinks", prefix, (long long)i);
        TRY(nmlx_get_float_tensor(ws, name, 1, &m->heads, &t));
        nmlx_to_f32(t->dtype, t->data, host + i * m->heads, (size_t)m->heads);
    }
    be->ops->upload(be, m->sinks, host, n * sizeof(float));
    for (int64_t i = 0; i < m->n_layers; i++)
        m->layers[i].attn.sinks = m->sinks + i * m->heads;
cleanup:
    nmlx_free(host);
    return st;
}

nmlx_status nmlx_std_build(const void *defp, const nmlx_load_ctx *ctx, void **archp,
                           nmlx_arch_info *info) {
    const nmlx_std_def *def = defp;
    const nmlx_cfg *cfg = ctx->cfg;
    const nmlx_weights *ws = ctx->weights;
    nmlx_status st = NMLX_OK;
    std_model *m = nmlx_calloc(1, sizeof *m);
    nmlx_rope_config *rc = nmlx_calloc(1, sizeof *rc);
    bool *use_rope = NULL, *sparse = NULL;
    CHECK(m && rc, NMLX_ERR_NOMEM, "out of memory building the model");

    TRY(nmlx_cfg_required_int(cfg, "hidden_size", &m->hidden));
    TRY(nmlx_cfg_required_int(cfg, "intermediate_size", &m->intermediate));
    TRY(nmlx_cfg_required_int(cfg, "num_hidden_layers", &m->n_layers));
    TRY(nmlx_cfg_required_int(cfg, "num_attention_heads", &m->heads));
    TRY(nmlx_cfg_required_int(cfg, "vocab_size", &m->vocab));
    TRY(nmlx_cfg_int(cfg, "num_key_value_heads", m->heads, &m->kv_heads));
    int64_t def_hd = def->head_dim ? def->head_dim : m->hidden / m->heads;
    TRY(nmlx_cfg_int(cfg, "head_dim", def_hd, &m->head_dim));
    CHECK(m->kv_heads > 0 && m->heads % m->kv_heads == 0, NMLX_ERR_INVALID_MODEL,
          "%s: num_attention_heads (%lld) must be a multiple of num_key_value_heads (%lld)",
          nmlx_cfg_path(cfg), (long long)m->heads, (long long)m->kv_heads);
    CHECK(m->head_dim > 0 && m->head_dim % 2 == 0, NMLX_ERR_INVALID_MODEL,
          "%s: field 'head_dim' = %lld must be positive and even (hidden_size / "
          "num_attention_heads when absent)",
          nmlx_cfg_path(cfg), (long long)m->head_dim);
    /* sizes are checked against the weights later, but RoPE tables and
     * buffers are sized from them first: their domains (config_schema.c)
     * bound them so a hostile config cannot ask for terabytes */

    double eps;
    bool tied, qkv_bias, o_bias, mlp_bias;
    const char *act_name;
    nmlx_act act;
    int64_t window, max_pos;
    TRY(nmlx_cfg_float(cfg, "rms_norm_eps", def->rms_norm_eps, &eps));
    TRY(nmlx_cfg_bool(cfg, "tie_word_embeddings", def->tie_word_embeddings, &tied));
    TRY(nmlx_cfg_string(cfg, def->act_key ? def->act_key : "hidden_act", def->hidden_act,
                        &act_name));
    TRY(nmlx_parse_activation(act_name, &act));
    TRY(nmlx_cfg_feature(cfg, def->qkv_bias, "attention_bias", false, &qkv_bias));
    TRY(nmlx_cfg_feature(cfg, def->o_bias, "attention_bias", false, &o_bias));
    TRY(nmlx_cfg_feature(cfg, def->mlp_bias, "mlp_bias", false, &mlp_bias));
    TRY(read_window(cfg, def, &window));
    double attn_cap = 0; /* Gemma 2 style: changes the math, so refuse it */
    TRY(nmlx_cfg_float(cfg, "attn_logit_softcapping", 0.0, &attn_cap));
    CHECK(attn_cap == 0, NMLX_ERR_UNSUPPORTED,
          "%s: field 'attn_logit_softcapping' = %g: attention logit soft-capping is not "
          "supported",
          nmlx_cfg_path(cfg), attn_cap);
    bool bidir = false; /* EmbeddingGemma: every token sees every other; nmlx is causal */
    TRY(nmlx_cfg_bool(cfg, "use_bidirectional_attention", false, &bidir));
    CHECK(!bidir, NMLX_ERR_UNSUPPORTED,
          "%s: field 'use_bidirectional_attention' = true: bidirectional (non-causal) attention "
          "is not supported",
          nmlx_cfg_path(cfg));
    const char *prefix = NULL, *head_name = NULL;
    nmlx_text_weight_prefix(ws, &prefix, &head_name);
    TRY(nmlx_check_layer_count(ws, prefix, m->n_layers, nmlx_cfg_path(cfg)));
    TRY(nmlx_cfg_int(cfg, "max_position_embeddings", def->max_position_embeddings, &max_pos));

    TRY(nmlx_cfg_rope(cfg, def->rope_theta, rc));
    int64_t rot = 0;
    TRY(nmlx_rotary_dims(cfg, m->head_dim, rc->partial_rotary_factor, &rot));
    TRY(nmlx_rope_init(&m->rope, ctx->be, rot, rc, max_pos));

    TRY(nmlx_embed_head_load(ctx->be, ws, prefix, head_name, m->vocab, m->hidden, tied, &m->embed,
                             &m->lm_head));
    m->embed_scale = def->embed_scale ? (float)sqrt((double)m->hidden) : 1.0f;
    char name[160];
    float norm_offset = def->gemma_norms ? 1.0f : 0.0f;
    snprintf(name, sizeof name, "%s.norm", prefix);
    TRY(nmlx_rmsnorm_load(&m->norm, ws, name, m->hidden, (float)eps, norm_offset));
    TRY(nmlx_rmsnorm_prepare(ctx->be, &m->norm));
    if (def->final_logit_softcap) {
        double cap = 0;
        TRY(nmlx_cfg_float(cfg, "final_logit_softcapping", 0.0, &cap));
        CHECK(cap >= 0, NMLX_ERR_INVALID_MODEL, "%s: final_logit_softcapping must be >= 0",
              nmlx_cfg_path(cfg));
        m->final_softcap = (float)cap;
    }
    if (def->local_rope)
        TRY(nmlx_local_rope_init(cfg, def->rope_local_theta, ctx->be, m->head_dim, max_pos,
                                 &m->local_rope));

    m->layers = nmlx_calloc((size_t)m->n_layers, sizeof *m->layers);
    m->windows = nmlx_calloc((size_t)m->n_layers, sizeof *m->windows);
    use_rope = nmlx_calloc((size_t)m->n_layers, sizeof *use_rope);
    sparse = nmlx_calloc((size_t)m->n_layers, sizeof *sparse);
    CHECK(m->layers && m->windows && use_rope && sparse, NMLX_ERR_NOMEM,
          "out of memory for %lld layers", (long long)m->n_layers);
    TRY(layer_windows(cfg, def, m->n_layers, window, m->windows));
    TRY(rope_layers(cfg, def, m->n_layers, use_rope));
    double qpas = 0;
    if (def->query_pre_attn_scalar) {
        TRY(nmlx_cfg_float(cfg, "query_pre_attn_scalar", def->query_pre_attn_scalar_default,
                           &qpas));
        CHECK(qpas > 0, NMLX_ERR_INVALID_MODEL, "%s: query_pre_attn_scalar must be positive",
              nmlx_cfg_path(cfg));
    }
    nmlx_attention_shape as = {
        .hidden = m->hidden,
        .heads = m->heads,
        .kv_heads = m->kv_heads,
        .head_dim = m->head_dim,
        .qkv_bias = qkv_bias,
        .o_bias = o_bias,
        .qk_norm = def->qk_norm,
        .fused_qkv = def->fused_qkv,
        .norm_eps = (float)eps,
        .norm_offset = norm_offset,
        .scale = def->query_pre_attn_scalar ? (float)(1.0 / sqrt(qpas))
                                            : 1.0f / sqrtf((float)m->head_dim),
    };
    if (def->llama4_query_scale && rc->llama_4_scaling_beta != 0) {
        as.q_scale_beta = (float)rc->llama_4_scaling_beta;
        as.q_scale_period = rc->original_max_position_embeddings > 0
                                ? rc->original_max_position_embeddings
                                : max_pos;
    }
    nmlx_decoder_opts dopts = {
        .intermediate = m->intermediate,
        .mlp_bias = mlp_bias,
        .fused_gate_up = def->fused_gate_up,
        .sandwich = def->sandwich_norms,
        .act = act,
        .norm_eps = (float)eps,
        .norm_offset = norm_offset,
        .be = ctx->be,
    };
    if (def->moe) TRY(moe_config(cfg, def->moe, m->hidden, m->n_layers, &m->moe, sparse));
    for (int64_t i = 0; i < m->n_layers; i++) {
        char lp[192];
        snprintf(lp, sizeof lp, "%s.layers.%lld", prefix, (long long)i);
        as.window = m->windows[i];
        const nmlx_rope *rope = NULL;
        if (use_rope[i]) rope = def->local_rope && m->windows[i] > 0 ? &m->local_rope : &m->rope;
        dopts.moe = sparse[i] ? &m->moe : NULL;
        m->has_moe = m->has_moe || sparse[i];
        TRY(nmlx_decoder_layer_load(&m->layers[i], ws, lp, &as, rope, &dopts));
    }
    if (def->attn_sinks) TRY(load_sinks(m, ws, ctx->be, prefix));
    info->vocab_size = m->vocab;
    info->max_position_embeddings = max_pos;
    for (int64_t i = 0; i < m->n_layers; i++)
        nmlx_arch_info_add_kv(info, m->kv_heads, m->head_dim, m->windows[i] > 0, m->windows[i]);
    *archp = m;
    m = NULL;

cleanup:
    nmlx_free(rc);
    nmlx_free(use_rope);
    nmlx_free(sparse);
    if (m) nmlx_std_destroy(m, ctx->be);
    return st;
}

void nmlx_std_destroy(void *archp, nmlx_backend *be) {
    std_model *m = archp;
    if (!m) return;
    nmlx_rope_free(&m->rope, be);
    nmlx_rope_free(&m->local_rope, be);
    if (m->layers)
        for (int64_t i = 0; i < m->n_layers; i++)
            nmlx_decoder_layer_free(&m->layers[i], be);
    if (m->sinks) be->ops->free(be, m->sinks);
    nmlx_free(m->layers);
    nmlx_free(m->windows);
    nmlx_free(m);
}

nmlx_status std_buffers_alloc(const std_model *m, nmlx_backend *be, int64_t rows, std_buffers *b) {
    size_t R = (size_t)rows, f = sizeof(float), D = (size_t)m->hidden;
    size_t qdim = (size_t)(m->heads * m->head_dim), kvdim = (size_t)(m->kv_heads * m->head_dim);
    b->x = be->ops->alloc(be, R * D * f);
    b->logits = be->ops->alloc(be, NMLX_LOGIT_ROWS * (size_t)m->vocab * f);
    b->buf.xn = be->ops->alloc(be, R * D * f);
    b->buf.tmp = be->ops->alloc(be, R * D * f);
    b->buf.gate = be->ops->alloc(be, R * (size_t)m->intermediate * f);
    b->buf.up = be->ops->alloc(be, R * (size_t)m->intermediate * f);
    b->buf.attn.q = be->ops->alloc(be, R * qdim * f);
    b->buf.attn.k = be->ops->alloc(be, R * kvdim * f);
    b->buf.attn.v = be->ops->alloc(be, R * kvdim * f);
    b->buf.attn.ctx = be->ops->alloc(be, R * qdim * f);
    if (!(b->x && b->logits && b->buf.xn && b->buf.tmp && b->buf.gate && b->buf.up &&
          b->buf.attn.q && b->buf.attn.k && b->buf.attn.v && b->buf.attn.ctx)) {
        char what[96];
        snprintf(what, sizeof what, "work buffers of %lld tokens", (long long)rows);
        size_t total = (R * (3 * D + 2 * (size_t)m->intermediate + 2 * qdim + 2 * kvdim) +
                        NMLX_LOGIT_ROWS * (size_t)m->vocab) *
                       f;
        return nmlx_backend_fail_alloc(be, total, what);
    }
    if (!m->has_moe) return NMLX_OK;
    b->buf.moe = nmlx_calloc(1, sizeof *b->buf.moe);
    if (!b->buf.moe) return nmlx_fail(NMLX_ERR_NOMEM, "out of memory for MoE buffers");
    return nmlx_moe_buffers_alloc(b->buf.moe, be, rows, &m->moe);
}

void std_buffers_free(std_buffers *b, nmlx_backend *be) {
    if (b->buf.moe) nmlx_moe_buffers_free(b->buf.moe, be);
    nmlx_free(b->buf.moe);
    void *bufs[] = {b->x,          b->logits,       b->buf.xn,          b->buf.tmp,
                    b->buf.gate,   b->buf.up,       b->buf.attn.q,      b->buf.attn.k,
                    b->buf.attn.v, b->buf.attn.ctx, b->buf.attn.scratch};
    nmlx_backend_free_bufs(be, bufs, sizeof bufs / sizeof bufs[0]);
}

void nmlx_std_state_free(void *statep, nmlx_backend *be) {
    std_state *s = statep;
    if (!s) return;
    if (s->caches)
        for (int64_t i = 0; i < s->n_layers; i++)
            nmlx_layer_cache_free(&s->caches[i], be);
    nmlx_free(s->caches);
    std_buffers_free(&s->w, be);
    nmlx_free(s);
}

nmlx_status nmlx_std_state_create(const void *archp, nmlx_backend *be, int64_t max_context,
                                  void **statep) {
    const std_model *m = archp;
    nmlx_status st = NMLX_OK;
    std_state *s = nmlx_calloc(1, sizeof *s);
    CHECK(s, NMLX_ERR_NOMEM, "out of memory creating a session");
    s->n_layers = m->n_layers;
    const int64_t chunk = nmlx_backend_prefill_chunk(be, CHUNK);
    s->chunk = max_context < chunk ? max_context : chunk;
    s->caches = nmlx_calloc((size_t)m->n_layers, sizeof *s->caches);
    CHECK(s->caches, NMLX_ERR_NOMEM, "out of memory creating a session");
    for (int64_t i = 0; i < m->n_layers; i++)
        TRY(nmlx_layer_cache_init(&s->caches[i], be, m->kv_heads, m->head_dim, m->windows[i],
                                  s->chunk, max_context));
    TRY(std_buffers_alloc(m, be, s->chunk, &s->w));
    s->w.buf.attn.scratch = nmlx_attention_scratch_alloc(be, m->heads, m->kv_heads, max_context);
    CHECK(s->w.buf.attn.scratch, NMLX_ERR_NOMEM, "out of memory for session buffers (context %lld)",
          (long long)max_context);
    *statep = s;
    s = NULL;
cleanup:
    if (s) nmlx_std_state_free(s, be);
    return st;
}

int64_t nmlx_std_state_position(const void *statep) {
    const std_state *s = statep;
    return s->n_layers ? nmlx_layer_cache_offset(&s->caches[0]) : 0;
}

void nmlx_std_state_trim(void *statep, int64_t n) {
    std_state *s = statep;
    for (int64_t i = 0; i < s->n_layers; i++)
        nmlx_layer_cache_trim(&s->caches[i], n);
}

nmlx_layer_cache *nmlx_std_state_caches(void *statep, int64_t *n_layers) {
    std_state *s = statep;
    *n_layers = s->n_layers;
    return s->caches;
}

static void mix(uint64_t *h, uint64_t v) { /* FNV-1a over v's 8 bytes */
    for (int i = 0; i < 8; i++)
        *h = (*h ^ ((v >> (8 * i)) & 0xff)) * 1099511628211ull;
}

/* Whether a one-token step at pos may be recorded and replayed by the
 * backend (backend.h step_graph): every layer's norms, RoPE and append go
 * through rope_kv (a standard f32 cache at pos), no per-position query
 * scaling, MoE layers only where the backend routes on the device
 * (moe_routed: no host wait; where it declines, the host's routing waits
 * and the backend keeps no recording); *key hashes what the step's ops
 * depend on besides the position and the token: the session's buffers
 * (the MoE ones too), the caches' buffers and capacities (they move as a
 * cache grows), the RoPE tables (long RoPE switches). */
static bool step_key(const std_model *m, std_state *s, nmlx_backend *be, int64_t pos,
                     uint64_t *key) {
    if (!be->ops->step_graph || !be->ops->rope_kv || m->n_layers <= 0) return false;
    uint64_t h = 1469598103934665603ull;
    const std_buffers *w = &s->w; /* every buffer the step's ops touch */
    const void *bufs[] = {
        m,           s,         w->x,          w->logits,     w->buf.xn,     w->buf.tmp,
        w->buf.gate, w->buf.up, w->buf.attn.q, w->buf.attn.k, w->buf.attn.v, w->buf.attn.ctx};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        mix(&h, (uintptr_t)bufs[i]);
    const nmlx_moe_buffers *mb = w->buf.moe;
    if (mb) {
        const void *mbufs[] = {mb, mb->logits, mb->y, mb->sw.xs, mb->sw.gate, mb->sw.up, mb->sw.ys};
        for (size_t i = 0; i < sizeof mbufs / sizeof mbufs[0]; i++)
            mix(&h, (uintptr_t)mbufs[i]);
    }
    mix(&h, (uint64_t)m->n_layers), mix(&h, (uint64_t)m->hidden), mix(&h, (uint64_t)m->vocab);
    for (int64_t i = 0; i < m->n_layers; i++) {
        const nmlx_attention *a = &m->layers[i].attn;
        float *k, *v;
        int64_t cap, row0;
        if (a->s.q_scale_beta != 0.0f || (m->layers[i].moe && !be->ops->moe_routed) ||
            !nmlx_layer_cache_rows(&s->caches[i], &k, &v, &cap, &row0) || row0 != pos)
            return false;
        mix(&h, (uintptr_t)k), mix(&h, (uintptr_t)v), mix(&h, (uint64_t)cap);
        if (a->rope) mix(&h, (uintptr_t)nmlx_rope_freqs(a->rope, pos, 1));
    }
    *key = h;
    return true;
}

nmlx_status nmlx_std_forward(const void *archp, void *statep, nmlx_backend *be, const int32_t *ids,
                             int64_t T, float *last_logits, float *all_logits,
                             atomic_bool *cancel) {
    const std_model *m = archp;
    std_state *s = statep;
    nmlx_status st = NMLX_OK;
    int64_t start = nmlx_std_state_position(s);
    TRY(nmlx_check_ids(ids, T, m->vocab));
    /* Make room in every cache first, so a failure leaves nothing half-done. */
    for (int64_t i = 0; i < m->n_layers; i++)
        TRY(nmlx_layer_cache_reserve(&s->caches[i], be, T));
    s->w.buf.attn.call_end = start + T;
    const nmlx_text_head head = {&m->norm, &m->lm_head, m->hidden, m->vocab, m->final_softcap};
    uint64_t key = 0;
    bool graph = T == 1 && !all_logits && step_key(m, s, be, start, &key);
    if (graph && be->ops->step_graph(be, NMLX_STEP_BEGIN, key, start, ids[0])) {
        nmlx_kv_view view; /* replayed: the rows are written, the logits computed */
        for (int64_t i = 0; i < m->n_layers; i++)
            nmlx_layer_cache_commit(&s->caches[i], 1, &view);
        nmlx_lm_head_download(be, s->w.logits, m->vocab, m->final_softcap, last_logits);
        return NMLX_OK;
    }

    for (int64_t c0 = 0; c0 < T; c0 += s->chunk) {
        int64_t C = T - c0 < s->chunk ? T - c0 : s->chunk;
        be->ops->embed(be, &m->embed, ids + c0, C, m->embed_scale, s->w.x);
        bool last_chunk = c0 + C == T;
        /* the layers as one chain (decoder_layer.h): each closing residual
         * add norms for the next layer, the last one for the LM head when
         * every row of xn is read (all rows, or the one row of a decode) */
        bool final_in_chain = m->n_layers > 0 && (all_logits || (last_chunk && C == 1));
        /* one token: each layer's closing add and the next input norm are
         * left to the next layer's q/k/v projections (decoder_layer.h) */
        bool defer = C == 1 && be->ops->add_rmsnorm_matmul;
        bool added = false; /* the last link's deferred add is done (NMLX_CHAIN_ADDED) */
        for (int64_t i = 0; i < m->n_layers; i++) {
            CHECK(!(cancel && atomic_load(cancel)), NMLX_ERR_CANCELLED, "cancelled");
            bool inner = i + 1 < m->n_layers;
            const nmlx_rmsnorm *next = inner            ? &m->layers[i + 1].input_norm
                                       : final_in_chain ? &m->norm
                                                        : NULL;
            nmlx_chain_in in = i == 0  ? NMLX_CHAIN_X
                               : defer ? (added ? NMLX_CHAIN_ADDED : NMLX_CHAIN_PENDING)
                                       : NMLX_CHAIN_NORMED;
            added = nmlx_decoder_layer_forward_chain(be, &m->layers[i], &s->caches[i], &s->w.buf,
                                                     s->w.x, C, in, next, defer && inner);
        }
        if (graph) { /* T == 1 and layers: the chain normed the row; the
                      * recorded step ends before the download */
            nmlx_lm_head_device(be, &m->lm_head, s->w.buf.xn, 1, s->w.logits);
            be->ops->step_graph(be, NMLX_STEP_END, key, start, ids[0]);
            nmlx_lm_head_download(be, s->w.logits, m->vocab, m->final_softcap, last_logits);
        } else {
            nmlx_chunk_logits(be, &head, s->w.x, s->w.buf.xn, final_in_chain, s->w.logits, c0, C, T,
                              last_logits, all_logits);
        }
    }
cleanup:
    if (st != NMLX_OK) /* roll every cache back to where this call started */
        for (int64_t i = 0; i < m->n_layers; i++)
            nmlx_layer_cache_trim(&s->caches[i], nmlx_layer_cache_offset(&s->caches[i]) - start);
    return st;
}
