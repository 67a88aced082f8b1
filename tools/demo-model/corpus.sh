#!/usr/bin/env bash
# Extracts the demo model's training text from two Debian packages whose
# copyright files allow redistribution without restriction:
#   bible-kjv-text  King James Version (1611, copyright expired; the Debian
#                   data file is "provided for unrestricted use")
#   dict-jargon     The Jargon File 4.4.7 ("in the public domain")
# Writes OUT/kjv.txt, OUT/jargon.txt and OUT/SOURCES (package versions,
# byte counts, sha256). Needs a Debian 12 machine with apt (no root needed:
# packages are downloaded and unpacked, not installed).
# Usage: bash tools/demo-model/corpus.sh [OUT=.corpus]
set -euo pipefail
out="${1:-.corpus}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get download bible-kjv bible-kjv-text dict-jargon >/dev/null 2>&1 ||
  { echo "corpus.sh: apt-get download failed (needs Debian's package archive)" >&2; exit 1; }
for f in *.deb; do dpkg -x "$f" root; done

# KJV: the package's own reader prints every verse; verse numbers and line
# wraps are dropped, one chapter per paragraph headed "Book N".
LD_LIBRARY_PATH=root/usr/lib "root/usr/bin/bible" -p root/usr/lib "Gen1:1-Rev22:21" 2>/dev/null |
  awk '
    /^[0-9]? ?[A-Z][A-Za-z ]+ [0-9]+$/ { if (t != "") print t "\n"; print $0; t = ""; next }
    /^$/ { next }
    { sub(/^ +[0-9]+ /, ""); t = (t == "" ? $0 : t " " $0) }
    END { if (t != "") print t }' > "$out/kjv.txt"

# Jargon File: dictd entries (headword, pronunciation line, indented body);
# kept as "headword: body" with {cross-reference} braces removed; the
# database header before the first entry, (TM), is skipped.
gzip -dc < root/usr/share/dictd/jargon.dict.dz |
  awk '
    function flush() { if (h != "" && b != "" && h !~ /^00-database/) { gsub(/[{}]/, "", b); gsub(/ +/, " ", b); print h ": " b "\n" } h = ""; b = "" }
    !on { if ($0 == "(TM)") on = 1; else next }
    /^[^ \t]/ { flush(); h = $0; next }
    /^ \/[^\/]*\/,? */ && b == "" { p = $0; sub(/^ \/[^\/]*\/,? */, "", p); if (p != "") b = p; next }
    /^ *$/ { next }
    { l = $0; sub(/^ +/, "", l); b = (b == "" ? l : b " " l) }
    END { flush() }' > "$out/jargon.txt"

{
  for p in bible-kjv bible-kjv-text dict-jargon; do
    dpkg-deb -f "$(ls ${p}_*.deb)" Package Version | paste -sd' '
  done
  for f in kjv.txt jargon.txt; do
    printf '%s %s bytes sha256 %s\n' "$f" "$(wc -c < "$out/$f")" "$(sha256sum < "$out/$f" | cut -d' ' -f1)"
  done
} > "$out/SOURCES"
cat "$out/SOURCES"
