#!/usr/bin/env python3
"""How far two rankings of the same samples agree: the Spearman correlation of the final
scores and the overlap of the top selections.

    scripts/agreement.py A.jsonl B.jsonl [--ratio 0.3] [--key id]

A and B are `gateau select --ratio 1` outputs of the same data scored two ways (e.g. bf16
and fp8): every sample, in score order (select's default), so a sample's line number in the
file is its rank. Spearman's rho is computed on those ranks (the scores' own rank
correlation; gateau's scores have no ties among distinct samples in practice). The overlap
at R is |top_A ∩ top_B| / k with k = round(R n), the share of A's selection that B also
selects. Samples are matched by KEY (default `id`, else the whole line).
"""
import argparse
import json
import sys


def order(path, key):
    ids = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            v = json.loads(line)
            ids.append(str(v.get(key, line)) if isinstance(v, dict) else line)
    if len(set(ids)) != len(ids):
        sys.exit(f"{path}: the key {key!r} is not unique")
    return ids


def spearman(a, b):
    ra = {s: i for i, s in enumerate(a)}
    rb = {s: i for i, s in enumerate(b)}
    n = len(a)
    d2 = sum((ra[s] - rb[s]) ** 2 for s in a)
    return 1.0 - 6.0 * d2 / (n * (n * n - 1))


def overlap(a, b, ratio):
    k = max(1, round(ratio * len(a)))
    return len(set(a[:k]) & set(b[:k])) / k, k


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--key", default="id")
    ap.add_argument("--json", action="store_true", help="one JSON line instead of text")
    x = ap.parse_args()
    a, b = order(x.a, x.key), order(x.b, x.key)
    if set(a) != set(b):
        sys.exit(f"{x.a} and {x.b} rank different samples ({len(a)} and {len(b)})")
    rho = spearman(a, b)
    ov, k = overlap(a, b, x.ratio)
    if x.json:
        print(json.dumps({"n": len(a), "spearman": rho, "ratio": x.ratio, "k": k, "overlap": ov}))
    else:
        print(f"n {len(a)}: Spearman {rho:.4f}, top-{x.ratio:.0%} overlap {ov:.3f} ({k} samples)")


if __name__ == "__main__":
    main()
