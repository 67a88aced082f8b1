// GPT-OSS (GptOssForCausalLM): attention with q/k/v/o biases and learned
// per-head sinks, alternating sliding/full layers (layer_types, else
// sliding first then full), YaRN RoPE; MoE MLP: top-k router logits (router
// with bias) then softmax over the k, experts with biases and the clipped
// SwiGLU. Experts: HF `mlp.experts.gate_up_proj` [E, D, 2I] interleaved
// (repacked at load) or mlx-lm's `mlp.experts.{gate,up,down}_proj`.
// Defaults: transformers GptOssConfig / mlx-lm gpt_oss.ModelArgs.
export default {
  family: "gpt_oss",
  description: "GPT-OSS",
  modelTypes: ["gpt_oss"],
  features: {
    qkvBias: true,
    oBias: true,
    slidingWindow: "always",
    layerTypes: true,
    attentionSinks: true,
    moe: "topk_softmax",
    moeRouterBias: true,
    moeExpertBias: true,
    moeClippedSwiglu: true,
    moeRouter: "router",
    moeStacked: "experts",
    moeExpertSize: "intermediate_size",
  },
  configDefaults: {
    rms_norm_eps: 1e-5,
    rope_theta: 150000,
    tie_word_embeddings: false,
    max_position_embeddings: 131072,
    head_dim: 64,
    hidden_act: "silu",
    sliding_window: 128,
    sliding_window_pattern: 2,
    swiglu_limit: 7,
  },
};
