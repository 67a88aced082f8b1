/* Model loading: config.json -> family (by model_type) -> architecture built
 * over the mmapped weights; generation_config.json for eos ids and sampling
 * defaults; tokenizer files if present. */
#define _POSIX_C_SOURCE 200809L
#include "model.h"
#include "quantize_model.h"
#include "shared/quant_config.h"
#include "shared/standard_model.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

/* Default session context: the model's max_position_embeddings clamped to
 * [4096, 8192]. Like mlx-lm and transformers we do not refuse positions past
 * max_position_embeddings (RoPE is computed, not looked up); the upper bound
 * keeps per-session buffers modest. Callers ask for more with max_context. */
enum { DEFAULT_CONTEXT_MIN = 4096, DEFAULT_CONTEXT_MAX = 8192 };

nmlx_model_params nmlx_model_default_params(void) {
    return (nmlx_model_params){.n_threads = 0, .max_context = 0, .no_tokenizer = 0,
                               .quantize_bits = 0, .quantize_group_size = 0};
}

static bool file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static const nmlx_family *find_family(const char *model_type) {
    for (size_t i = 0; nmlx_families[i]; i++)
        for (const char *const *t = nmlx_families[i]->model_types; *t; t++)
            if (!strcmp(*t, model_type)) return nmlx_families[i];
    return NULL;
}

static void list_model_types(char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = '\0';
    for (size_t i = 0; nmlx_families[i]; i++)
        for (const char *const *t = nmlx_families[i]->model_types; *t; t++) {
            int w = snprintf(buf + n, cap - n, "%s%s", n ? ", " : "", *t);
            if (w < 0 || (size_t)w >= cap - n) return;
            n += (size_t)w;
        }
}

static void add_eos(nmlx_model *m, int64_t id) {
    if (id < 0 || id > INT32_MAX) return;
    for (size_t i = 0; i < m->n_eos; i++)
        if (m->eos[i] == id) return;
    if (m->n_eos < NMLX_MAX_EOS) m->eos[m->n_eos++] = (int32_t)id;
}

/* eos_token_id of config.json / generation_config.json: in its domain (the
 * getter) and below vocab_size when that is known (vocab > 0): an id the
 * model cannot produce would never end generation. */
static nmlx_status read_eos(nmlx_model *m, const nmlx_cfg *cfg, int64_t vocab) {
    int64_t ids[NMLX_MAX_EOS];
    size_t n = 0;
    nmlx_status st = nmlx_cfg_int_list(cfg, "eos_token_id", ids, NMLX_MAX_EOS, &n);
    for (size_t i = 0; st == NMLX_OK && i < n; i++) {
        if (vocab > 0 && ids[i] >= vocab)
            return nmlx_fail(NMLX_ERR_INVALID_MODEL,
                             "%s: field 'eos_token_id' = %lld is not below vocab_size (%lld)",
                             nmlx_cfg_path(cfg), (long long)ids[i], (long long)vocab);
        add_eos(m, ids[i]);
    }
    return st;
}

/* generation_config.json: eos ids and the recommended sampling. */
static nmlx_status read_generation_config(nmlx_model *m, const char *path) {
    nmlx_cfg *g = NULL;
    nmlx_status st = nmlx_cfg_open(path, &g);
    if (st != NMLX_OK) return st;
    nmlx_sampler_params *sp = &m->sampler_defaults;
    bool do_sample = false;
    double temp = 1.0, top_p = 1.0, min_p = 0.0, rep = 1.0;
    int64_t top_k = 0;
    TRY(read_eos(m, g, m->info.vocab_size));
    TRY(nmlx_cfg_bool(g, "do_sample", false, &do_sample));
    TRY(nmlx_cfg_float(g, "temperature", 1.0, &temp));
    TRY(nmlx_cfg_float(g, "top_p", 1.0, &top_p));
    TRY(nmlx_cfg_int(g, "top_k", 0, &top_k));
    TRY(nmlx_cfg_float(g, "min_p", 0.0, &min_p));
    TRY(nmlx_cfg_float(g, "repetition_penalty", 1.0, &rep));
    if (do_sample && temp > 0) {
        sp->temperature = (float)temp;
        sp->top_p = top_p > 0 && top_p <= 1 ? (float)top_p : 1.0f;
        sp->top_k = top_k > 0 && top_k < INT32_MAX ? (int)top_k : 0;
        sp->min_p = min_p >= 0 && min_p <= 1 ? (float)min_p : 0.0f;
    }
    if (rep > 0) sp->repetition_penalty = (float)rep;
cleanup:
    nmlx_cfg_free(g);
    return st;
}

static void model_destroy(nmlx_model *m) {
    if (m->arch) m->family->destroy(m->arch, m->be);
    nmlx_tokenizer_free(m->tok);
    nmlx_weights_close(m->weights);
    nmlx_cfg_free(m->cfg);
    if (!m->be_borrowed) nmlx_backend_free(m->be);
    nmlx_free(m->dir);
    nmlx_free(m);
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
    /* A model's buffers are freed by several threads' arenas; glibc keeps
     * their free pages mapped, so a process that loads and unloads models
     * for days (a server, a Node app) creeps up without this. Rare and
     * cheap next to a load. Not under AddressSanitizer (gcc), which owns
     * the heap: there glibc's malloc_trim, on arenas it never used, once
     * crashed (SEGV in mtrim) in test_soak's threads. */
    malloc_trim(0);
#endif
}

void nmlx_model_unref(nmlx_model *m) {
    if (m && atomic_fetch_sub(&m->refs, 1) == 1) model_destroy(m);
}

void nmlx_model_free(nmlx_model *m) { nmlx_model_unref(m); }

/* The half-precision float dtype holding most of the checkpoint's float
 * bytes (quantized checkpoints: their scales), or F32 when F32 does: what
 * mlx-lm computes in, so what its KV cache holds. */
static nmlx_dtype checkpoint_half_dtype(const nmlx_weights *ws) {
    size_t bytes[3] = {0}; /* F32, F16, BF16 */
    for (size_t i = 0; i < nmlx_weights_count(ws); i++) {
        const nmlx_tensor *t = nmlx_weights_at(ws, i);
        if (t->dtype <= NMLX_DT_BF16) bytes[t->dtype] += nmlx_tensor_nbytes(t);
    }
    if (bytes[NMLX_DT_F32] >= bytes[NMLX_DT_F16] && bytes[NMLX_DT_F32] >= bytes[NMLX_DT_BF16])
        return NMLX_DT_F32;
    return bytes[NMLX_DT_BF16] >= bytes[NMLX_DT_F16] ? NMLX_DT_BF16 : NMLX_DT_F16;
}

/* config.json quantization: checks quantized tensors against it, or
 * quantizes a float checkpoint in memory when params ask for it. */
static nmlx_status load_quantization(nmlx_model *m, const char *cfg_path,
                                     const nmlx_model_params *p) {
    nmlx_quant_config qc;
    nmlx_weights *q = NULL;
    nmlx_status st = nmlx_quant_config_load(cfg_path, &qc);
    if (st != NMLX_OK) return st;
    if (p->quantize_bits) {
        CHECK(!qc.present, NMLX_ERR_INVALID_ARG,
              "%s: quantize_bits %d asked for, but the checkpoint is already quantized", cfg_path,
              p->quantize_bits);
        TRY(nmlx_quantize_weights_mem(m->weights, p->quantize_bits,
                                      p->quantize_group_size ? p->quantize_group_size : 64,
                                      nmlx_fused_experts_halves(m->model_type), p->n_threads, &q));
        nmlx_weights_close(m->weights);
        m->weights = q;
    } else {
        TRY(nmlx_quant_config_check(&qc, m->weights, cfg_path));
    }
cleanup:
    nmlx_quant_config_free(&qc);
    return st;
}

/* nmlx_model_load and nmlx_model_load_on (be: borrowed, else created) */
static nmlx_status load(const char *dir, const nmlx_model_params *params, nmlx_backend *be,
                        nmlx_model **out) {
    nmlx_status st = NMLX_OK;
    nmlx_model *m = NULL;
    char path[4096];
    nmlx_model_params p = params ? *params : nmlx_model_default_params();
    CHECK(dir && out, NMLX_ERR_INVALID_ARG, "nmlx_model_load: dir and out must not be NULL");
    *out = NULL;
    CHECK(p.n_threads >= 0 && p.n_threads <= 1024, NMLX_ERR_INVALID_ARG,
          "n_threads must be in [0, 1024] (got %d)", p.n_threads);
    CHECK(p.max_context >= 0, NMLX_ERR_INVALID_ARG, "max_context must be >= 0 (got %d)",
          p.max_context);
    struct stat sb;
    CHECK(stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode), NMLX_ERR_IO,
          "model folder '%s' does not exist or is not a folder", dir);

    m = nmlx_calloc(1, sizeof *m);
    CHECK(m, NMLX_ERR_NOMEM, "out of memory loading '%s'", dir);
    atomic_init(&m->refs, 1);
    m->sampler_defaults = nmlx_sampler_default_params();
    m->dir = nmlx_strdup(dir);
    CHECK(m->dir, NMLX_ERR_NOMEM, "out of memory loading '%s'", dir);

    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(file_exists(path), NMLX_ERR_IO, "%s: not found (a model folder needs config.json)",
          path);
    TRY(nmlx_cfg_open(path, &m->cfg));
    const char *mt = nmlx_cfg_model_type(m->cfg);
    CHECK(mt[0], NMLX_ERR_FORMAT, "%s: missing field 'model_type'", path);
    snprintf(m->model_type, sizeof m->model_type, "%s", mt);
    m->family = find_family(mt);
    if (!m->family) {
        char known[512];
        list_model_types(known, sizeof known);
        CHECK(0, NMLX_ERR_UNSUPPORTED, "%s: model_type '%s' is not supported (supported: %s)",
              path, mt, known);
    }

    TRY(nmlx_weights_open_dir(dir, &m->weights));
    m->half_dtype = checkpoint_half_dtype(m->weights);
    snprintf(path, sizeof path, "%s/config.json", dir);
    TRY(load_quantization(m, path, &p));
    if (be) {
        m->be = be;
        m->be_borrowed = true;
    } else {
        TRY(nmlx_backend_create(p.device, p.n_threads, &m->be));
    }
    TRY(nmlx_backend_set_precision(m->be, p.precision));
    nmlx_load_ctx ctx = {.cfg = m->cfg, .weights = m->weights, .be = m->be};
    /* build errors already name the file, tensor or field */
    TRY(m->family->build(m->family->def, &ctx, &m->arch, &m->info));

    TRY(read_eos(m, m->cfg, m->info.vocab_size));

    int64_t cap = m->info.max_position_embeddings;
    if (p.max_context > 0) cap = p.max_context;
    else if (cap > DEFAULT_CONTEXT_MAX) cap = DEFAULT_CONTEXT_MAX;
    else if (cap < DEFAULT_CONTEXT_MIN) cap = DEFAULT_CONTEXT_MIN;
    m->max_context = cap;
    TRY(nmlx_context_fits(m, cap, "nmlx_model_load"));

    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    if (file_exists(path)) TRY(read_generation_config(m, path));

    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (!p.no_tokenizer && file_exists(path)) {
        TRY(nmlx_tokenizer_load(dir, &m->tok));
        add_eos(m, nmlx_tokenizer_eos_id(m->tok));
    }
    /* the weights' files are as they were when mapped (a long load is a
     * wide window for a copy over them) */
    TRY(nmlx_weights_verify(m->weights));
    *out = m;
    m = NULL;
cleanup:
    if (m) model_destroy(m);
    return st;
}

nmlx_status nmlx_model_load(const char *dir, const nmlx_model_params *params,
                            nmlx_model **out) {
    return load(dir, params, NULL, out);
}

nmlx_status nmlx_model_load_on(const char *dir, const nmlx_model_params *params,
                               nmlx_backend *be, nmlx_model **out) {
    if (!be) return nmlx_fail(NMLX_ERR_INVALID_ARG, "nmlx_model_load_on: no backend");
    return load(dir, params, be, out);
}

const char *nmlx_model_type(const nmlx_model *m) { return m ? m->model_type : ""; }
int32_t nmlx_model_vocab_size(const nmlx_model *m) { return m ? (int32_t)m->info.vocab_size : 0; }
int32_t nmlx_model_max_context(const nmlx_model *m) { return m ? (int32_t)m->max_context : 0; }

size_t nmlx_model_eos_ids(const nmlx_model *m, const int32_t **ids) {
    if (!m) return 0;
    if (ids) *ids = m->eos;
    return m->n_eos;
}

bool nmlx_model_is_eos(const nmlx_model *m, int32_t id) {
    for (size_t i = 0; i < m->n_eos; i++)
        if (m->eos[i] == id) return true;
    return false;
}

const nmlx_tokenizer *nmlx_model_tokenizer(const nmlx_model *m) { return m ? m->tok : NULL; }

nmlx_sampler_params nmlx_model_sampler_params(const nmlx_model *m) {
    return m ? m->sampler_defaults : nmlx_sampler_default_params();
}
