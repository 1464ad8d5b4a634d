#!/usr/bin/env python3
"""Compares two gateau score files of the same input (e.g. CUDA bf16 against CPU f32):
per-sample relative difference of ppl_short/ppl_long, absolute difference of cas, and the
overlap of the top-RATIO selections made by `gateau select` on each.

usage: compare-scores.py A.jsonl B.jsonl SELECTED_A.jsonl SELECTED_B.jsonl
       [--ppl-rel 0.02] [--cas-abs 0.02] [--overlap 0.9]
Exits 1 when a tolerance is exceeded."""
import argparse, json, sys

ap = argparse.ArgumentParser()
ap.add_argument("a"); ap.add_argument("b"); ap.add_argument("sel_a"); ap.add_argument("sel_b")
ap.add_argument("--ppl-rel", type=float, default=0.02)
ap.add_argument("--cas-abs", type=float, default=0.02)
ap.add_argument("--overlap", type=float, default=0.9)
args = ap.parse_args()
load = lambda p: {r["line"]: r for r in map(json.loads, open(p)) if r["status"] == "ok"}
a, b = load(args.a), load(args.b)
assert a.keys() == b.keys(), "the two score files hold different samples"
ppl = max(abs(a[l][k] - b[l][k]) / b[l][k] for l in a for k in ("ppl_short", "ppl_long"))
cas = max((abs(a[l]["cas"] - b[l]["cas"]) for l in a if a[l]["cas"] is not None), default=0.0)
sa, sb = (set(map(str.strip, open(p))) for p in (args.sel_a, args.sel_b))
overlap = len(sa & sb) / max(1, len(sb))
print(json.dumps({"samples": len(a), "max_ppl_rel_diff": ppl, "max_cas_abs_diff": cas,
                  "selection_overlap": overlap, "selected": len(sb)}))
ok = ppl <= args.ppl_rel and cas <= args.cas_abs and overlap >= args.overlap
print("PASS" if ok else "FAIL", f"(ppl <= {args.ppl_rel}, cas <= {args.cas_abs}, overlap >= {args.overlap})")
sys.exit(0 if ok else 1)
