// Qwen3 (Qwen3ForCausalLM): per-head q/k RMSNorm, explicit head_dim.
// Defaults: transformers Qwen3Config.
export default {
  family: "qwen3",
  description: "Qwen3",
  modelTypes: ["qwen3"],
  features: {
    qkvBias: "config:attention_bias",
    oBias: "config:attention_bias",
    qkNorm: true,
    slidingWindow: "config:use_sliding_window",
  },
  configDefaults: {
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    tie_word_embeddings: false,
    max_position_embeddings: 32768,
    head_dim: 128,
    hidden_act: "silu",
  },
};
