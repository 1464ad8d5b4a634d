#!/usr/bin/env python3
"""Gaps of several gateau score files of one input to a reference one (e.g. bf16 runs to
f32): largest and mean relative difference of ppl_short/ppl_long and of the segment
perplexities, absolute difference of cas; then which runs give identical numbers.

usage: score-gap.py DIR REF NAME... (reads DIR/REF.jsonl and DIR/NAME.jsonl)"""
import json, os, sys

out, ref, *names = sys.argv[1:]
load = lambda n: {r["line"]: r for r in map(json.loads, open(f"{out}/{n}.jsonl")) if r.get("status", "ok") == "ok"}
stat = lambda v: f"max {max(v):.4f} mean {sum(v) / len(v):.4f}" if v else "-"
R = load(ref)
print(f"reference {ref}: {len(R)} ok records")
runs = {n: load(n) for n in names if os.path.exists(f"{out}/{n}.jsonl")}
for n, A in runs.items():
    common = [l for l in R if l in A]
    ppl = [abs(A[l][k] - R[l][k]) / R[l][k] for l in common for k in ("ppl_short", "ppl_long")]
    cas = [abs(A[l]["cas"] - R[l]["cas"]) for l in common
           if A[l].get("cas") is not None and R[l].get("cas") is not None]
    seg = [abs(x - y) / y for l in common
           for x, y in zip(A[l].get("seg_ppl") or [], R[l].get("seg_ppl") or []) if y]
    over = sum(c > 0.02 for c in cas)
    print(f"{n:16s} n={len(common)} ppl {stat(ppl)} | cas {stat(cas)} ({over} over 0.02) | seg_ppl {stat(seg)}")
keys = ("ppl_short", "ppl_long", "cas", "seg_ppl", "seg_attn")
first = names[0]
for n in names[1:]:
    if first in runs and n in runs:
        A, B = runs[first], runs[n]
        diff = [l for l in A if l in B and any(A[l].get(k) != B[l].get(k) for k in keys)]
        print(f"identical {first} vs {n}: {len(A) - len(diff)}/{len(A)}")
