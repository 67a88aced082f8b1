#!/usr/bin/env node
// npm pack / publish hooks that make the package self-contained while the
// repository stays the single source:
//   node scripts/pack.mjs prepack    copy the engine (CMakeLists.txt, include/,
//                                    src/, cli/) into engine/ and the demo
//                                    model (models/demo/) into models/demo/
//   node scripts/pack.mjs postpack   remove those copies again
// Both do nothing outside a repository clone (an installed package already
// holds its copies). The copies are git-ignored (/node/engine/, /node/models/).
import { cpSync, existsSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { pkgDir, inRepository } from "../lib/paths.js";

const repo = resolve(pkgDir, "..");
const ENGINE = ["CMakeLists.txt", "include", "src", "cli"];
const DEMO_NEEDS = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"];
const copies = [join(pkgDir, "engine"), join(pkgDir, "models")];

function fail(msg) {
  console.error(`nmlx pack: ${msg}`);
  process.exit(1);
}

const step = process.argv[2];
if (step !== "prepack" && step !== "postpack") fail("usage: node scripts/pack.mjs prepack|postpack");
if (!inRepository()) process.exit(0);
for (const d of copies) rmSync(d, { recursive: true, force: true });
if (step === "prepack") {
  const demo = join(repo, "models", "demo");
  const lacking = DEMO_NEEDS.filter((f) => !existsSync(join(demo, f)));
  if (lacking.length)
    fail(`${demo} lacks ${lacking.join(", ")}: the package ships the built-in demo model (see models/README.md)`);
  for (const f of ENGINE) {
    if (!existsSync(join(repo, f))) fail(`${join(repo, f)} is missing`);
    cpSync(join(repo, f), join(pkgDir, "engine", f), { recursive: true });
  }
  cpSync(demo, join(pkgDir, "models", "demo"), { recursive: true });
}
