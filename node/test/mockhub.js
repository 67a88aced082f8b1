// A mock HuggingFace Hub on 127.0.0.1 serving the demo model as "org/demo":
// the listing API (?blobs=true), resolve with X-Repo-Commit/ETag and Range,
// and switches to drop a connection halfway, corrupt a file or require a token.
import http from "node:http";
import { createHash } from "node:crypto";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { demoModel } from "./helpers.js";

export async function startMockHub() {
  const COMMIT = "0123456789abcdef0123456789abcdef01234567";
  const files = {};
  for (const f of readdirSync(demoModel())) files[f] = readFileSync(join(demoModel(), f));
  files["README.md"] = Buffer.from("# demo\n");
  files["pytorch_model.bin"] = Buffer.from("not needed");
  const LFS = new Set(["model.safetensors", "pytorch_model.bin"]);
  const sha256 = (b) => createHash("sha256").update(b).digest("hex");
  const gitSha1 = (b) => createHash("sha1").update(`blob ${b.length}\0`).update(b).digest("hex");

  // behaviour switches, set per test
  const hub = { requests: [], dropHalfway: new Set(), corrupt: new Set(), gated: false };

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    hub.requests.push({ method: req.method, path: url.pathname, range: req.headers.range, auth: req.headers.authorization });
    if (hub.gated && req.headers.authorization !== "Bearer s3cret") {
      res.writeHead(401).end("unauthorized");
      return;
    }
    let m = url.pathname.match(/^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/);
    if (m) {
      if (m[1] !== "org/demo") return res.writeHead(404).end("{}");
      const siblings = Object.entries(files).map(([name, b]) => LFS.has(name)
        ? { rfilename: name, size: b.length, blobId: gitSha1(Buffer.from("pointer " + name)), lfs: { sha256: sha256(b), size: b.length } }
        : { rfilename: name, size: b.length, blobId: gitSha1(b) });
      res.writeHead(200, { "content-type": "application/json" });
      return res.end(JSON.stringify({ id: m[1], sha: COMMIT, siblings }));
    }
    m = url.pathname.match(/^\/org\/demo\/resolve\/([^/]+)\/(.+)$/);
    if (!m || !files[decodeURIComponent(m[2])]) return res.writeHead(404).end();
    const name = decodeURIComponent(m[2]);
    let body = files[name];
    if (hub.corrupt.has(name)) body = Buffer.from(body.map((x) => x ^ 1));
    const headers = { "x-repo-commit": COMMIT, etag: `"${LFS.has(name) ? sha256(body) : gitSha1(body)}"`,
      "accept-ranges": "bytes" };
    let start = 0, status = 200;
    const range = req.headers.range?.match(/^bytes=(\d+)-$/);
    if (range) {
      start = Number(range[1]);
      status = 206;
      headers["content-range"] = `bytes ${start}-${body.length - 1}/${body.length}`;
    }
    const slice = body.subarray(start);
    headers["content-length"] = slice.length;
    res.writeHead(status, headers);
    if (hub.dropHalfway.has(name)) {
      hub.dropHalfway.delete(name); // once
      res.write(slice.subarray(0, slice.length >> 1), () => setTimeout(() => res.socket.destroy(), 5));
      return;
    }
    res.end(slice);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const endpoint = `http://127.0.0.1:${server.address().port}`;
  return { server, endpoint, hub, files, COMMIT, LFS, sha256, gitSha1 };

}
