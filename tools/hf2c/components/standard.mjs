// Emits a family that binds the shared standard decoder
// (src/shared/standard_model.h): the family file holds only its feature
// switches and config defaults.
import { cDouble, cString, header } from "./c.mjs";
import { FEATURES } from "../features.mjs";

/** Features this emitter can bind; anything else needs its own emitter. */
export const STANDARD_FEATURES = new Set([
  "qkvBias", "oBias", "mlpBias", "qkNorm", "slidingWindow", "layerTypes", "fusedQkv",
  "fusedGateUp", "gemmaNorms", "sandwichNorms", "embedScale", "noRopeLayers", "localRope",
  "queryPreAttnScalar", "finalLogitSoftcap", "llama4QueryScale", "activationKey",
]);

/** Switches beyond the seed's five: emitted only when a family turns them on,
 * so the seed families' files stay as they were. */
function extraFields(f, d) {
  const lines = [];
  const flag = (key, field) => { if (f[key]) lines.push(`    .${field} = true,`); };
  flag("fusedQkv", "fused_qkv");
  flag("fusedGateUp", "fused_gate_up");
  flag("gemmaNorms", "gemma_norms");
  flag("sandwichNorms", "sandwich_norms");
  flag("embedScale", "embed_scale");
  if (f.noRopeLayers) {
    lines.push(`    .no_rope_layers = ${featureEnum(f.noRopeLayers)},`);
    lines.push(`    .no_rope_layer_interval = ${d.no_rope_layer_interval},`);
  }
  flag("layerTypes", "layer_types");
  if (d.sliding_window) lines.push(`    .sliding_window_default = ${d.sliding_window},`);
  if (d.sliding_window_pattern) lines.push(`    .sliding_window_pattern = ${d.sliding_window_pattern},`);
  if (f.localRope) {
    lines.push("    .local_rope = true,");
    lines.push(`    .rope_local_theta = ${cDouble(d.rope_local_base_freq)},`);
  }
  if (f.queryPreAttnScalar) {
    lines.push("    .query_pre_attn_scalar = true,");
    lines.push(`    .query_pre_attn_scalar_default = ${cDouble(d.query_pre_attn_scalar)},`);
  }
  flag("finalLogitSoftcap", "final_logit_softcap");
  flag("llama4QueryScale", "llama4_query_scale");
  if (f.activationKey !== "hidden_act") lines.push(`    .act_key = ${cString(f.activationKey)},`);
  return lines.length ? "\n" + lines.join("\n") : "";
}

function featureEnum(v) {
  if (v === false) return "NMLX_FEATURE_OFF";
  if (v === true || v === "always") return "NMLX_FEATURE_ON";
  if (typeof v === "string" && v.startsWith("config:")) return "NMLX_FEATURE_FROM_CONFIG";
  throw new Error(`cannot map feature value ${JSON.stringify(v)}`);
}

/** Features left at their defaults do not count: a family needs only an
 * emitter for the features it turns on. */
export function canEmit(def) {
  return Object.entries(def.features).every(([k, v]) => STANDARD_FEATURES.has(k) || v === FEATURES[k].default);
}

/** extra.decls: C text before the def; extra.fields: more nmlx_std_def lines
 * (emitters of richer families bind the same standard decoder). */
export function emitStandardFamily(def, extra = {}) {
  const f = def.features, d = def.defaults, n = def.family;
  const types = def.modelTypes.map(cString).join(", ");
  return `${header(def)}
#include "shared/standard_model.h"

static const char *const ${n}_model_types[] = {${types}, NULL};
${extra.decls ?? ""}
static const nmlx_std_def ${n}_def = {
    .qkv_bias = ${featureEnum(f.qkvBias)},
    .o_bias = ${featureEnum(f.oBias)},
    .mlp_bias = ${featureEnum(f.mlpBias)},
    .qk_norm = ${f.qkNorm},
    .sliding_window = ${featureEnum(f.slidingWindow)},
    .rms_norm_eps = ${cDouble(d.rms_norm_eps)},
    .rope_theta = ${cDouble(d.rope_theta)},
    .tie_word_embeddings = ${d.tie_word_embeddings},
    .max_position_embeddings = ${d.max_position_embeddings},
    .head_dim = ${d.head_dim},
    .hidden_act = ${cString(d.hidden_act)},${extraFields(f, d)}${extra.fields ?? ""}
};

const nmlx_family nmlx_family_${n} = {
    .name = ${cString(n)},
    .model_types = ${n}_model_types,
    .def = &${n}_def,
    .build = nmlx_std_build,
    .destroy = nmlx_std_destroy,
    .state_create = nmlx_std_state_create,
    .state_free = nmlx_std_state_free,
    .state_position = nmlx_std_state_position,
    .state_trim = nmlx_std_state_trim,
    .state_caches = nmlx_std_state_caches,
    .forward = nmlx_std_forward,
    .batch_create = nmlx_std_batch_create,
    .batch_free = nmlx_std_batch_free,
    .forward_batch = nmlx_std_forward_batch,
};
`;
}
