// Soak (issue 13): many rounds of the whole lifecycle under a mixed,
// seeded-random workload on two small models at once: load, generate
// aborted at a random token or after a random delay, streams left early,
// chats of a few turns (some aborted, closed or dropped), unload while a
// generation runs. After a warm-up, what the process holds must come back
// to its level: resident memory (a generous bound: a leaked model or session
// costs far more), open file descriptors, threads, weight mappings, and
// libuv handles and requests. Correctness of each call is checked elsewhere;
// here every call must just end in one of its documented ways. Not timed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { readFileSync, readdirSync } from "node:fs";
import { loadModel } from "../lib/index.js";
import { demoModel, fixture } from "./helpers.js";

setFlagsFromString("--expose_gc");
const gc = runInNewContext("gc");

const WARMUP = Number(process.env.NMLX_SOAK_WARMUP ?? 20);
const ROUNDS = Number(process.env.NMLX_SOAK_ROUNDS ?? 40);

let seed = 0x2545f491;
const rand = (n) => { // xorshift32, deterministic
  seed ^= seed << 13; seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5; seed >>>= 0;
  return seed % n;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function snapshot(dirs) {
  gc();
  const maps = readFileSync("/proc/self/maps", "utf8").split("\n");
  return {
    rssMiB: process.memoryUsage.rss() / 2 ** 20,
    fds: readdirSync("/proc/self/fd").length,
    threads: readdirSync("/proc/self/task").length,
    weightMaps: maps.filter((l) => dirs.some((d) => l.includes(d))).length,
    handles: process.getActiveResourcesInfo().filter((r) => r !== "Timeout").length,
  };
}

const ENDS = new Set(["abort", "length", "stop"]);

// one generation, aborted at a random token (or not at all)
function abortedGenerate(m, prompt) {
  const ac = new AbortController();
  let left = rand(10); // 0: never aborted
  return m.generate(prompt, { maxTokens: 24, ignoreEos: true, temperature: 1, seed: rand(1000),
    signal: ac.signal, onToken: () => { if (--left === 0) ac.abort(); } })
    .then((r) => assert.ok(ENDS.has(r.finishReason), r.finishReason));
}

// a stream read for a few pieces, then left (leaving the loop aborts it)
async function brokenStream(m, prompt) {
  const s = m.stream(prompt, { maxTokens: 24, ignoreEos: true, seed: rand(1000) });
  let n = 0;
  const stopAt = 1 + rand(6);
  for await (const piece of s) {
    assert.equal(typeof piece, "string");
    if (++n >= stopAt) break;
  }
  assert.ok(ENDS.has((await s.result).finishReason));
}

// a chat of a few turns; the last one may be aborted by a timer; closed or dropped
async function chatTurns(m, prompt) {
  const c = m.chat({ system: "soak" });
  const turns = 1 + rand(3);
  for (let t = 0; t < turns; t++) {
    const ac = new AbortController();
    const timer = t === turns - 1 && rand(2) ? setTimeout(() => ac.abort(), rand(3)) : null;
    const r = await c.send(`${prompt} ${t}`, { maxTokens: 8, seed: t, signal: ac.signal });
    clearTimeout(timer);
    assert.ok(ENDS.has(r.finishReason));
  }
  if (rand(2)) c.close(); // else dropped: the finalizer frees it
}

test(`soak: ${ROUNDS} rounds of load, generate, abort, chat and unload on two models keep memory, descriptors, threads and handles flat`, async () => {
  const demo = demoModel();
  const { dir: qdir, expected } = fixture("qwen3"); // no tokenizer: prompts are ids
  const dirs = [demo, qdir];
  const prompts = [(i) => `soak round ${i}`, () => expected.prompt_ids];

  const round = async (i) => {
    const models = await Promise.all(dirs.map((d) => loadModel(d, { threads: 1 + (i % 2) })));
    const jobs = [];
    models.forEach((m, k) => {
      const p = prompts[k](i);
      jobs.push(abortedGenerate(m, p), abortedGenerate(m, p));
      if (k === 0) jobs.push(brokenStream(m, p), chatTurns(m, p)); // qwen3 fixture: no tokenizer
    });
    await Promise.all(jobs);
    if (i % 3 === 0) { // unload while a generation runs: it ends with "abort", queued calls reject
      const m = models[rand(2)];
      const running = m.generate(prompts[models.indexOf(m)](i), { maxTokens: 2000, ignoreEos: true });
      await sleep(rand(3));
      await m.unload();
      assert.equal((await running).finishReason, "abort");
    }
    await Promise.all(models.map((m) => m.unload()));
  };

  for (let i = 0; i < WARMUP; i++) await round(i);
  await sleep(20);
  const before = snapshot(dirs);
  for (let i = 0; i < ROUNDS; i++) {
    await round(WARMUP + i);
    if (process.env.NMLX_SOAK_TRACE && i % 50 === 0) { gc(); const u = process.memoryUsage(); console.log(i, (u.rss / 2 ** 20).toFixed(1), (u.heapUsed / 2 ** 20).toFixed(1), (u.external / 2 ** 20).toFixed(1)); }
  }
  // dropped chats are freed by finalizers: give them a few collections
  let after = snapshot(dirs);
  for (let k = 0; k < 10 && (after.threads > before.threads || after.weightMaps > 0); k++) {
    await sleep(20);
    after = snapshot(dirs);
  }
  const msg = `before ${JSON.stringify(before)}, after ${ROUNDS} rounds ${JSON.stringify(after)}`;
  // each round loads ~0.5 MiB of weights plus KV caches and pools: ROUNDS leaked
  // rounds would add well over 24 MiB
  assert.ok(after.rssMiB - before.rssMiB < 24, `RSS grew: ${msg}`);
  assert.ok(after.fds <= before.fds, `file descriptors grew: ${msg}`);
  assert.ok(after.threads <= before.threads, `threads grew: ${msg}`);
  assert.equal(after.weightMaps, 0, `weights still mapped: ${msg}`);
  assert.ok(after.handles <= before.handles, `libuv handles grew: ${msg}`);
  console.log(`soak: ${msg}`);
});
