/* The domain table of every field nmlx reads (see config_schema.h).
 *
 * Bounds: sizes are bounded so that nothing sized from them before the
 * tensors are checked can ask for more than a few GiB (the tensors then
 * have to agree); ratios and epsilons by the math that uses them. Enum
 * lists name every value the reference implementation accepts (known) and
 * the ones nmlx implements (supported). docs/config_fields.md is the same
 * table for people; tests/test_config.c (test_schema_coverage) keeps the
 * two in step and fails on a key read in the sources without a domain. */
#include "io/config_schema.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define I32MAX 2147483647.0
#define INT(f, lo, hi)                                                                             \
    { f, NMLX_DOM_INT, lo, hi, NULL, NULL }
#define NUM(f, lo, hi)                                                                             \
    { f, NMLX_DOM_NUM, lo, hi, NULL, NULL }
#define POS(f)                                                                                     \
    { f, NMLX_DOM_NUM | NMLX_DOM_LO_OPEN, 0, HUGE_VAL, NULL, NULL }
#define NONNEG(f)                                                                                  \
    { f, NMLX_DOM_NUM, 0, HUGE_VAL, NULL, NULL }
#define ENUM(f, k, s)                                                                              \
    { f, NMLX_DOM_ENUM, 0, 0, k, s }

/* transformers ACT2CLS */
static const char *const ACT_KNOWN[] = {
    "gelu",          "gelu_10", "gelu_fast",  "gelu_new", "gelu_python", "gelu_pytorch_tanh",
    "gelu_accurate", "laplace", "leaky_relu", "linear",   "mish",        "quick_gelu",
    "relu",          "relu2",   "relu6",      "sigmoid",  "silu",        "swish",
    "tanh",          "prelu",   "xielu",      NULL};
static const char *const ACT_SUPPORTED[] = {"silu",     "swish", "gelu", "gelu_pytorch_tanh",
                                            "gelu_new", NULL};
/* transformers ROPE_INIT_FUNCTIONS, plus the legacy "su" (= longrope) and
 * "mrope" (Qwen2-VL's multimodal sections) spellings */
static const char *const ROPE_KNOWN[] = {"default", "linear", "dynamic", "yarn", "longrope",
                                         "llama3",  "su",     "mrope",   NULL};
static const char *const ROPE_SUPPORTED[] = {"default", "linear", "yarn", "longrope",
                                             "llama3",  "su",     NULL};
static const char *const LAYER_KNOWN[] = {"full_attention", "sliding_attention",
                                          "chunked_attention", "linear_attention", NULL};
static const char *const LAYER_SUPPORTED[] = {"full_attention", "sliding_attention",
                                              "chunked_attention", NULL};
/* MLX quantization modes */
static const char *const QMODE_KNOWN[] = {"affine", "mxfp4", "nvfp4", "mxfp8", NULL};
static const char *const QMODE_SUPPORTED[] = {"affine", "mxfp4", NULL};
/* transformers QuantizationMethod */
static const char *const QMETHOD_KNOWN[] = {
    "bitsandbytes", "gptq",     "awq",        "aqlm",  "vptq",
    "quanto",       "eetq",     "higgs",      "hqq",   "compressed-tensors",
    "fbgemm_fp8",   "torchao",  "bitnet",     "spqr",  "fp8",
    "quark",        "fp_quant", "auto-round", "mxfp4", NULL};
static const char *const QMETHOD_SUPPORTED[] = {"mxfp4", NULL};

static const nmlx_domain TABLE[] = {
    /* ---- config.json: sizes ---- */
    INT("hidden_size", 1, 1 << 20),
    INT("intermediate_size", 1, 1 << 22),
    INT("moe_intermediate_size", 1, 1 << 22),
    INT("num_hidden_layers", 1, 4096),
    INT("num_attention_heads", 1, 1 << 16),
    INT("num_key_value_heads", 1, 1 << 16),
    INT("head_dim", 1, 1 << 16),
    INT("vocab_size", 1, 1 << 24),
    INT("max_position_embeddings", 1, I32MAX),
    INT("sliding_window", 1, I32MAX),
    INT("max_window_layers", 0, 4096),
    INT("sliding_window_pattern", 1, 4096),
    INT("no_rope_layers", 0, 1),
    INT("no_rope_layer_interval", 1, 4096),
    INT("num_experts", 1, 1 << 16),
    INT("num_local_experts", 1, 1 << 16),
    INT("num_experts_per_tok", 1, 1 << 16),
    INT("decoder_sparse_step", 1, 4096),
    INT("mlp_only_layers", 0, 4095),
    INT("original_max_position_embeddings", 1, I32MAX),
    INT("eos_token_id", 0, I32MAX),
    /* Llama 4 */
    INT("intermediate_size_mlp", 1, 1 << 22),
    INT("moe_layers", 0, 4095),
    INT("interleave_moe_layer_step", 1, 4096),
    INT("attention_chunk_size", 1, I32MAX),
    POS("floor_scale"),
    NONNEG("attn_scale"),
    NONNEG("attn_temperature_tuning"),
    /* Gemma 3n */
    INT("altup_num_inputs", 1, 64),
    INT("altup_active_idx", 0, 63),
    INT("laurel_rank", 1, 1 << 16),
    INT("hidden_size_per_layer_input", 1, 1 << 16),
    INT("vocab_size_per_layer_input", 1, 1 << 24),
    INT("num_kv_shared_layers", 0, 4096),
    {"activation_sparsity_pattern", NMLX_DOM_NUM | NMLX_DOM_HI_OPEN, 0, 1, NULL, NULL},
    /* ---- config.json: numbers ---- */
    {"rms_norm_eps", NMLX_DOM_NUM | NMLX_DOM_LO_OPEN, 0, 1, NULL, NULL},
    POS("rope_theta"),
    POS("rope_local_base_freq"),
    {"partial_rotary_factor", NMLX_DOM_NUM | NMLX_DOM_LO_OPEN, 0, 1, NULL, NULL},
    /* used as a float: cap * tanh(x / cap) is NaN once cap rounds to inf */
    {"final_logit_softcapping", NMLX_DOM_NUM | NMLX_DOM_LO_OPEN, 0, FLT_MAX, NULL, NULL},
    POS("attn_logit_softcapping"),
    POS("query_pre_attn_scalar"),
    POS("swiglu_limit"),
    /* ---- config.json: enums ---- */
    ENUM("hidden_act", ACT_KNOWN, ACT_SUPPORTED),
    ENUM("hidden_activation", ACT_KNOWN, ACT_SUPPORTED),
    ENUM("layer_types", LAYER_KNOWN, LAYER_SUPPORTED),
    /* ---- config.json: rope_scaling / rope_parameters ---- */
    ENUM("rope.type", ROPE_KNOWN, ROPE_SUPPORTED),
    POS("rope.rope_theta"),
    POS("rope.factor"),
    POS("rope.low_freq_factor"),
    POS("rope.high_freq_factor"),
    POS("rope.beta_fast"),
    POS("rope.beta_slow"),
    NONNEG("rope.mscale"),
    NONNEG("rope.mscale_all_dim"),
    POS("rope.attention_factor"),
    NONNEG("rope.llama_4_scaling_beta"),
    INT("rope.original_max_position_embeddings", 1, I32MAX),
    {"rope.partial_rotary_factor", NMLX_DOM_NUM | NMLX_DOM_LO_OPEN, 0, 1, NULL, NULL},
    POS("rope.short_factor"),
    POS("rope.long_factor"),
    /* ---- generation_config.json ---- */
    NONNEG("temperature"),
    {"top_p", NMLX_DOM_NUM | NMLX_DOM_LO_OPEN, 0, 1, NULL, NULL},
    INT("top_k", 0, I32MAX),
    NUM("min_p", 0, 1),
    POS("repetition_penalty"),
    /* ---- config.json quantization / quantization_config ---- */
    ENUM("quantization.mode", QMODE_KNOWN, QMODE_SUPPORTED),
    ENUM("quantization.quant_method", QMETHOD_KNOWN, QMETHOD_SUPPORTED),
    INT("quantization.bits", 1, 8),
    INT("quantization.group_size", 1, 4096),
    {NULL, 0, 0, 0, NULL, NULL},
};

const nmlx_domain *nmlx_domain_table(void) { return TABLE; }

const nmlx_domain *nmlx_domain_find(const char *field) {
    if (!field) return NULL;
    for (const nmlx_domain *d = TABLE; d->field; d++)
        if (!strcmp(d->field, field)) return d;
    return NULL;
}

/* "an integer in [1, 4096]", "a number > 0", "a number in (0, 1]" ... */
static void describe(const nmlx_domain *d, char *buf, size_t cap) {
    unsigned k = d->kind & 7;
    bool lo_open = d->kind & NMLX_DOM_LO_OPEN, hi_open = d->kind & NMLX_DOM_HI_OPEN;
    const char *what = k == NMLX_DOM_INT ? "an integer" : "a finite number";
    if (isinf(d->hi))
        snprintf(buf, cap, "%s %s %.17g", what, lo_open ? ">" : ">=", d->lo);
    else
        snprintf(buf, cap, "%s in %c%.17g, %.17g%c", what, lo_open ? '(' : '[', d->lo, d->hi,
                 hi_open ? ')' : ']');
}

static bool in_range(const nmlx_domain *d, double v) {
    if (!isfinite(v)) return false;
    if (d->kind & NMLX_DOM_LO_OPEN ? !(v > d->lo) : !(v >= d->lo)) return false;
    if (d->kind & NMLX_DOM_HI_OPEN ? !(v < d->hi) : !(v <= d->hi)) return false;
    return true;
}

nmlx_status nmlx_domain_check_num(const char *file, const char *shown, const char *key, double v) {
    const nmlx_domain *d = nmlx_domain_find(key);
    if (!d || (d->kind & 7) == NMLX_DOM_ENUM) return NMLX_OK;
    if (in_range(d, v) && ((d->kind & 7) != NMLX_DOM_INT || v == floor(v))) return NMLX_OK;
    char dom[128];
    describe(d, dom, sizeof dom);
    return nmlx_fail(NMLX_ERR_INVALID_MODEL, "%s: field '%s' = %.17g is outside its domain (%s)",
                     file, shown, v, dom);
}

nmlx_status nmlx_domain_check_int(const char *file, const char *shown, const char *key, int64_t v) {
    const nmlx_domain *d = nmlx_domain_find(key);
    if (!d || (d->kind & 7) == NMLX_DOM_ENUM) return NMLX_OK;
    if (in_range(d, (double)v)) return NMLX_OK;
    char dom[128];
    describe(d, dom, sizeof dom);
    return nmlx_fail(NMLX_ERR_INVALID_MODEL, "%s: field '%s' = %lld is outside its domain (%s)",
                     file, shown, (long long)v, dom);
}

static bool listed(const char *const *list, const char *v) {
    for (; list && *list; list++)
        if (!strcmp(*list, v)) return true;
    return false;
}

static void join(const char *const *list, char *buf, size_t cap) {
    size_t n = 0;
    buf[0] = '\0';
    for (; list && *list && n < cap; list++) {
        int w = snprintf(buf + n, cap - n, "%s%s", n ? ", " : "", *list);
        if (w < 0) break;
        n += (size_t)w;
    }
}

nmlx_status nmlx_domain_check_str(const char *file, const char *shown, const char *key,
                                  const char *v) {
    const nmlx_domain *d = nmlx_domain_find(key);
    if (!d || (d->kind & 7) != NMLX_DOM_ENUM) return NMLX_OK;
    char names[512];
    if (!listed(d->known, v)) {
        join(d->known, names, sizeof names);
        return nmlx_fail(NMLX_ERR_INVALID_MODEL,
                         "%s: field '%s' = '%s' is not a known value (known: %s)", file, shown, v,
                         names);
    }
    if (d->supported && !listed(d->supported, v)) {
        join(d->supported, names, sizeof names);
        return nmlx_fail(NMLX_ERR_UNSUPPORTED,
                         "%s: field '%s' = '%s' is not supported by nmlx (supported: %s)", file,
                         shown, v, names);
    }
    return NMLX_OK;
}

nmlx_status nmlx_invalid(const char *file, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return nmlx_fail(NMLX_ERR_INVALID_MODEL, "%s: %s", file, msg);
}
