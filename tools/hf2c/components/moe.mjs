// Emits a family whose MLP is a sparse mixture of experts (feature `moe`):
// the standard decoder (src/shared/standard_model.h) with an nmlx_std_moe
// describing routing, expert layout and activation (src/shared/moe.h,
// src/ported/switch_layers.h), plus learned attention sinks if asked.
import { cDouble, cString } from "./c.mjs";
import { STANDARD_FEATURES, emitStandardFamily } from "./standard.mjs";
import { FEATURES } from "../features.mjs";

export const MOE_FEATURES = new Set([
  "moe", "moeNormTopk", "moeRouterBias", "moeExpertBias", "moeClippedSwiglu", "moeSparseLayers",
  "moeRouter", "moeStacked", "moeExpertSize", "attentionSinks",
]);

const ROUTING = { softmax_topk: "NMLX_MOE_SOFTMAX_TOPK", topk_softmax: "NMLX_MOE_TOPK_SOFTMAX",
  topk_sigmoid: "NMLX_MOE_TOPK_SIGMOID" }; // the standard decoder scales expert outputs

export function canEmit(def) {
  const f = def.features;
  const known = Object.entries(f).every(([k, v]) =>
    STANDARD_FEATURES.has(k) || MOE_FEATURES.has(k) || v === FEATURES[k].default);
  return known && (f.moe !== false || f.attentionSinks);
}

export function emitMoeFamily(def) {
  const f = def.features, d = def.defaults, n = def.family;
  const fields = [];
  let decls = "";
  if (f.attentionSinks) fields.push("    .attn_sinks = true,");
  if (f.moe) {
    for (const k of ["moeRouter", "moeStacked", "moeExpertSize"])
      if (!f[k]) throw new Error(`model-def ${n}: feature 'moe' needs '${k}'`);
    const on = (x) => (x ? "true" : "false");
    decls = `
static const nmlx_std_moe ${n}_moe = {
    .routing = ${ROUTING[f.moe]},
    .norm_topk = ${f.moeNormTopk ? "NMLX_FEATURE_FROM_CONFIG" : "NMLX_FEATURE_OFF"},
    .router_bias = ${on(f.moeRouterBias)}, .expert_bias = ${on(f.moeExpertBias)},
    .clipped_swiglu = ${on(f.moeClippedSwiglu)}, .swiglu_limit_default = ${cDouble(d.swiglu_limit)},
    .sparse_layers = ${on(f.moeSparseLayers)},
    .expert_size_key = ${cString(f.moeExpertSize)},
    .router_name = ${cString(f.moeRouter)}, .stacked_name = ${cString(f.moeStacked)},
};
`;
    fields.push(`    .moe = &${n}_moe,`);
  }
  return emitStandardFamily(def, { decls, fields: "\n" + fields.join("\n") });
}
