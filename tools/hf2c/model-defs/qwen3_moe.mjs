// Qwen3-MoE (Qwen3MoeForCausalLM): Qwen3 attention (q/k norm) with a sparse
// MoE MLP: softmax over all experts, top-k, optional renormalisation
// (norm_topk_prob); per-expert `mlp.experts.<e>.*_proj` (HF) or stacked
// `mlp.switch_mlp.*_proj` (mlx-lm); router `mlp.gate`; dense MLP layers by
// decoder_sparse_step / mlp_only_layers. Defaults: transformers Qwen3MoeConfig.
export default {
  family: "qwen3_moe",
  description: "Qwen3-MoE",
  modelTypes: ["qwen3_moe"],
  features: {
    qkvBias: "config:attention_bias",
    oBias: "config:attention_bias",
    qkNorm: true,
    slidingWindow: "config:use_sliding_window",
    moe: "softmax_topk",
    moeNormTopk: "config:norm_topk_prob",
    moeSparseLayers: "config:decoder_sparse_step",
    moeRouter: "gate",
    moeStacked: "switch_mlp",
    moeExpertSize: "moe_intermediate_size",
  },
  configDefaults: {
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    tie_word_embeddings: false,
    max_position_embeddings: 32768,
    head_dim: 0,
    hidden_act: "silu",
  },
};
