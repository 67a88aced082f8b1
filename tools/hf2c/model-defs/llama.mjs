// Llama 1/2/3.x (LlamaForCausalLM). Defaults: transformers LlamaConfig.
export default {
  family: "llama",
  description: "Llama",
  modelTypes: ["llama"],
  features: {
    qkvBias: "config:attention_bias",
    oBias: "config:attention_bias",
    mlpBias: "config:mlp_bias",
  },
  configDefaults: {
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    tie_word_embeddings: false,
    max_position_embeddings: 2048,
    hidden_act: "silu",
  },
};
