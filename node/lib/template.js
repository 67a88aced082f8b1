// Chat templates: the model's own Jinja template, rendered with
// @huggingface/jinja the way transformers' apply_chat_template does
// (messages, add_generation_prompt, special-token strings; the library
// itself provides raise_exception and strftime_now). Sources, first found wins: chat_template.jinja,
// tokenizer_config.json "chat_template" (a string, or a list of
// {name, template} where "default" is used unless a name is asked for),
// chat_template.json (processor format).
import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { Environment, Template } from "@huggingface/jinja";
import { NmlxError, codes } from "./errors.js";

function readJson(path) {
  if (!existsSync(path)) return null;
  try {
    return JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    throw new NmlxError("NMLX_ERR_FORMAT", `${path}: ${e.message}`);
  }
}

// tokenizer_config.json stores special tokens as strings or AddedToken dicts.
function tokenString(v) {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof v.content === "string") return v.content;
  return undefined;
}

function specialTokens(cfg) {
  const tokens = {};
  for (const k of ["bos_token", "eos_token", "unk_token", "pad_token"]) {
    const s = tokenString(cfg[k]);
    if (s !== undefined) tokens[k] = s;
  }
  return tokens;
}

/** bos_token, eos_token, ... strings from a folder's tokenizer_config.json. */
export function readSpecialTokens(dir) {
  return specialTokens(readJson(join(dir, "tokenizer_config.json")) ?? {});
}

function pick(source, name, where) {
  if (typeof source === "string") {
    if (name && name !== "default") throw new NmlxError(codes.NO_CHAT_TEMPLATE, `${where} has one chat template, not a named '${name}'`);
    return source;
  }
  if (Array.isArray(source)) {
    const want = name ?? "default";
    const hit = source.find((t) => t && t.name === want);
    if (!hit || typeof hit.template !== "string")
      throw new NmlxError(codes.NO_CHAT_TEMPLATE, `${where} has no chat template named '${want}' ` +
        `(it has: ${source.map((t) => t?.name).join(", ")})`);
    return hit.template;
  }
  return undefined;
}

/**
 * Finds the chat template of a model folder. Returns { source, tokens } or
 * null when the folder has none. `name` picks one of a named list.
 */
export function findChatTemplate(dir, name) {
  const cfg = readJson(join(dir, "tokenizer_config.json")) ?? {};
  const tokens = specialTokens(cfg);
  const jinjaPath = join(dir, "chat_template.jinja");
  let source;
  if (existsSync(jinjaPath)) source = readFileSync(jinjaPath, "utf8");
  else source = pick(cfg.chat_template, name, join(dir, "tokenizer_config.json")) ??
    pick(readJson(join(dir, "chat_template.json"))?.chat_template, name, join(dir, "chat_template.json"));
  return source === undefined ? null : { source, tokens };
}

// Items range() may make in one render, over all its calls. @huggingface/jinja's
// range() builds the whole array at once and rendering is synchronous, so a
// template looping over range(10**9), or range(10**4) inside range(10**4),
// blocked the event loop for minutes and could then exhaust the heap; past
// this budget the render fails with NMLX_ERR_TEMPLATE instead.
export const RANGE_BUDGET = 100_000;

// Python's range(stop) / range(start, stop[, step]) with that budget.
function boundedRange() {
  let left = RANGE_BUDGET;
  return (start, stop, step = 1) => {
    if (stop === undefined) {
      stop = start;
      start = 0;
    }
    if (![start, stop, step].every((v) => typeof v === "number" && Number.isFinite(v)))
      throw new Error("range() arguments must be finite numbers");
    if (step === 0) throw new Error("range() step must not be zero");
    const n = Math.max(0, Math.ceil((stop - start) / step));
    if (n > left)
      throw new Error(`range() of ${n} items goes over the limit of ${RANGE_BUDGET} range() items in one render`);
    left -= n;
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = start + i * step;
    return out;
  };
}

/** A compiled chat template: render(messages, options) -> prompt text. */
export class ChatTemplate {
  constructor(source, tokens = {}) {
    this.source = source;
    this.tokens = tokens;
    try {
      this.template = new Template(source);
    } catch (e) {
      throw new NmlxError(codes.TEMPLATE, `cannot parse the chat template: ${e.message}`, { cause: e });
    }
  }

  render(messages, { addGenerationPrompt = true, ...extra } = {}) {
    const context = {
      ...this.tokens,
      messages,
      add_generation_prompt: addGenerationPrompt,
      ...extra,
    };
    // Template.render declares the library's globals, range() among them, in
    // a fresh Environment (a context key cannot replace one); while it runs
    // (synchronously), the root environment's "range" is ours instead.
    const range = boundedRange();
    const set = Environment.prototype.set;
    Environment.prototype.set = function (name, value) {
      return set.call(this, name, name === "range" && !this.parent ? range : value);
    };
    try {
      return this.template.render(context);
    } catch (e) {
      throw new NmlxError(codes.TEMPLATE, `the chat template failed: ${e.message}`, { cause: e });
    } finally {
      Environment.prototype.set = set;
    }
  }
}
