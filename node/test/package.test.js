// What a new user meets first: the built-in demo model used when no model
// is given (loadModel(), the `nmlx` command), the one message naming the
// Debian packages when build dependencies are missing, and the download
// progress line (bytes, rate, ETA on a terminal; nothing when piped).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, symlinkSync } from "node:fs";
import { delimiter, join } from "node:path";
import { demoModel, pkgDir, repoDir, tempDir } from "./helpers.js";
import { downloadProgress, formatProgress } from "../lib/progress.js";

function node(args, { env = {}, cwd = pkgDir } = {}) {
  return new Promise((resolve) => {
    const e = { ...process.env, ...env };
    for (const k of Object.keys(e)) if (e[k] === undefined) delete e[k];
    // a child killed by a signal has code null: say which signal in stderr
    execFile(process.execPath, args, { env: e, cwd }, (err, stdout, stderr) =>
      resolve({ code: err ? err.code : 0, stdout, stderr: err?.signal ? `${stderr}[killed by ${err.signal}]` : stderr }));
  });
}
const LINE = (dir) => new RegExp(`^nmlx: no model given; using the built-in demo model at ${dir.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} `, "m");
const lib = join(pkgDir, "lib", "index.js");
const script = (body) => ["--input-type=module", "-e", `import * as nmlx from ${JSON.stringify(lib)};\n${body}`];

test("loadModel() without a model: the built-in demo model, said once on stderr", async () => {
  const dir = demoModel();
  const r = await node(script(`
    const a = await nmlx.loadModel({ threads: 1 });
    const b = await nmlx.loadModel(undefined, { threads: 1 });
    const c = await nmlx.loadModel(${JSON.stringify(dir)}, { threads: 1 });
    const opts = { maxTokens: 6, seed: 1, temperature: 0 };
    const [x, y, z] = [await a.generate("Once upon a time", opts), await b.generate("Once upon a time", opts),
      await c.generate("Once upon a time", opts)];
    console.log(JSON.stringify({ path: a.path, same: x.text === z.text && y.text === z.text, n: x.completionTokens,
      demo: nmlx.demoModelPath() }));
    await Promise.all([a.unload(), b.unload(), c.unload()]);`), { env: { NMLX_DEMO_MODEL: dir } });
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.deepEqual(out, { path: dir, same: true, n: 6, demo: dir });
  assert.equal(r.stderr.match(new RegExp(LINE(dir).source, "gm")).length, 2, r.stderr);
});

test("loadModel() with the demo model missing: NMLX_ERR_IO naming the folder, no crash", async () => {
  const missing = join(tempDir(), "no-demo");
  const r = await node(script(`
    try { await nmlx.loadModel(); console.log("loaded"); }
    catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }`),
  { env: { NMLX_DEMO_MODEL: missing } });
  assert.equal(r.code, 0, r.stderr);
  const e = JSON.parse(r.stdout);
  assert.equal(e.code, "NMLX_ERR_IO");
  assert.match(e.message, /built-in demo model is missing/);
  assert.ok(e.message.includes(missing));
});

test("demoModelPath(): the repository's models/demo in a clone", async () => {
  const r = await node(script("console.log(nmlx.demoModelPath())"), { env: { NMLX_DEMO_MODEL: undefined } });
  assert.equal(r.stdout.trim(), join(repoDir, "models", "demo"));
});

test("nmlx \"prompt\" without -m: the demo model, its line, the text and the stats line", async () => {
  const dir = demoModel();
  const r = await node([join(pkgDir, "bin", "nmlx.js"), "-n", "5", "--temp", "0", "--raw", "--ignore-eos",
    "Once upon a time"],
    { env: { NMLX_DEMO_MODEL: dir } });
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.stdout.trim().length > 0);
  assert.match(r.stderr, LINE(dir));
  assert.match(r.stderr, /^\[\d+ prompt tokens, .* \| 5 generated, .*\]$/m);
  const bad = await node([join(pkgDir, "bin", "nmlx.js"), "hi"], { env: { NMLX_DEMO_MODEL: "/no/such/demo" } });
  assert.equal(bad.code, 1);
  assert.equal(bad.stderr.trim().split("\n").length, 1);
  assert.match(bad.stderr, /^nmlx: .*built-in demo model is missing.*\/no\/such\/demo/);
});

// build.mjs --check-deps with the environment arranged so one thing is missing.
function pcDirWithout(skip) {
  const d = tempDir();
  for (const lib of ["jansson", "libpcre2-8", "libutf8proc"]) {
    if (lib === skip) continue;
    const from = execFileSync("pkg-config", ["--variable=pcfiledir", lib]).toString().trim();
    copyFileSync(join(from, `${lib}.pc`), join(d, `${lib}.pc`));
  }
  return d;
}
function pathWithout(skip) {
  const d = tempDir();
  mkdirSync(join(d, "bin"));
  for (const tool of ["cc", "make", "cmake", "pkg-config"]) {
    if (tool === skip) continue;
    const p = execFileSync("sh", ["-c", `command -v ${tool}`]).toString().trim();
    symlinkSync(p, join(d, "bin", tool));
  }
  return join(d, "bin");
}
const checkDeps = (env) => node([join(pkgDir, "scripts", "build.mjs"), "--check-deps"], { env });

test("build dependencies: all present passes the check", async () => {
  const r = await checkDeps({});
  assert.equal(r.code, 0, r.stderr);
});

test("build dependencies: a missing library or tool fails with one message naming the apt package", async () => {
  const cases = [
    [{ PKG_CONFIG_LIBDIR: pcDirWithout("jansson"), PKG_CONFIG_PATH: "" }, "libjansson-dev", /jansson/],
    [{ PKG_CONFIG_LIBDIR: pcDirWithout("libpcre2-8"), PKG_CONFIG_PATH: "" }, "libpcre2-dev", /pcre2/],
    [{ PKG_CONFIG_LIBDIR: pcDirWithout("libutf8proc"), PKG_CONFIG_PATH: "" }, "libutf8proc-dev", /utf8proc/],
    [{ PATH: pathWithout("cmake") }, "cmake", /cmake/],
    [{ PATH: pathWithout("cc"), CC: undefined }, "build-essential", /C compiler 'cc'/],
    [{ PATH: pathWithout("pkg-config") + delimiter + "/nonexistent" }, "pkg-config", /pkg-config/],
  ];
  for (const [env, apt, what] of cases) {
    const r = await checkDeps(env);
    assert.equal(r.code, 1, `${apt}: ${r.stderr}`);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], /^nmlx: cannot build the native addon: missing /);
    assert.match(lines[0], what);
    assert.match(lines[0], new RegExp(`sudo apt-get install ${apt}( |$)`), lines[0]);
  }
  const all = await checkDeps({ PATH: "/nonexistent" });
  assert.equal(all.code, 1);
  assert.match(all.stderr, /apt-get install build-essential cmake pkg-config/);
});

test("download progress: bytes, rate and ETA on a TTY, nothing when not a TTY", () => {
  let t = 0;
  const writes = [];
  const tty = { isTTY: true, columns: 200, write: (s) => writes.push(s) };
  const bar = downloadProgress({ stream: tty, now: () => t });
  const total = 10e6;
  // a cached file first (complete at once): not counted in the rate
  bar({ file: "config.json", downloaded: 2e6, total: 2e6, totalDownloaded: 2e6, totalBytes: total });
  bar({ file: "model.safetensors", downloaded: 0, total: 8e6, totalDownloaded: 2e6, totalBytes: total });
  for (let s = 1; s <= 4; s++) {
    t = s * 1000;
    bar({ file: "model.safetensors", downloaded: s * 1e6, total: 8e6, totalDownloaded: 2e6 + s * 1e6, totalBytes: total });
  }
  const last = writes.at(-1);
  assert.match(last, /^\r\[#+-+\]  60%  6\.0\/10\.0 MB  1\.\d MB\/s  ETA 0:0\d  model\.safetensors\x1b\[K$/);
  bar.done();
  assert.equal(writes.at(-1), "\r\x1b[K");

  const piped = [];
  const quiet = downloadProgress({ stream: { isTTY: false, write: (s) => piped.push(s) }, now: () => t });
  quiet({ file: "a", downloaded: 1, total: 1, totalDownloaded: 1, totalBytes: 1 });
  quiet.done();
  assert.deepEqual(piped, []);
  assert.match(formatProgress({ totalDownloaded: 0, totalBytes: 3e9, rate: 0, file: "x" }), /0\.00\/3\.00 GB  -- MB\/s  ETA --:--  x$/);
});

test("nmlx run ... is nmlx ...; the C tool's commands pass through with their exit status", async () => {
  const dir = demoModel();
  const bin = join(pkgDir, "bin", "nmlx.js");
  const args = ["-m", dir, "-n", "5", "--temp", "0", "--raw", "--ignore-eos", "Once upon a time"];
  const a = await node([bin, ...args]);
  const b = await node([bin, "run", ...args]);
  assert.equal(a.code, 0, a.stderr);
  assert.equal(b.code, 0, b.stderr);
  assert.equal(b.stdout, a.stdout);
  const bench = await node([bin, "bench", "-m", dir, "-p", "8", "-n", "4", "-t", "1"]);
  assert.equal(bench.code, 0, bench.stderr);
  assert.equal(JSON.parse(bench.stdout).p, 8);
  const usage = await node([bin, "generate", "--ids", "1"]);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /^nmlx generate: missing -m DIR/);
});
