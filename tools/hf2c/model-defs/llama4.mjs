// Llama 4 text (Llama4ForCausalLM, and the language model of
// Llama4ForConditionalGeneration: weights under language_model., config
// under text_config). RoPE layers: interleaved (complex) RoPE with llama3
// scaling, weightless L2 qk-norm after RoPE, attention within
// attention_chunk_size chunks; NoPE layers (no_rope_layers, else every
// no_rope_layer_interval-th): full causal attention with query temperature
// tuning. Feed-forward `feed_forward`: MoE on moe_layers (else every
// interleave_moe_layer_step-th) with top-k routing, sigmoid scores scaling
// the experts' input, and a shared expert; experts as HF fused
// `experts.gate_up_proj` [E, D, 2I] (gate half, then up half) /
// `experts.down_proj` [E, I, D], or mlx-lm's stacked
// `experts.{gate,up,down}_proj` (float or quantized); dense layers of
// intermediate_size_mlp. Defaults: transformers Llama4TextConfig.
export default {
  family: "llama4",
  description: "Llama 4 (text)",
  modelTypes: ["llama4_text", "llama4"],
  features: {
    qkvBias: "config:attention_bias",
    oBias: "config:attention_bias",
    noRopeLayers: "config:no_rope_layers",
    ropeInterleaved: true,
    qkL2Norm: "config:use_qk_norm",
    attnTemperatureTuning: "config:attn_temperature_tuning",
    chunkedAttention: true,
    ffnModule: "feed_forward",
    moe: "topk_sigmoid",
    moeSharedExpert: true,
    moeLayers: "config:moe_layers",
    moeRouter: "router",
    moeStacked: "experts",
    moeExpertSize: "intermediate_size",
  },
  configDefaults: {
    rms_norm_eps: 1e-5,
    rope_theta: 500000,
    tie_word_embeddings: false,
    max_position_embeddings: 131072,
    head_dim: 128,
    hidden_act: "silu",
    no_rope_layer_interval: 4,
    attention_chunk_size: 8192,
    floor_scale: 8192,
    attn_scale: 0.1,
    interleave_moe_layer_step: 1,
    intermediate_size_mlp: 16384,
  },
};
