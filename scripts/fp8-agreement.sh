#!/usr/bin/env bash
# Does --dtype fp8 keep the selection (issue 21, item 2)? Scores labeled probe sets in bf16 and
# fp8 with the same model on the GPU, then per set: the wall time of each `gateau score`, the
# agreement of the two rankings (scripts/agreement.py: Spearman of the final scores, overlap
# of the top 30%) and `gateau eval`'s AUROC table for each dtype.
#   scripts/fp8-agreement.sh GATEAU_BIN MODEL.gguf OUT_DIR SET...
# SET is a probe JSONL, optionally followed by comma-separated score flags:
#   target/probe/A.jsonl target/probe/C.jsonl,--short-window,1024
# DEVICE (default cuda) and CONFIG (default configs/smollm2.json) override those settings.
set -uo pipefail
bin=$1 model=$2 out=$3
shift 3
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
for spec in "$@"; do
  IFS=, read -r -a parts <<< "$spec"
  data=${parts[0]}
  extra=("${parts[@]:1}")
  name=$(basename "$data" .jsonl)
  for dt in bf16 fp8; do
    flags=(--dtype "$dt")
    t0=$(date +%s%N)
    "$bin" score --config "${CONFIG:-$here/configs/smollm2.json}" --long-model "$model" --data "$data" \
      --token-nll --device "${DEVICE:-cuda}" --out "$out/$name-$dt.scores.jsonl" --overwrite \
      "${flags[@]}" "${extra[@]}" 2> "$out/$name-$dt.score.err"
    rc=$?
    t1=$(date +%s%N)
    printf '%s %-4s score rc=%s wall %s ms\n' "$name" "$dt" "$rc" "$(( (t1 - t0) / 1000000 ))"
    grep -h "fp8:" "$out/$name-$dt.score.err" | head -2
    "$bin" select --config "${CONFIG:-$here/configs/smollm2.json}" --data "$data" --quiet \
      --scores "$out/$name-$dt.scores.jsonl" --ratio 1 --out "/tmp/$name-$dt.ranked.jsonl" \
      --overwrite || echo "$name $dt: select failed"
    "$bin" eval --config "${CONFIG:-$here/configs/smollm2.json}" --data "$data" --quiet \
      --scores "$out/$name-$dt.scores.jsonl" --positive far,far-multi,diffuse \
      > "$out/$name-$dt.eval.txt" 2>&1 || echo "$name $dt: eval failed"
  done
  echo "$name fp8 vs bf16: $(python3 "$here/scripts/agreement.py" "/tmp/$name-bf16.ranked.jsonl" \
    "/tmp/$name-fp8.ranked.jsonl")"
done
