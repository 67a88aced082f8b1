// Gemma 3 text (Gemma3ForCausalLM) and the text part of Gemma 3 multimodal
// checkpoints (Gemma3ForConditionalGeneration: text_config, language_model.
// weights): (1 + w) RMSNorm, four norms per layer, q/k norm, embeddings
// scaled by sqrt(hidden), GELU-tanh, sliding/full layers (layer_types or
// sliding_window_pattern) with a local RoPE base, query_pre_attn_scalar,
// final logit soft-capping. Defaults: transformers Gemma3TextConfig.
export default {
  family: "gemma3",
  description: "Gemma 3",
  modelTypes: ["gemma3", "gemma3_text"],
  features: {
    qkvBias: "config:attention_bias",
    oBias: "config:attention_bias",
    qkNorm: true,
    slidingWindow: "always",
    layerTypes: true,
    gemmaNorms: true,
    sandwichNorms: true,
    embedScale: true,
    localRope: true,
    queryPreAttnScalar: true,
    finalLogitSoftcap: true,
    activationKey: "hidden_activation",
  },
  configDefaults: {
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    rope_local_base_freq: 10000,
    tie_word_embeddings: true,
    max_position_embeddings: 131072,
    head_dim: 256,
    hidden_act: "gelu_pytorch_tanh",
    sliding_window: 4096,
    sliding_window_pattern: 6,
    query_pre_attn_scalar: 256,
  },
};
