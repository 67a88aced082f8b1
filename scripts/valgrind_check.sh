#!/usr/bin/env bash
# valgrind memcheck of `nmlx generate` on every committed fixture: any leak
# or memory error fails. Usage: bash scripts/valgrind_check.sh path/to/nmlx
set -euo pipefail
nmlx="$1"
cd "$(dirname "$0")/.."
n=0
for dir in tests/fixtures/*/; do
  [ -f "$dir/expected.json" ] || continue
  ids=$(node -e 'const e=require(process.argv[1]);console.log(e.prompt_ids.join(","))' "$PWD/$dir/expected.json")
  valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect,possible \
    "$nmlx" generate -m "$dir" --ids "$ids" -n 4 -t 2 >/dev/null
  n=$((n + 1))
done
[ "$n" -gt 0 ] || { echo "valgrind_check: no fixtures found under tests/fixtures/" >&2; exit 1; }
echo "valgrind: $n fixtures clean"
echo "$n passed, 0 failed"
