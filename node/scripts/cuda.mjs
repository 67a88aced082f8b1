// Whether `npm install` builds the engine's CUDA backend, and with what
// (used by build.mjs). NMLX_CUDA=1 requires it (the build fails naming what
// is missing), NMLX_CUDA=0 leaves it out, unset builds it when nvcc and
// cuBLAS are both found. NMLX_CUDA_ARCH picks the GPU architectures
// (CMake's CUDA_ARCHITECTURES, e.g. "90" or "80;90"); else those of the GPUs
// nvidia-smi lists, else 90 (Hopper).
import { execFileSync } from "node:child_process";
import { accessSync, constants, existsSync, realpathSync } from "node:fs";
import { delimiter, dirname, join, resolve } from "node:path";

function executable(path) {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The nvcc to use: $CUDACXX, then PATH, then each of homes' bin/. */
function findNvcc(env, homes) {
  if (env.CUDACXX && executable(env.CUDACXX)) return env.CUDACXX;
  for (const d of (env.PATH || "").split(delimiter).filter(Boolean))
    if (executable(join(d, "nvcc"))) return join(d, "nvcc");
  return homes.map((h) => join(h, "bin", "nvcc")).find(executable);
}

/** The toolkit root nvcc itself reports (`TOP=` of a dry run), if any. */
function nvccTop(nvcc) {
  try {
    const out = execFileSync(nvcc, ["--dryrun", "-x", "cu", "-c", "/dev/null", "-o", "/dev/null"],
      { stdio: ["ignore", "pipe", "pipe"], timeout: 20000, encoding: "utf8" });
    const m = /^#\$ TOP=(.+)$/m.exec(out);
    return m ? resolve(m[1].trim()) : undefined;
  } catch (e) {
    const m = /^#\$ TOP=(.+)$/m.exec(`${e.stdout || ""}${e.stderr || ""}`);
    return m ? resolve(m[1].trim()) : undefined;
  }
}

/**
 * The folder holding libcublas.so and libcudart.so: in nvcc's toolkit (nvcc
 * is often a symlink, e.g. /usr/local/bin/nvcc, so its real path counts
 * first), $CUDA_HOME / $CUDA_PATH, the default homes, the root nvcc reports,
 * then the system library folders.
 */
function findCublasDir(nvcc, env, homes) {
  const roots = [];
  try {
    roots.push(resolve(dirname(realpathSync(nvcc)), ".."));
  } catch {
    /* a dangling link: fall through to the others */
  }
  roots.push(resolve(dirname(nvcc), ".."), env.CUDA_HOME, env.CUDA_PATH, ...homes);
  const libDirs = (root) => [join(root, "lib64"), join(root, "lib"), join(root, "targets", "x86_64-linux", "lib"),
    join(root, "targets", "sbsa-linux", "lib")];
  const has = (d) => existsSync(join(d, "libcublas.so")) && existsSync(join(d, "libcudart.so"));
  const system = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64"];
  const found = roots.filter(Boolean).flatMap(libDirs).find(has);
  if (found) return found;
  const top = nvccTop(nvcc);
  return (top && libDirs(top).find(has)) || system.find(has);
}

/** "90" or "80;90": the compute capabilities nvidia-smi reports, if any. */
function gpuArchs() {
  try {
    const out = execFileSync("nvidia-smi", ["--query-gpu=compute_cap", "--format=csv,noheader"],
      { stdio: ["ignore", "pipe", "ignore"], timeout: 10000 }).toString();
    const caps = [...new Set(out.split("\n").map((l) => l.trim().replace(".", "")).filter((c) => /^\d+$/.test(c)))];
    return caps.length ? caps.sort().join(";") : undefined;
  } catch {
    return undefined;
  }
}

/**
 * { on: false, why } or { on: true, nvcc, libDir, archs, why }; throws an
 * Error whose message names what is missing when NMLX_CUDA=1 cannot be met
 * or NMLX_CUDA has another value. homes: CUDA toolkit folders tried after
 * $CUDACXX and PATH.
 */
export function cudaChoice(env = process.env, homes = ["/usr/local/cuda"]) {
  const want = env.NMLX_CUDA;
  if (want !== undefined && want !== "" && want !== "0" && want !== "1")
    throw new Error(`NMLX_CUDA must be 1 (build the CUDA backend) or 0 (leave it out), not '${want}'`);
  if (want === "0") return { on: false, why: "NMLX_CUDA=0" };
  const nvcc = findNvcc(env, homes);
  const libDir = nvcc && findCublasDir(nvcc, env, homes);
  if (!nvcc || !libDir) {
    const lacking = !nvcc ? "nvcc (the CUDA toolkit: put its bin/ on PATH or set CUDACXX)"
      : `cuBLAS and the CUDA runtime (libcublas.so, libcudart.so) for ${nvcc} (set CUDA_HOME to its toolkit)`;
    if (want === "1") throw new Error(`NMLX_CUDA=1 but ${lacking} was not found`);
    return { on: false, why: `no ${lacking.split(" (")[0]} found; NMLX_CUDA=1 requires it` };
  }
  if (env.NMLX_CUDA_ARCH !== undefined && !/^\d+(;\d+)*$/.test(env.NMLX_CUDA_ARCH))
    throw new Error(`NMLX_CUDA_ARCH must be compute capabilities like 90 or 80;90, not '${env.NMLX_CUDA_ARCH}'`);
  const archs = env.NMLX_CUDA_ARCH || gpuArchs() || "90";
  return { on: true, nvcc, libDir, archs, why: want === "1" ? "NMLX_CUDA=1" : "nvcc and cuBLAS found" };
}

/** Extra CMake arguments and addon link flags for a choice. */
export function cudaBuildFlags(choice) {
  if (!choice.on) return { cmake: ["-DNMLX_CUDA=OFF"], link: [] };
  return {
    cmake: ["-DNMLX_CUDA=ON", `-DCMAKE_CUDA_COMPILER=${choice.nvcc}`, `-DCMAKE_CUDA_ARCHITECTURES=${choice.archs}`],
    link: [`-L${choice.libDir}`, `-Wl,-rpath,${choice.libDir}`, "-lcublas", "-lcudart", "-lstdc++"],
  };
}
