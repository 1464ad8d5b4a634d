#!/usr/bin/env bash
# Builds gateau with --features flash-attn (target-fa/), taking kernel objects from the
# stash where prepare.sh/compile.sh put them; missing ones are compiled here as usual.
# GATEAU_FEATURES=flash-attn,cudnn adds cuDNN attention (headers from scripts/cudnn/headers.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
source ../shared/tools/cuda-env.sh >/dev/null 2>&1
cp scripts/flash-attn/nvcc-stash "$(dirname "$(command -v nvcc)")/nvcc-stash"
export NVCC=$(dirname "$(command -v nvcc)")/nvcc-stash
export NVCC_STASH=${NVCC_STASH:-$HOME/.cache/gateau-fa-stash}
export CANDLE_FLASH_ATTN_BUILD_DIR=${CANDLE_FLASH_ATTN_BUILD_DIR:-$HOME/.cache/gateau-flash-attn}
mkdir -p "$CANDLE_FLASH_ATTN_BUILD_DIR"
features=${GATEAU_FEATURES:-flash-attn}
if [[ ",$features," == *",cudnn,"* ]]; then
  eval "$(bash scripts/cudnn/headers.sh)"
fi
CARGO_TARGET_DIR=target-fa cargo build --release --features "$features"
