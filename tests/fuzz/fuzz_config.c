/* libFuzzer harness: the input is a config.json. nmlx_cfg_parse, then every
 * getter on the fields the model families read, the RoPE reader for every
 * layer type, and the list getters: each either succeeds or fails with a
 * message. */
#include "fuzz_util.h"
#include "io/config.h"

static const char *const KEYS[] = {
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
    "rms_norm_eps", "rope_theta", "max_position_embeddings", "tie_word_embeddings",
    "sliding_window", "attention_bias", "eos_token_id", "bos_token_id", "torch_dtype",
    "layer_types", "rope_scaling", "rope_parameters", "partial_rotary_factor",
    "text_config", "quantization", "hidden_act", "query_pre_attn_scalar",
    "final_logit_softcapping", "use_sliding_window", "num_experts", "moe_layers",
    "no_rope_layers", "attention_chunk_size", "attn_temperature_tuning", "floor_scale",
    "intermediate_size_mlp", "", "\xff",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    nmlx_cfg *cfg = NULL;
    nmlx_status st = nmlx_cfg_parse(text, "config.json", &cfg);
    free(text);
    fuzz_expect_error(st);
    if (st != NMLX_OK) {
        if (cfg) __builtin_trap();
        return 0;
    }
    (void)nmlx_cfg_model_type(cfg);
    (void)nmlx_cfg_path(cfg);
    for (size_t i = 0; i < sizeof KEYS / sizeof KEYS[0]; i++) {
        const char *k = KEYS[i];
        int64_t iv;
        double dv;
        bool bv;
        const char *sv;
        int64_t list[8];
        const char *slist[8];
        size_t n;
        (void)nmlx_cfg_has(cfg, k);
        fuzz_expect_error(nmlx_cfg_int(cfg, k, 7, &iv));
        fuzz_expect_error(nmlx_cfg_float(cfg, k, 0.5, &dv));
        fuzz_expect_error(nmlx_cfg_bool(cfg, k, true, &bv));
        fuzz_expect_error(nmlx_cfg_string(cfg, k, "d", &sv));
        st = nmlx_cfg_int_list(cfg, k, list, 8, &n);
        fuzz_expect_error(st);
        if (st == NMLX_OK && n > 8) __builtin_trap();
        st = nmlx_cfg_string_list(cfg, k, slist, 8, &n);
        fuzz_expect_error(st);
        if (st == NMLX_OK)
            for (size_t j = 0; j < n; j++)
                if (!slist[j]) __builtin_trap();
    }
    nmlx_rope_config *r = malloc(sizeof *r);
    st = nmlx_cfg_rope(cfg, 10000.0, r);
    fuzz_expect_error(st);
    if (st == NMLX_OK && (r->n_short > NMLX_ROPE_MAX_FACTORS || r->n_long > NMLX_ROPE_MAX_FACTORS ||
                          strlen(r->type) >= sizeof r->type))
        __builtin_trap();
    static const char *const LT[] = {"full_attention", "sliding_attention", "x", ""};
    for (size_t i = 0; i < 4; i++) {
        bool found;
        fuzz_expect_error(nmlx_cfg_rope_layer(cfg, LT[i], 1e4, r, &found));
    }
    free(r);
    nmlx_cfg_free(cfg);
    return 0;
}
