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
// Writes are durable and never leave a file half-written under its final
// name: a blob is written to <etag>.incomplete (short writes continued),
// verified, fsynced, renamed, its folder fsynced; refs/<revision> is
// written to a temporary, fsynced and renamed. A local write failure (ENOSPC,
// EIO ...) is NMLX_ERR_IO naming the file and the cause, and removes the
// .incomplete (a dropped connection keeps it, to resume). Every create,
// write, fsync, close and rename goes through `io` below, where a test hook
// (_failIoAfterForTest) makes the Nth one fail.
// Environment: HF_ENDPOINT, HF_TOKEN, HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE.
import { createHash } from "node:crypto";
import { createReadStream, existsSync, mkdirSync, readFileSync, renameSync, symlinkSync,
  statSync, unlinkSync, openSync, writeSync, closeSync, fsyncSync, readlinkSync, lstatSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, relative } from "node:path";
import { NmlxError, codes, invalid } from "./errors.js";

const NEEDED = new Set(["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
  "special_tokens_map.json", "chat_template.jinja", "chat_template.json", "model.safetensors.index.json"]);
const RETRIES = 5;

// ---- writes, with fault injection -------------------------------------------

let faultAfter = 0, faultCode = null;

/**
 * Test hook: the Nth write operation from now (open for writing, write,
 * fsync, close, rename, symlink, mkdir) fails with `code` ("ENOSPC", "EIO" ...) or,
 * with code "short", a write stores only half its bytes. 0 turns it off.
 * Returns nothing; _ioFaultPendingForTest() says whether it was reached.
 */
export function _failIoAfterForTest(n, code) {
  faultAfter = n;
  faultCode = code;
}
export const _ioFaultPendingForTest = () => faultAfter > 0;

function fault(syscall, path) {
  if (faultAfter <= 0 || --faultAfter > 0) return null;
  if (faultCode === "short") return "short";
  const e = new Error(`${faultCode}: injected fault, ${syscall} '${path}'`);
  e.code = faultCode;
  e.syscall = syscall;
  e.path = path;
  return e;
}

const io = {
  open(path, flags) {
    const f = fault("open", path);
    if (f instanceof Error) throw f;
    return openSync(path, flags);
  },
  // every byte of buf, continuing short writes
  writeAll(fd, buf, path) {
    for (let off = 0; off < buf.length;) {
      let len = buf.length - off;
      const f = fault("write", path);
      if (f instanceof Error) throw f;
      if (f === "short" && len > 1) len >>= 1;
      const n = writeSync(fd, buf, off, len);
      if (n <= 0) throw Object.assign(new Error(`write '${path}' made no progress`), { code: "EIO" });
      off += n;
    }
  },
  fsync(fd, path) {
    const f = fault("fsync", path);
    if (f instanceof Error) throw f;
    fsyncSync(fd);
  },
  close(fd, path) {
    const f = fault("close", path);
    closeSync(fd); // the descriptor is released whatever close reports
    if (f instanceof Error) throw f;
  },
  mkdirs(path, what) {
    const f = fault("mkdir", path);
    try {
      if (f instanceof Error) throw f;
      mkdirSync(path, { recursive: true });
    } catch (e) {
      throw ioError(what, path, e);
    }
  },
  rename(from, to) {
    const f = fault("rename", from);
    if (f instanceof Error) throw f;
    renameSync(from, to);
  },
  symlink(target, path) {
    const f = fault("symlink", path);
    if (f instanceof Error) throw f;
    symlinkSync(target, path);
  },
  fsyncDir(dir) {
    const fd = io.open(dir, "r");
    try {
      io.fsync(fd, dir);
    } finally {
      io.close(fd, dir);
    }
  },
};

function ioError(file, path, e) {
  return new NmlxError("NMLX_ERR_IO", `${file}: cannot write ${path}: ${e.message}`, { cause: e });
}

const tryUnlink = (path) => { try { unlinkSync(path); } catch { /* already gone */ } };

let tmpSeq = 0;
/** Writes data to path through a temporary in the same folder (fsync, rename). */
function writeFileAtomic(path, data, what) {
  const tmp = `${path}.tmp-${process.pid}-${tmpSeq++}`;
  let fd = -1, renamed = false;
  try {
    fd = io.open(tmp, "wx");
    io.writeAll(fd, Buffer.from(data), tmp);
    io.fsync(fd, tmp);
    const f = fd;
    fd = -1;
    io.close(f, tmp);
    io.rename(tmp, path);
    renamed = true;
    io.fsyncDir(dirname(path));
  } catch (e) {
    if (fd >= 0) try { closeSync(fd); } catch { /* closed */ }
    if (!renamed) tryUnlink(tmp);
    throw ioError(what, path, e);
  }
}

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
  io.mkdirs(dirname(link), file);
  const target = relative(dirname(link), join(repoDir, "blobs", etag));
  try {
    if (lstatSync(link) && readlinkSync(link) === target) return;
    unlinkSync(link);
  } catch { /* no link yet */ }
  try {
    io.symlink(target, link); // a symlink appears whole or not at all
  } catch (e) {
    throw ioError(file, link, e);
  }
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
  io.mkdirs(join(repoDir, "blobs"), repoId);

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
    io.mkdirs(join(repoDir, "refs"), `refs/${revision}`);
    writeFileAtomic(join(repoDir, "refs", revision), commit, `refs/${revision}`);
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
    let fd = -1;
    try {
      fd = io.open(part, have ? "a" : "w");
      let n = have;
      progress(n);
      for await (const chunk of res.body) {
        try {
          io.writeAll(fd, chunk, part);
        } catch (e) {
          throw new LocalWriteError(e);
        }
        n += chunk.length;
        progress(Math.min(n, p.size));
      }
      lastError = null;
    } catch (e) {
      if (fd < 0 || e instanceof LocalWriteError) { // the disk, not the network: nothing to resume
        if (fd >= 0) try { closeSync(fd); } catch { /* closed */ }
        tryUnlink(part);
        throw ioError(p.file, part, e.cause ?? e);
      }
      if (signal?.aborted) { closeIgnoring(fd); throw e; }
      lastError = e; // connection dropped: resume from what we have
    }
    try {
      const f = fd;
      fd = -1;
      io.close(f, part);
    } catch (e) {
      tryUnlink(part);
      throw ioError(p.file, part, e);
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
  // durable before it enters the cache under its final name
  let fd = -1, renamed = false;
  try {
    fd = io.open(part, "r+");
    io.fsync(fd, part);
    const f = fd;
    fd = -1;
    io.close(f, part);
    io.rename(part, blob);
    renamed = true;
    io.fsyncDir(dirname(blob));
  } catch (e) {
    if (fd >= 0) closeIgnoring(fd);
    if (!renamed) tryUnlink(part);
    throw ioError(p.file, renamed ? blob : part, e);
  }
}

class LocalWriteError extends Error {
  constructor(cause) {
    super(cause.message, { cause });
  }
}

function closeIgnoring(fd) {
  try { closeSync(fd); } catch { /* closed */ }
}
