// Threads, abort, unload, finalizers, concurrency, memory.
import { test } from "node:test";
import assert from "node:assert/strict";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { readFileSync, readdirSync } from "node:fs";
import { loadModel } from "../lib/index.js";
import { demoModel, fixture } from "./helpers.js";

setFlagsFromString("--expose_gc");
const gc = runInNewContext("gc");
const LONG = { maxTokens: 100000, ignoreEos: true, temperature: 0.9, seed: 1 }; // ends at the context (2048)

test("generation never blocks the event loop: a timer fires mid-generation", async () => {
  const m = await loadModel(demoModel(), { threads: 1 });
  const ac = new AbortController();
  let ticks = 0;
  const interval = setInterval(() => ticks++, 0);
  const p = m.generate("Tick tock", { ...LONG, signal: ac.signal });
  // generate() returned at once: prefill and decode run on a native thread
  setTimeout(() => ac.abort(), 0);
  const r = await p;
  clearInterval(interval);
  // Had the loop been blocked, the timer could only fire after the whole
  // 2048-token context was generated, and the finish would be "length".
  assert.equal(r.finishReason, "abort");
  assert.ok(r.completionTokens < 2048 - r.promptTokens);
  assert.ok(ticks >= 1);

  // the same through a stream: pieces arrive while timers run
  let during = 0, pieces = 0;
  const iv = setInterval(() => { if (pieces > 0) during++; }, 0);
  const s = m.stream("Tick tock", { ...LONG, maxTokens: 2000 });
  for await (const piece of s) {
    pieces++;
    if (during >= 3) break; // leaving the loop aborts
  }
  clearInterval(iv);
  assert.equal((await s.result).finishReason, during >= 3 ? "abort" : "length");
  await m.unload();
});

test("AbortSignal stops within a token; aborted-before-start and queued calls return 'abort'", async () => {
  const m = await loadModel(demoModel(), { threads: 1 });
  const ac = new AbortController();
  let piecesAfterAbort = 0, aborted = false;
  const r = await m.generate("Abort me", {
    ...LONG, signal: ac.signal,
    onToken: () => { if (aborted) piecesAfterAbort++; else { aborted = true; ac.abort(); } },
  });
  assert.equal(r.finishReason, "abort");
  assert.ok(r.completionTokens < 2000);
  const pre = new AbortController();
  pre.abort();
  const r2 = await m.generate("x", { ...LONG, signal: pre.signal });
  assert.equal(r2.finishReason, "abort");
  assert.equal(r2.completionTokens, 0);
  // a call queued behind another, aborted while waiting
  const ac3 = new AbortController();
  const first = m.generate("first", { ...LONG, maxTokens: 300 });
  const queued = m.generate("second", { ...LONG, signal: ac3.signal });
  ac3.abort();
  assert.equal((await first).finishReason, "length");
  assert.equal((await queued).finishReason, "abort");
  // the session is sound afterwards: same seed, same tokens as a fresh model
  const a = await m.generate("again", { maxTokens: 20, seed: 5, temperature: 1 });
  const m2 = await loadModel(demoModel(), { threads: 1 });
  const b = await m2.generate("again", { maxTokens: 20, seed: 5, temperature: 1 });
  assert.deepEqual(a.tokens, b.tokens);
  await Promise.all([m.unload(), m2.unload()]);
});

test("unload() during generation ends it cleanly; queued calls reject; double unload is safe", async () => {
  const m = await loadModel(demoModel(), { threads: 1 });
  let unloading = null;
  const running = m.generate("Long one", { ...LONG, onToken: () => { unloading ??= m.unload(); } });
  const queued = m.generate("queued", { maxTokens: 5 });
  const chat = m.chat();
  const chatTurn = chat.send("hi", { maxTokens: 5 });
  const r = await running;
  assert.equal(r.finishReason, "abort");
  await assert.rejects(queued, { code: "NMLX_ERR_UNLOADED" });
  await assert.rejects(chatTurn, { code: "NMLX_ERR_UNLOADED" });
  await unloading;
  await m.unload();
  assert.equal(m.unload(), m.unload());
  assert.equal(m.loaded, false);
  await assert.rejects(() => m.generate("x"), { code: "NMLX_ERR_UNLOADED" });
  await assert.rejects(() => chat.send("x"), { code: "NMLX_ERR_UNLOADED" });
  assert.throws(() => m.chat(), { code: "NMLX_ERR_UNLOADED" });
  // stream after unload: the iterator throws the error
  await assert.rejects(async () => { for await (const _ of m.stream("x")) void _; }, { code: "NMLX_ERR_UNLOADED" });
});

test("calls on one model queue and never corrupt each other; two models run concurrently", async () => {
  const prompts = ["alpha", "bravo charlie", "delta", "echo foxtrot golf", "hotel"];
  const opts = (i) => ({ maxTokens: 40, temperature: 1, seed: 100 + i, ignoreEos: true });
  const ref = await loadModel(demoModel(), { threads: 1 });
  const expected = [];
  for (let i = 0; i < prompts.length; i++) expected.push((await ref.generate(prompts[i], opts(i))).tokens);
  await ref.unload();

  const a = await loadModel(demoModel(), { threads: 1 });
  const b = await loadModel(demoModel(), { threads: 1 });
  const { dir, expected: fx } = fixture("qwen3");
  const q = await loadModel(dir, { threads: 1 });
  const jobs = [];
  for (let i = 0; i < prompts.length; i++) {
    jobs.push(a.generate(prompts[i], opts(i)).then((r) => assert.deepEqual(r.tokens, expected[i])));
    jobs.push(b.generate(prompts[i], opts(i)).then((r) => assert.deepEqual(r.tokens, expected[i])));
    const s = b.stream(prompts[i], opts(i));
    jobs.push((async () => { let t = ""; for await (const p of s) t += p; assert.equal(t, (await s.result).text);
      assert.deepEqual((await s.result).tokens, expected[i]); })());
    jobs.push(q.generate(fx.prompt_ids, { temperature: 0, maxTokens: 16, ignoreEos: true })
      .then((r) => assert.deepEqual(r.tokens, fx.greedy_ids)));
  }
  await Promise.all(jobs);
  await Promise.all([a.unload(), b.unload(), q.unload()]);
});

test("two chats on one model and chats on two models interleave correctly", async () => {
  const run = async (model, turns, seed) => {
    const c = model.chat({ system: "be brief" });
    const out = [];
    for (const t of turns) out.push((await c.send(t, { maxTokens: 12, seed, temperature: 1 })).tokens);
    return out;
  };
  const turns = ["hi", "how are you", "bye"];
  const m0 = await loadModel(demoModel(), { threads: 1 });
  const want1 = await run(m0, turns, 1), want2 = await run(m0, turns, 2);
  await m0.unload();
  const m = await loadModel(demoModel(), { threads: 1 });
  const m2 = await loadModel(demoModel(), { threads: 1 });
  const [g1, g2, g3] = await Promise.all([run(m, turns, 1), run(m, turns, 2), run(m2, turns, 1)]);
  assert.deepEqual(g1, want1);
  assert.deepEqual(g2, want2);
  assert.deepEqual(g3, want1);
  await Promise.all([m.unload(), m2.unload()]);
});

function rssMiB() {
  gc();
  return process.memoryUsage.rss() / 2 ** 20;
}

test("200 load/unload cycles keep RSS flat", async () => {
  const dir = demoModel();
  const cycle = async () => {
    const m = await loadModel(dir, { threads: 1 });
    await m.generate("hi", { maxTokens: 2 });
    await m.chat().send("yo", { maxTokens: 2 });
    await m.unload();
  };
  for (let i = 0; i < 20; i++) await cycle();
  const base = rssMiB();
  for (let i = 0; i < 200; i++) await cycle();
  const after = rssMiB();
  // a leaked model would keep > 1 MiB (weights, KV cache, buffers): 200 leaks >> 16 MiB
  assert.ok(after - base < 16, `RSS grew ${(after - base).toFixed(1)} MiB over 200 loads (${base.toFixed(1)} -> ${after.toFixed(1)})`);
});

// What a live model holds that the OS can see: its weights' mmap and its
// worker-pool threads. Both must be gone once dropped models are collected.
function weightMaps(dir) {
  return readFileSync("/proc/self/maps", "utf8").split("\n").filter((l) => l.includes(dir)).length;
}
function threadCount() {
  return readdirSync("/proc/self/task").length;
}

test("models and chats dropped without unload() are freed by finalizers", async () => {
  const dir = demoModel();
  const threads0 = threadCount();
  await (async () => { // in its own frame, so that no local outlives it
    const models = [];
    for (let i = 0; i < 20; i++) {
      const m = await loadModel(dir, { threads: 2 });
      await m.generate("hi", { maxTokens: 3 });
      const c = m.chat();
      await c.send("yo", { maxTokens: 3 });
      models.push(i % 2 ? m : c); // keep only a chat of some: the chat keeps its session alive
    }
    assert.ok(weightMaps(dir) >= 20, "weights are mapped while models live");
    assert.ok(threadCount() >= threads0 + 20, "each model has a pool thread");
  })();
  for (let i = 0; i < 10 && (weightMaps(dir) > 0 || threadCount() > threads0); i++) {
    gc();
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal(weightMaps(dir), 0, "no weights stay mapped");
  assert.equal(threadCount(), threads0, "no pool threads stay alive");
});
