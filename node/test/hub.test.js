// HuggingFace downloads against a mock hub on 127.0.0.1: listing, resolve
// with commit/ETag headers, Range, a connection dropped halfway, corrupt
// bytes, tokens, offline mode, the huggingface_hub cache layout.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync, readlinkSync, existsSync, writeFileSync, mkdirSync, lstatSync } from "node:fs";
import { join } from "node:path";
import { loadModel, snapshotDownload, hubCacheDir } from "../lib/index.js";
import { demoModel, tempDir } from "./helpers.js";
import { startMockHub } from "./mockhub.js";

const { server, endpoint, hub, files, COMMIT, LFS, sha256, gitSha1 } = await startMockHub();
after(() => server.close());

const fileRequests = () => hub.requests.filter((r) => r.path.includes("/resolve/"));
const reset = () => { hub.requests = []; hub.dropHalfway.clear(); hub.corrupt.clear(); hub.gated = false; };

test("downloads only what inference needs, in the huggingface_hub layout, with progress", async () => {
  reset();
  const cacheDir = tempDir();
  const progress = [];
  const m = await loadModel("org/demo", { endpoint, cacheDir, threads: 1, onProgress: (p) => progress.push(p) });
  const repo = join(cacheDir, "models--org--demo");
  assert.equal(readFileSync(join(repo, "refs", "main"), "utf8"), COMMIT);
  assert.equal(m.path, join(repo, "snapshots", COMMIT));
  const snap = readdirSync(m.path).sort();
  assert.deepEqual(snap, Object.keys(files).filter((f) => !["README.md", "pytorch_model.bin"].includes(f)).sort());
  for (const f of snap) {
    const link = join(m.path, f);
    assert.ok(lstatSync(link).isSymbolicLink());
    const etag = LFS.has(f) ? sha256(files[f]) : gitSha1(files[f]);
    assert.equal(readlinkSync(link), `../../blobs/${etag}`);
    assert.deepEqual(readFileSync(link), files[f]);
  }
  assert.ok(!fileRequests().some((r) => /README|pytorch/.test(r.path)), "nothing inference does not need");
  const last = progress.at(-1);
  assert.equal(last.totalDownloaded, last.totalBytes);
  assert.equal(last.totalBytes, snap.reduce((a, f) => a + files[f].length, 0));
  for (let i = 1; i < progress.length; i++) assert.ok(progress[i].totalDownloaded >= progress[i - 1].totalDownloaded);
  // same model as the local folder
  const local = await loadModel(demoModel(), { threads: 1 });
  const opts = { maxTokens: 10, seed: 4, temperature: 1 };
  assert.deepEqual((await m.generate("hub", opts)).tokens, (await local.generate("hub", opts)).tokens);
  await Promise.all([m.unload(), local.unload()]);

  // a second load downloads nothing
  reset();
  await snapshotDownload("org/demo", { endpoint, cacheDir });
  assert.equal(fileRequests().length, 0);
  // offline: no request at all; an uncached repo fails clearly
  reset();
  process.env.HF_HUB_OFFLINE = "1";
  try {
    assert.equal(await snapshotDownload("org/demo", { endpoint, cacheDir }), m.path);
    assert.equal(await snapshotDownload("org/demo", { endpoint, cacheDir, revision: COMMIT }), m.path);
    await assert.rejects(() => snapshotDownload("org/other", { endpoint, cacheDir }), { code: "NMLX_ERR_OFFLINE" });
  } finally {
    delete process.env.HF_HUB_OFFLINE;
  }
  assert.equal(hub.requests.length, 0);
});

test("a connection dropped halfway resumes with a Range request", async () => {
  reset();
  const cacheDir = tempDir();
  hub.dropHalfway.add("model.safetensors");
  hub.dropHalfway.add("tokenizer.json");
  const dir = await snapshotDownload("org/demo", { endpoint, cacheDir });
  assert.deepEqual(readFileSync(join(dir, "model.safetensors")), files["model.safetensors"]);
  assert.deepEqual(readFileSync(join(dir, "tokenizer.json")), files["tokenizer.json"]);
  const st = fileRequests().filter((r) => r.path.endsWith("/model.safetensors"));
  assert.equal(st.length, 2);
  assert.equal(st[0].range, undefined);
  assert.match(st[1].range, /^bytes=[1-9]\d*-$/);
  assert.ok(!readdirSync(join(cacheDir, "models--org--demo", "blobs")).some((f) => f.endsWith(".incomplete")));
});

test("an .incomplete file left by an earlier run is resumed", async () => {
  reset();
  const cacheDir = tempDir();
  const blobs = join(cacheDir, "models--org--demo", "blobs");
  mkdirSync(blobs, { recursive: true });
  const w = files["model.safetensors"];
  writeFileSync(join(blobs, `${sha256(w)}.incomplete`), w.subarray(0, 1000));
  const dir = await snapshotDownload("org/demo", { endpoint, cacheDir });
  assert.deepEqual(readFileSync(join(dir, "model.safetensors")), w);
  const st = fileRequests().filter((r) => r.path.endsWith("/model.safetensors"));
  assert.deepEqual(st.map((r) => r.range), ["bytes=1000-"]);
});

test("corrupt bytes fail verification and enter neither blobs nor snapshots", async () => {
  reset();
  const cacheDir = tempDir();
  hub.corrupt.add("tokenizer.json");
  await assert.rejects(() => snapshotDownload("org/demo", { endpoint, cacheDir }),
    { code: "NMLX_ERR_INTEGRITY", message: /tokenizer\.json/ });
  const repo = join(cacheDir, "models--org--demo");
  assert.ok(!readdirSync(join(repo, "blobs")).includes(gitSha1(files["tokenizer.json"])));
  assert.ok(!existsSync(join(repo, "snapshots", COMMIT, "tokenizer.json")));
  assert.ok(!existsSync(join(repo, "refs", "main")));
  reset();
  await snapshotDownload("org/demo", { endpoint, cacheDir }); // and recovers when the hub is fixed
});

test("HF_TOKEN, HF_ENDPOINT, HF_HOME; missing repositories", async () => {
  reset();
  const home = tempDir();
  const saved = { ...process.env };
  try {
    process.env.HF_HOME = home;
    process.env.HF_ENDPOINT = endpoint;
    assert.equal(hubCacheDir(), join(home, "hub"));
    hub.gated = true;
    await assert.rejects(() => snapshotDownload("org/demo"), { code: "NMLX_ERR_NOT_FOUND", message: /HF_TOKEN/ });
    process.env.HF_TOKEN = "s3cret";
    const dir = await snapshotDownload("org/demo");
    assert.ok(dir.startsWith(join(home, "hub", "models--org--demo", "snapshots")));
    assert.ok(hub.requests.at(-1).auth === "Bearer s3cret");
    hub.gated = false;
    await assert.rejects(() => snapshotDownload("org/missing"), { code: "NMLX_ERR_NOT_FOUND" });
    await assert.rejects(() => snapshotDownload("not a repo"), { code: "NMLX_ERR_INVALID_ARG" });
    await assert.rejects(() => snapshotDownload("org/demo", { endpoint: "http://127.0.0.1:1" }), { code: "NMLX_ERR_DOWNLOAD" });
  } finally {
    for (const k of ["HF_HOME", "HF_ENDPOINT", "HF_TOKEN"]) if (saved[k] === undefined) delete process.env[k]; else process.env[k] = saved[k];
  }
});

// Fault injection (lib/hub.js's io): the 1st, 2nd ... Nth create/write/fsync/
// close/rename/symlink fails, until a download needs fewer operations.
test("a failing write, fsync, close or rename fails clearly and leaves nothing half-written", async () => {
  const { _failIoAfterForTest: failAfter, _ioFaultPendingForTest: pending } = await import("../lib/hub.js");
  // descriptors open on files under dir (sockets of the HTTP client come and go)
  const fdsUnder = (dir) => readdirSync("/proc/self/fd").filter((f) => {
    try { return readlinkSync(`/proc/self/fd/${f}`).startsWith(dir); } catch { return false; }
  }).length;
  const expected = Object.fromEntries(Object.keys(files).map((f) => [LFS.has(f) ? sha256(files[f]) : gitSha1(files[f]), files[f]]));
  for (const code of ["ENOSPC", "short"]) { // EIO takes the same paths (the C writers test both)
    let points = 0;
    for (let n = 1; n < 1000; n++) {
      reset();
      const cacheDir = tempDir();
      failAfter(n, code);
      let err = null;
      try {
        await snapshotDownload("org/demo", { endpoint, cacheDir });
      } catch (e) {
        err = e;
      }
      const reached = !pending();
      failAfter(0, null);
      if (reached) points++;
      if (reached && code !== "short") {
        assert.ok(err, `${code} at op ${n}: the download succeeded`);
        assert.equal(err.code, "NMLX_ERR_IO", `${code} at op ${n}: ${err.message}`);
        assert.match(err.message, new RegExp(`${code}.*'.*models--org--demo`), `op ${n}: names neither file nor cause`);
      } else {
        assert.equal(err, null, `${code} at op ${n}: ${err?.message}`);
      }
      // never half-written: every blob is whole and verified, no temporary
      // or .incomplete stays, refs/main is whole or absent
      const repo = join(cacheDir, "models--org--demo");
      for (const b of existsSync(join(repo, "blobs")) ? readdirSync(join(repo, "blobs")) : []) {
        assert.ok(b in expected, `${code} at op ${n}: blobs/${b} left behind`);
        assert.deepEqual(readFileSync(join(repo, "blobs", b)), expected[b], `${code} at op ${n}: blobs/${b} differs`);
      }
      if (existsSync(join(repo, "refs"))) {
        for (const r of readdirSync(join(repo, "refs"))) assert.equal(r, "main", `${code} at op ${n}: refs/${r} left behind`);
        if (existsSync(join(repo, "refs", "main"))) assert.equal(readFileSync(join(repo, "refs", "main"), "utf8"), COMMIT);
      }
      assert.equal(fdsUnder(cacheDir), 0, `${code} at op ${n}: descriptors leaked`);
      if (!reached) break;
    }
    assert.ok(points >= 30, `${code}: only ${points} fault points`);
    console.log(`hub download, ${code}: ${points} write operations faulted in turn`);
  }
});
