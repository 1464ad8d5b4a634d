#!/usr/bin/env bash
# Small samples on the GPU (issue 21, item 4): the bundled example plus the probe example
# (38 samples of 0.9k-2.4k tokens, all packed) scored with SmolLM2 in f32 (the reference),
# bf16 (auto, then again, --attention chunked, --bucket 0, --pack-below 0) and f16; the wall
# time of each process (model loading included) and each run's gap to f32
# (scripts/score-gap.py), plus which runs give byte-identical numbers.
#   scripts/small-samples.sh GATEAU_BIN MODEL.gguf OUT_DIR [OLD_GATEAU_BIN]
set -uo pipefail
bin=$1 model=$2 out=$3 old=${4:-}
here=$(cd "$(dirname "$0")/.." && pwd)
data=$out/small.jsonl
mkdir -p "$out"
cat "$here/examples/longalign-mini.jsonl" "$here/examples/probe-mini.jsonl" > "$data"
run() { # name bin extra-args...
  local name=$1 b=$2; shift 2
  local t0 t1 rc
  t0=$(date +%s%N)
  "$b" score --config "$here/configs/smollm2.json" --long-model "$model" --data "$data" \
    --out "$out/$name.jsonl" --overwrite --device cuda --quiet "$@" 2> "$out/$name.err"
  rc=$?
  t1=$(date +%s%N)
  printf '%-16s rc=%s wall %s ms\n' "$name" "$rc" "$(( (t1 - t0) / 1000000 ))"
}
# The driver's PTX cache is cold on a fresh machine: warm it first.
"$bin" score --config "$here/configs/smollm2.json" --long-model "$model" --data "$data" \
  --out "$out/warm.jsonl" --overwrite --device cuda --quiet --max-segments 2 2>/dev/null
run f32 "$bin" --dtype f32
run bf16 "$bin" --dtype bf16
run bf16-again "$bin" --dtype bf16
run bf16-chunked "$bin" --dtype bf16 --attention chunked
run bf16-bucket0 "$bin" --dtype bf16 --bucket 0
run bf16-unpacked "$bin" --dtype bf16 --pack-below 0
run f16 "$bin" --dtype f16
names=(bf16 bf16-again bf16-chunked bf16-bucket0 bf16-unpacked f16)
if [ -n "$old" ]; then run old-bf16 "$old" --dtype bf16; names+=(old-bf16); fi
python3 "$here/scripts/score-gap.py" "$out" f32 "${names[@]}"
