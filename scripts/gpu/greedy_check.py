#!/usr/bin/env python3
"""Greedy output of the default model on the GPU against the CPU, on the 24 oracle prompts.

make-ref (on the CPU machine): writes tests/oracle/data/greedy_prompts.json (the oracle prompts' token
  ids) and tests/oracle/data/cpu_greedy_q41.json: swiftkv's CPU greedy continuations (32 tokens, f32
  activations; weights as stored: Q4_1 dequantized to f32), with the command and swiftkv commit.
    python3 scripts/gpu/greedy_check.py make-ref --swiftkv build/release/tools/swiftkv \\
        --model models/SmolLM2-135M-Instruct.Q4_1.gguf
check (on the GPU machine): runs the same prompts with `-d cuda` (bf16 weights and activations) and
  compares token by token with the stored CPU continuations: identical continuations and the common
  prefix length. bf16 weights and activations can flip near-ties, after which the continuations
  diverge, so the reference also stores the CPU's top-2 logit margin at every greedy step. PASS needs
  every divergence to fall on a near-tie (CPU margin < --tie-margin, default 0.1 logits) and at least
  half of the continuations identical.
    python3 scripts/gpu/greedy_check.py check --swiftkv /tmp/skv/bin/swiftkv --model MODEL --out r.json
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "oracle", "data")
PROMPTS = os.path.join(DATA, "greedy_prompts.json")
CPU_REF = os.path.join(DATA, "cpu_greedy_q41.json")
N_GREEDY = 32


def run_swiftkv(exe, model, device, out, extra=()):
    cmd = [exe, "score", "-m", model, "-d", device, "--prompts-file", PROMPTS, "--greedy", str(N_GREEDY),
           "-c", "4096", "-o", out, *extra]
    subprocess.run(cmd, check=True)
    with open(out) as f:
        return cmd, json.load(f)


def make_ref(args):
    with open(os.path.join(DATA, "oracle_refs.json")) as f:
        oracle = json.load(f)
    prompts = [p["prompt_ids"] for p in oracle["prompts"]]
    with open(PROMPTS, "w") as f:
        json.dump({"source": "tests/oracle/data/oracle_refs.json prompt_ids", "prompts": prompts}, f)
        f.write("\n")
    cmd, res = run_swiftkv(args.swiftkv, args.model, "cpu", "/tmp/cpu_greedy.json", ["--dtype", "f32"])
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = {"script": "scripts/gpu/greedy_check.py make-ref", "command": " ".join(os.path.relpath(c, ROOT)
           if os.path.isabs(c) else c for c in cmd), "swiftkv_commit": commit, "device": "cpu (f32 activations)",
           "model": os.path.basename(args.model), "n_greedy": N_GREEDY,
           "greedy_ids": [r["greedy_ids"] for r in res["results"]]}
    # The CPU's top-2 margin at every greedy step: logits at the last prompt position and at each
    # generated token but the last, scored over prompt + continuation.
    import numpy as np
    margins = []
    for ids, cont in zip(prompts, out["greedy_ids"]):
        toks = ids + cont[:-1]
        pos = list(range(len(ids) - 1, len(toks)))
        subprocess.run([args.swiftkv, "score", "-m", args.model, "-d", "cpu", "--dtype", "f32", "-c", "4096",
                        "--tokens", ",".join(map(str, toks)), "--positions", ",".join(map(str, pos)),
                        "--npy", "/tmp/cpu_margins.npy"], check=True)
        logits = np.load("/tmp/cpu_margins.npy")
        top2 = np.sort(logits, axis=-1)[:, -2:]
        margins.append([round(float(m), 5) for m in top2[:, 1] - top2[:, 0]])
    out["top2_margins"] = margins
    with open(CPU_REF, "w") as f:
        json.dump(out, f)
        f.write("\n")
    print(f"wrote {PROMPTS} and {CPU_REF} ({len(prompts)} prompts)")


def check(args):
    with open(CPU_REF) as f:
        stored = json.load(f)
    ref, margins = stored["greedy_ids"], stored["top2_margins"]
    if args.gpu_result:
        with open(args.gpu_result) as f:
            res = json.load(f)
    else:
        _, res = run_swiftkv(args.swiftkv, args.model, args.device, "/tmp/gpu_greedy.json")
    gpu = [r["greedy_ids"] for r in res["results"]]
    rows = []
    for i, (a, b) in enumerate(zip(ref, gpu)):
        prefix = 0
        while prefix < min(len(a), len(b)) and a[prefix] == b[prefix]:
            prefix += 1
        row = {"prompt": i, "identical": a == b, "common_prefix": prefix, "first_equal": a[:1] == b[:1],
               "gpu_greedy_ids": b}
        if a != b:
            row["cpu_top2_margin_at_divergence"] = margins[i][prefix]
            row["near_tie"] = margins[i][prefix] < args.tie_margin
        rows.append(row)
    identical = sum(r["identical"] for r in rows)
    first = sum(r["first_equal"] for r in rows)
    mean_prefix = sum(r["common_prefix"] for r in rows) / len(rows)
    unexplained = [r["prompt"] for r in rows if not r["identical"] and not r["near_tie"]]
    ok = not unexplained and identical >= 0.5 * len(rows)
    summary = {"prompts": len(rows), "identical_continuations": identical, "first_token_equal": first,
               "mean_common_prefix": mean_prefix, "n_greedy": N_GREEDY, "tie_margin": args.tie_margin,
               "divergences_not_at_near_ties": unexplained, "pass": ok, "rows": rows, "device": args.device}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
    for r in rows:
        if r["identical"]:
            print(f"prompt {r['prompt']:2d}: identical")
        else:
            print(f"prompt {r['prompt']:2d}: diverges at {r['common_prefix']} where the CPU's top-2 margin is "
                  f"{r['cpu_top2_margin_at_divergence']:.3f} logits ({'near-tie' if r['near_tie'] else 'NOT a near-tie'})")
    print(f"greedy GPU vs CPU: {identical}/{len(rows)} identical {N_GREEDY}-token continuations, first token equal "
          f"{first}/{len(rows)}, mean common prefix {mean_prefix:.1f} -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["make-ref", "check"])
    ap.add_argument("--swiftkv", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out")
    ap.add_argument("--tie-margin", type=float, default=0.1, help="CPU top-2 margin below which a flip is a near-tie")
    ap.add_argument("--gpu-result", help="check: re-evaluate a stored GPU result instead of running swiftkv")
    args = ap.parse_args()
    if args.mode == "make-ref":
        make_ref(args)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
