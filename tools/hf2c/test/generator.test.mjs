// Unit tests of the generator: model-def validation and emitted code.
import { test } from "node:test";
import assert from "node:assert/strict";
import { resolveModelDef } from "../features.mjs";
import { canEmit as canEmitStandard, emitStandardFamily } from "../components/standard.mjs";
import { cDouble } from "../components/c.mjs";
import { generateAll } from "../generate.mjs";

const base = { family: "toy", modelTypes: ["toy"] };

test("unknown features and bad values are rejected with the family named", () => {
  assert.throws(() => resolveModelDef({ ...base, features: { noSuchFeature: true } }, "toy.mjs"), /toy: unknown feature 'noSuchFeature'/);
  assert.throws(() => resolveModelDef({ ...base, features: { qkNorm: "config:x" } }, "toy.mjs"), /feature 'qkNorm' must be one of/);
  assert.throws(() => resolveModelDef({ ...base, configDefaults: { head_dim: 1.5 } }, "toy.mjs"), /head_dim' must be integer/);
  assert.throws(() => resolveModelDef({ family: "Bad Name", modelTypes: ["x"] }, "x.mjs"), /family/);
  assert.throws(() => resolveModelDef({ family: "x", modelTypes: [] }, "x.mjs"), /modelTypes/);
});

test("defaults are filled in and features map to the C enum", () => {
  const d = resolveModelDef({ ...base, features: { qkvBias: "config:attention_bias", qkNorm: true },
    configDefaults: { rope_theta: 1000000, rms_norm_eps: 1e-5 } }, "toy.mjs");
  assert.equal(d.features.mlpBias, false);
  const c = emitStandardFamily(d);
  assert.match(c, /\.qkv_bias = NMLX_FEATURE_FROM_CONFIG,/);
  assert.match(c, /\.qk_norm = true,/);
  assert.match(c, /\.rope_theta = 1000000\.0,/);
  assert.match(c, /\.rms_norm_eps = 0\.00001,/);
  assert.match(c, /const nmlx_family nmlx_family_toy = \{/);
  assert.match(c, /DO NOT EDIT/);
});

test("C double literals round-trip", () => {
  for (const x of [1e-6, 1e-5, 1e6, 10000, 0.5, 1e-12, 500000.25]) assert.equal(Number(cDouble(x)), x);
  assert.throws(() => cDouble(Infinity));
});

test("every model_type is served by exactly one family; simple families stay small", async () => {
  const { defs, files } = await generateAll();
  const types = defs.flatMap((d) => d.modelTypes);
  assert.equal(new Set(types).size, types.length);
  for (const t of ["llama", "qwen2", "qwen3", "mistral"]) assert.ok(types.includes(t), t);
  // families that bind the standard decoder stay small; complex ones (their
  // own emitters, e.g. gemma3n's layer code) may not
  for (const d of defs.filter((x) => canEmitStandard(x))) {
    const rel = `models/${d.family}.c`;
    assert.ok(files.get(rel).split("\n").length < 60, `${rel} is small`);
  }
});

test("MoE families get the moe emitter: routing, layout names and sinks in C", async () => {
  const { emitMoeFamily, canEmit } = await import("../components/moe.mjs");
  const d = resolveModelDef({ ...base, features: { moe: "topk_softmax", moeRouterBias: true,
    moeClippedSwiglu: true, moeRouter: "router", moeStacked: "experts", moeExpertSize: "intermediate_size",
    attentionSinks: true } }, "toy.mjs");
  assert.ok(canEmit(d));
  const c = emitMoeFamily(d);
  assert.match(c, /\.routing = NMLX_MOE_TOPK_SOFTMAX,/);
  assert.match(c, /\.clipped_swiglu = true, \.swiglu_limit_default = 7\.0,/);
  assert.match(c, /\.router_name = "router", \.stacked_name = "experts",/);
  assert.match(c, /\.attn_sinks = true,/);
  assert.match(c, /\.moe = &toy_moe,/);
  const bad = resolveModelDef({ ...base, features: { moe: "softmax_topk" } }, "toy.mjs");
  assert.throws(() => emitMoeFamily(bad), /toy: feature 'moe' needs 'moeRouter'/);
});

test("chunked-attention families get the llama4 emitter: features and defaults in C", async () => {
  const { emitLlama4Family, canEmit } = await import("../components/llama4.mjs");
  const d = resolveModelDef({ ...base, features: { chunkedAttention: true, ropeInterleaved: true,
    qkL2Norm: "config:use_qk_norm", attnTemperatureTuning: "config:attn_temperature_tuning",
    noRopeLayers: "config:no_rope_layers", ffnModule: "feed_forward", moe: "topk_sigmoid",
    moeSharedExpert: true, moeLayers: "config:moe_layers", moeRouter: "router",
    moeStacked: "experts", moeExpertSize: "intermediate_size" },
    configDefaults: { attention_chunk_size: 16, floor_scale: 4 } }, "toy.mjs");
  assert.ok(canEmit(d));
  assert.ok(!canEmitStandard(d));
  const c = emitLlama4Family(d);
  assert.match(c, /\.rope_interleaved = true,/);
  assert.match(c, /\.qk_l2_norm = NMLX_FEATURE_FROM_CONFIG,/);
  assert.match(c, /\.moe_layers = NMLX_FEATURE_FROM_CONFIG,/);
  assert.match(c, /\.dense_size_key = "intermediate_size_mlp",/);
  assert.match(c, /\.attention_chunk_size = 16,/);
  assert.match(c, /\.floor_scale = 4\.0,/);
  assert.match(c, /\.build = nmlx_l4_build,/);
  // a routing the llama4 blocks do not implement is refused
  const bad = resolveModelDef({ ...base, features: { chunkedAttention: true, moe: "softmax_topk",
    moeRouter: "router", moeStacked: "experts", moeExpertSize: "intermediate_size" } }, "toy.mjs");
  assert.throws(() => emitLlama4Family(bad), /topk_sigmoid/);
});
