// When `npm install` builds the CUDA backend (scripts/cuda.mjs), on a fake
// toolkit laid out in a temp folder, so it runs on any machine.
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { cudaBuildFlags, cudaChoice } from "../scripts/cuda.mjs";
import { tempDir } from "./helpers.js";

/** A folder with bin/nvcc (executable) and, unless noLibs, lib64/libcublas.so + libcudart.so. */
function fakeToolkit({ noLibs = false } = {}) {
  const home = tempDir("cuda-home");
  mkdirSync(join(home, "bin"), { recursive: true });
  writeFileSync(join(home, "bin", "nvcc"), "#!/bin/sh\nexit 0\n");
  chmodSync(join(home, "bin", "nvcc"), 0o755);
  if (!noLibs) {
    mkdirSync(join(home, "lib64"));
    for (const f of ["libcublas.so", "libcudart.so"]) writeFileSync(join(home, "lib64", f), "");
  }
  return home;
}
const noPath = { PATH: "" };

test("NMLX_CUDA unset: on when nvcc and cuBLAS are found, off (saying why) when not", () => {
  const home = fakeToolkit();
  const on = cudaChoice({ ...noPath, NMLX_CUDA_ARCH: "90" }, [home]);
  assert.equal(on.on, true);
  assert.equal(on.nvcc, join(home, "bin", "nvcc"));
  assert.equal(on.libDir, join(home, "lib64"));
  assert.equal(on.archs, "90");
  const flags = cudaBuildFlags(on);
  assert.ok(flags.cmake.includes("-DNMLX_CUDA=ON") && flags.cmake.includes("-DCMAKE_CUDA_ARCHITECTURES=90"));
  assert.ok(flags.link.includes(`-L${join(home, "lib64")}`) && flags.link.includes("-lcublas"));

  const off = cudaChoice(noPath, [tempDir("empty")]);
  assert.equal(off.on, false);
  assert.match(off.why, /no nvcc found; NMLX_CUDA=1 requires it/);
  assert.deepEqual(cudaBuildFlags(off), { cmake: ["-DNMLX_CUDA=OFF"], link: [] });

  const noLibs = cudaChoice(noPath, [fakeToolkit({ noLibs: true })]);
  assert.equal(noLibs.on, false);
  assert.match(noLibs.why, /cuBLAS/);
});

test("nvcc is found through CUDACXX and PATH before the default homes", () => {
  const a = fakeToolkit(), b = fakeToolkit();
  assert.equal(cudaChoice({ CUDACXX: join(a, "bin", "nvcc"), PATH: join(b, "bin") }, []).nvcc, join(a, "bin", "nvcc"));
  assert.equal(cudaChoice({ PATH: join(b, "bin") }, [a]).nvcc, join(b, "bin", "nvcc"));
});

test("cuBLAS is found through a symlinked nvcc, CUDA_HOME, or the root nvcc reports", () => {
  // /usr/local/bin/nvcc -> <toolkit>/bin/nvcc, as some installs lay it out
  const home = fakeToolkit();
  const bin = tempDir("bin");
  symlinkSync(join(home, "bin", "nvcc"), join(bin, "nvcc"));
  const linked = cudaChoice({ PATH: bin, NMLX_CUDA: "1", NMLX_CUDA_ARCH: "90" }, []);
  assert.equal(linked.nvcc, join(bin, "nvcc"));
  assert.equal(linked.libDir, join(home, "lib64"));

  // nvcc alone in a folder, the libraries in $CUDA_HOME
  const lone = tempDir("lone");
  mkdirSync(join(lone, "bin"));
  writeFileSync(join(lone, "bin", "nvcc"), "#!/bin/sh\nexit 0\n");
  chmodSync(join(lone, "bin", "nvcc"), 0o755);
  const libs = fakeToolkit();
  assert.equal(cudaChoice({ PATH: join(lone, "bin"), CUDA_HOME: libs, NMLX_CUDA_ARCH: "90" }, []).libDir, join(libs, "lib64"));

  // a wrapper script that is no symlink: the TOP= line of nvcc's dry run
  const wrapDir = tempDir("wrap");
  writeFileSync(join(wrapDir, "nvcc"), `#!/bin/sh\necho '#$ TOP=${home}/bin/..'\n`);
  chmodSync(join(wrapDir, "nvcc"), 0o755);
  assert.equal(cudaChoice({ PATH: wrapDir, NMLX_CUDA_ARCH: "90" }, []).libDir, join(home, "lib64"));
});

test("NMLX_CUDA=0 leaves CUDA out even where it is found; NMLX_CUDA=1 fails naming what is missing", () => {
  const home = fakeToolkit();
  assert.deepEqual(cudaChoice({ ...noPath, NMLX_CUDA: "0" }, [home]), { on: false, why: "NMLX_CUDA=0" });
  assert.equal(cudaChoice({ ...noPath, NMLX_CUDA: "1", NMLX_CUDA_ARCH: "80;90" }, [home]).archs, "80;90");
  assert.throws(() => cudaChoice({ ...noPath, NMLX_CUDA: "1" }, [tempDir("empty")]), /NMLX_CUDA=1 but nvcc .* was not found/);
  assert.throws(() => cudaChoice({ ...noPath, NMLX_CUDA: "1" }, [fakeToolkit({ noLibs: true })]),
    /NMLX_CUDA=1 but cuBLAS and the CUDA runtime .* was not found/);
});

test("bad NMLX_CUDA and NMLX_CUDA_ARCH values are refused by name", () => {
  const home = fakeToolkit();
  for (const v of ["yes", "2", "on"])
    assert.throws(() => cudaChoice({ ...noPath, NMLX_CUDA: v }, [home]), new RegExp(`NMLX_CUDA must be 1 .* not '${v}'`));
  for (const v of ["sm_90", "9.0", "90;", ""])
    assert.throws(() => cudaChoice({ ...noPath, NMLX_CUDA_ARCH: v }, [home]), /NMLX_CUDA_ARCH must be compute capabilities/);
});
