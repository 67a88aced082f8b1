#!/usr/bin/env node
// Aggregate completion tokens/s of the server at several numbers of
// concurrent streams. Starts createServer() in this process (or drives a
// running server with --url), sends N identical-length greedy streaming
// chat requests at once (ignore_eos, so every stream generates exactly -n
// tokens), and prints one JSON line per N: streams, wall seconds, total
// completion tokens, aggregate tokens/s, and its ratio to N = the first.
//   node scripts/bench-serve.mjs [-m MODEL] [-n 64] [--streams 1,2,4,8,16] [--url URL] [-t THREADS]
import { parseArgs } from "node:util";
import { createServer } from "../lib/index.js";

const { values: v } = parseArgs({ options: {
  model: { type: "string", short: "m" }, n: { type: "string", short: "n", default: "64" },
  streams: { type: "string", default: "1,2,4,8,16" }, url: { type: "string" },
  threads: { type: "string", short: "t", default: "0" }, "max-batch": { type: "string" },
} });
const counts = v.streams.split(",").map(Number);
const maxTokens = Number(v.n);
const server = v.url ? null : await createServer({ model: v.model, port: 0, threads: Number(v.threads),
  maxBatch: Number(v["max-batch"] ?? Math.max(...counts)), maxQueue: 1024, cacheSize: 0 });
const url = v.url ?? server.url;

async function one(i) {
  const res = await fetch(`${url}/v1/chat/completions`, { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ messages: [{ role: "user", content: `Tell story number ${i}.` }], max_tokens: maxTokens,
      temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true } }) });
  if (!res.ok) throw new Error(`${res.status}: ${await res.text()}`);
  let usage = null, buf = "";
  for await (const chunk of res.body) {
    buf += Buffer.from(chunk).toString("utf8");
    let k;
    while ((k = buf.indexOf("\n\n")) >= 0) {
      const line = buf.slice(0, k);
      buf = buf.slice(k + 2);
      if (line.startsWith("data: {")) {
        const o = JSON.parse(line.slice(6));
        if (o.usage) usage = o.usage;
      }
    }
  }
  return usage.completion_tokens;
}

await one(0); // warm up
let base = null;
for (const n of counts) {
  const t0 = performance.now();
  const toks = (await Promise.all(Array.from({ length: n }, (_, i) => one(i)))).reduce((a, b) => a + b, 0);
  const s = (performance.now() - t0) / 1000;
  const tps = toks / s;
  base ??= tps;
  console.log(JSON.stringify({ streams: n, seconds: +s.toFixed(3), completionTokens: toks,
    tokensPerSecond: +tps.toFixed(1), vsFirst: +(tps / base).toFixed(2) }));
}
await server?.close();
