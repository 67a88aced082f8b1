// The package's `nmlx` command, run as a child process.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { loadModel } from "../lib/index.js";
import { demoModel, pkgDir, tempDir } from "./helpers.js";
import { startMockHub } from "./mockhub.js";

const bin = join(pkgDir, "bin", "nmlx.js");
function nmlx(args, { input, env } = {}) {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [bin, ...args], { env: { ...process.env, ...env } },
      (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stdout, stderr }));
    if (input !== undefined) child.stdin.end(input);
  });
}

const STATS = /^\[\d+ prompt tokens, [\d.]+ tok\/s prefill \| \d+ generated, [\d.]+ tok\/s decode \| stop: (stop|length|abort)\]$/m;

test("nmlx \"prompt\" streams the answer with the chat template, then a stats line", async () => {
  const m = await loadModel(demoModel(), { threads: 1 });
  const opts = { maxTokens: 12, seed: 7, temperature: 1 };
  const viaTemplate = await m.generate([{ role: "user", content: "Hello" }], opts);
  const raw = await m.generate("Hello", opts);
  await m.unload();
  const r = await nmlx(["-m", demoModel(), "-n", "12", "--seed", "7", "--temp", "1", "Hello"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, viaTemplate.text + "\n");
  assert.match(r.stderr, STATS);
  const r2 = await nmlx(["-m", demoModel(), "--max-tokens", "12", "--seed", "7", "--temp", "1", "--raw", "-p", "Hello"]);
  assert.equal(r2.stdout, raw.text + "\n");
});

test("bad usage exits 2, failures exit 1, each with one line on stderr", async () => {
  for (const args of [["-m", demoModel(), "--temp", "hot", "x"], ["-m", demoModel()], ["--bogus"],
    ["-m", demoModel(), "--seed", "-1", "x"]]) {
    const r = await nmlx(args);
    assert.equal(r.code, 2, args.join(" "));
    assert.equal(r.stderr.trim().split("\n").length, 1);
  }
  const r = await nmlx(["-m", "/no/such/folder", "hi"]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^nmlx: .*\/no\/such\/folder/);
  const h = await nmlx(["--help"]);
  assert.equal(h.code, 0);
  assert.match(h.stdout, /--max-tokens/);
});

test("--device and --precision reach the model load in generate and chat (bad values are errors)", async () => {
  for (const [sub, rest] of [[[], ["hi"]], [["chat"], []]]) {
    const bad = await nmlx([...sub, "-m", demoModel(), "--device", "gpu7", "-n", "2", ...rest], { input: "/exit\n" });
    assert.equal(bad.code, 1, bad.stderr);
    assert.match(bad.stderr, /device must be "cpu", "cuda" or "cuda:N".*gpu7/);
  }
  const ok = await nmlx(["-m", demoModel(), "--device", "cpu", "-n", "3", "--seed", "2", "hi"]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stderr, STATS);
  // --precision too: a bad value is named, f32 runs
  const badp = await nmlx(["-m", demoModel(), "--precision", "fp8", "-n", "2", "hi"]);
  assert.equal(badp.code, 1, badp.stderr);
  assert.match(badp.stderr, /precision must be "default", "int8" or "f32".*fp8/);
  const f32 = await nmlx(["-m", demoModel(), "--precision", "f32", "-n", "3", "--seed", "2", "hi"]);
  assert.equal(f32.code, 0, f32.stderr);
});

test("nmlx chat: turns, /reset, /exit", async () => {
  const r = await nmlx(["chat", "-m", demoModel(), "-n", "6", "--seed", "1", "--system", "sys"],
    { input: "hi\nmore\n/reset\nagain\n/exit\nignored\n" });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr.match(new RegExp(STATS.source, "gm")).length, 3);
  assert.match(r.stderr, /conversation reset/);
  // the turn after /reset is the first turn again: same answer as "hi" with the same seed
  const m = await loadModel(demoModel(), { threads: 1 });
  const c = m.chat({ system: "sys" });
  const first = await c.send("again", { maxTokens: 6, seed: 1 });
  await m.unload();
  assert.equal(r.stdout.split("\n")[2], first.text);
});

test("nmlx pull downloads into the HF cache and prints the snapshot folder", async () => {
  const { server, endpoint, COMMIT } = await startMockHub();
  after(() => server.close());
  const home = tempDir();
  const r = await nmlx(["pull", "org/demo"], { env: { HF_ENDPOINT: endpoint, HF_HOME: home } });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), join(home, "hub", "models--org--demo", "snapshots", COMMIT));
  assert.equal(r.stderr, "", "downloads are quiet when stderr is not a terminal");
  const g = await nmlx(["-m", "org/demo", "-n", "3", "hi"], { env: { HF_HOME: home, HF_HUB_OFFLINE: "1" } });
  assert.equal(g.code, 0, g.stderr);
  const missing = await nmlx(["pull", "org/none"], { env: { HF_ENDPOINT: endpoint, HF_HOME: home } });
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /404/);
});
