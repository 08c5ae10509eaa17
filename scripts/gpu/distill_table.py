#!/usr/bin/env python3
"""The evaluation table of the distilled default model (issue 6, item 5) from `swiftkv eval -o` JSON files.

Reads DIR/<label>_{wiki,arce,arcc,piqa}.json as scripts/gpu/distill_default.sh writes them (label: base,
<run>_undistilled, <run>_distilled) and prints a Markdown table: WikiText-2 perplexity (llama-perplexity
windows of 512), KL(base || model) mean and p99 and top-1 agreement with the base on the same windows,
acc / acc_norm on ARC-Easy dev, ARC-Challenge dev and PIQA valid, and the averages over the three tasks.

Usage: python3 scripts/gpu/distill_table.py DIR [--json OUT.json]
"""
import argparse
import json
import os
import sys

TASKS = [("arce", "ARC-E"), ("arcc", "ARC-C"), ("piqa", "PIQA")]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--json", help="also write the rows as JSON")
    a = ap.parse_args()
    labels = sorted({f.rsplit("_", 1)[0] for f in os.listdir(a.dir) if f.endswith(".json")},
                    key=lambda s: (s != "base", s.replace("_undistilled", "_0").replace("_distilled", "_1")))
    rows = []
    for label in labels:
        row = {"model": label}
        w = load(os.path.join(a.dir, f"{label}_wiki.json"))
        if w:
            row["ppl"] = w.get("ppl")
            if "kl" in w:
                row["kl_mean"], row["kl_p99"] = w["kl"]["mean"], w["kl"]["p99"]
                row["top1"] = w.get("top1_agreement", w.get("top1"))
        accs, norms = [], []
        for key, _ in TASKS:
            m = load(os.path.join(a.dir, f"{label}_{key}.json"))
            if m:
                row[key] = m["acc"]
                row[key + "_norm"] = m["acc_norm"]
                row[key + "_n"] = m.get("n")
                accs.append(m["acc"])
                norms.append(m["acc_norm"])
        if len(accs) == len(TASKS):
            row["avg_acc"] = sum(accs) / len(accs)
            row["avg_acc_norm"] = sum(norms) / len(norms)
        rows.append(row)

    def f(v, scale=1.0, nd=2):
        return "" if v is None else f"{v * scale:.{nd}f}"

    head = ["model", "wiki PPL", "KL mean", "KL p99", "top-1 %"] + [f"{n} acc / norm" for _, n in TASKS] + ["avg acc", "avg acc_norm"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for r in rows:
        top1 = r.get("top1")
        if top1 is not None and top1 <= 1.0:
            top1 *= 100
        cells = [r["model"], f(r.get("ppl")), f(r.get("kl_mean"), nd=3), f(r.get("kl_p99"), nd=2), f(top1, nd=1)]
        for key, _ in TASKS:
            cells.append(f"{f(r.get(key), 100, 1)} / {f(r.get(key + '_norm'), 100, 1)}" if key in r else "")
        cells += [f(r.get("avg_acc"), 100, 2), f(r.get("avg_acc_norm"), 100, 2)]
        print("| " + " | ".join(cells) + " |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
