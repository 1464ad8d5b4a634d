#!/usr/bin/env bash
# Build candle-flash-attn's kernels on a machine with more cores (the GPU machine has nvcc
# 13.0.88 too) instead of this 2-core one, and feed them to cargo's build unchanged:
#
#   scripts/flash-attn/prepare.sh            # here: sources + kernel list into .carry/fa
#   bash .carry/fa/compile.sh 520            # there, repeatedly (10-minute calls) until all
#                                            #   objects are back; each call leaves xz parts
#                                            #   in $OUT: unpack them into ~/.cache/gateau-fa-stash
#   scripts/flash-attn/build.sh              # here: cargo build --features flash-attn, with
#                                            #   nvcc-stash copying those objects in
#
# The flags are those of candle-flash-attn 0.11.1's build script (cudaforge adds
# --default-stream per-thread and the CUTLASS include paths); the header hash define is
# computed here the way that build script computes it. Nothing of candle-flash-attn changes.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
source "$here/../shared/tools/cuda-env.sh" >/dev/null 2>&1
fa=$(ls -d ~/.cargo/registry/src/*/candle-flash-attn-0.11.1 | head -n1)
cutlass=$(ls -d "$CUDAFORGE_HOME"/git/checkouts/cutlass-* | head -n1)
stash=${NVCC_STASH:-$HOME/.cache/gateau-fa-stash}
mkdir -p "$here/.carry/fa" "$stash"
tmp=$(mktemp -d)
mkdir -p "$tmp/src/cutlass/tools/util"
cp -r "$fa" "$tmp/src/candle-flash-attn"
cp -r "$cutlass/include" "$tmp/src/cutlass/"
cp -r "$cutlass/tools/util/include" "$tmp/src/cutlass/tools/util/"
tar -C "$tmp" -cJf "$here/.carry/fa/src.tar.xz" src
rm -rf "$tmp"
# Kernels whose object is not stashed yet (objects are stashed by stem: NAME.o).
grep -o '"kernels/[^"]*\.cu"' "$fa/build.rs" | tr -d '"' | while read -r k; do
  [ -f "$stash/$(basename "$k" .cu).o" ] || echo "$k"
done > "$here/.carry/fa/todo.txt"
# FNV-1a over each header's name and bytes, as build.rs's header_hash().
python3 - "$fa" > "$here/.carry/fa/header-hash" <<'PY'
import re, sys
fa = sys.argv[1]
src = open(f"{fa}/build.rs").read()
block = src[src.index("const HEADER_FILES"):]
files = re.findall(r'"(kernels/[^"]+)"', block[: block.index("];")])
h = 14695981039346656037
for f in files:
    for b in f.encode() + open(f"{fa}/{f}", "rb").read():
        h = ((h ^ b) * 1099511628211) % (1 << 64)
print(f"0x{h:016x}")
PY
cp "$(dirname "$0")/compile.sh" "$here/.carry/fa/"
echo "prepare: $(wc -l < "$here/.carry/fa/todo.txt") kernels to compile, header hash $(cat "$here/.carry/fa/header-hash")"
