#!/usr/bin/env node
// Builds the native addon build/nmlx.node from source, with only what a
// Debian machine with the nmlx build dependencies has (no header download):
//   1. the nmlx static library (libnmlx.a, -fPIC) through the repository's own
//      CMake build, so compile flags and SIMD file rules have one home;
//   2. src/*.c of this package against the Node-API headers of the running
//      node (<prefix>/include/node, e.g. /usr/include/node), linked into a
//      shared object with the library and its pkg-config dependencies.
// Environment: NMLX_SOURCE_DIR (the nmlx source tree; default: the folder
// above this package), NMLX_NODE_INCLUDE (folder holding node_api.h), CC, NMLX_JOBS,
// NMLX_DEBUG=1 (-O0 -g), NMLX_SANITIZE=1 (ASan+UBSan: needs LD_PRELOAD to run).
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, statSync, renameSync } from "node:fs";
import { availableParallelism } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const root = resolve(process.env.NMLX_SOURCE_DIR || join(pkg, ".."));
const out = join(pkg, "build");
const cc = process.env.CC || "cc";
const jobs = String(process.env.NMLX_JOBS || Math.min(availableParallelism(), 8));
const debug = process.env.NMLX_DEBUG === "1";
const sanitize = process.env.NMLX_SANITIZE === "1";

function fail(msg) {
  console.error(`nmlx build: ${msg}`);
  process.exit(1);
}
function run(cmd, args, opts = {}) {
  try {
    return execFileSync(cmd, args, { stdio: opts.capture ? ["ignore", "pipe", "inherit"] : "inherit", ...opts })
      ?.toString();
  } catch (e) {
    if (e.code === "ENOENT") fail(`'${cmd}' not found: install it (Debian: see node/README.md)`);
    fail(`'${cmd} ${args.join(" ")}' failed`);
  }
}

if (!existsSync(join(root, "include", "nmlx.h")))
  fail(`expected the nmlx sources at ${root} (include/nmlx.h): build from a clone of the repository`);

const candidates = [process.env.NMLX_NODE_INCLUDE, join(dirname(process.execPath), "..", "include", "node"),
  "/usr/include/node", "/usr/local/include/node"].filter(Boolean);
const nodeInclude = candidates.find((d) => existsSync(join(d, "node_api.h")));
if (!nodeInclude)
  fail(`node_api.h not found in ${candidates.join(", ")}: install the Node.js headers ` +
    "(Debian: apt-get install libnode-dev, or nodejs from NodeSource) or set NMLX_NODE_INCLUDE");

// 1. libnmlx.a
const custom = process.env.NMLX_SOURCE_DIR ? "-" + createHash("sha1").update(root).digest("hex").slice(0, 8) : "";
const lib = join(out, (sanitize ? "cmake-asan" : "cmake") + custom);
mkdirSync(lib, { recursive: true });
run("cmake", ["-S", root, "-B", lib, `-DCMAKE_BUILD_TYPE=${debug || sanitize ? "Debug" : "Release"}`,
  "-DNMLX_TESTS=OFF", `-DNMLX_SANITIZE=${sanitize ? "ON" : "OFF"}`], { capture: true });
run("cmake", ["--build", lib, "--target", "nmlx", "-j", jobs], { capture: true });

// 2. the addon
const srcDir = join(pkg, "src");
const sources = readdirSync(srcDir).filter((f) => f.endsWith(".c")).map((f) => join(srcDir, f));
const pkgLibs = run("pkg-config", ["--libs", "jansson", "libpcre2-8", "libutf8proc"], { capture: true })
  .trim().split(/\s+/).filter(Boolean);
const cflags = ["-std=c11", debug || sanitize ? "-O0" : "-O2", "-g", "-fPIC", "-fvisibility=hidden",
  "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-I", join(root, "include"), "-I", nodeInclude];
if (sanitize) cflags.push("-fsanitize=address,undefined", "-fno-omit-frame-pointer");
const target = join(out, "nmlx.node");
const newest = Math.max(...[...sources, join(srcDir, "addon.h"), join(lib, "libnmlx.a")]
  .map((f) => statSync(f).mtimeMs));
if (existsSync(target) && statSync(target).mtimeMs >= newest && !process.argv.includes("--force")) {
  console.log(`nmlx build: ${target} is up to date`);
} else {
  const tmp = `${target}.tmp`;
  run(cc, [...cflags, "-shared", "-o", tmp, ...sources, join(lib, "libnmlx.a"), ...pkgLibs,
    "-lpthread", "-lm", ...(sanitize ? ["-fsanitize=address,undefined"] : [])]);
  renameSync(tmp, target); // never leave a half-written addon behind
  console.log(`nmlx build: wrote ${target}`);
}
