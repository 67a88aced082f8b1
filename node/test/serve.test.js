// The OpenAI-compatible server (lib/server.js, `nmlx serve`) driven by the
// official `openai` client: every endpoint, streaming and not, usage, 8
// concurrent streams against the same requests run alone, client abort,
// errors (400 / 401 / 404 / 413 / 429 / context overflow), prefix reuse and
// SIGTERM. Uses the repository's trained demo model (models/demo).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import OpenAI from "openai";
import { readdirSync, existsSync } from "node:fs";
import { createServer, loadModel, Scheduler } from "../lib/index.js";
import { repoDir, pkgDir, fixture, fixturesDir } from "./helpers.js";

const MODEL = join(repoDir, "models", "demo");
const greedy = { temperature: 0, top_p: 1 };
let server, client;

const clientFor = (s, apiKey = "unused") => new OpenAI({ baseURL: `${s.url}/v1`, apiKey, maxRetries: 0, timeout: 60000 });

before(async () => {
  server = await createServer({ model: MODEL, port: 0, maxBatch: 8, maxQueue: 16, contextLength: 512, threads: 1 });
  client = clientFor(server);
});
after(() => server.close());

async function streamText(s, { collect } = {}) {
  let text = "", finish = null, usage = null, role = null;
  for await (const c of s) {
    if (c.usage) usage = c.usage;
    const ch = c.choices[0];
    if (!ch) continue;
    if (ch.delta?.role) role = ch.delta.role;
    text += ch.delta?.content ?? ch.text ?? "";
    if (ch.finish_reason) finish = ch.finish_reason;
    collect?.(c);
  }
  return { text, finish, usage, role };
}

const waitFor = async (cond, ms = 10000) => {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > ms) throw new Error("timed out waiting");
    await new Promise((r) => setTimeout(r, 20));
  }
};
const health = async (s = server) => (await fetch(`${s.url}/health`)).json();

test("GET /v1/models, /v1/models/{id} and /health", async () => {
  const list = await client.models.list();
  assert.deepEqual(list.data.map((m) => m.id), ["demo"]);
  assert.equal(list.data[0].object, "model");
  assert.equal((await client.models.retrieve("demo")).id, "demo");
  await assert.rejects(() => client.models.retrieve("nope"), OpenAI.NotFoundError);
  const h = await health();
  assert.equal(h.status, "ok");
  assert.equal(h.model, "demo");
});

test("chat completions: non-streamed and streamed agree; usage; the model's chat template", async () => {
  const messages = [{ role: "user", content: "Tell me a story." }];
  const r = await client.chat.completions.create({ model: "demo", messages, max_tokens: 16, ...greedy });
  assert.equal(r.object, "chat.completion");
  assert.equal(r.choices[0].message.role, "assistant");
  const text = r.choices[0].message.content;
  assert.ok(text.length > 0);
  assert.ok(["stop", "length"].includes(r.choices[0].finish_reason));
  // the prompt is the model's chat template, tokenized as the library does
  const m = await loadModel(MODEL, { threads: 1 });
  const ids = m.applyChatTemplate(messages, { tokenize: true });
  const alone = await m.generate(ids, { maxTokens: 16, temperature: 0 });
  await m.unload();
  assert.equal(text, alone.text);
  assert.equal(r.usage.prompt_tokens, ids.length);
  assert.equal(r.usage.completion_tokens, alone.completionTokens);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  assert.equal(typeof r.usage.prompt_tokens_details.cached_tokens, "number");

  const s = await client.chat.completions.create({ model: "demo", messages, max_tokens: 16, ...greedy, stream: true,
    stream_options: { include_usage: true } });
  const st = await streamText(s);
  assert.equal(st.text, text);
  assert.equal(st.role, "assistant");
  assert.equal(st.finish, r.choices[0].finish_reason);
  assert.equal(st.usage.completion_tokens, r.usage.completion_tokens);
  assert.equal(st.usage.prompt_tokens, r.usage.prompt_tokens);
  // without include_usage no usage chunk
  const s2 = await client.chat.completions.create({ model: "demo", messages, max_tokens: 4, ...greedy, stream: true });
  assert.equal((await streamText(s2)).usage, null);
});

test("text completions: non-streamed and streamed; max_tokens gives finish_reason length", async () => {
  const req = { model: "demo", prompt: "Once upon a time", max_tokens: 12, ...greedy, ignore_eos: true };
  const r = await client.completions.create(req);
  assert.equal(r.object, "text_completion");
  assert.equal(r.choices[0].finish_reason, "length");
  assert.equal(r.usage.completion_tokens, 12);
  const m = await loadModel(MODEL, { threads: 1 });
  const alone = await m.generate("Once upon a time", { maxTokens: 12, temperature: 0, ignoreEos: true });
  await m.unload();
  assert.equal(r.choices[0].text, alone.text);
  assert.equal(r.usage.prompt_tokens, alone.promptTokens);
  const st = await streamText(await client.completions.create({ ...req, stream: true }));
  assert.equal(st.text, r.choices[0].text);
  assert.equal(st.finish, "length");
});

test("stop strings are trimmed from the output (finish_reason stop); seed makes sampling repeatable", async () => {
  const req = { model: "demo", prompt: "Once upon a time", max_tokens: 24, ...greedy, ignore_eos: true };
  const full = (await client.completions.create(req)).choices[0].text;
  const words = full.trim().split(/\s+/);
  const stop = words[Math.min(3, words.length - 1)];
  const cut = full.slice(0, full.indexOf(stop));
  const r = await client.completions.create({ ...req, stop: [stop, "zzzz-never"] });
  assert.equal(r.choices[0].text, cut);
  assert.equal(r.choices[0].finish_reason, "stop");
  const rs = await client.completions.create({ ...req, stop, stream: true });
  assert.equal((await streamText(rs)).text, cut);

  const sampled = { model: "demo", prompt: "The king", max_tokens: 16, temperature: 1, top_p: 0.9, seed: 42,
    presence_penalty: 0.5, frequency_penalty: 0.5 };
  const a = await client.completions.create(sampled);
  const b = await client.completions.create(sampled);
  assert.equal(a.choices[0].text, b.choices[0].text);
});

test("8 concurrent streams each equal the same request run alone", async () => {
  const prompts = ["Once upon a time", "The king said", "In the beginning", "And the LORD spake",
    "A little girl", "The sea was", "He went up to", "Blessed are"];
  const req = (p) => ({ model: "demo", messages: [{ role: "user", content: p }], max_tokens: 24, ...greedy });
  const alone = [];
  for (const p of prompts) alone.push((await client.chat.completions.create(req(p))).choices[0].message.content);
  let peak = 0;
  const together = await Promise.all(prompts.map(async (p) => {
    const s = await client.chat.completions.create({ ...req(p), stream: true });
    return (await streamText(s, { collect: () => { peak = Math.max(peak, server.scheduler.stats.active); } })).text;
  }));
  assert.deepEqual(together, alone);
  assert.ok(peak >= 2, `streams ran together (peak ${peak} active)`);
});

test("a client that disconnects cancels its sequence; the server keeps serving", async () => {
  // its own server with the model's 4096-token context: a request runs for a while
  const srv = await createServer({ model: MODEL, port: 0, threads: 1 });
  const cl = clientFor(srv);
  try {
    await disconnects(srv, cl);
  } finally {
    await srv.close();
  }
});

async function disconnects(server, client) {
  const before = await health(server);
  for (const stream of [true, false]) {
    const ac = new AbortController();
    const req = { model: "demo", prompt: "Once upon a time", max_tokens: 100000, ignore_eos: true, stream, ...greedy };
    const p = client.completions.create(req, { signal: ac.signal });
    if (stream) {
      let n = 0;
      try {
        for await (const c of await p) {
          void c;
          if (++n === 3) ac.abort(); // leaves the loop (openai's stream ends on abort)
        }
      } catch (e) {
        assert.ok(e.name === "APIUserAbortError" || e.name === "AbortError", e.message);
      }
      assert.ok(n >= 3);
    } else {
      await waitFor(async () => (await health(server)).active === 1);
      ac.abort();
      await assert.rejects(() => p, (e) => e instanceof OpenAI.APIUserAbortError);
    }
  }
  await waitFor(async () => (await health(server)).active === 0);
  const h = await health(server);
  assert.equal(h.cancelled, before.cancelled + 2, "both sequences were cancelled, not run to the end");
  const r = await client.completions.create({ model: "demo", prompt: "Once upon a time", max_tokens: 4, ...greedy });
  assert.ok(r.choices[0].text.length > 0);
}

test("bad requests: malformed JSON, wrong types, unknown model, oversized body, context overflow", async () => {
  const post = (path, body, headers = {}) => fetch(`${server.url}${path}`, { method: "POST",
    headers: { "Content-Type": "application/json", ...headers }, body });
  let res = await post("/v1/chat/completions", "{not json");
  assert.equal(res.status, 400);
  let e = (await res.json()).error;
  assert.equal(e.type, "invalid_request_error");
  assert.equal(e.code, "invalid_json");
  assert.ok("param" in e && "message" in e);

  const msg = [{ role: "user", content: "hi" }];
  const bads = [
    { model: "demo", messages: msg, max_tokens: "ten" },
    { model: "demo", messages: msg, temperature: "hot" },
    { model: "demo", messages: "hi" },
    { model: "demo", messages: [{ role: "user", content: 5 }] },
    { model: "demo", messages: msg, stop: 3 },
    { model: "demo", messages: msg, stream: "yes" },
    { model: "demo", messages: msg, n: 2 },
    { model: "demo", messages: msg, top_p: 2 },
  ];
  for (const b of bads)
    await assert.rejects(() => client.chat.completions.create(b), (err) => err instanceof OpenAI.BadRequestError &&
      err.status === 400 && err.error?.type === "invalid_request_error", JSON.stringify(b));
  await assert.rejects(() => client.completions.create({ model: "demo", prompt: 7 }), OpenAI.BadRequestError);
  await assert.rejects(() => client.chat.completions.create({ model: "gpt-4o", messages: msg }),
    (err) => err instanceof OpenAI.NotFoundError && err.code === "model_not_found");
  // context overflow: a prompt longer than the 512-token context
  const long = "and the king said unto him ".repeat(200);
  await assert.rejects(() => client.completions.create({ model: "demo", prompt: long, max_tokens: 4 }),
    (err) => err.status === 400 && err.code === "context_length_exceeded");
  res = await fetch(`${server.url}/v1/nothing`);
  assert.equal(res.status, 404);
  res = await fetch(`${server.url}/v1/chat/completions`);
  assert.equal(res.status, 405);

  const small = await createServer({ model: MODEL, port: 0, maxBodyBytes: 2048, threads: 1 });
  try {
    await assert.rejects(() => clientFor(small).chat.completions.create({ model: "demo",
      messages: [{ role: "user", content: "x".repeat(5000) }] }), (err) => err.status === 413);
    res = await fetch(`${small.url}/v1/completions`, { method: "POST", body: "y".repeat(100000) });
    assert.equal(res.status, 413);
    e = (await res.json()).error;
    assert.equal(e.code, "request_too_large");
  } finally {
    await small.close();
  }
});

test("queue full: 429 once max-batch run and max-queue wait", async () => {
  const s = await createServer({ model: MODEL, port: 0, maxBatch: 1, maxQueue: 1, threads: 1 });
  const c = clientFor(s);
  // runs to the context length (4096 tokens): long enough to be still running below
  const long = { model: "demo", prompt: "Once upon a time", max_tokens: 100000, ignore_eos: true, ...greedy };
  try {
    const ac = new AbortController();
    const running = c.completions.create(long, { signal: ac.signal }).catch(() => {});
    await waitFor(async () => (await health(s)).active === 1);
    const waiting = c.completions.create(long, { signal: ac.signal }).catch(() => {});
    await waitFor(async () => (await health(s)).waiting === 1);
    await assert.rejects(() => c.completions.create({ ...long, max_tokens: 2 }),
      (err) => err instanceof OpenAI.RateLimitError && err.status === 429 && err.code === "queue_full");
    ac.abort();
    await Promise.all([running, waiting]);
    await waitFor(async () => { const h = await health(s); return h.active === 0 && h.waiting === 0; });
  } finally {
    await s.close();
  }
});

test("--api-key: Authorization: Bearer required (401 otherwise); /health stays open", async () => {
  const s = await createServer({ model: MODEL, port: 0, apiKey: "sekret", threads: 1 });
  try {
    await assert.rejects(() => clientFor(s, "wrong").models.list(), (e) => e instanceof OpenAI.AuthenticationError);
    const res = await fetch(`${s.url}/v1/models`);
    assert.equal(res.status, 401);
    assert.equal((await res.json()).error.code, "invalid_api_key");
    const ok = await clientFor(s, "sekret").chat.completions.create({ model: "demo",
      messages: [{ role: "user", content: "hi" }], max_tokens: 2 });
    assert.equal(ok.choices.length, 1);
    assert.equal((await fetch(`${s.url}/health`)).status, 200);
  } finally {
    await s.close();
  }
});

test("a growing chat reuses the cached prefix (cached_tokens > 0) with the output of a cold run", async () => {
  const turn1 = [{ role: "system", content: "You are a storyteller." }, { role: "user", content: "Tell me of the king." }];
  const req = (messages) => ({ model: "demo", messages, max_tokens: 16, ...greedy });
  const r1 = await client.chat.completions.create(req(turn1));
  const turn2 = [...turn1, { role: "assistant", content: r1.choices[0].message.content },
    { role: "user", content: "And then?" }];
  const r2 = await client.chat.completions.create(req(turn2));
  assert.ok(r2.usage.prompt_tokens_details.cached_tokens > 0, "the second turn reused the cache");
  assert.ok(r2.usage.prompt_tokens_details.cached_tokens < r2.usage.prompt_tokens);
  const cold = await createServer({ model: MODEL, port: 0, cacheSize: 0, threads: 1 });
  try {
    const c2 = await clientFor(cold).chat.completions.create(req(turn2));
    assert.equal(c2.usage.prompt_tokens_details.cached_tokens, 0);
    assert.equal(r2.choices[0].message.content, c2.choices[0].message.content);
    assert.equal(r2.usage.prompt_tokens, c2.usage.prompt_tokens);
  } finally {
    await cold.close();
  }
});

test("nmlx serve: SIGTERM stops accepting, ends running streams within the grace period and exits 0", async () => {
  const child = spawn(process.execPath, [join(pkgDir, "bin", "nmlx.js"), "serve", "-m", MODEL, "--port", "0",
    "--grace-ms", "300", "-t", "1"], { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  const url = await new Promise((resolve, reject) => {
    child.stderr.on("data", (d) => {
      err += d;
      const m = /serving demo on (http:\/\/127\.0\.0\.1:\d+)/.exec(err);
      if (m) resolve(m[1]);
    });
    child.on("exit", (code) => reject(new Error(`exited ${code}: ${err}`)));
  });
  const exited = new Promise((r) => child.on("exit", (code, sig) => r({ code, sig })));
  const c = new OpenAI({ baseURL: `${url}/v1`, apiKey: "x", maxRetries: 0 });
  const s = await c.completions.create({ model: "demo", prompt: "Once upon a time", max_tokens: 100000,
    ignore_eos: true, stream: true, ...greedy });
  let pieces = 0;
  const consumed = (async () => {
    try {
      for await (const ch of s) {
        void ch;
        if (++pieces === 2) child.kill("SIGTERM");
      }
      return "ended";
    } catch (e) {
      return `error: ${e.message}`;
    }
  })();
  const outcome = await consumed;
  assert.ok(pieces >= 2, outcome);
  assert.deepEqual(await exited, { code: 0, sig: null });
  assert.match(err, /SIGTERM/);
  await assert.rejects(() => fetch(`${url}/health`)); // nothing listens any more
});

test("createServer: a port in use rejects (EADDRINUSE) and frees what it loaded; bad options throw", async () => {
  await assert.rejects(() => createServer({ model: MODEL, port: server.port, threads: 1 }), { code: "EADDRINUSE" });
  await assert.rejects(() => createServer({ model: MODEL, port: 0, maxBatch: 0 }), { code: "NMLX_ERR_INVALID_ARG" });
  await assert.rejects(() => createServer({ model: MODEL, bogus: 1 }), { code: "NMLX_ERR_INVALID_ARG" });
  await assert.rejects(() => createServer({ model: MODEL, port: 0, precision: "fp8" }),
    { code: "NMLX_ERR_INVALID_ARG", message: /precision must be .*fp8/ });
  const f32 = await createServer({ model: MODEL, port: 0, precision: "f32", threads: 1 });
  await f32.close();
});

test("Scheduler: 8 sequences at once give each one's greedy ids alone, on every fixture (token ids, no tokenizer)", async (t) => {
  const names = readdirSync(fixturesDir).filter((n) => existsSync(join(fixturesDir, n, "expected.json")));
  let ran = 0;
  for (const name of names) {
    const { dir, expected } = fixture(name);
    let m;
    try {
      m = await loadModel(dir, { threads: 1 });
    } catch (e) {
      if (e.code !== "NMLX_ERR_UNSUPPORTED") throw e;
      continue;
    }
    ran++;
    const n = expected.greedy_ids.length;
    const prompts = Array.from({ length: 8 }, (_, i) => expected.prompt_ids.slice(0, Math.max(1, expected.prompt_ids.length - i)));
    const opts = { temperature: 0, maxTokens: n, ignoreEos: true };
    const alone = [];
    for (const p of prompts) alone.push((await m.generate(p, opts)).tokens);
    assert.deepEqual(alone[0], expected.greedy_ids, name);
    // default prefill chunk (256 > these prompts): each prompt in one forward, as generate() does
    // (longrope models pick their rope table per forward, so chunking may change their logits)
    const s = new Scheduler(m, { maxBatch: 8 });
    const together = await Promise.all(prompts.map((p) => s.submit(p, opts)));
    assert.deepEqual(together.map((r) => r.tokens), alone, name);
    assert.ok(together.every((r) => r.finishReason === "length" && r.completionTokens === n), name);
    await s.close();
    await m.unload();
  }
  t.diagnostic(`${ran} fixture families`);
  assert.ok(ran >= 3);
});

test("Scheduler: concurrent sequences decode in batched steps (the demo model, 8 x 48 tokens)", async () => {
  // On the tiny fixtures a whole sequence can finish before the next submission reaches the
  // native thread, so whether they overlap is timing; 48 tokens of the demo model take long
  // enough that the eight overlap. The bitwise equality of batched and lone decoding is
  // tests/test_batch.c's and the test above's.
  const m = await loadModel(MODEL, { threads: 1 });
  const s = new Scheduler(m, { maxBatch: 8 });
  const prompts = ["In the beginning", "And God said", "hacker", "The LORD", "Unix", "And it came to pass",
    "kludge", "Then"];
  const rs = await Promise.all(prompts.map((p) => s.submit(m.tokenize(p), { maxTokens: 48, temperature: 0, ignoreEos: true })));
  assert.ok(rs.every((r) => r.completionTokens === 48));
  const { batchedSteps, batchedTokens, rounds, batchSeconds, forwardSeconds, sampleSeconds, idleSeconds } = s.stats;
  assert.ok(batchedSteps > 0 && batchedTokens >= 48, `${batchedSteps} batched steps, ${batchedTokens} tokens`);
  // the thread's time split: every round holds at most one batched step; each part took time
  assert.ok(rounds >= batchedSteps + 1, `${rounds} rounds, ${batchedSteps} batched steps`);
  for (const [k, v] of Object.entries({ batchSeconds, forwardSeconds, sampleSeconds, idleSeconds }))
    assert.ok(Number.isFinite(v) && v >= 0, `${k} ${v}`);
  assert.ok(batchSeconds > 0 && forwardSeconds > 0 && sampleSeconds > 0, JSON.stringify(s.stats));
  await s.close();
  await m.unload();
});

test("Scheduler: chunked prefill between running sequences gives each sequence's output alone", async () => {
  const { dir, expected } = fixture("qwen3");
  const m = await loadModel(dir, { threads: 1 });
  const opts = { temperature: 0, maxTokens: expected.greedy_ids.length, ignoreEos: true };
  const alone = (await m.generate(expected.prompt_ids, opts)).tokens;
  const s = new Scheduler(m, { maxBatch: 4, prefillChunk: 3 });
  const rs = await Promise.all([0, 1, 2, 3].map(() => s.submit(expected.prompt_ids, opts)));
  for (const r of rs) assert.deepEqual(r.tokens, alone);
  await s.close();
  await m.unload();
});

// The reverse-proxy config of the README (docs/serve-nginx.conf), run as written but for its
// addresses and paths, in front of two servers. Skipped where nginx is not installed.
const nginxBin = ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"].find((p) => existsSync(p));
test("docs/serve-nginx.conf: nginx spreads requests over two servers, streams pass through, a full one is skipped",
  { skip: nginxBin ? false : "nginx is not installed" }, async () => {
    const { readFileSync, writeFileSync, mkdtempSync, rmSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const net = await import("node:net");
    const a = await createServer({ model: MODEL, port: 0, threads: 1, maxBatch: 1, maxQueue: 0 });
    const b = await createServer({ model: MODEL, port: 0, threads: 1 });
    const freePort = await new Promise((r) => { const s = net.createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => r(p)); }); });
    const dir = mkdtempSync(join(tmpdir(), "nmlx-nginx-"));
    let conf = readFileSync(join(repoDir, "docs", "serve-nginx.conf"), "utf8");
    conf = conf.replace("server 10.0.0.1:8080", `server 127.0.0.1:${a.port}`)
      .replace("server 10.0.0.2:8080", `server 127.0.0.1:${b.port}`)
      .replace("listen 8000;", `listen 127.0.0.1:${freePort};`)
      .replace(/^pid .*$/m, `pid ${dir}/nginx.pid;`)
      .replace(/^error_log .*$/m, `error_log ${dir}/error.log;`);
    assert.match(conf, new RegExp(`127.0.0.1:${a.port}`));
    writeFileSync(join(dir, "nginx.conf"), conf);
    const proc = spawn(nginxBin, ["-p", dir, "-c", join(dir, "nginx.conf"), "-e", join(dir, "error.log"), "-g", "daemon off;"],
      { stdio: "ignore" });
    try {
      const c = new OpenAI({ baseURL: `http://127.0.0.1:${freePort}/v1`, apiKey: "x", maxRetries: 0 });
      await waitFor(async () => { try { await c.models.list(); return true; } catch { return false; } });
      const req = { model: "demo", messages: [{ role: "user", content: "Tell me a story." }], max_tokens: 24, ignore_eos: true, ...greedy };
      const direct = (await clientFor(b).chat.completions.create(req)).choices[0].message.content;
      assert.equal((await c.chat.completions.create(req)).choices[0].message.content, direct);
      let chunks = 0;
      const st = await streamText(await c.chat.completions.create({ ...req, stream: true }), { collect: () => chunks++ });
      assert.equal(st.text, direct);
      assert.ok(chunks > 3, "the stream arrived in pieces");
      // four at once: a (max batch 1, no queue) answers 429 beyond one; nginx passes those to b
      const before = [(await health(a)).completed, (await health(b)).completed];
      const texts = await Promise.all([0, 1, 2, 3].map(() => c.chat.completions.create(req)));
      for (const t of texts) assert.equal(t.choices[0].message.content, direct);
      const done = [(await health(a)).completed - before[0], (await health(b)).completed - before[1]];
      assert.equal(done[0] + done[1], 4);
      assert.ok(done[1] >= 1, `b served some (${done})`);
    } finally {
      proc.kill("SIGTERM");
      await new Promise((r) => proc.exitCode !== null ? r() : proc.on("exit", r));
      await a.close();
      await b.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
