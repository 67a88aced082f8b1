// Server throughput: aggregate completion tokens/s of N concurrent streamed
// requests, N = 1, 2, 4, 8, 16 by default, the same server and clients
// throughout. Each request streams a text completion of --tokens tokens
// (ignore_eos, greedy) from its own short prompt; the figure is all
// completion tokens over the wall time from the first request to the last
// one's end, prefill included. Rounds alternate over the stream counts;
// medians of --rounds.
//
// The server is `nmlx serve` started in this process (createServer on
// MODEL_DIR), or with --url any OpenAI-compatible server already running
// (another `nmlx serve`, llama.cpp's llama-server), so the same clients
// drive both engines. --json FILE appends one JSON line per stream count.
// Where the server is nmlx's (its /health has the scheduler's time split),
// a second table says where the scheduler thread's time went at each count:
// per round, ms in the batched step, in the sequences' own forwards (prompt
// chunks, lone decode steps), in sampling and delivery, and idle.
//
//   node bench/serve_throughput.mjs MODEL_DIR | --url http://HOST:PORT
//        [--streams 1,2,4,8,16] [--tokens 64] [--rounds 3] [--threads 0]
//        [--device cpu|cuda] [--label NAME] [--json FILE]
import { appendFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { createServer } from "../node/lib/index.js";

const USAGE = "usage: node bench/serve_throughput.mjs MODEL_DIR | --url URL [--streams 1,2,4,8,16] [--tokens 64] " +
  "[--rounds 3] [--threads 0] [--device cpu|cuda] [--label NAME] [--json FILE]";
const { values: v, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    streams: { type: "string", default: "1,2,4,8,16" },
    tokens: { type: "string", default: "64" },
    rounds: { type: "string", default: "3" },
    threads: { type: "string", default: "0" },
    device: { type: "string" },
    url: { type: "string" },
    label: { type: "string" },
    json: { type: "string" },
  },
});
if ((positionals.length !== 1) === !v.url) {
  console.error(USAGE);
  process.exit(2);
}
const counts = v.streams.split(",").map(Number);
const tokens = Number(v.tokens), rounds = Number(v.rounds);
if (counts.some((n) => !(n >= 1)) || !(tokens >= 1) || !(rounds >= 1)) {
  console.error(USAGE);
  process.exit(2);
}
const maxBatch = Math.max(...counts);
const server = v.url ? null : await createServer({
  model: positionals[0], port: 0, maxBatch, maxQueue: 0, threads: Number(v.threads), cacheSize: 0,
  ...(v.device ? { device: v.device } : {}),
});
const base = (v.url ?? server.url).replace(/\/$/, "");
const label = v.label ?? (v.url ? base : `nmlx ${positionals[0]}`);

const TOPICS = ["the sea", "a city at night", "old machines", "rivers", "winter", "a library", "trains", "bees",
  "mountains", "the moon", "a market", "clocks", "gardens", "storms", "bridges", "lanterns"];

// One streamed completion; resolves with its completion token count and
// the ms from t0 (the round's start) to its first streamed bytes.
async function stream(i, t0) {
  const res = await fetch(`${base}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      prompt: `Write about ${TOPICS[i % TOPICS.length]}.`, max_tokens: tokens, temperature: 0,
      ignore_eos: true, stream: true, stream_options: { include_usage: true },
    }),
  });
  if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  let text = "", used = 0, pieces = 0, first = -1;
  for await (const chunk of res.body) {
    const s = Buffer.from(chunk).toString("utf8");
    if (first < 0 && s.includes('"choices"')) first = performance.now() - t0;
    text += s;
  }
  for (const line of text.split("\n")) {
    if (!line.startsWith("data: {")) continue;
    const ev = JSON.parse(line.slice(6));
    if (ev.usage) used = ev.usage.completion_tokens;
    else if (ev.choices?.[0]?.text) pieces++;
  }
  // a server that sends no usage chunk: one streamed piece per token
  if (!used) used = pieces;
  if (used !== tokens) throw new Error(`a stream returned ${used} tokens, not ${tokens}`);
  return { used, first };
}

// nmlx's scheduler counters from /health (null for other servers)
const SCHED = ["rounds", "batchedSteps", "batchedTokens", "batchSeconds", "forwardSeconds", "sampleSeconds", "idleSeconds"];
async function schedStats() {
  try {
    const r = await fetch(`${base}/health`);
    const s = r.ok ? await r.json() : null;
    return s && SCHED.every((k) => typeof s[k] === "number") ? s : null;
  } catch {
    return null;
  }
}
const split = new Map(counts.map((n) => [n, null])); // summed counter deltas per count
const firsts = new Map(counts.map((n) => [n, []])); // ms to each stream's first token, every round

async function measure(n) {
  const s0 = await schedStats();
  const t0 = performance.now();
  const got = await Promise.all(Array.from({ length: n }, (_, i) => stream(i, t0)));
  const rate = got.reduce((a, b) => a + b.used, 0) / ((performance.now() - t0) / 1000);
  firsts.get(n)?.push(...got.map((g) => g.first));
  const s1 = s0 && await schedStats();
  if (s1 && split.has(n)) {
    const acc = split.get(n) ?? Object.fromEntries(SCHED.map((k) => [k, 0]));
    for (const k of SCHED) acc[k] += s1[k] - s0[k];
    split.set(n, acc);
  }
  return rate;
}

await measure(1); // warm-up: page in the weights
split.forEach((_, n) => split.set(n, null)); // the warm-up is not counted
firsts.forEach((a) => a.splice(0));
const res = new Map(counts.map((n) => [n, []]));
for (let r = 0; r < rounds; r++) for (const n of counts) res.get(n).push(await measure(n));
const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
const one = median(res.get(counts[0]));
console.log(`${label}, ${tokens} tokens per stream, medians of ${rounds} rounds, maxBatch ${maxBatch}`);
console.log("| streams | aggregate tok/s | per stream tok/s | vs " + counts[0] + " stream(s) | first token ms, " +
  "median / max |\n| --- | --- | --- | --- | --- |");
for (const n of counts) {
  const m = median(res.get(n)), f = firsts.get(n);
  const ttft = { median: median(f), max: Math.max(...f) };
  console.log(`| ${n} | ${m.toFixed(2)} | ${(m / n).toFixed(2)} | ${(m / one).toFixed(2)}x | ` +
    `${ttft.median.toFixed(1)} / ${ttft.max.toFixed(1)} |`);
  if (v.json)
    appendFileSync(v.json, JSON.stringify({ label, streams: n, tokens, rounds, aggregate_tok_s: m, runs: res.get(n),
      first_token_ms: ttft, ...(split.get(n) ? { sched: split.get(n) } : {}) }) + "\n");
}
if ([...split.values()].some(Boolean)) {
  console.log("scheduler thread, ms per round (all rounds of a count): batched step / own forwards / sampling / idle");
  console.log("| streams | rounds | batched steps | tokens a step | batch | forward | sample | idle |\n" +
    "| --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const [n, a] of split) {
    if (!a || !a.rounds) continue;
    const ms = (k) => ((a[k] * 1000) / a.rounds).toFixed(3);
    const per = a.batchedSteps ? (a.batchedTokens / a.batchedSteps).toFixed(2) : "-";
    console.log(`| ${n} | ${a.rounds} | ${a.batchedSteps} | ${per} | ${ms("batchSeconds")} | ${ms("forwardSeconds")} | ` +
      `${ms("sampleSeconds")} | ${ms("idleSeconds")} |`);
  }
}
if (server) {
  console.log("batched steps:", JSON.stringify(server.scheduler.stats));
  await server.close();
}
