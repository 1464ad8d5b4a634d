#!/usr/bin/env bash
# GPU check (run on a CUDA machine): score the bundled example with SmolLM2 in bf16 on the
# GPU and compare with an f32 CPU run of the same command (ppl within 2%, cas within 0.02,
# top-30% selections overlapping >= 90%).
#   scripts/gpu-check.sh GATEAU_BIN MODEL.gguf CPU_SCORES.jsonl [OUT_DIR]
# DTYPE=f16 checks f16 instead of the default bf16; ATTENTION=cudnn|flash|chunked picks the
# attention kernel (default auto).
# CPU_SCORES comes from `scripts/demo.sh` (target/demo/scores.jsonl) on any machine.
set -euo pipefail
bin=$1 model=$2 cpu=$3 out=${4:-/tmp/gpu-check}
here=$(cd "$(dirname "$0")/.." && pwd)
data=$here/examples/longalign-mini.jsonl
mkdir -p "$out"
"$bin" score --config "$here/configs/smollm2.json" --long-model "$model" --data "$data" \
  --out "$out/cuda.jsonl" --overwrite --device cuda --dtype "${DTYPE:-bf16}" \
  --attention "${ATTENTION:-auto}"
for run in cuda cpu; do
  src=$out/cuda.jsonl; [ $run = cpu ] && src=$cpu
  "$bin" select --config "$here/configs/smollm2.json" --data "$data" --scores "$src" \
    --out "$out/selected-$run.jsonl" --quiet
done
python3 "$here/scripts/compare-scores.py" "$out/cuda.jsonl" "$cpu" \
  "$out/selected-cuda.jsonl" "$out/selected-cpu.jsonl"
