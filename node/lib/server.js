// createServer(): an OpenAI-compatible HTTP server over one model, on Node's
// own `http`. Requests run on a Scheduler (scheduler.js): up to maxBatch at
// once, maxQueue more waiting, 429 beyond; a chat history that grows request
// by request reuses its cached prefix. Endpoints:
//   POST /v1/chat/completions   (stream over SSE or not)
//   POST /v1/completions        (prompt string)
//   GET  /v1/models, /v1/models/{id}, /health
// Errors are OpenAI-style {"error": {message, type, param, code}}.
import { createServer as httpServer } from "node:http";
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { basename } from "node:path";
import { loadModel } from "./index.js";
import { Model } from "./model.js";
import { Scheduler } from "./scheduler.js";
import { codes, invalid } from "./errors.js";

class HttpError extends Error {
  constructor(status, message, { type, param = null, code = null } = {}) {
    super(message);
    this.status = status;
    this.type = type ?? (status === 401 ? "authentication_error" : status === 429 ? "rate_limit_error"
      : status === 503 ? "unavailable_error" : status >= 500 ? "server_error" : "invalid_request_error");
    this.param = param;
    this.code = code;
  }
}

const bad = (message, param = null, code = null) => new HttpError(400, message, { param, code });

// The library's errors as HTTP errors.
function httpError(e) {
  if (e instanceof HttpError) return e;
  switch (e?.code) {
  case codes.QUEUE_FULL: return new HttpError(429, e.message, { code: "queue_full" });
  case "NMLX_ERR_CONTEXT_OVERFLOW": return bad(e.message, "messages", "context_length_exceeded");
  case codes.INVALID_ARG: return bad(e.message);
  case codes.TEMPLATE: return bad(e.message, "messages", "template_error");
  case codes.NO_CHAT_TEMPLATE: return bad(e.message, "messages", "no_chat_template");
  case codes.UNLOADED: return new HttpError(503, "the server is shutting down", { code: "shutting_down" });
  default: return new HttpError(500, e?.message ?? String(e), { code: e?.code ?? null });
  }
}

function sendJson(res, status, obj, headers = {}) {
  if (res.headersSent || res.destroyed) return;
  const body = JSON.stringify(obj);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body), ...headers });
  res.end(body);
}

function sendError(res, e, headers) {
  const h = httpError(e);
  sendJson(res, h.status, { error: { message: h.message, type: h.type, param: h.param, code: h.code } }, headers);
}

// ---- request fields ---------------------------------------------------------

function typeName(v) {
  return v === null ? "null" : Array.isArray(v) ? "array" : typeof v;
}

function optNumber(body, key, { min = -Infinity, max = Infinity, int = false } = {}) {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v) || (int && !Number.isInteger(v)))
    throw bad(`'${key}' must be ${int ? "an integer" : "a number"} (got ${typeName(v)})`, key, "invalid_type");
  if (v < min || v > max)
    throw bad(`'${key}' must be in [${min}, ${max}] (got ${v})`, key, "invalid_value");
  return v;
}

function optBool(body, key) {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "boolean") throw bad(`'${key}' must be a boolean (got ${typeName(v)})`, key, "invalid_type");
  return v;
}

// Message content: a string, or an array of parts of which only text is supported.
function textContent(content, i) {
  if (typeof content === "string") return content;
  if (content === null || content === undefined) return "";
  if (Array.isArray(content)) {
    return content.map((p, j) => {
      if (p && typeof p === "object" && p.type === "text" && typeof p.text === "string") return p.text;
      throw bad(`messages[${i}].content[${j}]: only text parts are supported`, "messages", "invalid_type");
    }).join("");
  }
  throw bad(`messages[${i}].content must be a string or an array of text parts (got ${typeName(content)})`,
    "messages", "invalid_type");
}

function parseMessages(body) {
  const m = body.messages;
  if (!Array.isArray(m) || !m.length)
    throw bad("'messages' must be a non-empty array of {role, content}", "messages",
      m === undefined ? "missing_required_parameter" : "invalid_type");
  return m.map((msg, i) => {
    if (!msg || typeof msg !== "object" || Array.isArray(msg))
      throw bad(`messages[${i}] must be an object`, "messages", "invalid_type");
    if (typeof msg.role !== "string") throw bad(`messages[${i}].role must be a string`, "messages", "invalid_type");
    return { role: msg.role, content: textContent(msg.content, i) };
  });
}

// The sampling and length fields shared by both endpoints, as generate() options.
// OpenAI's frequency_penalty and presence_penalty (additive) have no
// counterpart in the sampler: they are checked and ignored. repetition_penalty,
// top_k, min_p and ignore_eos (llama.cpp / vLLM extensions) map onto the sampler.
function generationFields(body, promptLength, ctx) {
  const o = {};
  const maxTokens = optNumber(body, "max_completion_tokens", { min: 1, int: true }) ??
    optNumber(body, "max_tokens", { min: 1, int: true });
  o.maxTokens = Math.max(0, Math.min(maxTokens ?? Infinity, ctx - promptLength));
  const t = optNumber(body, "temperature", { min: 0, max: 2 });
  if (t !== undefined) o.temperature = t;
  const p = optNumber(body, "top_p", { min: 0, max: 1 });
  if (p !== undefined) o.topP = p === 0 ? 1e-9 : p;
  const k = optNumber(body, "top_k", { min: 0, int: true });
  if (k !== undefined) o.topK = k;
  const minP = optNumber(body, "min_p", { min: 0, max: 1 });
  if (minP !== undefined) o.minP = minP;
  const rp = optNumber(body, "repetition_penalty", { min: 0.01, max: 100 });
  if (rp !== undefined) o.repetitionPenalty = rp;
  if (optBool(body, "ignore_eos")) o.ignoreEos = true;
  optNumber(body, "frequency_penalty", { min: -2, max: 2 });
  optNumber(body, "presence_penalty", { min: -2, max: 2 });
  const seed = optNumber(body, "seed", { int: true });
  if (seed !== undefined) o.seed = BigInt.asUintN(64, BigInt(seed));
  const stop = body.stop;
  if (stop !== undefined && stop !== null) {
    const list = typeof stop === "string" ? [stop] : stop;
    if (!Array.isArray(list) || list.length > 16 || list.some((s) => typeof s !== "string"))
      throw bad("'stop' must be a string or an array of at most 16 strings", "stop", "invalid_type");
    o.stop = list.filter((s) => s.length);
  }
  const n = optNumber(body, "n", { min: 1, max: 1, int: true });
  void n;
  if (optBool(body, "logprobs")) throw bad("'logprobs' is not supported", "logprobs", "unsupported");
  if (body.tools !== undefined && body.tools !== null && !(Array.isArray(body.tools) && !body.tools.length))
    throw bad("'tools' are not supported", "tools", "unsupported");
  const so = body.stream_options;
  if (so !== undefined && so !== null && (typeof so !== "object" || Array.isArray(so)))
    throw bad("'stream_options' must be an object", "stream_options", "invalid_type");
  return o;
}

// ---- the server --------------------------------------------------------------

const newId = (prefix) => `${prefix}-${randomBytes(12).toString("hex")}`;
const digest = (s) => createHash("sha256").update(s).digest();

/**
 * Loads the model (unless options.model is a loaded Model), starts listening
 * and resolves with the server. Options: model (folder, repo id or alias;
 * none = the built-in demo model), host ("127.0.0.1"), port (8080; 0 = any
 * free one), maxBatch (4), maxQueue (64), contextLength (0 = the model's),
 * cacheSize (maxBatch), prefillChunk (256), apiKey, device, precision, threads,
 * modelName (the id clients send and /v1/models lists), maxBodyBytes (8 MiB),
 * graceMs (5000, for close()).
 */
export async function createServer(options = {}) {
  if (options === null || typeof options !== "object") throw invalid("createServer: options must be an object");
  const {
    model: modelArg, host = "127.0.0.1", port = 8080, maxBatch = 4, maxQueue = 64, contextLength = 0,
    cacheSize, prefillChunk = 256, apiKey, device, precision, threads = 0, modelName, maxBodyBytes = 8 << 20,
    graceMs = 5000, ...rest
  } = options;
  const unknown = Object.keys(rest);
  if (unknown.length) throw invalid(`createServer: unknown option '${unknown[0]}'`);
  if (apiKey !== undefined && (typeof apiKey !== "string" || !apiKey)) throw invalid("createServer: apiKey must be a non-empty string");
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw invalid("createServer: port must be an integer in [0, 65535]");
  if (!Number.isInteger(maxBodyBytes) || maxBodyBytes < 1) throw invalid("createServer: maxBodyBytes must be an integer >= 1");

  const owned = !(modelArg instanceof Model);
  const model = owned
    ? await loadModel(modelArg, { threads, contextLength, ...(device ? { device } : {}), ...(precision ? { precision } : {}) })
    : modelArg;
  let scheduler;
  try {
    scheduler = new Scheduler(model, { maxBatch, maxQueue, cacheSize, contextLength, prefillChunk });
  } catch (e) {
    if (owned) await model.unload();
    throw e;
  }
  const ctx = scheduler.contextLength;
  const name = modelName ?? (typeof modelArg === "string" && !modelArg.startsWith("/") && !modelArg.startsWith(".")
    ? modelArg : basename(model.path));
  const names = new Set([name, model.id, model.path, basename(model.path)]);
  const created = Math.floor(Date.now() / 1000);
  const keyDigest = apiKey !== undefined ? digest(apiKey) : null;
  let closing = null;

  function authorized(req) {
    if (!keyDigest) return true;
    const m = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? "");
    return !!m && timingSafeEqual(digest(m[1].trim()), keyDigest);
  }

  function readBody(req) {
    return new Promise((resolve, reject) => {
      const declared = Number(req.headers["content-length"]);
      if (declared > maxBodyBytes) {
        req.resume();
        return reject(new HttpError(413, `the request body is ${declared} bytes; the limit is ${maxBodyBytes}`,
          { code: "request_too_large" }));
      }
      const chunks = [];
      let size = 0, over = false;
      req.on("data", (c) => {
        size += c.length;
        if (size > maxBodyBytes) over = true;
        else chunks.push(c);
      });
      req.on("end", () => over
        ? reject(new HttpError(413, `the request body is over the limit of ${maxBodyBytes} bytes`, { code: "request_too_large" }))
        : resolve(Buffer.concat(chunks).toString("utf8")));
      req.on("error", reject);
    });
  }

  async function jsonBody(req) {
    const text = await readBody(req);
    let body;
    try {
      body = JSON.parse(text);
    } catch (e) {
      throw bad(`the request body is not valid JSON: ${e.message}`, null, "invalid_json");
    }
    if (!body || typeof body !== "object" || Array.isArray(body))
      throw bad("the request body must be a JSON object", null, "invalid_json");
    if (body.model !== undefined && body.model !== null) {
      if (typeof body.model !== "string") throw bad("'model' must be a string", "model", "invalid_type");
      if (!names.has(body.model))
        throw new HttpError(404, `The model '${body.model}' does not exist; this server serves '${name}'`,
          { param: "model", code: "model_not_found" });
    }
    const stream = optBool(body, "stream") ?? false;
    return { body, stream };
  }

  // Runs one generation for a request: streams chunks (SSE) or answers once.
  async function complete(req, res, { body, stream }, ids, kind) {
    const opts = generationFields(body, ids.length, ctx);
    const includeUsage = stream && body.stream_options?.include_usage === true;
    const id = newId(kind === "chat" ? "chatcmpl" : "cmpl");
    const now = Math.floor(Date.now() / 1000);
    const object = kind === "chat" ? (stream ? "chat.completion.chunk" : "chat.completion") : "text_completion";
    const ac = new AbortController();
    res.on("close", () => { if (!res.writableFinished) ac.abort(); });
    const chunk = (choice, extra = {}) => ({ id, object, created: now, model: name, system_fingerprint: null,
      choices: choice ? [{ index: 0, ...choice, logprobs: null }] : [], ...extra });
    let started = false;
    const startStream = () => {
      if (started || res.destroyed) return;
      started = true;
      res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache", Connection: "keep-alive" });
      if (kind === "chat") write(chunk({ delta: { role: "assistant", content: "" }, finish_reason: null }));
    };
    const write = (obj) => { if (!res.destroyed) res.write(`data: ${JSON.stringify(obj)}\n\n`); };
    const onPiece = stream ? (piece) => {
      startStream();
      write(chunk(kind === "chat" ? { delta: { content: piece }, finish_reason: null }
        : { text: piece, finish_reason: null }));
    } : null;
    const promise = scheduler.submit(ids, { ...opts, signal: ac.signal }, onPiece);
    const r = await promise; // errors before any output: an error response
    if (ac.signal.aborted && res.destroyed) return; // the client left; its sequence was cancelled
    const usage = {
      prompt_tokens: r.promptTokens, completion_tokens: r.completionTokens,
      total_tokens: r.promptTokens + r.completionTokens,
      prompt_tokens_details: { cached_tokens: r.cachedTokens },
    };
    if (r.finishReason === "abort") { // cancelled by the shutdown
      if (!stream || !started) throw new HttpError(503, "the server is shutting down", { code: "shutting_down" });
      write({ error: { message: "the server is shutting down", type: "unavailable_error", param: null, code: "shutting_down" } });
      return void res.end();
    }
    const finish = r.finishReason; // "stop" | "length"
    if (stream) {
      startStream();
      write(chunk(kind === "chat" ? { delta: {}, finish_reason: finish } : { text: "", finish_reason: finish }));
      if (includeUsage) write(chunk(null, { usage }));
      res.end("data: [DONE]\n\n");
    } else {
      const choice = kind === "chat"
        ? { index: 0, message: { role: "assistant", content: r.text, refusal: null }, logprobs: null, finish_reason: finish }
        : { index: 0, text: r.text, logprobs: null, finish_reason: finish };
      sendJson(res, 200, { id, object, created: now, model: name, system_fingerprint: null, choices: [choice], usage });
    }
  }

  async function chatCompletions(req, res) {
    const parsed = await jsonBody(req);
    const messages = parseMessages(parsed.body);
    const ids = model.applyChatTemplate(messages, { tokenize: true });
    return complete(req, res, parsed, ids, "chat");
  }

  async function completions(req, res) {
    const parsed = await jsonBody(req);
    let prompt = parsed.body.prompt;
    if (Array.isArray(prompt) && prompt.length === 1 && typeof prompt[0] === "string") prompt = prompt[0];
    if (typeof prompt !== "string" || !prompt)
      throw bad("'prompt' must be a non-empty string", "prompt", prompt === undefined ? "missing_required_parameter" : "invalid_type");
    if (parsed.body.echo) throw bad("'echo' is not supported", "echo", "unsupported");
    if (parsed.body.suffix) throw bad("'suffix' is not supported", "suffix", "unsupported");
    return complete(req, res, parsed, model.tokenize(prompt, { special: true }), "text");
  }

  const modelObject = () => ({ id: name, object: "model", created, owned_by: "nmlx" });

  async function route(req, res) {
    const url = new URL(req.url, "http://localhost");
    const path = url.pathname.replace(/\/+$/, "") || "/";
    if (closing) {
      req.resume();
      throw new HttpError(503, "the server is shutting down", { code: "shutting_down" });
    }
    if (path === "/health" && req.method === "GET")
      return sendJson(res, 200, { status: "ok", model: name, ...scheduler.stats });
    if (!authorized(req)) {
      req.resume();
      throw new HttpError(401, req.headers.authorization ? "Incorrect API key provided"
        : "Missing API key: send 'Authorization: Bearer <key>'", { code: "invalid_api_key" });
    }
    const routes = {
      "/v1/chat/completions": { POST: chatCompletions },
      "/v1/completions": { POST: completions },
      "/v1/models": { GET: (q, s) => sendJson(s, 200, { object: "list", data: [modelObject()] }) },
    };
    if (path.startsWith("/v1/models/") && req.method === "GET") {
      const want = decodeURIComponent(path.slice("/v1/models/".length));
      if (!names.has(want)) throw new HttpError(404, `The model '${want}' does not exist`, { param: "model", code: "model_not_found" });
      return sendJson(res, 200, modelObject());
    }
    const r = routes[path];
    if (!r) {
      req.resume();
      throw new HttpError(404, `no route ${req.method} ${path}`, { code: "not_found" });
    }
    if (!r[req.method]) {
      req.resume();
      throw new HttpError(405, `${req.method} is not allowed on ${path} (use ${Object.keys(r).join(", ")})`,
        { code: "method_not_allowed" });
    }
    return r[req.method](req, res);
  }

  const server = httpServer((req, res) => {
    route(req, res).catch((e) => {
      if (res.headersSent) { // a stream that failed half-way: an error event, then the end
        if (!res.destroyed) {
          const h = httpError(e);
          res.end(`data: ${JSON.stringify({ error: { message: h.message, type: h.type, param: h.param, code: h.code } })}\n\n`);
        }
        return;
      }
      sendError(res, e, closing || e?.status === 413 ? { Connection: "close" } : {});
    });
  });
  server.keepAliveTimeout = 5000;

  try {
    await new Promise((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
  } catch (e) { // e.g. EADDRINUSE: give back what was set up
    await scheduler.close({ graceMs: 0 });
    if (owned) await model.unload();
    throw e;
  }
  const addr = server.address();
  const urlHost = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;

  return {
    /** The underlying http.Server. */
    http: server,
    model,
    scheduler,
    /** The id clients send as `model`. */
    modelName: name,
    host: addr.address,
    port: addr.port,
    url: `http://${urlHost}:${addr.port}`,
    /**
     * Stops accepting requests (new ones get 503), lets running ones finish
     * for graceMs, cancels the rest, closes the connections, frees the
     * sessions and, if the server loaded it, the model. Safe to call twice.
     */
    close({ graceMs: g = graceMs } = {}) {
      if (closing) return closing;
      closing = (async () => {
        const stopped = new Promise((r) => server.close(() => r()));
        server.closeIdleConnections?.();
        await scheduler.close({ graceMs: g });
        setImmediate(() => server.closeAllConnections?.());
        await stopped;
        if (owned) await model.unload();
      })();
      return closing;
    },
  };
}
