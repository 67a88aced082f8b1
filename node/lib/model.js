// Model: a loaded model folder. All generation on one model (its stateless
// calls and its chats) runs one call at a time, in call order; different
// models run in parallel. Each call runs on a native thread (never on the
// event loop).
import native from "./native.js";
import { NmlxError, codes, invalid } from "./errors.js";
import { generationOptions } from "./options.js";
import { runGeneration, streamOf, abortedResult } from "./run.js";
import { ChatTemplate, findChatTemplate } from "./template.js";
import { Chat } from "./chat.js";

const unloadedError = () => new NmlxError(codes.UNLOADED, "the model has been unloaded");

export class Model {
  #h;
  #dir;
  #id;
  #info;
  #tail = Promise.resolve();
  #closed = false;
  #unloading = null;
  #running = new Set(); // native sessions generating now
  #plain = null; // the session of stateless calls
  #chats = new Set(); // WeakRefs to this model's chats
  #templates = new Map();

  /** @internal use loadModel() */
  constructor(handle, dir, id) {
    this.#h = handle;
    this.#dir = dir;
    this.#id = id ?? dir;
    this.#info = native.modelInfo(handle);
  }

  /** The folder the model was loaded from. */
  get path() { return this.#dir; }
  /** The repository id or alias it was asked for (or the folder). */
  get id() { return this.#id; }
  get loaded() { return !this.#closed; }
  get info() {
    const i = this.#info;
    return { modelType: i.modelType, vocabSize: i.vocabSize, contextLength: i.maxContext,
      eosTokenIds: [...i.eosIds], bosTokenId: i.bosId >= 0 ? i.bosId : null,
      hasTokenizer: i.hasTokenizer, sampling: { ...i.sampler } };
  }

  #handle() {
    if (this.#closed) throw unloadedError();
    return this.#h;
  }

  tokenize(text, { special = true } = {}) {
    if (typeof text !== "string") throw invalid("tokenize: text must be a string");
    return Array.from(native.tokenize(this.#handle(), text, !!special));
  }

  detokenize(ids, { skipSpecial = false } = {}) {
    const limit = Math.max(this.#info.vocabSize, this.#info.tokenizerVocabSize);
    return native.detokenize(this.#handle(), Int32Array.from(toIds(ids, limit)), !!skipSpecial);
  }

  /** The model's chat template (see template.js); throws if it has none. */
  chatTemplate(name) {
    const key = name ?? "";
    if (!this.#templates.has(key)) {
      const found = findChatTemplate(this.#dir, name);
      if (!found) throw new NmlxError(codes.NO_CHAT_TEMPLATE,
        `${this.#dir} has no chat template (chat_template.jinja or tokenizer_config.json chat_template); ` +
        "pass { template } to chat()");
      this.#templates.set(key, new ChatTemplate(found.source, found.tokens));
    }
    return this.#templates.get(key);
  }

  /**
   * Renders messages with the model's chat template: the prompt text, or with
   * tokenize: true its ids (tokenized without adding BOS/EOS, since the
   * template writes them, as transformers does).
   */
  applyChatTemplate(messages, { addGenerationPrompt = true, templateName, tokenize = false, ...extra } = {}) {
    const text = this.chatTemplate(templateName).render(messages, { addGenerationPrompt, ...extra });
    return tokenize ? this.tokenize(text, { special: false }) : text;
  }

  // prompt: text (tokenized with the tokenizer's special tokens, like the C
  // tool's `nmlx run`), token ids, or chat messages (rendered with the
  // model's chat template).
  #promptIds(prompt) {
    let ids;
    if (typeof prompt === "string") ids = this.tokenize(prompt, { special: true });
    else if (Array.isArray(prompt) && prompt.length && typeof prompt[0] === "object")
      ids = this.tokenize(this.applyChatTemplate(prompt), { special: false });
    else ids = toIds(prompt, this.#info.vocabSize);
    if (!ids.length) throw invalid("the prompt is empty (it tokenizes to no tokens)");
    return ids;
  }

  /** Text completion; resolves with { text, finishReason, ... }. */
  generate(prompt, opts = {}) {
    return this.#oneShot(prompt, opts, null);
  }

  /** Like generate(), as an async iterator of text pieces (+ `.result`). */
  stream(prompt, opts = {}) {
    const o = generationOptions(opts, this.#info.sampler);
    return streamOf((onPiece, signal) => this.#oneShot(prompt, { ...opts, signal }, onPiece), o.signal);
  }

  #oneShot(prompt, opts, onPiece) {
    let o, ids;
    try {
      o = generationOptions(opts, this.#info.sampler);
      this.#handle();
      ids = this.#promptIds(prompt);
    } catch (e) {
      return Promise.reject(e);
    }
    return this._schedule(o.signal, () => {
      if (!this.#plain) this.#plain = native.createSession(this.#h, 0);
      native.sessionReset(this.#plain);
      return this._run(this.#plain, ids, o, onPiece);
    });
  }

  /** A conversation that keeps its KV cache between turns. */
  chat(opts = {}) {
    this.#handle();
    const chat = new Chat(this, opts);
    this.#chats.add(new WeakRef(chat));
    return chat;
  }

  /**
   * Ends a running generation (finishReason "abort"), rejects queued calls
   * with NMLX_ERR_UNLOADED, then frees the model. Safe to call twice.
   */
  unload() {
    if (this.#unloading) return this.#unloading;
    this.#closed = true;
    for (const s of this.#running) {
      try { native.sessionCancel(s); } catch { /* finished meanwhile */ }
    }
    this.#unloading = this.#tail.then(() => {
      for (const ref of this.#chats) ref.deref()?._free();
      this.#chats.clear();
      if (this.#plain) native.freeSession(this.#plain);
      this.#plain = null;
      native.freeModel(this.#h);
    });
    return this.#unloading;
  }

  // ---- for Chat (not public API) ----

  /** Queues fn (returning a Promise) behind this model's other calls. */
  _schedule(signal, fn) {
    if (this.#closed) return Promise.reject(unloadedError());
    const run = () => {
      if (this.#closed) throw unloadedError();
      if (signal?.aborted) return abortedResult();
      return fn();
    };
    const p = this.#tail.then(run, run);
    this.#tail = p.then(() => {}, () => {});
    return p;
  }

  async _run(session, ids, o, onPiece) {
    this.#running.add(session);
    try {
      return await runGeneration(session, ids, o, onPiece);
    } finally {
      this.#running.delete(session);
    }
  }

  _createSession() { return native.createSession(this.#handle(), 0); }
  /** The addon's model handle (for the server's scheduler); throws once unloaded. */
  _nativeHandle() { return this.#handle(); }
  _forgetChat(chat) {
    for (const ref of this.#chats) if (ref.deref() === chat || !ref.deref()) this.#chats.delete(ref);
  }
  get _samplerDefaults() { return this.#info.sampler; }
  get _eosIds() { return this.#info.eosIds; }
}

export function toIds(ids, vocabSize) {
  if (!(ids instanceof Int32Array) && !Array.isArray(ids))
    throw invalid("expected text, an array of token ids or chat messages");
  for (const id of ids)
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize)
      throw invalid(`token id ${id} is out of range [0, ${vocabSize})`);
  return Array.from(ids);
}
