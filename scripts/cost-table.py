#!/usr/bin/env python3
"""What scoring costs: GPU-hours per 10,000 samples at each context length, as a markdown table.

Reads the JSON lines of `gateau bench` (stdout, or the file of `--json FILE`) and takes, per
context, the seconds of the phase "whole sample, measured (N segments)": one sample scored as
`gateau score` scores it (long full pass with attention capture, short full pass, every
segment pass). Then

    GPU-hours per 10k samples = seconds per sample x 10,000 / 3600
    8 GPUs, wall-clock hours  = GPU-hours / 8 / efficiency

where the efficiency (default 1.0) is an assumption unless measured (`--efficiency E
--efficiency-measured`). Contexts asked for (`--contexts`) that were not benched are estimated
from the two nearest benched ones with t(n) = a n + b n^2 (linear work: GEMMs, segment
passes; quadratic work: attention of the full passes) and marked interpolated (between them)
or extrapolated (outside them).

    target/release/gateau bench --shape llama2-7b --ctx 8192,16384,32768,65536 \\
        --repeat 2 --json bench.jsonl
    python3 scripts/cost-table.py bench.jsonl

Figures recorded elsewhere can be given by hand instead: --seconds 16384=3.313,65536=15.477.
"""

import argparse
import json
import math
import sys
from collections import defaultdict

WHOLE = "whole sample, measured"


def read_bench(paths):
    """{ctx: [seconds, ...]} of the measured whole samples, and the shapes/kernels seen."""
    seconds = defaultdict(list)
    seen = set()
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
                    sys.exit(f"cost-table: {path}:{n}: not JSON: {e}")
                if str(r.get("phase", "")).startswith(WHOLE):
                    seconds[int(r["ctx"])].append(float(r["seconds"]))
                    seen.add((str(r.get("shape")), str(r.get("attention"))))
    return seconds, seen


def parse_seconds(text):
    out = defaultdict(list)
    for item in text.split(","):
        ctx, _, sec = item.partition("=")
        try:
            out[int(ctx)].append(float(sec))
        except ValueError:
            sys.exit(f"cost-table: --seconds {item!r}: use CTX=SECONDS, e.g. 16384=3.313")
    return out


def fit(p, q):
    """a, b of t(n) = a n + b n^2 through two points (n, t)."""
    (n1, t1), (n2, t2) = p, q
    det = n1 * n2 * n2 - n2 * n1 * n1
    a = (t1 * n2 * n2 - t2 * n1 * n1) / det
    b = (n1 * t2 - n2 * t1) / det
    return a, b


def estimate(ctx, measured):
    """(seconds, basis) at ctx from the measured {ctx: seconds}."""
    if ctx in measured:
        return measured[ctx], "measured"
    known = sorted(measured)
    if len(known) == 1:
        n = known[0]
        return measured[n] * ctx / n, f"estimated: proportional to {kfmt(n)}"
    below = [n for n in known if n < ctx]
    above = [n for n in known if n > ctx]
    if below and above:
        pair, basis = (below[-1], above[0]), "estimated: interpolated"
    elif above:
        pair, basis = (above[0], above[1]), "estimated: extrapolated"
    else:
        pair, basis = (below[-2], below[-1]), "estimated: extrapolated"
    a, b = fit(*[(n, measured[n]) for n in pair])
    t = a * ctx + b * ctx * ctx
    if a < 0 or b < 0 or t <= 0:
        # The two points do not fit the model: fall back to a straight line through them.
        (n1, t1), (n2, t2) = [(n, measured[n]) for n in pair]
        t = t1 + (t2 - t1) * (ctx - n1) / (n2 - n1)
    return t, f"{basis} from {kfmt(pair[0])} and {kfmt(pair[1])}"


def kfmt(n):
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench", nargs="*", help="JSON lines of `gateau bench` ('-': stdin)")
    ap.add_argument("--seconds", help="measured seconds per sample by hand: CTX=S,CTX=S")
    ap.add_argument("--contexts", default="8192,16384,32768,65536",
                    help="contexts of the table, comma-separated (default: %(default)s)")
    ap.add_argument("--samples", type=int, default=10_000, help="samples (default: 10000)")
    ap.add_argument("--gpus", type=int, default=8, help="GPUs of the wide column (default: 8)")
    ap.add_argument("--efficiency", type=float, default=1.0,
                    help="share of the ideal speed-up the GPUs reach (default: 1.0)")
    ap.add_argument("--efficiency-measured", action="store_true",
                    help="say that --efficiency was measured, not assumed")
    ap.add_argument("--gpu", default="", help="the GPU, for the caption (e.g. 'one H200')")
    args = ap.parse_args()

    runs, seen = read_bench(args.bench)
    if args.seconds:
        for ctx, secs in parse_seconds(args.seconds).items():
            runs[ctx].extend(secs)
    if not runs:
        sys.exit("cost-table: no 'whole sample, measured' lines: give `gateau bench` JSON "
                 "lines (--json FILE) or --seconds CTX=S")
    if not 0 < args.efficiency <= 1:
        sys.exit("cost-table: --efficiency must be in (0, 1]")
    measured = {ctx: sum(s) / len(s) for ctx, s in runs.items()}
    contexts = sorted({int(c) for c in args.contexts.split(",") if c.strip()})

    g = args.gpus
    eff = args.efficiency
    print(f"| context | seconds per sample | 1 GPU: GPU-hours per {args.samples:,} samples "
          f"(= hours) | {g} GPUs: wall-clock hours | basis |")
    print("| --- | ---: | ---: | ---: | --- |")
    for ctx in contexts:
        t, basis = estimate(ctx, measured)
        if basis == "measured" and len(runs[ctx]) > 1:
            basis = f"measured (mean of {len(runs[ctx])} runs)"
        hours = t * args.samples / 3600
        print(f"| {kfmt(ctx)} | {t:.3f} | {hours:.1f} | {hours / g / eff:.2f} | {basis} |")
    print()
    what = ", ".join(sorted(f"shape {s}, attention {k}" for s, k in seen if s != "None"))
    notes = [
        f"Seconds per sample: `gateau bench`'s \"whole sample, measured\""
        + (f" ({what})" if what else "") + (f" on {args.gpu}" if args.gpu else "") + ".",
        f"{g} GPUs: GPU-hours / {g} / efficiency, efficiency {eff:g} "
        + ("(measured)." if args.efficiency_measured else "(an assumption, not measured)."),
    ]
    if any(c not in measured for c in contexts):
        notes.append("Interpolated and extrapolated rows are estimates: t(n) = a n + b n^2 "
                     "through the two benched contexts named (proportional to the context "
                     "when only one was benched); bench that context to measure it.")
    for n in notes:
        print(f"- {n}")


if __name__ == "__main__":
    main()
