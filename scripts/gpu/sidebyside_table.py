#!/usr/bin/env python3
"""Tables of run_checks.sh's `sidebyside` phase: an older build against the current one, same GPU, same run.

Reads OUT/sbs_bench_{baseline,current}_{round}.json (swiftkv bench --synthetic) and
OUT/sbs_distill_{baseline,current}_{round}.jsonl (distill train logs), prints Markdown: per test the
median over rounds of each build, the ratio current/baseline, and the spread between rounds of the
same build (the noise the ratio is to be read against).
Usage: sidebyside_table.py OUT
"""
import glob
import json
import os
import statistics
import sys


def load_bench(out, which):
    runs = []
    for path in sorted(glob.glob(os.path.join(out, f"sbs_bench_{which}_*.json"))):
        with open(path) as f:
            d = json.load(f)
        vals = {}
        for var in d["variants"]:
            for r in var.get("results", []):
                key = (var["label"], r["test"], r["batch"])
                vals[key] = r.get("ms", r.get("ms_per_step"))
        runs.append(vals)
    return runs, (d["device"] if runs else "?")


def load_distill(out, which):
    runs = []
    for path in sorted(glob.glob(os.path.join(out, f"sbs_distill_{which}_*.jsonl"))):
        with open(path) as f:
            steps = [json.loads(line) for line in f if line.strip()]
        steady = [s for s in steps if s["step"] >= 2]
        if steady:
            runs.append({"step_s": statistics.median(s["step_s"] for s in steady),
                         "mfu": statistics.median(s["mfu"] for s in steady),
                         "kl_last": steps[-1]["kl"]})
    return runs


def spread(xs):
    return (max(xs) - min(xs)) / statistics.median(xs) * 100 if len(xs) > 1 else 0.0


def main():
    out = sys.argv[1]
    base, dev = load_bench(out, "baseline")
    cur, _ = load_bench(out, "current")
    print(f"Device: {dev}; {len(base)} baseline and {len(cur)} current rounds, alternating.\n")
    if base and cur:
        print("| variant | test | batch | baseline ms | current ms | current / baseline | spread baseline | spread current |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for key in base[0]:
            b = [r[key] for r in base if key in r]
            c = [r[key] for r in cur if key in r]
            if not b or not c:
                continue
            mb, mc = statistics.median(b), statistics.median(c)
            print(f"| {key[0]} | {key[1]} | {key[2]} | {mb:.3f} | {mc:.3f} | {mc / mb:.3f} | "
                  f"{spread(b):.1f}% | {spread(c):.1f}% |")
    db, dc = load_distill(out, "baseline"), load_distill(out, "current")
    if db and dc:
        print("\nDistillation step, Llama-3.1-8B shape, SwiftKV 50%, 8 x 2048 tokens (steps 2-8, median)\n")
        print("| build | step s | MFU | KL at step 8 |")
        print("|---|---:|---:|---:|")
        for name, runs in (("baseline", db), ("current", dc)):
            for r in runs:
                print(f"| {name} | {r['step_s']:.3f} | {r['mfu'] * 100:.1f}% | {r['kl_last']:.6f} |")


if __name__ == "__main__":
    main()
