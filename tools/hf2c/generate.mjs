// hf2c core: loads and validates the model-defs and emits every generated
// file in memory. cli.mjs writes or checks them.
import { readdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { resolveModelDef } from "./features.mjs";
import { canEmit, emitStandardFamily } from "./components/standard.mjs";
import { emitReadme, emitRegistry } from "./components/registry.mjs";
import { canEmit as canEmitMoe, emitMoeFamily } from "./components/moe.mjs";
import { canEmit as canEmitGemma3n, emitGemma3nFamily } from "./components/gemma3n.mjs";
import { canEmit as canEmitLlama4, emitLlama4Family } from "./components/llama4.mjs";

const here = dirname(fileURLToPath(import.meta.url));

export async function loadDefs() {
  const dir = join(here, "model-defs");
  const files = (await readdir(dir)).filter((f) => f.endsWith(".mjs")).sort();
  const defs = [];
  for (const file of files) {
    const mod = await import(pathToFileURL(join(dir, file)).href);
    defs.push(resolveModelDef(mod.default, file));
  }
  const seen = new Map();
  for (const d of defs)
    for (const t of d.modelTypes) {
      if (seen.has(t)) throw new Error(`model_type '${t}' claimed by both ${seen.get(t)} and ${d.family}`);
      seen.set(t, d.family);
    }
  return defs;
}

function emitFamily(def) {
  if (canEmit(def)) return emitStandardFamily(def);
  if (canEmitMoe(def)) return emitMoeFamily(def);
  if (canEmitGemma3n(def)) return emitGemma3nFamily(def);
  if (canEmitLlama4(def)) return emitLlama4Family(def);
  throw new Error(`model-def ${def.family}: no emitter supports its features`);
}

/** Every generated file: relative path -> content. */
export async function generateAll() {
  const defs = await loadDefs();
  const files = new Map();
  for (const d of defs) files.set(join("models", `${d.family}.c`), emitFamily(d));
  files.set("registry.c", emitRegistry(defs));
  files.set("README.md", emitReadme(defs));
  return { defs, files };
}

