#!/usr/bin/env python3
"""lm-eval against `swiftkv serve` gives the accuracy of swiftkv's in-process evaluation.

Issue 5's compatibility check: lm-eval (PyPI) runs ARC-Easy (dev, the local JSON-lines file in
../shared/data) through its `local-completions` model, i.e. OpenAI completions requests with
echo=True, logprobs=1, max_tokens=1 against the server, whose prompt logprobs for a SwiftKV model run
the full-student path. The same items are scored in process by `swiftkv eval --mc`. Both use
lm-eval's arc_easy prompt ("Question: ...\\nAnswer:" + " choice") and its context/continuation
tokenization, so acc and acc_norm must agree, and so must every per-choice log-likelihood (within
float noise).

lm-eval pulls PyTorch, too heavy for CI, so this script runs by hand and its output is committed
(tests/server/data/lmeval_check.json). It checks the base model and its undistilled 50% SwiftKV
student (made here with `swiftkv convert`; its directory also gives lm-eval the Hugging Face
tokenizer it needs, since nothing can be downloaded).

usage: scripts/lmeval_check.py --lm-eval-python VENV/bin/python [--limit N] [--out FILE]
  (set up the venv with: python3 -m venv V && V/bin/pip install lm-eval==0.4.9 'transformers<5' 'datasets<4')
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASK = "swiftkv_arc_easy_dev"


def task_yaml(data_file):
    return f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
test_split: test
output_type: multiple_choice
process_docs: !function arc_utils.process_docs
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: gold
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def start_server(swiftkv, model, name):
    proc = subprocess.Popen([str(swiftkv), "serve", "-m", str(model), "--port", "0", "-c", "2048",
                             "--served-model-name", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("listening on "):
            return proc, line.split()[-1]
    proc.kill()
    raise RuntimeError("server did not start: " + proc.stderr.read())


def run_lm_eval(py, url, name, tokenizer_dir, task_dir, limit, out_dir, concurrent):
    args = [py, "-m", "lm_eval", "--model", "local-completions", "--model_args",
            f"model={name},base_url={url}/v1/completions,tokenizer={tokenizer_dir},tokenizer_backend=huggingface,"
            f"tokenized_requests=True,num_concurrent={concurrent},max_retries=1,max_length=2048,timeout=900",
            "--tasks", TASK, "--include_path", str(task_dir), "--output_path", str(out_dir), "--log_samples"]
    if limit:
        args += ["--limit", str(limit)]
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.time()
    subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL)
    secs = time.time() - t0
    results = next(out_dir.rglob("results_*.json"))
    samples = next(out_dir.rglob(f"samples_{TASK}_*.jsonl"))
    res = json.loads(results.read_text())["results"][TASK]
    per_item = {}
    for line in samples.read_text().splitlines():
        s = json.loads(line)
        per_item[s["doc"]["id"]] = [float(r[0][0]) for r in s["resps"]]
    return {"acc": res["acc,none"], "acc_norm": res["acc_norm,none"], "seconds": round(secs, 1)}, per_item


def run_swiftkv_eval(swiftkv, model, data_file, limit, out_json):
    args = [str(swiftkv), "eval", "-m", str(model), "--mc", str(data_file), "--format", "arc", "--json", str(out_json)]
    if limit:
        args += ["--limit", str(limit)]
    t0 = time.time()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    secs = time.time() - t0
    d = json.loads(out_json.read_text())
    mc = d["mc"] if "mc" in d else d
    per_item = {it["id"]: [float(x) for x in it["loglik"]] for it in mc["items"]}
    return {"acc": mc["acc"], "acc_norm": mc["acc_norm"], "seconds": round(secs, 1)}, per_item


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lm-eval-python", required=True, help="python of a venv with lm-eval installed")
    ap.add_argument("--swiftkv", default=str(ROOT / "build" / "release" / "tools" / "swiftkv"))
    ap.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ARC-Easy-Dev.jsonl"))
    ap.add_argument("--limit", type=int, default=0, help="first N items (default: all 570)")
    ap.add_argument("--concurrent", type=int, default=8, help="lm-eval's num_concurrent")
    ap.add_argument("--out", default=str(ROOT / "tests" / "server" / "data" / "lmeval_check.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="swiftkv_lmeval_"))
    try:
        task_dir = work / "tasks"
        task_dir.mkdir()
        shutil.copy(ROOT / "scripts" / "lmeval" / "arc_utils.py", task_dir / "arc_utils.py")
        (task_dir / f"{TASK}.yaml").write_text(task_yaml(Path(args.data).resolve()))
        student = work / "swiftkv50"
        subprocess.run([args.swiftkv, "convert", "--model", args.model, "--swiftkv-layers", "50%", "--out",
                        str(student), "--dtype", "f32"], check=True, stdout=subprocess.DEVNULL)
        versions = subprocess.run([args.lm_eval_python, "-c",
                                   "import lm_eval, transformers, datasets, torch; print(lm_eval.__version__, "
                                   "transformers.__version__, datasets.__version__, torch.__version__)"],
                                  check=True, capture_output=True, text=True).stdout.split()
        report = {
            "script": "scripts/lmeval_check.py",
            "command": " ".join(sys.argv),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "swiftkv_commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                             text=True).stdout.strip(),
            "tools": {"lm_eval": versions[0], "transformers": versions[1], "datasets": versions[2],
                      "torch": versions[3], "python": platform.python_version()},
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
            "task": f"ARC-Easy dev ({Path(args.data).name}), lm-eval arc_easy prompt format",
            "limit": args.limit or None,
            "models": {},
        }
        ok = True
        for label, model in (("base", args.model), ("swiftkv50_undistilled", student)):
            name = "m-" + label
            proc, url = start_server(args.swiftkv, model, name)
            try:
                served, served_items = run_lm_eval(args.lm_eval_python, url, name, student, task_dir, args.limit,
                                                   work / ("lm_eval_" + label), args.concurrent)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            inproc, inproc_items = run_swiftkv_eval(args.swiftkv, model, args.data, args.limit,
                                                    work / (label + ".json"))
            common = sorted(set(served_items) & set(inproc_items))
            diffs = [abs(a - b) for k in common for a, b in zip(served_items[k], inproc_items[k])]
            entry = {
                "lm_eval_via_server": served,
                "swiftkv_eval_in_process": inproc,
                "items": len(common),
                "items_missing": len(set(served_items) ^ set(inproc_items)),
                "max_abs_loglik_diff": max(diffs) if diffs else None,
                "same_accuracy": served["acc"] == inproc["acc"] and served["acc_norm"] == inproc["acc_norm"],
            }
            ok = ok and entry["same_accuracy"] and entry["items_missing"] == 0
            report["models"][label] = entry
            print(f"{label}: lm-eval via server acc {served['acc']:.4f} acc_norm {served['acc_norm']:.4f} | "
                  f"swiftkv eval acc {inproc['acc']:.4f} acc_norm {inproc['acc_norm']:.4f} | "
                  f"{len(common)} items, max |loglik diff| {entry['max_abs_loglik_diff']:.2e}")
        report["pass"] = ok
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print("wrote", args.out, "PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
