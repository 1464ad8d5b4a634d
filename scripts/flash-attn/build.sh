#!/usr/bin/env bash
# Builds gateau with --features flash-attn (target-fa/), taking kernel objects from the
# stash where prepare.sh/compile.sh put them; missing ones are compiled here as usual.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
source ../shared/tools/cuda-env.sh >/dev/null 2>&1
cp scripts/flash-attn/nvcc-stash "$(dirname "$(command -v nvcc)")/nvcc-stash"
export NVCC=$(dirname "$(command -v nvcc)")/nvcc-stash
export NVCC_STASH=${NVCC_STASH:-$HOME/.cache/gateau-fa-stash}
export CANDLE_FLASH_ATTN_BUILD_DIR=${CANDLE_FLASH_ATTN_BUILD_DIR:-$HOME/.cache/gateau-flash-attn}
mkdir -p "$CANDLE_FLASH_ATTN_BUILD_DIR"
CARGO_TARGET_DIR=target-fa cargo build --release --features flash-attn
