// SmolLM3 (SmolLM3ForCausalLM): Llama layout with NoPE layers
// (no_rope_layers, or every no_rope_layer_interval-th layer), optional
// sliding window on layer_types. Defaults: transformers SmolLM3Config.
export default {
  family: "smollm3",
  description: "SmolLM3",
  modelTypes: ["smollm3"],
  features: {
    qkvBias: "config:attention_bias",
    oBias: "config:attention_bias",
    mlpBias: "config:mlp_bias",
    slidingWindow: "config:use_sliding_window",
    layerTypes: true,
    noRopeLayers: "config:no_rope_layers",
  },
  configDefaults: {
    rms_norm_eps: 1e-6,
    rope_theta: 2000000,
    tie_word_embeddings: true,
    max_position_embeddings: 32768,
    hidden_act: "silu",
    no_rope_layer_interval: 4,
  },
};
