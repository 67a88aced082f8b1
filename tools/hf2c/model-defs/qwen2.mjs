// Qwen2 / Qwen2.5 (Qwen2ForCausalLM): q/k/v biases, no o bias.
// Defaults: transformers Qwen2Config.
export default {
  family: "qwen2",
  description: "Qwen2",
  modelTypes: ["qwen2"],
  features: {
    qkvBias: true,
    oBias: false,
    slidingWindow: "config:use_sliding_window",
  },
  configDefaults: {
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    tie_word_embeddings: false,
    max_position_embeddings: 32768,
    hidden_act: "silu",
  },
};
