// The gemma3n emitter: routing by features and the layer code it composes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { resolveModelDef } from "../features.mjs";
import { canEmit, emitGemma3nFamily } from "../components/gemma3n.mjs";
import { canEmit as canEmitStandard } from "../components/standard.mjs";
import gemma3n from "../model-defs/gemma3n.mjs";

const resolve = (features) =>
  resolveModelDef({ ...gemma3n, family: "toy", modelTypes: ["toy"], features }, "toy.mjs");

test("altup routes to the gemma3n emitter, not the standard one", () => {
  const d = resolve(gemma3n.features);
  assert.ok(canEmit(d));
  assert.ok(!canEmitStandard(d));
  const plain = resolve({ ...gemma3n.features, altup: false });
  assert.ok(!canEmit(plain));
  assert.ok(!canEmit(resolve({ ...gemma3n.features, fusedQkv: true })), "unknown feature refused");
});

test("the layer body follows the features", () => {
  const full = emitGemma3nFamily(resolve(gemma3n.features));
  assert.match(full, /static void toy_layer\(/);
  assert.match(full, /nmlx_altup_predict\(/);
  assert.match(full, /nmlx_altup_correct\(/);
  assert.match(full, /nmlx_laurel_forward\(/);
  assert.match(full, /nmlx_g3n_per_layer_input\(/);
  assert.match(full, /\.layer_forward = toy_layer,/);
  assert.match(full, /\.num_kv_shared_layers = 15,/);
  const bare = emitGemma3nFamily(resolve({ ...gemma3n.features, laurel: false, perLayerInputs: false }));
  assert.doesNotMatch(bare, /nmlx_laurel_forward|nmlx_g3n_per_layer_input|sqrt\(2\)/);
  assert.match(bare, /\.laurel = false,/);
  assert.match(bare, /\.per_layer_inputs = false,/);
  assert.throws(() => emitGemma3nFamily(resolve({ ...gemma3n.features, qkNorm: false })), /needs feature 'qkNorm'/);
});
