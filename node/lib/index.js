// nmlx: LLM inference in C for Node.js. See README.md and index.d.ts.
import { existsSync, statSync, readFileSync } from "node:fs";
import { platform, arch } from "node:os";
import { join } from "node:path";
import native from "./native.js";
import { Model } from "./model.js";
import { NmlxError, codes, invalid } from "./errors.js";
import { RECOMMENDED_MODELS, resolveModelId } from "./models.js";
import { snapshotDownload } from "./hub.js";
import { demoModelDir } from "./paths.js";

export { Model } from "./model.js";
export { Chat } from "./chat.js";
export { NmlxError, codes } from "./errors.js";
export { RECOMMENDED_MODELS, resolveModelId } from "./models.js";
export { ChatTemplate, findChatTemplate } from "./template.js";
export { snapshotDownload, hubCacheDir } from "./hub.js";
export { createServer } from "./server.js";
export { Scheduler } from "./scheduler.js";

const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));

/** Package version and the C library's version. */
export function getVersion() {
  return pkg.version;
}
export function getLibraryVersion() {
  return native.version();
}

/** True where nmlx runs: Linux on x86-64 or arm64 with the addon built. */
export function isSupported() {
  return platform() === "linux" && (arch() === "x64" || arch() === "arm64") &&
    typeof native.loadModel === "function";
}

function isDir(p) {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** The folder of the built-in demo model ($NMLX_DEMO_MODEL, else the package's models/demo). */
export function demoModelPath() {
  return demoModelDir();
}

// The demo model folder for a call given no model, said in one line on stderr.
function useDemoModel() {
  const dir = demoModelDir();
  if (!existsSync(join(dir, "config.json")))
    throw new NmlxError("NMLX_ERR_IO", `no model given and the built-in demo model is missing: no config.json in ${dir}` +
      (process.env.NMLX_DEMO_MODEL ? " (from NMLX_DEMO_MODEL)" : " (set NMLX_DEMO_MODEL or pass a model)"));
  process.stderr.write(`nmlx: no model given; using the built-in demo model at ${dir} ` +
    "(pass a model folder or repository id for a real model)\n");
  return dir;
}

/**
 * Loads a model: a local folder, a HuggingFace repository id
 * ("Qwen/Qwen3-0.6B", downloaded into the HF cache), or an alias of
 * RECOMMENDED_MODELS. Without one (undefined, or only the options), the
 * built-in demo model (demoModelPath()), saying so on stderr.
 */
export async function loadModel(idOrPath, opts = {}) {
  if (idOrPath !== null && typeof idOrPath === "object" && arguments.length === 1) {
    opts = idOrPath;
    idOrPath = undefined;
  }
  if (idOrPath === undefined || idOrPath === null) idOrPath = useDemoModel();
  if (typeof idOrPath !== "string" || !idOrPath) throw invalid("loadModel: expected a folder, repository id or alias");
  const { threads = 0, contextLength = 0, onProgress, revision, noTokenizer = false, device, precision, ...rest } = opts;
  const unknown = Object.keys(rest).filter((k) => !["endpoint", "token", "cacheDir", "offline", "signal"].includes(k));
  if (unknown.length) throw invalid(`loadModel: unknown option '${unknown[0]}'`);
  // the addon reads both as int32: 2 ** 32 + 1 threads would wrap to 1
  if (!Number.isInteger(threads) || threads < 0 || threads > 1024)
    throw invalid(`loadModel: threads must be an integer in [0, 1024] (got ${String(threads)})`);
  if (!Number.isInteger(contextLength) || contextLength < 0 || contextLength > 2 ** 31 - 1)
    throw invalid(`loadModel: contextLength must be an integer in [0, 2147483647] (got ${String(contextLength)})`);
  if (device !== undefined && (typeof device !== "string" || !/^(cpu|cuda(:\d+)?)$/.test(device)))
    throw invalid(`loadModel: device must be "cpu", "cuda" or "cuda:N" (got ${String(device)})`);
  if (precision !== undefined && !["default", "int8", "f32"].includes(precision))
    throw invalid(`loadModel: precision must be "default", "int8" or "f32" (got ${String(precision)})`);
  let dir = idOrPath, id = idOrPath;
  if (!isDir(idOrPath)) {
    id = resolveModelId(idOrPath);
    const looksLikeRepo = /^[\w.-]+\/[\w.-]+$/.test(id) && !idOrPath.startsWith(".") && !idOrPath.startsWith("/");
    if (!looksLikeRepo) {
      throw new NmlxError("NMLX_ERR_IO", `model folder '${idOrPath}' does not exist, and it is not a ` +
        "HuggingFace repository id (org/name) or an alias of RECOMMENDED_MODELS");
    }
    dir = await snapshotDownload(id, { revision, onProgress, ...rest });
  }
  const handle = await native.loadModel(dir, threads, contextLength, !!noTokenizer, device, precision);
  return new Model(handle, dir, id);
}

/** One-shot: load, generate, unload (node-mlx's generate()). */
export async function generate(modelIdOrAlias, prompt, opts = {}) {
  const { threads, contextLength, onProgress, ...genOpts } = opts;
  const model = await loadModel(modelIdOrAlias, { threads, contextLength, onProgress });
  try {
    return await model.generate(prompt, genOpts);
  } finally {
    await model.unload();
  }
}

export { codes as errorCodes };
