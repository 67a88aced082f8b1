// One generation on a native session, as a Promise, plus the push-to-pull
// channel that turns it into an async iterator.
import native from "./native.js";

/**
 * Runs the addon's generate on `session` (a native handle). Pieces of text
 * go to onPiece as they arrive; resolves with the result, or rejects with
 * the library's error. `signal` cancels (finishReason "abort"). `submit`
 * starts it: the addon's generate (its own thread) unless a scheduler's.
 */
export function runGeneration(session, promptIds, o, onPiece, submit = native.generate) {
  return new Promise((resolve, reject) => {
    let text = "";
    const tokens = [];
    const onAbort = () => {
      try { native.sessionCancel(session); } catch { /* already finished or freed */ }
    };
    const onData = (piece, ids) => {
      for (const id of ids) tokens.push(id);
      if (!piece) return;
      text += piece;
      try {
        onPiece?.(piece);
        o.onToken?.(piece);
      } catch (e) {
        queueMicrotask(() => { throw e; }); // a consumer bug: surface it, never into native code
      }
    };
    const onDone = (err, r) => {
      o.signal?.removeEventListener("abort", onAbort);
      if (err) return reject(err);
      const decodeTps = r.completionTokens > 1 && r.decodeSeconds > 0
        ? (r.completionTokens - 1) / r.decodeSeconds : 0;
      resolve({
        text,
        finishReason: r.finishReason,
        promptTokens: r.promptTokens,
        completionTokens: r.completionTokens,
        tokensPerSecond: decodeTps,
        timeToFirstTokenMs: r.completionTokens ? r.prefillSeconds * 1000 : 0,
        prefillTokensPerSecond: r.prefillSeconds > 0 ? r.promptTokens / r.prefillSeconds : 0,
        tokens,
        rawText: r.rawText,
      });
    };
    try {
      submit(session, Int32Array.from(promptIds), o.native, onData, onDone);
    } catch (e) {
      return reject(e);
    }
    if (o.signal) {
      if (o.signal.aborted) onAbort();
      else o.signal.addEventListener("abort", onAbort, { once: true });
    }
  });
}

/** The result of a call that was aborted before it started. */
export function abortedResult() {
  return { text: "", finishReason: "abort", promptTokens: 0, completionTokens: 0, tokensPerSecond: 0,
    timeToFirstTokenMs: 0, prefillTokensPerSecond: 0, tokens: [], rawText: "" };
}

/**
 * Turns start(onPiece, signal) -> Promise<result> into an async iterable of
 * pieces with a `result` promise. Leaving the loop early (break, throw)
 * aborts the generation.
 */
export function streamOf(start, userSignal) {
  const ac = new AbortController();
  const forward = () => ac.abort(userSignal.reason);
  if (userSignal) {
    if (userSignal.aborted) ac.abort(userSignal.reason);
    else userSignal.addEventListener("abort", forward, { once: true });
  }
  const queue = [];
  let waiting = null, finished = false, failure = null;
  const wake = () => {
    if (!waiting) return;
    const w = waiting;
    waiting = null;
    w();
  };
  const result = start((piece) => { queue.push(piece); wake(); }, ac.signal).then(
    (r) => { finished = true; wake(); return r; },
    (e) => { finished = true; failure = e; wake(); throw e; },
  ).finally(() => userSignal?.removeEventListener("abort", forward));
  result.catch(() => {}); // the iterator reports failures; `result` may go unread
  const iterator = {
    async next() {
      for (;;) {
        if (queue.length) return { value: queue.shift(), done: false };
        if (failure) throw failure;
        if (finished) return { value: undefined, done: true };
        await new Promise((r) => { waiting = r; });
      }
    },
    async return() {
      if (!finished) ac.abort();
      await result.catch(() => {});
      return { value: undefined, done: true };
    },
    [Symbol.asyncIterator]() { return this; },
  };
  return Object.assign(iterator, { result });
}
