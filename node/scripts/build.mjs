#!/usr/bin/env node
// Builds the native addon build/nmlx.node from source, with only what a
// Debian machine with the nmlx build dependencies has (no header download):
//   0. checks the build tools and libraries first and, if any is missing,
//      fails with one message naming the Debian packages to install
//      (`--check-deps` stops after this check);
//   1. the nmlx static library (libnmlx.a, -fPIC) and the C `nmlx` command
//      through the engine's own CMake build (tests off), so compile flags and
//      SIMD file rules have one home;
//   2. src/*.c of this package against the Node-API headers of the running
//      node (<prefix>/include/node, e.g. /usr/include/node), linked into a
//      shared object with the library and its pkg-config dependencies.
// The engine sources are the repository's in a clone, the package's engine/
// copy once installed (lib/paths.js).
// The CUDA backend is built in when nvcc and cuBLAS are found (scripts/cuda.mjs:
// NMLX_CUDA=1 requires it, NMLX_CUDA=0 leaves it out, NMLX_CUDA_ARCH picks the
// GPU architectures); the build says which.
// Environment: NMLX_SOURCE_DIR (another engine source tree), NMLX_NODE_INCLUDE
// (folder holding node_api.h), CC, NMLX_JOBS, NMLX_DEBUG=1 (-O0 -g),
// NMLX_SANITIZE=1 (ASan+UBSan: needs LD_PRELOAD to run).
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { accessSync, constants, existsSync, mkdirSync, readFileSync, readdirSync, statSync, renameSync, writeFileSync }
  from "node:fs";
import { availableParallelism } from "node:os";
import { delimiter, dirname, join } from "node:path";
import { pkgDir, sourceDir, demoModelDir, inRepository } from "../lib/paths.js";
import { cudaBuildFlags, cudaChoice } from "./cuda.mjs";

const pkg = pkgDir;
const root = sourceDir();
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

// 0. what the build needs, and the Debian package that brings each
function onPath(cmd) {
  if (cmd.includes("/")) return existsSync(cmd);
  return (process.env.PATH || "").split(delimiter).filter(Boolean).some((d) => {
    try {
      accessSync(join(d, cmd), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}
function nodeHeaders() {
  const candidates = [process.env.NMLX_NODE_INCLUDE, join(dirname(process.execPath), "..", "include", "node"),
    "/usr/include/node", "/usr/local/include/node"].filter(Boolean);
  return candidates.find((d) => existsSync(join(d, "node_api.h")));
}
const LIBS = [["jansson", "libjansson-dev", "jansson.h"], ["libpcre2-8", "libpcre2-dev", "pcre2.h"],
  ["libutf8proc", "libutf8proc-dev", "utf8proc.h"]];

/** [{ what, apt }] of every missing build dependency. */
function missingBuildDeps() {
  const missing = [];
  const ccCmd = cc.trim().split(/\s+/)[0];
  if (!onPath(ccCmd)) missing.push({ what: `the C compiler '${ccCmd}'`, apt: "build-essential" });
  if (!onPath("make")) missing.push({ what: "make", apt: "build-essential" });
  if (!onPath("cmake")) missing.push({ what: "cmake", apt: "cmake" });
  const havePkgConfig = onPath("pkg-config");
  if (!havePkgConfig) missing.push({ what: "pkg-config", apt: "pkg-config" });
  for (const [name, apt, header] of LIBS) {
    let found;
    if (havePkgConfig) {
      try {
        execFileSync("pkg-config", ["--exists", name], { stdio: "ignore" });
        found = true;
      } catch {
        found = false;
      }
    } else {
      found = ["/usr/include", "/usr/local/include"].some((d) => existsSync(join(d, header)));
    }
    if (!found) missing.push({ what: `the ${name.replace(/^lib/, "")} library (pkg-config ${name})`, apt });
  }
  if (!nodeHeaders())
    missing.push({ what: "the Node.js headers (node_api.h; or set NMLX_NODE_INCLUDE)", apt: "libnode-dev" });
  return missing;
}

/** The one message for missing dependencies. */
function missingMessage(missing) {
  const apt = [...new Set(missing.map((m) => m.apt))];
  return `nmlx: cannot build the native addon: missing ${missing.map((m) => m.what).join(", ")}. ` +
    `On Debian/Ubuntu: sudo apt-get install ${apt.join(" ")} (then install nmlx again)`;
}

const missing = missingBuildDeps();
if (missing.length) {
  console.error(missingMessage(missing));
  process.exit(1);
}
if (process.argv.includes("--check-deps")) {
  console.log("nmlx build: every build dependency is present");
  process.exit(0);
}
if (!existsSync(join(root, "include", "nmlx.h")) || !existsSync(join(root, "CMakeLists.txt")))
  fail(`expected the nmlx engine sources at ${root} (CMakeLists.txt, include/nmlx.h): a repository clone, ` +
    "or a package made with npm pack (which copies them into engine/)");
const nodeInclude = nodeHeaders();
let cuda;
try {
  cuda = cudaChoice();
} catch (e) {
  fail(e.message);
}
const cudaFlags = cudaBuildFlags(cuda);
console.log(cuda.on ? `nmlx build: CUDA backend on (${cuda.why}: ${cuda.nvcc}, sm_${cuda.archs.split(";").join("/sm_")})`
  : `nmlx build: CUDA backend off (${cuda.why})`);

// 1. libnmlx.a
const custom = process.env.NMLX_SOURCE_DIR ? "-" + createHash("sha1").update(root).digest("hex").slice(0, 8) : "";
const lib = join(out, (sanitize ? "cmake-asan" : "cmake") + custom);
mkdirSync(lib, { recursive: true });
run("cmake", ["-S", root, "-B", lib, `-DCMAKE_BUILD_TYPE=${debug || sanitize ? "Debug" : "Release"}`,
  "-DNMLX_TESTS=OFF", `-DNMLX_SANITIZE=${sanitize ? "ON" : "OFF"}`, `-DNMLX_DEMO_MODEL_DIR=${demoModelDir()}`,
  ...cudaFlags.cmake],
{ capture: true });
const targets = existsSync(join(root, "cli", "main.c")) ? ["nmlx", "nmlx-cli"] : ["nmlx"];
run("cmake", ["--build", lib, "--target", ...targets, "-j", jobs], { capture: true });

// 2. the addon
const srcDir = join(pkg, "src");
const sources = readdirSync(srcDir).filter((f) => f.endsWith(".c")).map((f) => join(srcDir, f));
const pkgLibs = run("pkg-config", ["--libs", "jansson", "libpcre2-8", "libutf8proc"], { capture: true })
  .trim().split(/\s+/).filter(Boolean);
const cflags = ["-std=c11", debug || sanitize ? "-O0" : "-O2", "-g", "-fPIC", "-fvisibility=hidden",
  "-Wall", "-Wextra", "-Wno-unused-parameter", "-I", join(root, "include"), "-I", nodeInclude];
// warnings fail the build in a clone (CI), never a user's install with another compiler
if (inRepository()) cflags.push("-Werror");
if (sanitize) cflags.push("-fsanitize=address,undefined", "-fno-omit-frame-pointer");
const target = join(out, "nmlx.node");
const headers = readdirSync(srcDir).filter((f) => f.endsWith(".h")).map((f) => join(srcDir, f));
const newest = Math.max(...[...sources, ...headers, join(lib, "libnmlx.a")]
  .map((f) => statSync(f).mtimeMs));
// the addon records which library it was linked with: a switch of build
// kind (CUDA on/off, sanitizer) relinks even when no file is newer
const stamp = `${target}.build`, kind = `${lib} cuda=${cuda.on ? cuda.archs : "off"}`;
const sameKind = existsSync(stamp) && readFileSync(stamp, "utf8") === kind;
if (existsSync(target) && sameKind && statSync(target).mtimeMs >= newest && !process.argv.includes("--force")) {
  console.log(`nmlx build: ${target} is up to date`);
} else {
  const tmp = `${target}.tmp`;
  run(cc, [...cflags, "-shared", "-o", tmp, ...sources, join(lib, "libnmlx.a"), ...pkgLibs, ...cudaFlags.link,
    "-lpthread", "-lm", ...(sanitize ? ["-fsanitize=address,undefined"] : [])]);
  renameSync(tmp, target); // never leave a half-written addon behind
  writeFileSync(stamp, kind);
  console.log(`nmlx build: wrote ${target}`);
}
