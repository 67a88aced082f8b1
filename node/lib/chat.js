// Chat: a conversation on its own native session. Each turn renders the whole
// conversation with the model's chat template, but only prefills what the
// session does not hold yet: when the new rendering extends the text the
// session already covers (prompt + generated reply), just the new turn's text
// is tokenized and evaluated; otherwise (a template that rewrites earlier
// turns, a stop string cut the reply) the longest common token prefix is
// kept and the rest re-evaluated.
import native from "./native.js";
import { NmlxError, codes, invalid } from "./errors.js";
import { generationOptions } from "./options.js";
import { streamOf, abortedResult } from "./run.js";
import { ChatTemplate, readSpecialTokens } from "./template.js";

export class Chat {
  #model;
  #template;
  #templateArgs;
  #system;
  #messages = [];
  #session = null;
  #ids = []; // the tokens the session holds
  #covered = ""; // the text those tokens stand for, or null if unknown
  #closed = false;

  /** @internal use model.chat() */
  constructor(model, { system, template, templateName, templateArgs = {} } = {}) {
    if (system !== undefined && typeof system !== "string") throw invalid("chat: system must be a string");
    if (template !== undefined && typeof template !== "string") throw invalid("chat: template must be a string");
    this.#model = model;
    this.#template = template !== undefined
      ? new ChatTemplate(template, readSpecialTokens(model.path))
      : model.chatTemplate(templateName);
    this.#templateArgs = templateArgs;
    this.#system = system;
    this.reset();
  }

  /** The conversation so far ({ role, content } objects). */
  get messages() { return this.#messages.map((m) => ({ ...m })); }
  /** Tokens held in the KV cache. */
  get cachedTokens() { return this.#ids.length; }

  send(content, opts = {}) {
    return this.#turn(content, opts, null);
  }

  stream(content, opts = {}) {
    const o = generationOptions(opts);
    return streamOf((onPiece, signal) => this.#turn(content, { ...opts, signal }, onPiece), o.signal);
  }

  /** Forgets the conversation (keeps the system prompt). */
  reset() {
    this.#messages = this.#system !== undefined ? [{ role: "system", content: this.#system }] : [];
    this.#ids = [];
    this.#covered = "";
    if (this.#session) {
      try { native.sessionReset(this.#session); } catch { this.#dropSession(); }
    }
  }

  /** Frees the session; later calls fail with NMLX_ERR_UNLOADED. */
  close() {
    this.#closed = true;
    this.#dropSession();
    this.#model._forgetChat(this);
  }

  _free() {
    this.#closed = true;
    this.#dropSession();
  }

  #dropSession() {
    if (this.#session) native.freeSession(this.#session);
    this.#session = null;
    this.#ids = [];
    this.#covered = "";
  }

  #turn(content, opts, onPiece) {
    let o;
    try {
      if (typeof content !== "string") throw invalid("chat: the message must be a string");
      if (this.#closed) throw new NmlxError(codes.UNLOADED, "the chat has been closed");
      o = generationOptions(opts, this.#model._samplerDefaults);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#model._schedule(o.signal, async () => {
      if (this.#closed) throw new NmlxError(codes.UNLOADED, "the chat has been closed");
      const messages = [...this.#messages, { role: "user", content }];
      const full = this.#template.render(messages, { addGenerationPrompt: true, ...this.#templateArgs });
      let keep, delta;
      if (this.#covered !== null && this.#ids.length && full.startsWith(this.#covered) &&
          full.length > this.#covered.length) {
        keep = this.#ids.length;
        delta = this.#model.tokenize(full.slice(this.#covered.length), { special: false });
      } else {
        const all = this.#model.tokenize(full, { special: false });
        keep = 0;
        while (keep < this.#ids.length && keep < all.length && this.#ids[keep] === all[keep]) keep++;
        if (keep === all.length) keep--; // re-evaluate one token to get logits
        delta = all.slice(keep);
      }
      if (!delta.length || keep < 0) throw invalid("the chat template rendered an empty prompt");
      if (!this.#session) this.#session = this.#model._createSession();
      if (keep < this.#ids.length) {
        native.sessionTrim(this.#session, this.#ids.length - keep);
        this.#ids.length = keep;
      }
      this.#covered = null;
      let r;
      try {
        r = await this.#model._run(this.#session, delta, o, onPiece);
      } catch (e) {
        if (this.#session) native.sessionReset(this.#session); // unknown state: start over next turn
        this.#ids = [];
        this.#covered = "";
        throw e;
      }
      if (this.#closed) return { ...r, cachedTokens: keep };
      this.#ids.push(...delta, ...r.tokens);
      const last = r.tokens.at(-1);
      const eos = r.finishReason === "stop" && last !== undefined && this.#model._eosIds.includes(last);
      this.#covered = full + r.rawText + (eos ? this.#model.detokenize([last]) : "");
      if (r.finishReason !== "abort" || r.completionTokens > 0)
        this.#messages.push({ role: "user", content }, { role: "assistant", content: r.text });
      return { ...r, cachedTokens: keep };
    });
  }
}
