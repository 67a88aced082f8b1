// Generation options: validated here (clear messages, code
// NMLX_ERR_INVALID_ARG), merged over the model's recommended sampling
// (generation_config.json), and passed to the addon.
import { invalid } from "./errors.js";

const KNOWN = new Set(["maxTokens", "temperature", "topP", "topK", "minP", "repetitionPenalty",
  "repetitionContextSize", "seed", "stop", "signal", "ignoreEos", "onToken"]);

function num(o, key, { min = -Infinity, max = Infinity, int = false, minExclusive = false } = {}) {
  const v = o[key];
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v) || (int && !Number.isInteger(v)) ||
      v < min || v > max || (minExclusive && v === min))
    throw invalid(`option ${key} must be ${int ? "an integer" : "a number"} ` +
      `${minExclusive ? ">" : ">="} ${min}${max < Infinity ? ` and <= ${max}` : ""} (got ${String(v)})`);
  return v;
}

/** Validates user options; returns { native, signal, onToken }. */
export function generationOptions(opts = {}, samplerDefaults = {}) {
  if (opts === null || typeof opts !== "object") throw invalid("options must be an object");
  for (const k of Object.keys(opts))
    if (!KNOWN.has(k)) throw invalid(`unknown option '${k}' (known: ${[...KNOWN].join(", ")})`);
  const n = {
    maxTokens: num(opts, "maxTokens", { min: 0, max: 2 ** 31 - 1, int: true }) ?? 256,
    temperature: num(opts, "temperature", { min: 0, max: 100 }) ?? samplerDefaults.temperature ?? 0,
    topP: num(opts, "topP", { min: 0, max: 1, minExclusive: true }) ?? samplerDefaults.topP ?? 1,
    topK: num(opts, "topK", { min: 0, max: 2 ** 31 - 1, int: true }) ?? samplerDefaults.topK ?? 0,
    minP: num(opts, "minP", { min: 0, max: 1 }) ?? samplerDefaults.minP ?? 0,
    repetitionPenalty: num(opts, "repetitionPenalty", { min: 0, max: 100, minExclusive: true }) ??
      samplerDefaults.repetitionPenalty ?? 1,
    repetitionContextSize: num(opts, "repetitionContextSize", { min: 0, max: 2 ** 31 - 1, int: true }) ??
      samplerDefaults.repetitionContextSize ?? 20,
    ignoreEos: opts.ignoreEos ? 1 : 0,
  };
  let seed = opts.seed;
  if (seed === undefined) {
    seed = BigInt(Math.floor(Math.random() * 2 ** 53)); // fresh randomness per call unless pinned
  } else if (typeof seed === "number") {
    if (!Number.isSafeInteger(seed) || seed < 0) throw invalid(`option seed must be an integer >= 0 (got ${seed})`);
    seed = BigInt(seed);
  } else if (typeof seed !== "bigint" || seed < 0n || seed >= 2n ** 64n) {
    throw invalid("option seed must be a number or bigint in [0, 2^64)");
  }
  n.seed = seed;
  let stop = opts.stop ?? [];
  if (typeof stop === "string") stop = [stop];
  if (!Array.isArray(stop) || stop.some((s) => typeof s !== "string" || s.length === 0))
    throw invalid("option stop must be a non-empty string or an array of non-empty strings");
  n.stop = stop;
  const signal = opts.signal;
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw invalid("option signal must be an AbortSignal");
  if (opts.onToken !== undefined && typeof opts.onToken !== "function") throw invalid("option onToken must be a function");
  return { native: n, signal, onToken: opts.onToken };
}
