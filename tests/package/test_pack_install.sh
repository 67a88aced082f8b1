#!/usr/bin/env bash
# The packed npm package installs and works outside the repository:
#   1. `npm pack` in node/ (prepack copies the engine and models/demo in);
#      the tarball holds engine/ (no tests/), models/demo/, lib/, bin/, src/;
#   2. `npm install <tarball>` in a fresh project under $TMPDIR, offline from
#      the npm cache that node/'s `npm ci` filled (it builds the engine once:
#      Release, no tests, -j nproc);
#   3. in that project: loadModel() + generate, `npx nmlx "Once upon a time"`
#      and the package's C `nmlx run`, each without a model: exit 0, text on
#      stdout, the built-in demo model line on stderr naming the package's
#      own models/demo.
# Usage: bash tests/package/test_pack_install.sh   (from anywhere)
set -uo pipefail
SOURCE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/nmlx-pack-test.XXXXXX")"
trap 'rm -rf "$TMP"; node "$SOURCE_DIR/node/scripts/pack.mjs" postpack >/dev/null 2>&1' EXIT
n_pass=0
n_fail=0
pass() { n_pass=$((n_pass + 1)); }
fail() { n_fail=$((n_fail + 1)); echo "FAIL: $*" >&2; }
check() { local d="$1"; shift; if "$@"; then pass; else fail "$d"; fi; }
finish() { echo "$n_pass passed, $n_fail failed"; [ "$n_fail" = 0 ] && [ "$n_pass" -gt 0 ]; exit; }
unset NMLX_SOURCE_DIR NMLX_DEMO_MODEL
# the CUDA build is checked by tests/cuda/check_build.sh; here the install stays CPU-only
# (NMLX_CUDA=1 in the caller's environment overrides)
export NMLX_CUDA=${NMLX_CUDA:-0}
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

case "$TMP" in "$SOURCE_DIR"/*) fail "TMPDIR is inside the repository: the install must happen outside it"; finish ;; esac
for tool in node npm tar; do command -v "$tool" >/dev/null || { fail "$tool is needed"; finish; }; done

# 0. the npm cache must hold the package's dependencies: node/'s `npm ci` fills it
if [ ! -d "$SOURCE_DIR/node/node_modules/@huggingface/jinja" ]; then
    if ! (cd "$SOURCE_DIR/node" && npm ci --prefer-offline --no-audit --no-fund >"$TMP/ci.out" 2>&1); then
        fail "npm ci in node/ (it fills the npm cache this test installs from) failed: $(tail -c 600 "$TMP/ci.out")"
        finish
    fi
fi

# 1. pack
if ! (cd "$SOURCE_DIR/node" && npm pack --silent --pack-destination "$TMP" >"$TMP/pack.out" 2>"$TMP/pack.err"); then
    fail "npm pack failed: $(tail -c 600 "$TMP/pack.err")"
    finish
fi
tgz="$(ls "$TMP"/nmlx-*.tgz 2>/dev/null | head -n 1)"
[ -n "$tgz" ] || { fail "npm pack made no tarball"; finish; }
tar tzf "$tgz" >"$TMP/list"
for f in engine/CMakeLists.txt engine/include/nmlx.h engine/cli/main.c engine/src/generate.c \
    models/demo/config.json models/demo/model.safetensors models/demo/tokenizer.json \
    models/demo/tokenizer_config.json lib/index.js bin/nmlx.js src/addon.c scripts/build.mjs index.d.ts; do
    check "the tarball holds $f" grep -qx "package/$f" "$TMP/list"
done
check "the tarball has no tests, build outputs or node_modules" \
    bash -c '! grep -qE "^package/(engine/tests|build|node_modules|engine/build)/" "$0"' "$TMP/list"
check "postpack removed the copies from node/" \
    bash -c '[ ! -e "$0/node/engine" ] && [ ! -e "$0/node/models" ]' "$SOURCE_DIR"
echo "tarball: $(basename "$tgz"), $(stat -c %s "$tgz") bytes packed," \
    "$(tar xzOf "$tgz" | wc -c) bytes unpacked, $(wc -l <"$TMP/list") files"

# 2. install into a fresh project outside the repository
proj="$TMP/project"
mkdir -p "$proj"
(cd "$proj" && npm init -y >/dev/null)
start=$(date +%s)
if ! (cd "$proj" && NMLX_JOBS="$(nproc)" npm install --prefer-offline --no-audit --no-fund "$tgz" \
    >"$TMP/install.out" 2>&1); then
    fail "npm install of the tarball failed: $(tail -c 1500 "$TMP/install.out")"
    finish
fi
echo "npm install (engine build included): $(($(date +%s) - start)) s"
pkg="$proj/node_modules/nmlx"
check "the addon was built" [ -f "$pkg/build/nmlx.node" ]
check "the engine was built from the package's engine/ copy" \
    grep -q "^CMAKE_HOME_DIRECTORY:INTERNAL=$pkg/engine$" "$pkg/build/cmake/CMakeCache.txt"
line="nmlx: no model given; using the built-in demo model at $pkg/models/demo "

# 3a. loadModel() + generate
cat >"$proj/try.mjs" <<'JS'
import { loadModel, demoModelPath } from "nmlx";
const model = await loadModel({ threads: 0 });
// Greedy: the English check below must not depend on a sampled draw (about
// one seed in fifteen samples ". <eos>" after this prompt and stops there).
const r = await model.generate("Once upon a time", { maxTokens: 48, temperature: 0 });
await model.unload();
if (!r.text) throw new Error("empty text");
process.stdout.write(r.text + "\n");
process.stderr.write(`demo: ${demoModelPath()}\n`);
JS
rc=0
(cd "$proj" && node try.mjs >"$TMP/out" 2>"$TMP/err") || rc=$?
check "loadModel() + generate: exit 0 (stderr: $(head -c 300 "$TMP/err"))" [ "$rc" = 0 ]
check "loadModel() + generate: text" [ -s "$TMP/out" ]
check "loadModel(): the demo model line names the package's folder" grep -qF "$line" "$TMP/err"
echo "loadModel() + generate: $(head -c 200 "$TMP/out")"
# The trained demo model (it has a MODEL_CARD.md; the random-weight stand-in
# of scripts/make_demo_model.mjs does not) writes English: letters, spaces
# and punctuation, with spaces between words.
english() {
    node -e 'const t = require("fs").readFileSync(process.argv[1], "utf8").trim();
             const ok = (t.match(/[A-Za-z ,.;:!?\x27"()\n-]/g) || []).length;
             process.exit(t.length >= 20 && ok >= 0.9 * t.length && / [A-Za-z]/.test(t) ? 0 : 1)' "$1"
}
trained=0
[ -f "$pkg/models/demo/MODEL_CARD.md" ] && trained=1
[ "$trained" = 1 ] && check "loadModel() + generate with the trained demo model: English" english "$TMP/out"

# 3b. npx nmlx "Once upon a time"
rc=0
(cd "$proj" && npx --no-install nmlx -n 48 --temp 0 "Once upon a time" >"$TMP/out" 2>"$TMP/err") || rc=$?
check "npx nmlx \"Once upon a time\": exit 0 (stderr: $(head -c 300 "$TMP/err"))" [ "$rc" = 0 ]
check "npx nmlx: text" [ -n "$(tr -d '\n' <"$TMP/out")" ]
check "npx nmlx: the demo model line" grep -qF "$line" "$TMP/err"
check "npx nmlx: the stats line" grep -q "^\[.* prompt tokens, .* generated, .*\]$" "$TMP/err"
echo "npx nmlx: $(head -c 200 "$TMP/out")"
[ "$trained" = 1 ] && check "npx nmlx with the trained demo model: English" english "$TMP/out"
rc=0
(cd "$proj" && npx --no-install nmlx --version >"$TMP/out" 2>"$TMP/err") || rc=$?
check "npx nmlx --version" bash -c '[ "$0" = 0 ] && grep -q "^nmlx " "$1"' "$rc" "$TMP/out"

# 3c. the C tool's commands through npx, and chat when the demo model has a chat template
rc=0
(cd "$proj" && npx --no-install nmlx convert -m "$pkg/models/demo" -o "$TMP/q4" --group-size 32 --progress \
    >"$TMP/out" 2>"$TMP/err") || rc=$?
check "npx nmlx convert --progress: exit 0 (stderr: $(head -c 300 "$TMP/err"))" [ "$rc" = 0 ]
check "npx nmlx convert: per-tensor progress on stderr" grep -q "^nmlx convert: \[ *1/" "$TMP/err"
check "npx nmlx convert: the JSON line" grep -q '^{"output":' "$TMP/out"
if grep -q '"chat_template"' "$pkg/models/demo/tokenizer_config.json" 2>/dev/null ||
    [ -f "$pkg/models/demo/chat_template.jinja" ]; then
    rc=0
    (cd "$proj" && printf 'Hello\n/exit\n' | npx --no-install nmlx chat -n 16 >"$TMP/out" 2>"$TMP/err") || rc=$?
    check "npx nmlx chat with the demo model: exit 0 (stderr: $(head -c 300 "$TMP/err"))" [ "$rc" = 0 ]
    check "npx nmlx chat: the demo model line" grep -qF "$line" "$TMP/err"
fi

# 3d. the package's C command
rc=0
"$pkg/build/cmake/nmlx" run -p "Once upon a time" -n 8 >"$TMP/out" 2>"$TMP/err" || rc=$?
check "the package's C nmlx run without -m: exit 0 (stderr: $(head -c 300 "$TMP/err"))" [ "$rc" = 0 ]
check "the package's C nmlx run: the demo model line" grep -qF "$line" "$TMP/err"
finish
