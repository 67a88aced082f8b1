// Request fuzzing of the server (lib/server.js): seeded random requests, most
// of them malformed (bodies that are not JSON, JSON of the wrong shape, every
// request field given values of every type, odd paths, methods, headers and
// encodings), some valid. Whatever arrives, the server must answer with a
// well-formed response: 2xx with the OpenAI shape, or a 4xx with an
// OpenAI-style {"error": {message, type, param, code}} body (never a 5xx,
// never a dropped connection), and stay healthy for the next request.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { request } from "node:http";
import { createServer } from "../lib/index.js";
import { repoDir } from "./helpers.js";

const MODEL = join(repoDir, "models", "demo");
const ROUNDS = Number(process.env.NMLX_SERVE_FUZZ_ROUNDS ?? 300);
let server;

before(async () => {
  server = await createServer({ model: MODEL, port: 0, maxBatch: 4, maxQueue: 64, contextLength: 256,
    threads: 1, maxBodyBytes: 64 << 10 });
});
after(() => server.close());

// xorshift: the same requests every run (the seed is printed on failure)
let seed = Number(process.env.NMLX_SERVE_FUZZ_SEED ?? 0x1234567) >>> 0 || 1;
const rand = () => {
  seed ^= seed << 13; seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5; seed >>>= 0;
  return seed / 2 ** 32;
};
const pick = (a) => a[Math.floor(rand() * a.length)];

const WEIRD = [null, true, false, 0, -1, 1.5, 1e308, -1e308, 2 ** 53 + 2, NaN, "", "x", "0", "\u0000",
  "\ud800", "ü".repeat(50), [], [1, 2], [null], {}, { a: 1 }, [{ role: "user" }], "9".repeat(400)];
const FIELDS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p",
  "top_k", "min_p", "seed", "stop", "stream", "stream_options", "n", "repetition_penalty", "ignore_eos",
  "frequency_penalty", "presence_penalty", "logprobs", "tools", "user", "echo", "suffix", "logit_bias",
  "response_format"];
const msg = () => [{ role: pick(["user", "system", "assistant", "tool", "bogus", 5]),
  content: pick(["hi", "", 7, null, [{ type: "text", text: "a" }], [{ type: "image_url" }], ["x"]]) }];

function validBody(path) {
  const b = { model: pick(["demo", undefined]), max_tokens: 1 + Math.floor(rand() * 4), temperature: 0 };
  if (path.includes("chat")) b.messages = [{ role: "user", content: "Hello" }];
  else b.prompt = "In the beginning";
  if (rand() < 0.5) b.stream = true;
  if (b.stream && rand() < 0.5) b.stream_options = { include_usage: true };
  return b;
}

function fuzzBody(path) {
  const r = rand();
  if (r < 0.1) return pick(["", "{", "[]", "null", "42", "\"str\"", "{\"messages\":", "\u0000\u0001", "{}{}",
    "{\"a\":1,}", "\ufeff{}", "[" .repeat(2000)]);
  const b = validBody(path);
  if (r < 0.2) return JSON.stringify(b); // valid
  const n = 1 + Math.floor(rand() * 3);
  for (let i = 0; i < n; i++) b[pick(FIELDS)] = rand() < 0.2 ? msg() : pick(WEIRD);
  if (rand() < 0.2) b.messages = pick([msg(), [], "hi", [msg()[0], 3]]);
  return JSON.stringify(b);
}

function send({ method, path, headers, body }) {
  return new Promise((resolve) => {
    const req = request(`${server.url}${path}`, { method, headers }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on("error", (e) => resolve({ error: e }));
    });
    req.on("error", (e) => resolve({ error: e }));
    if (body !== undefined) req.write(body);
    req.end();
  });
}

function checkResponse(r, what) {
  assert.ok(!r.error, `${what}: connection error ${r.error}`);
  assert.ok(r.status < 500, `${what}: status ${r.status}: ${r.body.slice(0, 300)}`);
  const ct = r.headers["content-type"] ?? "";
  if (ct.includes("text/event-stream")) {
    assert.equal(r.status, 200, what);
    const lines = r.body.split("\n").filter((l) => l.startsWith("data: "));
    assert.equal(lines.at(-1), "data: [DONE]", `${what}: stream ends with [DONE]`);
    for (const l of lines.slice(0, -1)) JSON.parse(l.slice(6)); // every event is JSON
    return;
  }
  let j;
  try {
    j = JSON.parse(r.body);
  } catch {
    assert.fail(`${what}: status ${r.status}, body not JSON: ${JSON.stringify(r.body.slice(0, 200))}`);
  }
  if (r.status >= 400) {
    assert.ok(j.error && typeof j.error.message === "string" && j.error.message.length > 0, `${what}: ${r.body}`);
    assert.ok("type" in j.error && "param" in j.error && "code" in j.error, `${what}: ${r.body}`);
  } else {
    assert.ok(j.object || j.status, `${what}: ${r.body.slice(0, 200)}`);
  }
}

test(`fuzzed requests: ${ROUNDS} seeded requests, every answer well-formed and under 500, the server stays up`, async () => {
  const paths = ["/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/demo", "/health",
    "/v1/chat/completions/", "/v1/../health", "/%zz", "/v1/models/%00", "//v1/completions", "/v1/completions?x=1"];
  let ok2xx = 0;
  const inflight = [];
  for (let i = 0; i < ROUNDS; i++) {
    const s0 = seed;
    const path = pick(paths);
    const method = rand() < 0.85 ? (path.includes("completions") ? "POST" : "GET") : pick(["PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "GET", "POST"]);
    const headers = { "content-type": pick(["application/json", "application/json; charset=utf-8", "text/plain", "", "multipart/form-data"]) };
    if (rand() < 0.1) headers.authorization = pick(["Bearer x", "Basic abc", ""]);
    if (rand() < 0.05) headers["content-encoding"] = pick(["gzip", "br", "identity"]);
    const body = method === "GET" || method === "HEAD" ? undefined : fuzzBody(path);
    // an explicit length: Node's client sends DELETE/OPTIONS bodies unframed otherwise
    if (body !== undefined) headers["content-length"] = Buffer.byteLength(body);
    const what = `request ${i} (seed ${s0}): ${method} ${path} ${JSON.stringify(body ?? "").slice(0, 160)}`;
    const p = send({ method, path, headers, body }).then((r) => {
      if (method === "HEAD") {
        assert.ok(!r.error && r.status < 500, what);
        return;
      }
      checkResponse(r, what);
      if (r.status < 300) ok2xx++;
    });
    inflight.push(p);
    if (inflight.length >= 6) await inflight.shift(); // a few at once, as real traffic
  }
  await Promise.all(inflight);
  const h = await send({ method: "GET", path: "/health" });
  assert.equal(h.status, 200);
  assert.equal(JSON.parse(h.body).status, "ok");
  assert.ok(ok2xx > ROUNDS / 10, `only ${ok2xx} requests succeeded: the valid ones should`);
});
