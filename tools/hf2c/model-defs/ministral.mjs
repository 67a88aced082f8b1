// Ministral (MinistralForCausalLM): Mistral with per-layer sliding/full
// attention from layer_types. Defaults: transformers MinistralConfig.
export default {
  family: "ministral",
  description: "Ministral",
  modelTypes: ["ministral"],
  features: {
    slidingWindow: "always",
    layerTypes: true,
  },
  configDefaults: {
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    tie_word_embeddings: false,
    max_position_embeddings: 131072,
    hidden_act: "silu",
    sliding_window: 4096,
  },
};
