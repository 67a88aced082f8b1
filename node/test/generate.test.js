// Generation through the JS API: results against transformers' greedy ids,
// streaming vs non-streaming, options, stop strings, errors.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, existsSync, writeFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { loadModel, generate, NmlxError } from "../lib/index.js";
import { demoModel, demoCopy, fixture, fixturesDir } from "./helpers.js";

const fixtureNames = readdirSync(fixturesDir).filter((n) => existsSync(join(fixturesDir, n, "expected.json")));

test("greedy ids equal transformers' on every fixture (token-id prompts, no tokenizer)", async (t) => {
  let ran = 0;
  for (const name of fixtureNames) {
    const { dir, expected } = fixture(name);
    let m;
    try {
      m = await loadModel(dir, { threads: 1 });
    } catch (e) {
      if (e.code !== "NMLX_ERR_UNSUPPORTED") throw e;
      t.diagnostic(`${name}: family not supported by the library yet`);
      continue;
    }
    ran++;
    const r = await m.generate(expected.prompt_ids, { temperature: 0, maxTokens: expected.greedy_ids.length, ignoreEos: true });
    assert.deepEqual(r.tokens, expected.greedy_ids, name);
    assert.equal(r.finishReason, "length");
    assert.equal(r.promptTokens, expected.prompt_ids.length);
    assert.equal(r.completionTokens, expected.greedy_ids.length);
    assert.equal(r.text, ""); // no tokenizer: ids only
    await assert.rejects(() => m.generate("text"), { code: "NMLX_ERR_NO_TOKENIZER" });
    await m.unload();
  }
  assert.ok(ran >= 3, "at least three fixture families run");
});

test("streaming gives the same text and tokens as generate() for the same seed", async () => {
  const m = await loadModel(demoModel());
  for (const seed of [1, 2, 99n]) {
    const opts = { maxTokens: 48, temperature: 1.0, topP: 0.9, seed };
    const a = await m.generate("The quick brown fox", opts);
    const pieces = [];
    const s = m.stream("The quick brown fox", opts);
    for await (const p of s) pieces.push(p);
    const b = await s.result;
    assert.ok(a.text.length > 0);
    assert.equal(pieces.join(""), a.text);
    assert.equal(b.text, a.text);
    assert.deepEqual(b.tokens, a.tokens);
  }
  const c = await m.generate("The quick brown fox", { maxTokens: 48, temperature: 1.0, seed: 3 });
  const d = await m.generate("The quick brown fox", { maxTokens: 48, temperature: 1.0, seed: 4 });
  assert.notDeepEqual(c.tokens, d.tokens, "different seeds differ");
  await m.unload();
});

test("result fields and finish reasons", async () => {
  const m = await loadModel(demoModel());
  const r = await m.generate("Hello", { maxTokens: 20, temperature: 0.9, seed: 5, ignoreEos: true });
  assert.equal(r.finishReason, "length");
  assert.equal(r.completionTokens, 20);
  assert.equal(r.promptTokens, m.tokenize("Hello").length);
  assert.ok(r.tokensPerSecond > 0 && r.timeToFirstTokenMs > 0);
  assert.equal(m.detokenize(r.tokens, { skipSpecial: true }), r.text);
  const z = await m.generate("Hello", { maxTokens: 0 });
  assert.equal(z.completionTokens, 0);
  assert.equal(z.text, "");
  // an eos id from generation_config ends with "stop"
  let stopped = null;
  for (let seed = 0; seed < 40 && !stopped; seed++) {
    const x = await m.generate("Hi", { maxTokens: 200, temperature: 1.5, seed });
    if (x.finishReason === "stop") stopped = x;
  }
  assert.ok(stopped, "some seed samples an eos id");
  assert.ok(m.info.eosTokenIds.includes(stopped.tokens.at(-1)));
  await m.unload();
});

test("stop strings end generation and are held back while they may still complete", async () => {
  const m = await loadModel(demoModel());
  const opts = { maxTokens: 64, temperature: 1.0, seed: 11, ignoreEos: true };
  const full = await m.generate("Once upon", opts);
  assert.ok(full.text.length > 12, full.text);
  const stop = full.text.slice(6, 10); // a stop string that occurs in the text
  const first = full.text.indexOf(stop);
  const pieces = [];
  const s = m.stream("Once upon", { ...opts, stop: ["\u0000never", stop] });
  for await (const p of s) {
    pieces.push(p);
    // nothing released may contain or end inside the stop string
    assert.ok(!pieces.join("").includes(stop));
  }
  const r = await s.result;
  assert.equal(r.finishReason, "stop");
  assert.equal(r.text, full.text.slice(0, first));
  assert.equal(pieces.join(""), r.text);
  assert.ok(r.completionTokens < full.completionTokens);
  assert.deepEqual(r.tokens, full.tokens.slice(0, r.completionTokens));
  // a stop string that never completes: all text comes out at the end
  const t = await m.generate("Once upon", { ...opts, stop: [full.text.slice(0, 3) + "\u0001"] });
  assert.equal(t.text, full.text);
  assert.equal(t.finishReason, "length");
  await m.unload();
});

test("errors are Errors with stable codes and the library's message", async () => {
  await assert.rejects(() => loadModel("/nonexistent/model/folder"), (e) => {
    assert.ok(e instanceof Error);
    assert.equal(e.code, "NMLX_ERR_IO");
    assert.match(e.message, /nonexistent/);
    return true;
  });
  const bad = demoCopy();
  const cfg = JSON.parse(readFileSync(join(bad, "config.json"), "utf8"));
  writeFileSync(join(bad, "config.json"), JSON.stringify({ ...cfg, model_type: "no_such_family" }));
  await assert.rejects(() => loadModel(bad), { code: "NMLX_ERR_UNSUPPORTED", message: /no_such_family/ });
  writeFileSync(join(bad, "config.json"), "{ not json");
  await assert.rejects(() => loadModel(bad), { code: "NMLX_ERR_FORMAT" });

  const m = await loadModel(demoModel(), { contextLength: 64 });
  for (const [opts, re] of [[{ temperature: -1 }, /temperature/], [{ maxTokens: 1.5 }, /maxTokens/],
    [{ topP: 0 }, /topP/], [{ seed: -3 }, /seed/], [{ stop: [""] }, /stop/], [{ nope: 1 }, /unknown option 'nope'/],
    [{ signal: {} }, /AbortSignal/]]) {
    await assert.rejects(() => m.generate("x", opts), (e) => e instanceof NmlxError && e.code === "NMLX_ERR_INVALID_ARG" && re.test(e.message));
  }
  await assert.rejects(() => m.generate([1, 2, 9999]), { code: "NMLX_ERR_INVALID_ARG", message: /out of range/ });
  await assert.rejects(() => m.generate(""), { code: "NMLX_ERR_INVALID_ARG", message: /empty/ });
  await assert.rejects(() => m.generate("a".repeat(100)), { code: "NMLX_ERR_CONTEXT_OVERFLOW", message: /context/ });
  // a too-long generation stops at the context with "length"
  const r = await m.generate("abc", { maxTokens: 500, ignoreEos: true, temperature: 0 });
  assert.equal(r.finishReason, "length");
  assert.equal(r.promptTokens + r.completionTokens, 64);
  // the model still works after errors
  assert.equal((await m.generate("abc", { maxTokens: 3, ignoreEos: true })).completionTokens, 3);
  await m.unload();
});

test("tokenize / detokenize", async () => {
  const m = await loadModel(demoModel());
  const ids = m.tokenize("Hello, world<|im_end|>");
  assert.ok(ids.every(Number.isInteger));
  assert.equal(ids.at(-1), m.info.eosTokenIds[1]); // special token text is one id
  assert.equal(m.detokenize(ids), "Hello, world<|im_end|>");
  assert.equal(m.detokenize(ids, { skipSpecial: true }), "Hello, world");
  assert.throws(() => m.detokenize([1e9]), { code: "NMLX_ERR_INVALID_ARG" });
  assert.throws(() => m.tokenize(5), { code: "NMLX_ERR_INVALID_ARG" });
  await m.unload();
  assert.throws(() => m.tokenize("x"), { code: "NMLX_ERR_UNLOADED" });
});

test("generate(modelIdOrAlias, prompt, opts) loads, generates, unloads", async () => {
  const r = await generate(demoModel(), "Hello", { maxTokens: 5, seed: 1, ignoreEos: true, threads: 1 });
  assert.equal(r.completionTokens, 5);
});

test("isSupported, getVersion, RECOMMENDED_MODELS", async () => {
  const { isSupported, getVersion, getLibraryVersion, RECOMMENDED_MODELS, resolveModelId } = await import("../lib/index.js");
  assert.equal(isSupported(), true);
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
  assert.equal(getVersion(), pkg.version);
  assert.match(getLibraryVersion(), /^\d+\.\d+\.\d+/);
  assert.equal(resolveModelId("qwen"), RECOMMENDED_MODELS.qwen);
  assert.equal(resolveModelId("org/x"), "org/x");
  for (const id of Object.values(RECOMMENDED_MODELS)) assert.match(id, /^[\w.-]+\/[\w.-]+$/);
  assert.throws(() => { RECOMMENDED_MODELS.qwen = "x"; });
});

test("loadModel threads and contextLength outside int32 / the library's range are refused, not wrapped", async () => {
  const { dir } = fixture("qwen3");
  // 2 ** 32 + 1 threads reached the addon as 1, contextLength 2 ** 32 as 0 (the default)
  for (const [opts, re] of [[{ threads: 2 ** 32 + 1 }, /threads/], [{ threads: 1025 }, /threads/],
    [{ threads: 1.5 }, /threads/], [{ threads: "2" }, /threads/],
    [{ contextLength: 2 ** 32 }, /contextLength/], [{ contextLength: -1 }, /contextLength/],
    [{ contextLength: Infinity }, /contextLength/]])
    await assert.rejects(() => loadModel(dir, opts), { code: "NMLX_ERR_INVALID_ARG", message: re });
  const m = await loadModel(dir, { threads: 1, contextLength: 64 });
  assert.equal(m.info.contextLength, 64);
  await m.unload();
});

test("loadModel precision: int8 runs (or is refused where the CPU lacks AVX512_VNNI); other names throw", async () => {
  const { dir, expected } = fixture("quant_llama_q4g64_f16");
  await assert.rejects(() => loadModel(dir, { precision: "fp7" }), { code: "NMLX_ERR_INVALID_ARG", message: /precision/ });
  let m;
  try {
    m = await loadModel(dir, { precision: "int8", threads: 1 });
  } catch (e) {
    assert.equal(e.code, "NMLX_ERR_UNSUPPORTED");
    assert.match(e.message, /AVX512_VNNI/);
    return;
  }
  const r = await m.generate(expected.prompt_ids, { maxTokens: 4, temperature: 0, ignoreEos: true });
  assert.equal(r.completionTokens, 4);
  await m.unload();
});

test("loadModel precision f32: exact activations, the fixture's greedy ids", async () => {
  const { dir, expected } = fixture("quant_llama_q4g64_f16");
  const m = await loadModel(dir, { precision: "f32", threads: 1 });
  const r = await m.generate(expected.prompt_ids, { maxTokens: 8, temperature: 0, ignoreEos: true });
  assert.deepEqual(r.tokens, expected.greedy_ids.slice(0, 8));
  await m.unload();
});
