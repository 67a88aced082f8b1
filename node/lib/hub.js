// HuggingFace Hub downloads into the cache layout of Python's huggingface_hub,
// so either reuses what the other downloaded:
//   <cache>/models--org--name/blobs/<etag>            file contents
//   <cache>/models--org--name/snapshots/<commit>/<f>  relative symlinks to blobs
//   <cache>/models--org--name/refs/<revision>         the commit a revision points to
// Only what inference needs is fetched (config, generation config, tokenizer
// files, chat template, safetensors weights). Interrupted downloads resume
// from blobs/<etag>.incomplete with an HTTP Range request; every file is
// checked against the size and hash the hub lists (sha256 for LFS files, the
// git blob sha1 for the others) before it enters the cache.
// Environment: HF_ENDPOINT, HF_TOKEN, HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE.
import { createHash } from "node:crypto";
import { createReadStream, existsSync, mkdirSync, readFileSync, writeFileSync, renameSync, symlinkSync,
  statSync, unlinkSync, openSync, writeSync, closeSync, readlinkSync, lstatSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, relative } from "node:path";
import { NmlxError, codes, invalid } from "./errors.js";

const NEEDED = new Set(["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
  "special_tokens_map.json", "chat_template.jinja", "chat_template.json", "model.safetensors.index.json"]);
const RETRIES = 5;

const truthy = (v) => ["1", "true", "yes", "on"].includes(String(v ?? "").toLowerCase());

/** The hub cache folder ($HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub). */
export function hubCacheDir() {
  if (process.env.HF_HUB_CACHE) return process.env.HF_HUB_CACHE;
  const home = process.env.HF_HOME || join(process.env.XDG_CACHE_HOME || join(homedir(), ".cache"), "huggingface");
  return join(home, "hub");
}

function defaultToken() {
  if (process.env.HF_TOKEN) return process.env.HF_TOKEN;
  const home = process.env.HF_HOME || join(process.env.XDG_CACHE_HOME || join(homedir(), ".cache"), "huggingface");
  try {
    return readFileSync(join(home, "token"), "utf8").trim() || undefined;
  } catch {
    return undefined;
  }
}

const isCommit = (rev) => /^[0-9a-f]{40}$/.test(rev);

function repoFolder(cache, repoId) {
  return join(cache, `models--${repoId.replaceAll("/", "--")}`);
}

/** The snapshot folder of a cached revision, or null. */
function cachedSnapshot(repoDir, revision) {
  let commit = revision;
  if (!isCommit(revision)) {
    try {
      commit = readFileSync(join(repoDir, "refs", revision), "utf8").trim();
    } catch {
      return null;
    }
  }
  const snap = join(repoDir, "snapshots", commit);
  return existsSync(join(snap, "config.json")) ? snap : null;
}

async function request(url, { token, headers = {}, signal } = {}) {
  const h = { ...headers, "user-agent": "nmlx-node" };
  if (token) h.authorization = `Bearer ${token}`;
  try {
    return await fetch(url, { headers: h, signal, redirect: "follow" });
  } catch (e) {
    if (signal?.aborted) throw e;
    throw new NmlxError(codes.DOWNLOAD, `cannot reach ${new URL(url).origin}: ${e.cause?.message ?? e.message}`, { cause: e });
  }
}

function httpError(res, what, repoId) {
  if (res.status === 401 || res.status === 403)
    return new NmlxError(codes.NOT_FOUND, `${what}: HTTP ${res.status}: '${repoId}' is private or gated, or does not ` +
      "exist: set HF_TOKEN to a token with access");
  if (res.status === 404) return new NmlxError(codes.NOT_FOUND, `${what}: HTTP 404: not found`);
  return new NmlxError(codes.DOWNLOAD, `${what}: HTTP ${res.status} ${res.statusText}`);
}

/** The files of a listing that inference needs; reads the weight index if there is one. */
async function neededFiles(siblings, fetchIndex) {
  const names = new Set(siblings.map((s) => s.rfilename));
  const want = siblings.filter((s) => NEEDED.has(s.rfilename));
  let weights;
  if (names.has("model.safetensors.index.json")) {
    const index = await fetchIndex();
    weights = new Set(Object.values(index.weight_map ?? {}));
  } else if (names.has("model.safetensors")) {
    weights = new Set(["model.safetensors"]);
  } else {
    weights = new Set([...names].filter((n) => n.endsWith(".safetensors") && !n.includes("/")));
  }
  if (!weights.size) throw new NmlxError("NMLX_ERR_UNSUPPORTED",
    "the repository has no safetensors weights (nmlx reads *.safetensors only)");
  for (const w of weights) {
    const s = siblings.find((x) => x.rfilename === w);
    if (!s) throw new NmlxError("NMLX_ERR_FORMAT", `the weight index names '${w}', which the repository does not have`);
    want.push(s);
  }
  if (!want.some((s) => s.rfilename === "config.json"))
    throw new NmlxError("NMLX_ERR_FORMAT", "the repository has no config.json");
  return want;
}

function gitBlobSha1(size) {
  return createHash("sha1").update(`blob ${size}\0`);
}

async function hashFile(path, hash) {
  for await (const chunk of createReadStream(path)) hash.update(chunk);
  return hash;
}

function linkSnapshot(repoDir, commit, file, etag) {
  const link = join(repoDir, "snapshots", commit, file);
  mkdirSync(dirname(link), { recursive: true });
  const target = relative(dirname(link), join(repoDir, "blobs", etag));
  try {
    if (lstatSync(link) && readlinkSync(link) === target) return;
    unlinkSync(link);
  } catch { /* no link yet */ }
  symlinkSync(target, link);
}

/**
 * Downloads what inference needs of `repoId` at `revision` into the hub
 * cache; resolves with the snapshot folder. Offline (HF_HUB_OFFLINE or
 * { offline: true }), resolves with the cached snapshot or fails with
 * NMLX_ERR_OFFLINE.
 */
export async function snapshotDownload(repoId, opts = {}) {
  if (typeof repoId !== "string" || !/^[\w.-]+\/[\w.-]+$/.test(repoId))
    throw invalid(`'${repoId}' is not a repository id (org/name)`);
  const revision = opts.revision ?? "main";
  const endpoint = (opts.endpoint ?? process.env.HF_ENDPOINT ?? "https://huggingface.co").replace(/\/+$/, "");
  const token = opts.token ?? defaultToken();
  const cache = opts.cacheDir ?? hubCacheDir();
  const offline = opts.offline ?? truthy(process.env.HF_HUB_OFFLINE);
  const { onProgress, signal } = opts;
  const repoDir = repoFolder(cache, repoId);

  if (offline) {
    const snap = cachedSnapshot(repoDir, revision);
    if (!snap) throw new NmlxError(codes.OFFLINE, `offline (HF_HUB_OFFLINE) and '${repoId}' at '${revision}' is not ` +
      `in the cache ${cache}`);
    return snap;
  }

  const rev = encodeURIComponent(revision);
  const listing = await request(`${endpoint}/api/models/${repoId}/revision/${rev}?blobs=true`, { token, signal });
  if (!listing.ok) throw httpError(listing, `listing '${repoId}' at '${revision}'`, repoId);
  const info = await listing.json();
  const commit = info.sha;
  if (!isCommit(commit ?? "") || !Array.isArray(info.siblings))
    throw new NmlxError(codes.DOWNLOAD, `unexpected listing of '${repoId}' from ${endpoint}`);
  const fileUrl = (f) => `${endpoint}/${repoId}/resolve/${commit}/${f.split("/").map(encodeURIComponent).join("/")}`;

  const files = await neededFiles(info.siblings, async () => {
    const r = await request(fileUrl("model.safetensors.index.json"), { token, signal });
    if (!r.ok) throw httpError(r, "model.safetensors.index.json", repoId);
    return r.json();
  });
  const plan = files.map((s) => {
    const lfs = s.lfs && s.lfs.sha256 ? s.lfs : null;
    const size = lfs ? lfs.size : s.size;
    const etag = lfs ? lfs.sha256 : s.blobId;
    if (!Number.isInteger(size) || !/^[0-9a-f]{40,64}$/.test(etag ?? ""))
      throw new NmlxError(codes.DOWNLOAD, `the listing of '${repoId}' lacks the size or hash of ${s.rfilename}`);
    return { file: s.rfilename, size, etag, lfs: !!lfs };
  });
  const totalBytes = plan.reduce((a, p) => a + p.size, 0);
  let totalDownloaded = 0;
  mkdirSync(join(repoDir, "blobs"), { recursive: true });

  for (const p of plan) {
    const blob = join(repoDir, "blobs", p.etag);
    if (!existsSync(blob) || statSync(blob).size !== p.size) {
      await downloadBlob(p, blob, fileUrl(p.file), { token, signal, repoId,
        progress: (n) => onProgress?.({ file: p.file, downloaded: n, total: p.size,
          totalDownloaded: totalDownloaded + n, totalBytes }) });
    }
    totalDownloaded += p.size;
    onProgress?.({ file: p.file, downloaded: p.size, total: p.size, totalDownloaded, totalBytes });
    linkSnapshot(repoDir, commit, p.file, p.etag);
  }
  if (revision !== commit) {
    mkdirSync(join(repoDir, "refs"), { recursive: true });
    writeFileSync(join(repoDir, "refs", revision), commit);
  }
  return join(repoDir, "snapshots", commit);
}

// One file into blobs/<etag>, through <etag>.incomplete, resuming and
// retrying after a dropped connection; verified before it is renamed.
async function downloadBlob(p, blob, url, { token, signal, repoId, progress }) {
  const part = `${blob}.incomplete`;
  let lastError;
  for (let attempt = 0; attempt < RETRIES; attempt++) {
    let have = existsSync(part) ? statSync(part).size : 0;
    if (have > p.size) {
      unlinkSync(part);
      have = 0;
    }
    if (have === p.size) break; // a complete part from an earlier run: verify below
    const res = await request(url, { token, signal, headers: have ? { range: `bytes=${have}-` } : {} });
    if (!res.ok) {
      if (res.status === 416) { unlinkSync(part); continue; }
      throw httpError(res, `downloading ${p.file}`, repoId);
    }
    if (have && res.status !== 206) have = 0; // no Range support: start over
    const fd = openSync(part, have ? "a" : "w");
    try {
      let n = have;
      progress(n);
      for await (const chunk of res.body) {
        writeSync(fd, chunk);
        n += chunk.length;
        progress(Math.min(n, p.size));
      }
      lastError = null;
    } catch (e) {
      if (signal?.aborted) throw e;
      lastError = e; // connection dropped: resume from what we have
    } finally {
      closeSync(fd);
    }
    if (!lastError) break;
  }
  if (lastError) throw new NmlxError(codes.DOWNLOAD, `downloading ${p.file} failed ${RETRIES} times: ${lastError.message}`,
    { cause: lastError });
  const size = existsSync(part) ? statSync(part).size : -1;
  const digest = (await hashFile(part, p.lfs ? createHash("sha256") : gitBlobSha1(size))).digest("hex");
  if (size !== p.size || digest !== p.etag) {
    unlinkSync(part);
    throw new NmlxError(codes.INTEGRITY, `${p.file}: downloaded ${size} bytes with ${p.lfs ? "sha256" : "git sha1"} ` +
      `${digest}, the hub lists ${p.size} bytes and ${p.etag}`);
  }
  renameSync(part, blob);
}
