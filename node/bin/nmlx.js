#!/usr/bin/env node
// The nmlx command of the npm package:
//   nmlx [options] "prompt"      stream an answer, then a stats line on stderr
//   nmlx chat [options]          interactive chat (/reset, /exit)
//   nmlx pull <repo-or-alias>    download into the HuggingFace cache
//   nmlx serve [options]         an OpenAI-compatible HTTP server (lib/server.js)
//   nmlx run [options]           the same as without `run` (as the C tool)
//   nmlx convert|bench|generate|logits|tokenize ...
//                                the C `nmlx` tool built with the package
// Without -m the built-in demo model is used (one line on stderr says so).
// Flags match the C `nmlx` tool (-m, -n, -t, --temp, --top-p, ...). Exit
// status: 0 ok, 1 failure, 2 bad usage; errors are one line on stderr.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";
import { loadModel, snapshotDownload, resolveModelId, RECOMMENDED_MODELS, getVersion, getLibraryVersion, createServer } from "../lib/index.js";
import { downloadProgress } from "../lib/progress.js";
import { pkgDir } from "../lib/paths.js";

// Subcommands of the C tool (build/cmake/nmlx, built by scripts/build.mjs).
const C_COMMANDS = ["convert", "bench", "generate", "logits", "tokenize"];

const USAGE = `usage:
  nmlx [options] "prompt"          generate (the model's chat template unless --raw)
  nmlx chat [options]              interactive chat: /reset, /exit
  nmlx pull <repo-id|alias>        download a model into the HuggingFace cache
  nmlx serve [options]             OpenAI-compatible server: /v1/chat/completions,
                                   /v1/completions, /v1/models, /health
  nmlx convert|bench|generate|logits|tokenize ...
                                   the C tool's commands (nmlx <command> --help)
options:
  -m, --model M          folder, HuggingFace repo id or alias (default: the built-in
                         demo model, a toy for trying nmlx; $NMLX_DEMO_MODEL overrides it)
  -p, --prompt TEXT      the prompt (or give it as the argument)
  -n, --max-tokens N     most tokens to generate (default 256)
  -t, --threads N        worker threads; 0 = all CPUs
      --temp T           temperature; 0 = greedy
      --top-p P          nucleus sampling; 1 = off
      --top-k K          keep the K most likely tokens; 0 = off
      --min-p P          drop tokens below P x the top probability; 0 = off
      --repeat-penalty R penalty on recent tokens; 1 = off
      --repeat-last-n N  tokens looked back for the penalty
      --seed S           random seed; same seed, same tokens
      --stop TEXT        stop before TEXT (repeatable)
      --system TEXT      system prompt (chat, and prompts with the template)
      --raw              use the prompt as is, without the chat template
      --ignore-eos       generate exactly --max-tokens
      --revision R       repository revision (default main)
      --device D         cpu (default), cuda or cuda:N (a build with the CUDA backend)
      --precision P      default, f32 (f32 activations throughout) or int8 (opt-in
                         int8 activations for quantized weights; docs/quantization.md)
serve options:
      --host H           address to bind (default 127.0.0.1)
      --port N           port (default 8080; 0 = any free port)
      --max-batch N      requests generating at once (default 4)
      --max-queue N      requests waiting beyond those; more get 429 (default 64)
      --ctx N            context length per request (default: the model's)
      --api-key KEY      require 'Authorization: Bearer KEY' (or $NMLX_API_KEY)
      --cache-size N     finished conversations kept for prefix reuse (default: max-batch)
      --name NAME        the model id clients send (default: the -m value or folder name)
      --grace-ms N       on SIGTERM/SIGINT, time running requests get to finish (default 5000)
  -h, --help, --version
aliases: ${Object.keys(RECOMMENDED_MODELS).join(", ")}`;

const OPTIONS = {
  model: { type: "string", short: "m" }, prompt: { type: "string", short: "p" },
  "max-tokens": { type: "string", short: "n" }, threads: { type: "string", short: "t" },
  temp: { type: "string" }, "top-p": { type: "string" }, "top-k": { type: "string" }, "min-p": { type: "string" },
  "repeat-penalty": { type: "string" }, "repeat-last-n": { type: "string" }, seed: { type: "string" },
  stop: { type: "string", multiple: true }, system: { type: "string" }, raw: { type: "boolean" },
  "ignore-eos": { type: "boolean" }, revision: { type: "string" }, help: { type: "boolean", short: "h" },
  version: { type: "boolean" }, host: { type: "string" }, port: { type: "string" },
  "max-batch": { type: "string" }, "max-queue": { type: "string" }, ctx: { type: "string" },
  "api-key": { type: "string" }, device: { type: "string" }, precision: { type: "string" }, "cache-size": { type: "string" },
  name: { type: "string" }, "grace-ms": { type: "string" },
};

class UsageError extends Error {}

function number(v, flag, int) {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n) || (int && !Number.isInteger(n)))
    throw new UsageError(`${flag}: '${v}' is not ${int ? "an integer" : "a number"}`);
  return n;
}

function generationOptions(v) {
  const o = {
    maxTokens: number(v["max-tokens"], "--max-tokens", true), temperature: number(v.temp, "--temp"),
    topP: number(v["top-p"], "--top-p"), topK: number(v["top-k"], "--top-k", true),
    minP: number(v["min-p"], "--min-p"), repetitionPenalty: number(v["repeat-penalty"], "--repeat-penalty"),
    repetitionContextSize: number(v["repeat-last-n"], "--repeat-last-n", true), stop: v.stop,
    ignoreEos: v["ignore-eos"] || undefined,
  };
  if (v.seed !== undefined) {
    if (!/^\d+$/.test(v.seed)) throw new UsageError(`--seed: '${v.seed}' is not an unsigned integer`);
    o.seed = BigInt(v.seed);
  }
  for (const k of Object.keys(o)) if (o[k] === undefined) delete o[k];
  return o;
}

// The stats line of the C tool's `nmlx run`.
function stats(r) {
  const pre = r.timeToFirstTokenMs / 1000;
  return `[${r.promptTokens} prompt tokens, ${(pre > 0 ? r.promptTokens / pre : 0).toFixed(2)} tok/s prefill | ` +
    `${r.completionTokens} generated, ${r.tokensPerSecond.toFixed(2)} tok/s decode | stop: ${r.finishReason}]`;
}

async function load(v) {
  const bar = downloadProgress();
  try {
    return await loadModel(v.model, { threads: number(v.threads, "--threads", true) ?? 0, revision: v.revision,
      device: v.device, precision: v.precision, onProgress: bar });
  } finally {
    bar.done();
  }
}

// Ctrl-C aborts the running generation; a second one (or one when idle) exits.
function abortOnSigint() {
  const ac = new AbortController();
  const onInt = () => { if (ac.signal.aborted) process.exit(130); ac.abort(); };
  process.on("SIGINT", onInt);
  return { signal: ac.signal, done: () => process.off("SIGINT", onInt) };
}

async function runPrompt(v, prompt) {
  const model = await load(v);
  const opts = generationOptions(v);
  let input = prompt;
  if (!v.raw && model.info.hasTokenizer) {
    try {
      model.chatTemplate();
      input = [...(v.system ? [{ role: "system", content: v.system }] : []), { role: "user", content: prompt }];
    } catch { /* no chat template: the prompt is used raw */ }
  }
  const sig = abortOnSigint();
  const s = model.stream(input, { ...opts, signal: sig.signal });
  for await (const piece of s) process.stdout.write(piece);
  const r = await s.result;
  sig.done();
  process.stdout.write("\n");
  process.stderr.write(stats(r) + "\n");
  await model.unload();
}

async function runChat(v) {
  const model = await load(v);
  const opts = generationOptions(v);
  const chat = model.chat({ system: v.system });
  const tty = !!process.stdin.isTTY;
  const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: tty });
  let current = null; // the AbortController of the running turn
  // Ctrl-C: stop the answer; at the prompt, leave
  rl.on("SIGINT", () => (current ? current.abort() : rl.close()));
  rl.setPrompt("> ");
  process.stderr.write(`nmlx chat with ${model.id} (/reset, /exit)\n`);
  if (tty) rl.prompt();
  for await (const raw of rl) {
    const line = raw.trim();
    if (line === "/exit") break;
    if (line === "/reset") {
      chat.reset();
      process.stderr.write("(conversation reset)\n");
    } else if (line) {
      current = new AbortController();
      const s = chat.stream(line, { ...opts, signal: current.signal });
      for await (const piece of s) process.stdout.write(piece);
      const r = await s.result;
      current = null;
      process.stdout.write("\n");
      process.stderr.write(stats(r) + "\n");
    }
    if (tty) rl.prompt();
  }
  rl.close();
  await model.unload();
}

async function runPull(v, positionals) {
  const id = positionals[0] ?? v.model;
  if (!id) throw new UsageError("pull: missing the repository id or alias");
  const repo = resolveModelId(id);
  const bar = downloadProgress();
  const dir = await snapshotDownload(repo, { revision: v.revision, onProgress: bar }).finally(bar.done);
  process.stdout.write(dir + "\n");
}

// Runs a command of the C tool with the same arguments; resolves with its exit status.
function cTool(argv) {
  const exe = join(pkgDir, "build", "cmake", "nmlx");
  if (!existsSync(exe)) throw new Error(`the C nmlx tool is not built (${exe}): run 'npm rebuild nmlx'`);
  const r = spawnSync(exe, argv, { stdio: "inherit" });
  if (r.error) throw r.error;
  return r.status ?? 1;
}

async function runServe(v, rest) {
  if (rest.length) throw new UsageError(`serve: unexpected argument '${rest[0]}'`);
  const bar = downloadProgress();
  let server;
  try {
    server = await createServer({
      model: v.model, host: v.host ?? "127.0.0.1", port: number(v.port, "--port", true) ?? 8080,
      maxBatch: number(v["max-batch"], "--max-batch", true) ?? 4, maxQueue: number(v["max-queue"], "--max-queue", true) ?? 64,
      contextLength: number(v.ctx, "--ctx", true) ?? 0, apiKey: v["api-key"] ?? (process.env.NMLX_API_KEY || undefined),
      device: v.device, precision: v.precision, threads: number(v.threads, "--threads", true) ?? 0,
      cacheSize: number(v["cache-size"], "--cache-size", true), modelName: v.name,
      graceMs: number(v["grace-ms"], "--grace-ms", true) ?? 5000,
    });
  } finally {
    bar.done();
  }
  process.stderr.write(`nmlx: serving ${server.modelName} on ${server.url} (max batch ${server.scheduler.maxBatch}, ` +
    `context ${server.scheduler.contextLength}${v["api-key"] || process.env.NMLX_API_KEY ? ", API key required" : ""})\n`);
  await new Promise((resolve) => {
    const stop = (sig) => {
      process.stderr.write(`nmlx: ${sig}: finishing running requests, then exiting\n`);
      process.off("SIGTERM", stop);
      process.off("SIGINT", stop);
      server.close().then(resolve, (e) => {
        process.stderr.write(`nmlx: shutdown: ${e.message}\n`);
        resolve();
      });
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
  });
}

async function main(argv) {
  if (C_COMMANDS.includes(argv[0])) return cTool(argv);
  if (argv[0] === "run") argv = argv.slice(1);
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (e) {
    throw new UsageError(e.message.split("\n")[0]);
  }
  const { values: v, positionals } = parsed;
  if (v.help) return void process.stdout.write(USAGE + "\n");
  if (v.version) return void process.stdout.write(`nmlx ${getVersion()} (library ${getLibraryVersion()})\n`);
  const [cmd, ...rest] = positionals;
  if (cmd === "chat" && v.prompt === undefined) {
    if (rest.length) throw new UsageError("chat: unexpected argument (type messages at the prompt)");
    return runChat(v);
  }
  if (cmd === "pull" && v.prompt === undefined) return runPull(v, rest);
  if (cmd === "serve" && v.prompt === undefined) return runServe(v, rest);
  const prompt = v.prompt ?? positionals.join(" ");
  if (v.prompt !== undefined && positionals.length) throw new UsageError("give the prompt either with -p or as the argument, not both");
  if (!prompt) throw new UsageError('missing the prompt: nmlx [options] "your prompt"');
  return runPrompt(v, prompt);
}

main(process.argv.slice(2)).then((status) => process.exit(status ?? 0), (e) => {
  const cmd = "nmlx";
  process.stderr.write(`${cmd}: ${e.message}${e instanceof UsageError ? " (see nmlx --help)" : ""}\n`);
  process.exit(e instanceof UsageError ? 2 : 1);
});
