#!/usr/bin/env python3
"""Load benchmark for swiftkv's OpenAI-compatible server (`swiftkv serve`).

Sends streaming POST /v1/completions requests, either random token-id prompts
(--input-len/--output-len, ignore_eos so lengths are fixed) or prompts from a
JSONL file, at fixed concurrency levels (--concurrency 1,2,4) or Poisson
arrival rates (--request-rate 1,2). For each level it reports request
throughput, input/output/total tokens/s, TTFT, TPOT ((e2e - TTFT) / (output
tokens - 1)) and inter-token latency (gaps between SSE chunks) at p50/p90/p99,
and errors.

Examples:
  # against a running server
  python3 bench/serve_bench.py --url http://127.0.0.1:8000 --concurrency 1,4
  # start/stop servers itself and compare them on the same prompts
  python3 bench/serve_bench.py --compare \
      --server-cmd "build/lead/tools/swiftkv serve -m A.gguf -c 1024" --label base \
      --server-cmd "build/lead/tools/swiftkv serve -m /tmp/skv -c 1024" --label skv \
      --input-len 500 --output-len 16 --concurrency 1,4 --num-requests 12 \
      --json-out out.json --png-out out.png

With --server-cmd the script appends `--port P` (a free port) unless the
command already contains --port.
"""
import argparse
import http.client
import json
import math
import os
import platform
import random
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import numpy as np

PCTS = (50, 90, 99)


# ----------------------------------------------------------------------------- server
def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Server:
    def __init__(self, cmd, log_path=None, timeout=300):
        args = shlex.split(cmd)
        if "--port" not in args:
            args += ["--port", str(free_port())]
        port = int(args[args.index("--port") + 1])
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(log_path, "w") if log_path else subprocess.DEVNULL
        print(f"# starting: {' '.join(args)}", file=sys.stderr)
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {cmd}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        print(f"# ready after {time.time() - t0:.1f}s at {self.url}", file=sys.stderr)
                        return
            except Exception:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("server did not become healthy")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()


def get_model_id(url):
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
            return json.load(r)["data"][0]["id"]
    except Exception:
        return None


# ----------------------------------------------------------------------------- prompts
def make_prompts(args):
    rng = random.Random(args.seed)
    if args.prompts_jsonl:
        out = []
        with open(args.prompts_jsonl) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                d = json.loads(line)
                p = d.get("prompt", d.get("text"))
                out.append({"prompt": p, "max_tokens": int(d.get("max_tokens", args.output_len))})
        if not out:
            sys.exit("no prompts in " + args.prompts_jsonl)
        return out
    # random token ids; a fresh prompt per request so prefix caching cannot help
    total = sum(args.level_requests) + (args.num_requests if args.warmup else 0)
    return [{"prompt": [rng.randrange(args.token_min, args.token_max) for _ in range(args.input_len)],
             "max_tokens": args.output_len} for _ in range(total)]


# ----------------------------------------------------------------------------- one request
def do_request(url, model, item, args):
    u = urllib.parse.urlparse(url)
    body = {"prompt": item["prompt"], "max_tokens": item["max_tokens"], "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    if not args.prompts_jsonl or args.ignore_eos:
        body["ignore_eos"] = True
    if model:
        body["model"] = model
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = "Bearer " + args.api_key
    res = {"ok": False, "ttft": None, "e2e": None, "itl": [], "prompt_tokens": None,
           "output_tokens": 0, "error": None}
    t0 = time.perf_counter()
    try:
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=args.timeout)
        conn.request("POST", "/v1/completions", json.dumps(body), headers)
        resp = conn.getresponse()
        if resp.status != 200:
            res["error"] = f"HTTP {resp.status}: {resp.read()[:200]!r}"
            conn.close()
            return res
        last = None
        chunks = 0
        usage = None
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            d = json.loads(data)
            if d.get("usage"):
                usage = d["usage"]
            ch = d.get("choices") or []
            if ch and ch[0].get("text") is not None and (ch[0].get("text") or ch[0].get("finish_reason") is None):
                now = time.perf_counter()
                if last is None:
                    res["ttft"] = now - t0
                else:
                    res["itl"].append(now - last)
                last = now
                chunks += 1
        res["e2e"] = time.perf_counter() - t0
        conn.close()
        if usage:
            res["prompt_tokens"] = usage.get("prompt_tokens")
            res["output_tokens"] = usage.get("completion_tokens", chunks)
        else:
            res["output_tokens"] = chunks
        if res["ttft"] is None:
            res["error"] = "no tokens received"
        else:
            res["ok"] = True
    except Exception as e:  # noqa: BLE001
        res["error"] = f"{type(e).__name__}: {e}"
    return res


# ----------------------------------------------------------------------------- one level
def run_level(url, model, items, args, concurrency=None, rate=None):
    results = [None] * len(items)
    lock = threading.Lock()
    nxt = [0]

    def worker():
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(items):
                return
            results[i] = do_request(url, model, items[i], args)

    t0 = time.perf_counter()
    threads = []
    if concurrency:
        for _ in range(min(concurrency, len(items))):
            th = threading.Thread(target=worker)
            th.start()
            threads.append(th)
    else:  # Poisson arrivals at `rate` req/s, one thread per request
        rng = np.random.default_rng(args.seed)
        gaps = rng.exponential(1.0 / rate, size=len(items))
        t_next = t0

        def one(i):
            results[i] = do_request(url, model, items[i], args)

        for i in range(len(items)):
            delay = t_next - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            th = threading.Thread(target=one, args=(i,))
            th.start()
            threads.append(th)
            t_next += gaps[i]
    for th in threads:
        th.join()
    dur = time.perf_counter() - t0
    return summarize(results, dur, items, concurrency, rate)


def pct(xs):
    if len(xs) == 0:
        return {f"p{p}": None for p in PCTS} | {"mean": None}
    a = np.asarray(xs) * 1000.0  # ms
    return {f"p{p}": float(np.percentile(a, p)) for p in PCTS} | {"mean": float(a.mean())}


def summarize(results, dur, items, concurrency, rate):
    ok = [r for r in results if r and r["ok"]]
    errs = [r["error"] for r in results if not (r and r["ok"])]
    in_tok = sum((r["prompt_tokens"] if r["prompt_tokens"] is not None else
                  (len(it["prompt"]) if isinstance(it["prompt"], list) else 0))
                 for r, it in zip(results, items) if r and r["ok"])
    out_tok = sum(r["output_tokens"] for r in ok)
    tpot = [(r["e2e"] - r["ttft"]) / (r["output_tokens"] - 1) for r in ok if r["output_tokens"] > 1]
    itl = [g for r in ok for g in r["itl"]]
    return {
        "concurrency": concurrency, "request_rate": rate,
        "num_requests": len(results), "completed": len(ok), "errors": len(errs),
        "error_samples": errs[:3], "duration_s": dur,
        "request_throughput": len(ok) / dur,
        "input_tok_s": in_tok / dur, "output_tok_s": out_tok / dur,
        "total_tok_s": (in_tok + out_tok) / dur,
        "input_tokens": in_tok, "output_tokens": out_tok,
        "ttft_ms": pct([r["ttft"] for r in ok]), "tpot_ms": pct(tpot),
        "itl_ms": pct(itl), "e2e_ms": pct([r["e2e"] for r in ok]),
    }


def level_name(lv):
    return f"c={lv['concurrency']}" if lv["concurrency"] else f"rate={lv['request_rate']}"


def print_table(label, levels):
    print(f"\n== {label}")
    print(f"{'level':>9} {'req/s':>6} {'in t/s':>8} {'out t/s':>8} {'tot t/s':>8} "
          f"{'TTFT p50/p90/p99 ms':>22} {'TPOT p50/p90/p99 ms':>22} {'ITL p50/p90/p99 ms':>22} {'err':>4}")
    f3 = lambda d: "/".join("-" if d[f"p{p}"] is None else f"{d[f'p{p}']:.0f}" for p in PCTS)  # noqa: E731
    for lv in levels:
        print(f"{level_name(lv):>9} {lv['request_throughput']:6.2f} {lv['input_tok_s']:8.1f} "
              f"{lv['output_tok_s']:8.1f} {lv['total_tok_s']:8.1f} {f3(lv['ttft_ms']):>22} "
              f"{f3(lv['tpot_ms']):>22} {f3(lv['itl_ms']):>22} {lv['errors']:>4}")
    sys.stdout.flush()


# ----------------------------------------------------------------------------- one server
def bench_target(url, label, prompts, args):
    model = args.model or get_model_id(url)
    off = 0
    if args.warmup:
        run_level(url, model, prompts[:args.num_requests][:max(1, args.warmup)], args, concurrency=1)
        off = args.num_requests
    levels = []
    start = 0
    for k, lv in enumerate(args.levels):
        n = args.level_requests[k]
        items = prompts[off + start: off + start + n] \
            if not args.prompts_jsonl else [prompts[i % len(prompts)] for i in range(start, start + n)]
        start += n
        kw = {"concurrency": lv} if args.concurrency else {"rate": lv}
        print(f"# {label}: {level_name({'concurrency': kw.get('concurrency'), 'request_rate': kw.get('rate')})}, "
              f"{len(items)} requests", file=sys.stderr)
        levels.append(run_level(url, model, items, args, **kw))
    print_table(label, levels)
    return {"label": label, "url": url, "model": model, "levels": levels}


def plot(runs, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in runs:
        x = [lv["total_tok_s"] for lv in run["levels"]]
        for ax, key in zip(axes, ("ttft_ms", "tpot_ms")):
            y = [lv[key]["p50"] for lv in run["levels"]]
            ax.plot(x, y, marker="o", label=run["label"])
            for xi, yi, lv in zip(x, y, run["levels"]):
                if yi is not None:
                    ax.annotate(level_name(lv), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes[0].set_ylabel("p50 TTFT (ms)")
    axes[1].set_ylabel("p50 TPOT (ms)")
    for ax in axes:
        ax.set_xlabel("throughput (total tokens/s)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"# wrote {path}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="base URL of a running server, e.g. http://127.0.0.1:8000")
    ap.add_argument("--server-cmd", action="append", default=[],
                    help="command that starts a server (repeatable with --compare)")
    ap.add_argument("--label", action="append", default=[], help="label per --server-cmd / --url")
    ap.add_argument("--compare", action="store_true", help="run every --server-cmd in turn on the same prompts")
    ap.add_argument("--model", help="model id sent in requests (default: first of /v1/models)")
    ap.add_argument("--api-key")
    ap.add_argument("--input-len", type=int, default=500)
    ap.add_argument("--output-len", type=int, default=16)
    ap.add_argument("--prompts-jsonl", help="JSONL with 'prompt' (text or token ids) and optional 'max_tokens'")
    ap.add_argument("--ignore-eos", action="store_true", help="also send ignore_eos with --prompts-jsonl")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--concurrency", help="comma-separated fixed concurrency levels, e.g. 1,2,4")
    g.add_argument("--request-rate", help="comma-separated Poisson arrival rates in req/s")
    ap.add_argument("--num-requests", type=int, default=32, help="requests per level")
    ap.add_argument("--requests-per-concurrency", type=float, default=0,
                    help="with --concurrency: each level sends at least this many requests per unit of "
                         "concurrency (e.g. 2: two full waves at every level)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up requests before the levels (0: none)")
    ap.add_argument("--token-min", type=int, default=100)
    ap.add_argument("--token-max", type=int, default=40000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--server-log-dir", default="/tmp", help="where started servers' logs go")
    ap.add_argument("--json-out")
    ap.add_argument("--png-out")
    ap.add_argument("--title", default=None)
    args = ap.parse_args()

    if args.concurrency:
        args.levels = [int(x) for x in args.concurrency.split(",")]
    elif args.request_rate:
        args.levels = [float(x) for x in args.request_rate.split(",")]
    else:
        args.concurrency = "1"
        args.levels = [1]
    args.level_requests = [max(args.num_requests, int(math.ceil(args.requests_per_concurrency * lv)))
                           if args.concurrency else args.num_requests for lv in args.levels]
    if not args.url and not args.server_cmd:
        ap.error("give --url or --server-cmd")
    if args.url and args.server_cmd:
        ap.error("give --url or --server-cmd, not both")
    if len(args.server_cmd) > 1 and not args.compare:
        ap.error("several --server-cmd need --compare")
    targets = args.server_cmd or [args.url]
    labels = args.label + [f"run{i}" for i in range(len(args.label), len(targets))]

    prompts = make_prompts(args)
    runs = []
    for i, (tgt, label) in enumerate(zip(targets, labels)):
        if args.server_cmd:
            os.makedirs(args.server_log_dir, exist_ok=True)
            srv = Server(tgt, os.path.join(args.server_log_dir, f"serve_bench_{i}_{label}.log"))
            try:
                r = bench_target(srv.url, label, prompts, args)
            finally:
                srv.stop()
            r["server_cmd"] = tgt
        else:
            r = bench_target(tgt, label, prompts, args)
        runs.append(r)

    out = {
        "benchmark": "serve_bench",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count()},
        "argv": sys.argv,
        "settings": {"input_len": None if args.prompts_jsonl else args.input_len,
                     "output_len": None if args.prompts_jsonl else args.output_len,
                     "prompts_jsonl": args.prompts_jsonl, "num_requests": args.num_requests, "level_requests": args.level_requests,
                     "mode": "concurrency" if args.concurrency else "request_rate",
                     "levels": args.levels, "warmup": args.warmup, "seed": args.seed,
                     "ignore_eos": (not args.prompts_jsonl) or args.ignore_eos, "temperature": 0},
        "runs": runs,
    }
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=1)
        print(f"# wrote {args.json_out}", file=sys.stderr)
    if args.png_out:
        title = args.title or (f"swiftkv serve: input {args.input_len}, output {args.output_len}, "
                               f"{args.num_requests} requests per level" if not args.prompts_jsonl
                               else "swiftkv serve")
        plot(runs, args.png_out, title)
    if any(lv["errors"] for r in runs for lv in r["levels"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
