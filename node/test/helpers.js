// Test models: the repository's tiny random-weight demo model (made with
// scripts/make_demo_model.mjs in a temp folder), with two test-only changes
// so that its text is readable and it can chat: ids the byte-level vocab
// leaves unnamed become plain words (added tokens), and tokenizer_config.json
// gets a ChatML template with <|im_start|>/<|im_end|> special tokens.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync, rmSync, cpSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";

export const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const repoDir = resolve(pkgDir, "..");
export const fixturesDir = join(repoDir, "tests", "fixtures");

export const CHATML = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const temps = [];
process.on("exit", () => { for (const d of temps) rmSync(d, { recursive: true, force: true }); });

export function tempDir(prefix = "nmlx-test-") {
  const d = mkdtempSync(join(tmpdir(), prefix));
  temps.push(d);
  return d;
}

let demo = null;
/** The folder of the patched demo model (made once per process). */
export function demoModel() {
  if (demo) return demo;
  const dir = join(tempDir(), "demo");
  execFileSync(process.execPath, [join(repoDir, "scripts", "make_demo_model.mjs"), dir, "--seed", "7"],
    { stdio: "ignore" });
  const tok = JSON.parse(readFileSync(join(dir, "tokenizer.json"), "utf8"));
  const cfg = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
  const eos = cfg.eos_token_id;
  const specials = { [eos + 1]: "<|im_start|>", [eos + 2]: "<|im_end|>" };
  for (let id = eos + 1; id < cfg.vocab_size; id++) {
    const special = id in specials;
    tok.added_tokens.push({ id, content: specials[id] ?? ` w${id}`, single_word: false, lstrip: false,
      rstrip: false, normalized: false, special });
  }
  writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(tok));
  const tc = JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8"));
  tc.chat_template = CHATML;
  writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify(tc, null, 2));
  // <|im_end|> ends a turn, as in ChatML models
  writeFileSync(join(dir, "generation_config.json"),
    JSON.stringify({ eos_token_id: [eos, eos + 2], do_sample: true, temperature: 0.8, top_p: 0.95 }));
  demo = dir;
  return dir;
}

/** A copy of the demo model folder, to edit. */
export function demoCopy() {
  const dir = join(tempDir(), "copy");
  cpSync(demoModel(), dir, { recursive: true });
  return dir;
}

export function fixture(name) {
  const dir = join(fixturesDir, name);
  return { dir, expected: JSON.parse(readFileSync(join(dir, "expected.json"), "utf8")) };
}
