// Mistral (MistralForCausalLM): Llama layout; config sliding_window, when
// set, limits attention to the last `sliding_window` positions (by mask, on
// a full cache). Defaults: transformers MistralConfig.
export default {
  family: "mistral",
  description: "Mistral",
  modelTypes: ["mistral"],
  features: {
    slidingWindow: "always",
  },
  configDefaults: {
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    tie_word_embeddings: false,
    max_position_embeddings: 131072,
    hidden_act: "silu",
  },
};
