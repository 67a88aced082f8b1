// Phi-3 / Phi-4 (Phi3ForCausalLM): fused qkv_proj and gate_up_proj,
// longrope ("su") RoPE with short/long factors, partial rotary.
// Defaults: transformers Phi3Config.
export default {
  family: "phi3",
  description: "Phi-3 / Phi-4",
  modelTypes: ["phi3"],
  features: {
    fusedQkv: true,
    fusedGateUp: true,
    slidingWindow: "always",
  },
  configDefaults: {
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
    max_position_embeddings: 4096,
    hidden_act: "silu",
  },
};
