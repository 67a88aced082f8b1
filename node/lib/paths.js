// Where the package finds the engine sources and the built-in demo model. In
// a clone of the repository (this package is its node/ folder) they are the
// repository's own (include/, src/, ... and models/demo/); in an installed
// package they are the copies `npm pack` put into it (engine/ and
// models/demo/, see scripts/pack.mjs).
//   NMLX_SOURCE_DIR   another engine source tree
//   NMLX_DEMO_MODEL   another demo model folder
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const repoDir = resolve(pkgDir, "..");

/** True when this package is the node/ folder of a repository clone. */
export function inRepository() {
  return existsSync(join(repoDir, "include", "nmlx.h")) && existsSync(join(repoDir, "CMakeLists.txt")) &&
    existsSync(join(repoDir, "node", "package.json"));
}

/** The engine source tree (the folder with CMakeLists.txt and include/nmlx.h). */
export function sourceDir() {
  if (process.env.NMLX_SOURCE_DIR) return resolve(process.env.NMLX_SOURCE_DIR);
  return inRepository() ? repoDir : join(pkgDir, "engine");
}

/** The built-in demo model folder (it may be missing: check config.json). */
export function demoModelDir() {
  if (process.env.NMLX_DEMO_MODEL) return resolve(process.env.NMLX_DEMO_MODEL);
  return join(inRepository() ? repoDir : pkgDir, "models", "demo");
}
