// The feature vocabulary of model-defs: every feature a family may declare,
// its allowed values and its default. Emitters route on features, never on
// family names.

/** A feature value "config:<key>" means: read the boolean config key. */
export const FEATURES = {
  qkvBias: { values: [false, true, "config:attention_bias"], default: false,
    doc: "q/k/v projections carry a bias" },
  oBias: { values: [false, true, "config:attention_bias"], default: false,
    doc: "o_proj carries a bias" },
  mlpBias: { values: [false, true, "config:mlp_bias"], default: false,
    doc: "gate/up/down projections carry a bias" },
  qkNorm: { values: [false, true], default: false,
    doc: "per-head RMSNorm of q and k before RoPE" },
  slidingWindow: { values: [false, "always", "config:use_sliding_window"], default: false,
    doc: "sliding-window attention from config sliding_window" },
  layerTypes: { values: [false, true], default: false,
    doc: "per-layer sliding/full attention from config layer_types" },
  fusedQkv: { values: [false, true], default: false,
    doc: "one fused qkv_proj" },
  fusedGateUp: { values: [false, true], default: false,
    doc: "one fused gate_up_proj" },
  gemmaNorms: { values: [false, true], default: false,
    doc: "RMSNorm weights applied as (1 + w)" },
  sandwichNorms: { values: [false, true], default: false,
    doc: "four norms per layer (post-attention, pre/post feed-forward)" },
  embedScale: { values: [false, true], default: false,
    doc: "embeddings scaled by sqrt(hidden_size)" },
  noRopeLayers: { values: [false, "config:no_rope_layers"], default: false,
    doc: "layers without RoPE (no_rope_layers, else every no_rope_layer_interval-th)" },
  localRope: { values: [false, true], default: false,
    doc: "sliding layers use a local RoPE base (rope_local_base_freq / rope_parameters.sliding_attention)" },
  queryPreAttnScalar: { values: [false, true], default: false,
    doc: "attention scale 1/sqrt(query_pre_attn_scalar)" },
  finalLogitSoftcap: { values: [false, true], default: false,
    doc: "final logit soft-capping (final_logit_softcapping)" },
  llama4QueryScale: { values: [false, true], default: false,
    doc: "queries scaled by rope_parameters.llama_4_scaling_beta past the original context" },
  activationKey: { values: ["hidden_act", "hidden_activation"], default: "hidden_act",
    doc: "config key naming the MLP activation" },
  attentionSinks: { values: [false, true], default: false,
    doc: "learned per-head attention sinks (self_attn.sinks)" },
  // Sparse mixture-of-experts MLP (components/moe.mjs). moe names the routing:
  // softmax over all experts then top-k, or top-k logits then softmax over them.
  moe: { values: [false, "softmax_topk", "topk_softmax", "topk_sigmoid"], default: false,
    doc: "sparse mixture-of-experts MLP" },
  moeNormTopk: { values: [false, "config:norm_topk_prob"], default: false,
    doc: "top-k routing weights renormalised to sum 1" },
  moeRouterBias: { values: [false, true], default: false, doc: "MoE router carries a bias" },
  moeExpertBias: { values: [false, true], default: false, doc: "experts carry biases" },
  moeClippedSwiglu: { values: [false, true], default: false,
    doc: "experts use the clipped SwiGLU (gate <= limit, |up| <= limit, (up + 1) * gate * sigmoid(1.702 gate))" },
  moeSparseLayers: { values: [false, "config:decoder_sparse_step"], default: false,
    doc: "MoE only on layers chosen by decoder_sparse_step / mlp_only_layers, dense MLP elsewhere" },
  moeRouter: { values: [false, "gate", "router"], default: false,
    doc: "router module name under mlp" },
  moeStacked: { values: [false, "switch_mlp", "experts"], default: false,
    doc: "mlx-lm's stacked experts module name under mlp" },
  moeExpertSize: { values: [false, "moe_intermediate_size", "intermediate_size"], default: false,
    doc: "config key of the experts' intermediate size" },
  // Llama 4 (components/llama4.mjs).
  ropeInterleaved: { values: [false, true], default: false,
    doc: "RoPE rotates interleaved pairs (2i, 2i+1) (complex form)" },
  qkL2Norm: { values: [false, "config:use_qk_norm"], default: false,
    doc: "weightless L2 (RMS) norm of q and k heads after RoPE, on RoPE layers" },
  attnTemperatureTuning: { values: [false, "config:attn_temperature_tuning"], default: false,
    doc: "NoPE layers scale queries by 1 + attn_scale log1p(floor((pos + 1) / floor_scale))" },
  chunkedAttention: { values: [false, true], default: false,
    doc: "RoPE layers attend within attention_chunk_size chunks (KV cache: the live chunk and the one before)" },
  ffnModule: { values: ["mlp", "feed_forward"], default: "mlp",
    doc: "module name of the MLP / MoE block" },
  moeSharedExpert: { values: [false, true], default: false,
    doc: "a shared expert (shared_expert) added for every token" },
  moeLayers: { values: [false, "config:moe_layers"], default: false,
    doc: "MoE on config moe_layers (else every interleave_moe_layer_step-th layer), dense MLP of intermediate_size_mlp elsewhere" },
  // Gemma 3n (components/gemma3n.mjs).
  altup: { values: [false, true], default: false,
    doc: "AltUp: altup_num_inputs residual streams, predicted and corrected around each layer" },
  laurel: { values: [false, true], default: false,
    doc: "Laurel low-rank residual beside attention (laurel_rank)" },
  perLayerInputs: { values: [false, true], default: false,
    doc: "per-layer token embeddings and projections gated into every layer" },
  kvSharing: { values: [false, true], default: false,
    doc: "the last num_kv_shared_layers layers reuse the KV of an earlier layer of their type" },
  activationSparsity: { values: [false, true], default: false,
    doc: "Gaussian top-k sparsity of the MLP gate (activation_sparsity_pattern)" },
  vNorm: { values: [false, true], default: false,
    doc: "RMSNorm without scale on v" },
};

/** Config keys a model-def may give defaults for (transformers' defaults). */
export const CONFIG_DEFAULTS = {
  rms_norm_eps: { type: "number", default: 1e-6 },
  rope_theta: { type: "number", default: 10000 },
  tie_word_embeddings: { type: "boolean", default: false },
  max_position_embeddings: { type: "integer", default: 2048 },
  head_dim: { type: "integer", default: 0 }, // 0: hidden_size / num_attention_heads
  hidden_act: { type: "string", default: "silu" },
  sliding_window: { type: "integer", default: 0 }, // 0: none unless the config sets one
  sliding_window_pattern: { type: "integer", default: 0 }, // 0: no pattern
  rope_local_base_freq: { type: "number", default: 10000 },
  query_pre_attn_scalar: { type: "number", default: 0 },
  no_rope_layer_interval: { type: "integer", default: 4 },
  final_logit_softcapping: { type: "number", default: 0 }, // 0: none unless the config sets one
  altup_num_inputs: { type: "integer", default: 4 },
  altup_active_idx: { type: "integer", default: 0 },
  altup_coef_clip: { type: "number", default: 120 },
  altup_correct_scale: { type: "boolean", default: true },
  laurel_rank: { type: "integer", default: 64 },
  hidden_size_per_layer_input: { type: "integer", default: 256 },
  vocab_size_per_layer_input: { type: "integer", default: 262144 },
  num_kv_shared_layers: { type: "integer", default: 0 },
  swiglu_limit: { type: "number", default: 7 },
  attention_chunk_size: { type: "integer", default: 8192 },
  floor_scale: { type: "number", default: 8192 },
  attn_scale: { type: "number", default: 0.1 },
  interleave_moe_layer_step: { type: "integer", default: 1 },
  intermediate_size_mlp: { type: "integer", default: 0 }, // 0: intermediate_size
};

function fail(def, msg) {
  throw new Error(`model-def ${def.family ?? "?"}: ${msg}`);
}

/** Validates a model-def and returns it with every feature and default filled in. */
export function resolveModelDef(def, file) {
  if (typeof def.family !== "string" || !/^[a-z][a-z0-9_]*$/.test(def.family))
    fail(def, `'family' must be a C identifier-like name (in ${file})`);
  if (!Array.isArray(def.modelTypes) || def.modelTypes.length === 0 ||
      !def.modelTypes.every((t) => typeof t === "string" && /^[\w.-]+$/.test(t)))
    fail(def, "'modelTypes' must be a non-empty array of model_type strings");
  const features = {};
  for (const key of Object.keys(def.features ?? {}))
    if (!(key in FEATURES)) fail(def, `unknown feature '${key}' (known: ${Object.keys(FEATURES).join(", ")})`);
  for (const [key, spec] of Object.entries(FEATURES)) {
    const v = def.features?.[key] ?? spec.default;
    if (!spec.values.includes(v))
      fail(def, `feature '${key}' must be one of ${JSON.stringify(spec.values)}, got ${JSON.stringify(v)}`);
    features[key] = v;
  }
  const defaults = {};
  for (const key of Object.keys(def.configDefaults ?? {}))
    if (!(key in CONFIG_DEFAULTS)) fail(def, `unknown config default '${key}'`);
  for (const [key, spec] of Object.entries(CONFIG_DEFAULTS)) {
    const v = def.configDefaults?.[key] ?? spec.default;
    const ok = spec.type === "integer" ? Number.isInteger(v) : typeof v === spec.type;
    if (!ok) fail(def, `config default '${key}' must be ${spec.type}, got ${JSON.stringify(v)}`);
    defaults[key] = v;
  }
  return { ...def, description: def.description ?? def.family, features, defaults, file };
}
