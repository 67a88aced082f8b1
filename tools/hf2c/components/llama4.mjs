// Emits a Llama 4-style family: chunked attention on RoPE layers, NoPE
// layers with temperature tuning, and a sigmoid-routed MoE with a shared
// expert. The model lives in src/shared/llama4_model.h (attention and MoE
// blocks in llama4_attention.c / llama4_moe.c); the family file fills an
// nmlx_l4_def with the features and config defaults and binds nmlx_l4_*.
import { cDouble, cString, header } from "./c.mjs";
import { FEATURES } from "../features.mjs";

/** Features this emitter understands. */
const LLAMA4_FEATURES = new Set([
  "qkvBias", "oBias", "noRopeLayers", "ropeInterleaved", "qkL2Norm", "attnTemperatureTuning",
  "chunkedAttention", "ffnModule", "moe", "moeSharedExpert", "moeLayers", "moeRouter",
  "moeStacked", "moeExpertSize",
]);

export function canEmit(def) {
  const f = def.features;
  return f.chunkedAttention === true &&
    Object.entries(f).every(([k, v]) => LLAMA4_FEATURES.has(k) || v === FEATURES[k].default);
}

function featureEnum(v) {
  if (v === false) return "NMLX_FEATURE_OFF";
  if (v === true) return "NMLX_FEATURE_ON";
  return "NMLX_FEATURE_FROM_CONFIG";
}

export function emitLlama4Family(def) {
  const f = def.features, d = def.defaults, n = def.family;
  if (f.moe !== false && f.moe !== "topk_sigmoid")
    throw new Error(`model-def ${n}: the llama4 emitter routes MoE by "topk_sigmoid" only`);
  if (f.qkvBias !== f.oBias)
    throw new Error(`model-def ${n}: the llama4 emitter needs qkvBias and oBias alike`);
  if (f.moe) for (const k of ["moeRouter", "moeStacked", "moeExpertSize"])
    if (!f[k]) throw new Error(`model-def ${n}: feature 'moe' needs '${k}'`);
  const types = def.modelTypes.map(cString).join(", ");
  const moeLayers = f.moe ? (f.moeLayers ? featureEnum(f.moeLayers) : "NMLX_FEATURE_ON")
    : "NMLX_FEATURE_OFF";
  return `${header(def)}
#include "shared/llama4_model.h"

static const char *const ${n}_model_types[] = {${types}, NULL};

static const nmlx_l4_def ${n}_def = {
    .rope_interleaved = ${f.ropeInterleaved},
    .qk_l2_norm = ${featureEnum(f.qkL2Norm)},
    .attn_temperature_tuning = ${featureEnum(f.attnTemperatureTuning)},
    .no_rope_layers = ${featureEnum(f.noRopeLayers)},
    .chunked_attention = ${f.chunkedAttention},
    .attention_bias = ${featureEnum(f.qkvBias)},
    .moe_shared_expert = ${f.moeSharedExpert},
    .moe_layers = ${moeLayers},
    .ffn_module = ${cString(f.ffnModule)},
    .router_name = ${cString(f.moeRouter || "router")},
    .stacked_name = ${cString(f.moeStacked || "experts")},
    .expert_size_key = ${cString(f.moeExpertSize || "intermediate_size")},
    .dense_size_key = ${cString(f.moeLayers ? "intermediate_size_mlp" : "intermediate_size")},
    .rms_norm_eps = ${cDouble(d.rms_norm_eps)},
    .rope_theta = ${cDouble(d.rope_theta)},
    .floor_scale = ${cDouble(d.floor_scale)},
    .attn_scale = ${cDouble(d.attn_scale)},
    .tie_word_embeddings = ${d.tie_word_embeddings},
    .max_position_embeddings = ${d.max_position_embeddings},
    .head_dim = ${d.head_dim},
    .no_rope_layer_interval = ${d.no_rope_layer_interval},
    .attention_chunk_size = ${d.attention_chunk_size},
    .interleave_moe_layer_step = ${d.interleave_moe_layer_step},
    .intermediate_size_mlp = ${d.intermediate_size_mlp},
    .hidden_act = ${cString(d.hidden_act)},
};

const nmlx_family nmlx_family_${n} = {
    .name = ${cString(n)},
    .model_types = ${n}_model_types,
    .def = &${n}_def,
    .build = nmlx_l4_build,
    .destroy = nmlx_l4_destroy,
    .state_create = nmlx_l4_state_create,
    .state_free = nmlx_l4_state_free,
    .state_position = nmlx_l4_state_position,
    .state_trim = nmlx_l4_state_trim,
    .forward = nmlx_l4_forward,
    .batch_create = nmlx_l4_batch_create,
    .batch_free = nmlx_l4_batch_free,
    .forward_batch = nmlx_l4_forward_batch,
};
`;
}
