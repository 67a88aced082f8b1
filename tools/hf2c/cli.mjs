#!/usr/bin/env node
// hf2c: generates src/generated/ from tools/hf2c/model-defs/.
//   node tools/hf2c/cli.mjs            write every generated file
//   node tools/hf2c/cli.mjs --check    fail (exit 1) if any file differs
//   node tools/hf2c/cli.mjs --family qwen3 --stdout   print one family's file
import { readdir, readFile, writeFile, rename, mkdir, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { generateAll } from "./generate.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..");

function parseArgs(argv) {
  const opts = { check: false, family: null, stdout: false, out: join(root, "src", "generated") };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--check") opts.check = true;
    else if (a === "--stdout") opts.stdout = true;
    else if (a === "--family") opts.family = argv[++i];
    else if (a === "--out") opts.out = argv[++i];
    else if (a === "--help" || a === "-h") {
      console.log("usage: node tools/hf2c/cli.mjs [--check] [--family NAME --stdout] [--out DIR]");
      process.exit(0);
    } else throw new Error(`unknown option '${a}'`);
  }
  return opts;
}

async function readOrNull(p) {
  try { return await readFile(p, "utf8"); } catch { return null; }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const { defs, files } = await generateAll();
  if (opts.stdout) {
    const d = defs.find((x) => x.family === opts.family);
    if (!d) throw new Error(`no model-def for family '${opts.family}'`);
    process.stdout.write(files.get(join("models", `${d.family}.c`)));
    return;
  }
  const stale = [];
  for (const [rel, content] of files) {
    const path = join(opts.out, rel);
    if ((await readOrNull(path)) === content) continue;
    stale.push(rel);
    if (!opts.check) {
      await mkdir(dirname(path), { recursive: true });
      await writeFile(`${path}.tmp`, content);
      await rename(`${path}.tmp`, path);
    }
  }
  // Files in models/ that no model-def produces are stale too.
  const existing = (await readdir(join(opts.out, "models")).catch(() => [])).filter((f) => f.endsWith(".c"));
  for (const f of existing) {
    const rel = join("models", f);
    if (files.has(rel)) continue;
    stale.push(rel);
    if (!opts.check) await unlink(join(opts.out, rel));
  }
  if (opts.check) {
    if (stale.length) {
      console.error(`hf2c: generated files differ from the model-defs: ${stale.join(", ")}\nrun: node tools/hf2c/cli.mjs`);
      process.exit(1);
    }
    console.log(`hf2c: ${files.size} generated files up to date`);
  } else {
    console.log(`hf2c: wrote ${stale.length} of ${files.size} files`);
  }
}

main().catch((e) => {
  console.error(`hf2c: ${e.message}`);
  process.exit(1);
});
