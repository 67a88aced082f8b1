// Ministral 3 (Ministral3ForCausalLM) and the text model of Mistral 3
// multimodal checkpoints (Mistral3ForConditionalGeneration: text_config,
// language_model. weights): YaRN RoPE, queries scaled by
// llama_4_scaling_beta past the original context. Defaults: transformers
// Ministral3Config.
export default {
  family: "ministral3",
  description: "Ministral 3 / Mistral 3",
  modelTypes: ["ministral3", "mistral3"],
  features: {
    slidingWindow: "always",
    layerTypes: true,
    llama4QueryScale: true,
  },
  configDefaults: {
    rms_norm_eps: 1e-5,
    rope_theta: 1000000,
    tie_word_embeddings: false,
    max_position_embeddings: 262144,
    head_dim: 128,
    hidden_act: "silu",
  },
};
