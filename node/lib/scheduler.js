// Scheduler: owns one model for the server and runs many requests on it.
// Up to maxBatch sequences are active at once, each on its own native
// session (its own KV cache and sampling parameters); the addon's scheduler
// thread (src/sched.c) advances them round-robin, one forward pass each per
// round (a prompt chunk or one token). Up to maxQueue more wait in arrival
// order; beyond that submit() rejects with NMLX_ERR_QUEUE_FULL.
//
// Prompt cache: a finished sequence's session goes into a small LRU
// (cacheSize) together with the token ids its KV cache holds (prompt +
// generated tokens but the last, which is never evaluated). A new request
// takes the cached session sharing the longest token prefix with its prompt,
// trims it to that prefix and evaluates only the rest; the result says how
// many prompt tokens were reused (cachedTokens).
import native from "./native.js";
import { NmlxError, codes, invalid } from "./errors.js";
import { generationOptions } from "./options.js";
import { runGeneration, abortedResult } from "./run.js";

const common = (a, b) => {
  const n = Math.min(a.length, b.length);
  let k = 0;
  while (k < n && a[k] === b[k]) k++;
  return k;
};

export class Scheduler {
  #model;
  #sched;
  #submit;
  #ctx;
  #maxBatch;
  #maxQueue;
  #cacheSize;
  #active = new Map(); // session -> Promise of its run
  #waiting = []; // { start, abort }
  #cache = []; // { session, ids }, least recently used first
  #closing = null;
  #counts = { completed: 0, cancelled: 0, failed: 0 };

  /**
   * model: a loaded Model (the scheduler uses it exclusively). Options:
   * maxBatch (4), maxQueue (64), cacheSize (maxBatch; 0 = no prompt cache),
   * contextLength (per sequence; 0 = the model's), prefillChunk (256 tokens
   * per round; 0 = whole prompts).
   */
  constructor(model, { maxBatch = 4, maxQueue = 64, cacheSize, contextLength = 0, prefillChunk = 256 } = {}) {
    const int = (v, name, min, max = Number.MAX_SAFE_INTEGER) => {
      if (!Number.isInteger(v) || v < min || v > max) {
        throw invalid(`Scheduler: ${name} must be an integer in [${min}, ${max}]`);
      }
      return v;
    };
    this.#model = model;
    this.#maxBatch = int(maxBatch, "maxBatch", 1, 4096);
    this.#maxQueue = int(maxQueue, "maxQueue", 0);
    this.#cacheSize = int(cacheSize ?? maxBatch, "cacheSize", 0);
    int(contextLength, "contextLength", 0);
    this.#ctx = contextLength || model.info.contextLength;
    const h = model._nativeHandle();
    this.#sched = native.schedCreate(h, int(prefillChunk, "prefillChunk", 0), this.#maxBatch);
    this.#submit = (session, ids, opts, onData, onDone) =>
      native.schedSubmit(this.#sched, session, ids, opts, onData, onDone);
  }

  /** Tokens one sequence may hold (prompt + completion). */
  get contextLength() { return this.#ctx; }
  get maxBatch() { return this.#maxBatch; }
  /**
   * Counts for /health: running, waiting, cached sessions; sequences completed, cancelled, failed;
   * batchedSteps and batchedTokens (decode steps that advanced several sequences at once, and
   * the tokens they evaluated); rounds, batchSeconds, forwardSeconds, sampleSeconds, idleSeconds
   * (the native thread's rounds and where its time went: src/sched.c schedStats).
   */
  get stats() {
    return { active: this.#active.size, waiting: this.#waiting.length, cached: this.#cache.length, ...this.#counts,
      ...native.schedStats(this.#sched) };
  }

  /**
   * Generates from token ids. opts are generate()'s options (maxTokens,
   * temperature, topP, ..., stop, signal); onPiece gets text pieces. Resolves
   * with generate()'s result plus cachedTokens (prompt tokens reused) and
   * promptTokens counting the whole prompt.
   */
  submit(ids, opts = {}, onPiece = null) {
    if (this.#closing) return Promise.reject(new NmlxError(codes.UNLOADED, "the server is shutting down"));
    let o;
    try {
      o = generationOptions(opts, this.#model.info.sampling);
      if (!ids.length) throw invalid("the prompt is empty (it tokenizes to no tokens)");
      if (ids.length >= this.#ctx)
        throw new NmlxError("NMLX_ERR_CONTEXT_OVERFLOW", `the prompt has ${ids.length} tokens; the context ` +
          `length is ${this.#ctx} (the prompt and at least one generated token must fit)`);
    } catch (e) {
      return Promise.reject(e);
    }
    if (o.signal?.aborted) return Promise.resolve({ ...abortedResult(), cachedTokens: 0 });
    if (this.#active.size < this.#maxBatch) return this.#start(ids, o, onPiece);
    if (this.#waiting.length >= this.#maxQueue)
      return Promise.reject(new NmlxError(codes.QUEUE_FULL, `the server is busy: ${this.#active.size} ` +
        `requests running and ${this.#waiting.length} waiting (max ${this.#maxQueue}); retry later`));
    return new Promise((resolve, reject) => {
      const entry = {
        start: () => {
          o.signal?.removeEventListener("abort", entry.abort);
          this.#start(ids, o, onPiece).then(resolve, reject);
        },
        abort: () => {
          const i = this.#waiting.indexOf(entry);
          if (i >= 0) this.#waiting.splice(i, 1);
          resolve({ ...abortedResult(), cachedTokens: 0 });
        },
        fail: (e) => reject(e),
      };
      o.signal?.addEventListener("abort", entry.abort, { once: true });
      this.#waiting.push(entry);
    });
  }

  // A session for `ids`: the cached one sharing the longest prefix (trimmed
  // to it, one token short of the whole prompt so there is something to
  // evaluate), else a new one, else the least recently used one, emptied.
  #acquire(ids) {
    let best = -1, keep = 0;
    this.#cache.forEach((e, i) => {
      const k = common(e.ids, ids);
      if (k > keep) { best = i; keep = k; }
    });
    if (best < 0) {
      if (this.#cache.length && this.#active.size + this.#cache.length >= this.#maxBatch + this.#cacheSize) best = 0;
      else return { session: native.createSession(this.#model._nativeHandle(), this.#ctx), keep: 0 };
    }
    const [e] = this.#cache.splice(best, 1);
    keep = Math.min(keep, ids.length - 1);
    if (keep === 0) native.sessionReset(e.session);
    else native.sessionTrim(e.session, native.sessionPosition(e.session) - keep);
    return { session: e.session, keep };
  }

  #release(session, ids) {
    if (this.#closing || this.#cacheSize === 0) return native.freeSession(session);
    if (!ids || native.sessionPosition(session) !== ids.length) { // unknown state: start over
      native.sessionReset(session);
      ids = [];
    }
    this.#cache.push({ session, ids });
    while (this.#cache.length > this.#cacheSize) native.freeSession(this.#cache.shift().session);
  }

  #start(ids, o, onPiece) {
    let session, keep;
    try {
      ({ session, keep } = this.#acquire(ids));
    } catch (e) {
      return Promise.reject(e);
    }
    const run = (async () => {
      let held = null;
      try {
        let r;
        try {
          r = await runGeneration(session, ids.slice(keep), o, onPiece, this.#submit);
        } catch (e) {
          this.#counts.failed++;
          throw e;
        }
        if (r.finishReason !== "abort") held = [...ids, ...r.tokens.slice(0, -1)];
        this.#counts[r.finishReason === "abort" ? "cancelled" : "completed"]++;
        return { ...r, promptTokens: ids.length, cachedTokens: keep };
      } finally {
        this.#active.delete(session);
        this.#release(session, held);
        this.#next();
      }
    })();
    this.#active.set(session, run.catch(() => {}));
    return run;
  }

  #next() {
    while (this.#active.size < this.#maxBatch && this.#waiting.length && !this.#closing)
      this.#waiting.shift().start();
  }

  /**
   * Stops taking requests: waiting ones reject (NMLX_ERR_UNLOADED), running
   * ones may finish for graceMs (default 5000), then are cancelled
   * (finishReason "abort"). Frees the sessions; the model stays loaded
   * (its owner unloads it). Safe to call twice.
   */
  close({ graceMs = 5000 } = {}) {
    if (this.#closing) return this.#closing;
    this.#closing = (async () => {
      for (const w of this.#waiting.splice(0)) w.fail(new NmlxError(codes.UNLOADED, "the server is shutting down"));
      const all = () => Promise.all(this.#active.values());
      let timer;
      const grace = new Promise((r) => { timer = setTimeout(r, graceMs); });
      await Promise.race([all(), grace]);
      clearTimeout(timer);
      for (const s of this.#active.keys()) {
        try { native.sessionCancel(s); } catch { /* finished meanwhile */ }
      }
      await all();
      native.schedClose(this.#sched);
      for (const e of this.#cache.splice(0)) native.freeSession(e.session);
    })();
    return this.#closing;
  }
}
