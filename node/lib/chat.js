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
  #marks = [{ n: 0, off: 0 }]; // token counts n where the held text is covered[0, off)
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
  /** Number of tokens held in the KV cache. */
  get cachedTokens() { return this.#ids.length; }
  /** The token ids held in the KV cache (the conversation as the model saw it). */
  get tokens() { return [...this.#ids]; }

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
    this.#marks = [{ n: 0, off: 0 }];
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
    this.#marks = [{ n: 0, off: 0 }];
  }

  // How much of the session to keep for the rendered conversation `full`,
  // and the tokens to evaluate after it. Two candidates, the larger wins:
  // the last mark inside the text `full` shares with what the session holds
  // (then only the rest of `full` is tokenized), and the longest common
  // prefix of the session's tokens with `full` tokenized whole.
  #reuse(full) {
    const covered = this.#covered ?? "";
    let same = 0;
    const max = Math.min(full.length, covered.length);
    while (same < max && full.charCodeAt(same) === covered.charCodeAt(same)) same++;
    let mark = { n: 0, off: 0 };
    for (const m of this.#marks) if (m.off <= same && m.n >= mark.n && m.off < full.length) mark = m;
    let keep = mark.n;
    let delta = this.#model.tokenize(full.slice(mark.off), { special: false });
    if (keep < this.#ids.length) {
      const all = this.#model.tokenize(full, { special: false });
      let k = 0;
      while (k < this.#ids.length && k < all.length && this.#ids[k] === all[k]) k++;
      if (k === all.length) k--; // re-evaluate one token to get logits
      if (k > keep) {
        keep = k;
        delta = all.slice(k);
        this.#marks = this.#marks.filter((m) => m.off <= same);
      }
    }
    if (!delta.length) throw invalid("the chat template rendered an empty prompt");
    return { keep, delta };
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
      let { keep, delta } = this.#reuse(full);
      if (!this.#session) this.#session = this.#model._createSession();
      if (keep < this.#ids.length) native.sessionTrim(this.#session, this.#ids.length - keep);
      this.#ids.length = keep;
      this.#marks = this.#marks.filter((m) => m.n <= keep);
      this.#covered = null;
      let r;
      try {
        r = await this.#model._run(this.#session, delta, o, onPiece);
      } catch (e) {
        if (this.#session) native.sessionReset(this.#session); // unknown state: start over next turn
        this.#ids = [];
        this.#marks = [{ n: 0, off: 0 }];
        this.#covered = "";
        throw e;
      }
      if (this.#closed) return { ...r, cachedTokens: keep };
      this.#ids.push(...delta, ...r.tokens);
      this.#marks.push({ n: keep + delta.length, off: full.length });
      const last = r.tokens.at(-1);
      if (last !== undefined && this.#model._eosIds.includes(last)) {
        // before the end-of-turn token, so a template that writes another end marker can reuse the reply
        const eosText = this.#model.detokenize([last]);
        if (r.rawText.endsWith(eosText))
          this.#marks.push({ n: this.#ids.length - 1, off: full.length + r.rawText.length - eosText.length });
      }
      this.#covered = full + r.rawText;
      this.#marks.push({ n: this.#ids.length, off: this.#covered.length });
      if (r.finishReason !== "abort" || r.completionTokens > 0)
        this.#messages.push({ role: "user", content }, { role: "assistant", content: r.text });
      return { ...r, cachedTokens: keep };
    });
  }
}
