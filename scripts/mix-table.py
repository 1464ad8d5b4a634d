#!/usr/bin/env python3
"""A realistic mix: samples per hour for gateau (one run per dtype) and PyTorch's best, as markdown.

Reads JSON lines, any mix of files ('-': stdin):

- `gateau bench --mix NAME --json FILE` (or `--lengths FILE`): one "mix sample" line per
  sample (whole-sample tokens, response, segments, segment tokens, measured seconds) and a
  "mix total" line. One file per run (bf16, fp8, ...): all must time the same lengths.
- the PyTorch anchor `torch_pipeline_bench.py`, eager and `--compile`, at several
  (--ctx, --resp) points (`gateau bench --mix NAME --print torch-args` names them): three
  lines per run, "full pass (no capture)", "long full pass + attention capture",
  "segment passes (batch N)".

gateau's figures are measured per sample. PyTorch's are assembled per sample from its
measured phases, as docs/performance.md assembles "torch, from its phases" per context
(the same phases as gateau's whole sample: the long full pass with attention capture, the
short full pass, every segment pass):

    torch(sample) = T / full_rate(T)                           full pass, best of eager/compiled
                  + T / eager_full_rate(T) + e(T) * r * T      capture pass (always eager)
                  + segments * Ts / segment_rate(Ts)           best of eager/compiled

T: the sample's tokens, r: its response tokens, Ts: tokens of one segment sequence. Each
rate (tokens/s) is measured at the anchor's points and interpolated log-log in its length
between them (T for the full passes, Ts for the segment passes); outside the measured range
it is held at the nearest measured rate (and the table says so). e(T), the capture's cost
beyond an eager full pass per response row and key (measured capture seconds less the eager
full pass, over r_p * T_p), is interpolated the same way: the capture's extra work (the
response rows' scores against every key) grows as r * T.

    gateau bench --shape llama2-7b --mix longalign --json mix-bf16.jsonl
    gateau bench --shape llama2-7b --mix longalign --print torch-args | while read -r a; do
        python3 torch_pipeline_bench.py --shape llama2-7b $a --repeat 2
        python3 torch_pipeline_bench.py --shape llama2-7b $a --repeat 2 --compile
    done > torch.jsonl
    python3 scripts/mix-table.py mix-bf16.jsonl torch.jsonl
"""

import argparse
import json
import math
import sys
from collections import defaultdict

FULL = "full pass (no capture)"
CAPTURE = "long full pass + attention capture"
SEGMENTS = "segment passes"


def read_lines(paths):
    """(gateau runs {path: {"samples": [...], "total": {...}}}, torch lines [...])."""
    gateau, torch = {}, []
    for path in paths:
        stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
        with stream:
            for n, line in enumerate(stream, 1):
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit(f"mix-table: {path}:{n}: not JSON: {e}")
                phase = str(r.get("phase", ""))
                if phase in ("mix sample", "mix total"):
                    run = gateau.setdefault(path, {"samples": [], "total": None})
                    if phase == "mix sample":
                        run["samples"].append(r)
                    else:
                        run["total"] = r
                elif "compiled" in r and (phase in (FULL, CAPTURE) or phase.startswith(SEGMENTS)):
                    torch.append(r)
    return gateau, torch


def interpolate(points, x):
    """y at x from sorted [(x, y)]: log-log between neighbours (linear where a y is not
    positive), held at the nearest end outside; and whether it was held."""
    if len(points) == 1:
        return points[0][1], x != points[0][0]
    if x <= points[0][0]:
        return points[0][1], x < points[0][0]
    if x >= points[-1][0]:
        return points[-1][1], x > points[-1][0]
    for (x1, y1), (x2, y2) in zip(points, points[1:]):
        if x1 <= x <= x2:
            if y1 > 0 and y2 > 0:
                f = math.log(x / x1) / math.log(x2 / x1)
                return math.exp(math.log(y1) + f * (math.log(y2) - math.log(y1))), False
            return y1 + (y2 - y1) * (x - x1) / (x2 - x1), False
    raise AssertionError("unreachable")


class Torch:
    """PyTorch's best per-phase rates at the measured points."""

    def __init__(self, lines):
        runs = defaultdict(dict)  # (ctx, resp, compiled) -> {phase: line}
        for r in lines:
            phase = SEGMENTS if r["phase"].startswith(SEGMENTS) else r["phase"]
            runs[(int(r["ctx"]), int(r["resp"]), bool(r["compiled"]))][phase] = r
        full, eager, extra, seg = {}, {}, {}, {}
        self.points, self.versions = set(), set()
        for (ctx, resp, compiled), phases in runs.items():
            for r in phases.values():
                self.versions.add(f"torch {r.get('torch', '?')}")
            if FULL in phases:
                f = phases[FULL]
                t, rate = int(f["tokens"]), f["tokens"] / f["seconds"]
                full[t] = max(full.get(t, 0), rate)
                if not compiled:
                    eager[t] = max(eager.get(t, 0), rate)
                self.points.add((t, resp))
            if SEGMENTS in phases:
                s = phases[SEGMENTS]
                ts = int(s["seq"])
                seg[ts] = max(seg.get(ts, 0), s["tokens"] / s["seconds"])
        # The capture's extra per response row and key, against the eager full pass of the
        # same point (the compiled run's when there is no eager run).
        for (ctx, resp, compiled), phases in runs.items():
            if CAPTURE not in phases or FULL not in phases:
                continue
            t = int(phases[CAPTURE]["tokens"])
            base = t / eager[t] if t in eager else phases[FULL]["seconds"]
            e = max(0.0, phases[CAPTURE]["seconds"] - base) / (resp * t)
            extra[t] = min(extra.get(t, math.inf), e)
        if not (full and extra and seg):
            sys.exit("mix-table: the torch lines need, at one point at least, all three phases "
                     "(full pass, capture pass, segment passes)")
        self.full, self.extra, self.seg = (sorted(d.items()) for d in (full, extra, seg))
        self.eager = sorted(eager.items()) or self.full

    def sample(self, s):
        """Seconds of one gateau mix sample, per phase, and whether any rate was held."""
        t, r = int(s["tokens"]), int(s["resp"])
        full, h1 = interpolate(self.full, t)
        eager, h2 = interpolate(self.eager, t)
        e, h3 = interpolate(self.extra, t)
        seg, h4 = interpolate(self.seg, int(s["segment_tokens"]))
        phases = (t / full, t / eager + e * r * t, int(s["segments"]) * s["segment_tokens"] / seg)
        return phases, h1 or h2 or h3 or h4


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+",
                    help="JSON lines of `gateau bench --mix` runs and of the torch anchor")
    ap.add_argument("--per-sample", action="store_true", help="also a table per sample")
    ap.add_argument("--gpu", default="", help="the GPU, for the caption (e.g. 'one H200')")
    args = ap.parse_args()

    gateau, torch_lines = read_lines(args.files)
    if not gateau:
        sys.exit("mix-table: no 'mix sample' lines: give `gateau bench --mix NAME --json FILE`")
    runs = []
    lengths = None
    for path, run in gateau.items():
        samples = sorted(run["samples"], key=lambda s: s["sample"])
        if not samples:
            sys.exit(f"mix-table: {path}: a 'mix total' line but no 'mix sample' lines")
        mine = [(s["tokens"], s["resp"]) for s in samples]
        if lengths is None:
            lengths, first = mine, path
        elif mine != lengths:
            sys.exit(f"mix-table: {path} and {first} timed different mixes")
        total = run["total"] or {}
        what = samples[0].get("dtype", "?")
        kernels = total.get("attention") or samples[0].get("attention", "?")
        runs.append((f"gateau {what} (attention {kernels})", [s["seconds"] for s in samples]))
    # Two runs of one dtype and kernel: tell them apart by their files.
    names = [r[0] for r in runs]
    runs = [(f"{name[:-1]}, {path})" if names.count(name) > 1 else name, secs)
            for (name, secs), path in zip(runs, gateau)]
    samples = sorted(next(iter(gateau.values()))["samples"], key=lambda s: s["sample"])
    n = len(samples)
    tokens = sum(s["tokens"] for s in samples)

    torch = Torch(torch_lines) if torch_lines else None
    held = []
    if torch:
        per = []
        for s in samples:
            phases, h = torch.sample(s)
            per.append(phases)
            if h:
                held.append(s["sample"])
        torch_seconds = [sum(p) for p in per]

    t_sorted = sorted(s["tokens"] for s in samples)
    r_sorted = sorted(s["resp"] for s in samples)
    shape = samples[0].get("shape", "?")
    print(f"Mix `{samples[0].get('mix', '?')}`: {n} samples, {tokens:,} tokens "
          f"({t_sorted[0]:,} to {t_sorted[-1]:,} per sample, median {t_sorted[n // 2]:,}; "
          f"responses {r_sorted[0]:,} to {r_sorted[-1]:,}), shape {shape}"
          + (f", {args.gpu}" if args.gpu else "") + ".")
    print()
    best = sum(torch_seconds) if torch else None
    print("| pipeline | seconds, all samples | seconds per sample | samples per hour "
          "| tokens/s | vs PyTorch best |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    rows = list(runs)
    if torch:
        rows.append((f"PyTorch best ({', '.join(sorted(torch.versions))}; per phase the "
                     "better of eager and compiled)", torch_seconds))
    for name, secs in rows:
        total = sum(secs)
        vs = f"{best / total:.2f}x" if best else "n/a"
        print(f"| {name} | {total:.2f} | {total / n:.3f} | {3600 * n / total:.1f} "
              f"| {tokens / total:,.0f} | {vs} |")
    if args.per_sample:
        print()
        head = " | ".join(name.split(" (")[0] + " s" for name, _ in rows)
        print(f"| sample | tokens | response | segments | {head} |")
        print("| ---: | ---: | ---: | ---: |" + " ---: |" * len(rows))
        for i, s in enumerate(samples):
            secs = " | ".join(f"{r[1][i]:.3f}" for r in rows)
            print(f"| {s['sample']} | {s['tokens']:,} | {s['resp']:,} | {s['segments']} "
                  f"| {secs} |")
    print()
    notes = ["gateau: each sample measured once, scored as `gateau score` scores it (both "
             "full passes, every segment pass; new shapes, cuDNN graphs built in the run)."]
    if torch:
        pts = ", ".join(f"{t:,} tokens / {r} response" for t, r in sorted(torch.points))
        notes.append(
            "PyTorch: assembled per sample from torch_pipeline_bench.py's phase rates measured "
            f"at {pts}, interpolated log-log in length between them (full passes in the "
            "sample's tokens, segment passes in the segment's), the capture's extra over an "
            "eager full pass scaled by response x tokens; see scripts/mix-table.py.")
        if held:
            notes.append("Outside the measured lengths, rates held at the nearest measured "
                         f"one: sample {', '.join(map(str, held))}.")
    else:
        notes.append("No torch lines given: no PyTorch row.")
    for line in notes:
        print(f"- {line}")


if __name__ == "__main__":
    main()
