#!/usr/bin/env python3
"""Soak test for `swiftkv serve`: many requests at high concurrency, a fifth cancelled mid-stream,
mixed lengths, some over the context limit, plus malformed requests. Passes when the server returns
no 5xx, every accepted request completes (or was cancelled by us), the KV cache is empty again when
idle (/metrics), and the server's memory (VmRSS) stays flat between the first and second half.

    python3 scripts/soak_serve.py --swiftkv build/release/tools/swiftkv --requests 600 --concurrency 32 \
        --json-out bench/results/cpu_soak.json
"""
import argparse
import http.client
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def metric(port, name):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            return float(line.split()[-1])
    return None


def one_request(port, rng, ctx, stats, lock):
    kind = rng.random()
    body = None
    cancel = False
    if kind < 0.05:  # malformed or invalid
        bad = rng.choice(['{"prompt": ', '{"prompt": "x", "max_tokens": -5}', '{"prompt": "x", "temperature": "hot"}',
                          '{"prompt": ""}', '[1,2,3]', '{"prompt": "x", "max_tokens": 99999999999}',
                          '{"messages": "nope"}'])
        path = "/v1/chat/completions" if "messages" in bad else "/v1/completions"
        raw = bad.encode()
        expect = "4xx"
    else:
        over = kind < 0.10
        n_prompt = ctx + 10 if over else rng.randint(4, 300)
        prompt = [rng.randint(100, 40000) for _ in range(n_prompt)]
        body = {"prompt": prompt, "max_tokens": rng.randint(1, 24), "temperature": rng.choice([0, 0.7]),
                "stream": True, "ignore_eos": True, "n": rng.choice([1, 1, 1, 2])}
        raw = json.dumps(body).encode()
        path = "/v1/completions"
        expect = "4xx" if over else "ok"
        cancel = not over and rng.random() < 0.2
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        c.request("POST", path, body=raw, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        status = r.status
        if status >= 500:
            with lock:
                stats["5xx"] += 1
            return
        if expect == "4xx":
            r.read()
            with lock:
                stats["4xx_expected" if 400 <= status < 500 else "unexpected_status"] += 1
            return
        if status != 200:
            with lock:
                stats["unexpected_status"] += 1
            return
        done = False
        chunks = 0
        while True:
            line = r.fp.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                chunks += 1
                if line.strip() == b"data: [DONE]":
                    done = True
                    break
                if cancel and chunks >= 2:
                    break
        with lock:
            if cancel and not done:
                stats["cancelled"] += 1
            elif done:
                stats["completed"] += 1
            else:
                stats["incomplete"] += 1
    except Exception as e:  # noqa: BLE001 - a transport error is a failure to record
        with lock:
            stats["transport_errors"] += 1
            stats.setdefault("errors", []).append(repr(e)[:200])
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--swiftkv", default=os.path.join(ROOT, "build", "release", "tools", "swiftkv"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json-out")
    args = ap.parse_args()

    log = open("/tmp/soak_server.log", "w")
    proc = subprocess.Popen([args.swiftkv, "serve", "-m", args.model, "--port", str(args.port), "-c", str(args.ctx),
                             "--kv-cache-tokens", "8192"], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                c = http.client.HTTPConnection("127.0.0.1", args.port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        stats = {k: 0 for k in ["completed", "cancelled", "4xx_expected", "5xx", "unexpected_status", "incomplete",
                                "transport_errors"]}
        lock = threading.Lock()
        rngs = [random.Random(args.seed * 100003 + i) for i in range(args.requests)]
        half = args.requests // 2
        t0 = time.time()
        rss = []
        for part in (range(half), range(half, args.requests)):
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(lambda i: one_request(args.port, rngs[i], args.ctx, stats, lock), part))
            time.sleep(1.0)
            rss.append(rss_kib(proc.pid))
        elapsed = time.time() - t0
        # Idle: every block released (cached prefix blocks are not "used").
        used = None
        for _ in range(50):
            used = metric(args.port, "swiftkv:kv_cache_blocks_used")
            if used == 0:
                break
            time.sleep(0.2)
        running = metric(args.port, "swiftkv:num_requests_running")
        alive = proc.poll() is None
        growth = (rss[1] - rss[0]) / max(rss[0], 1)
        ok = (alive and stats["5xx"] == 0 and stats["unexpected_status"] == 0 and stats["incomplete"] == 0
              and stats["transport_errors"] == 0 and used == 0 and running == 0 and growth < 0.10)
        summary = {"script": "scripts/soak_serve.py", "requests": args.requests, "concurrency": args.concurrency,
                   "ctx": args.ctx, "elapsed_s": round(elapsed, 1), "stats": stats,
                   "kv_blocks_used_when_idle": used, "running_when_idle": running,
                   "rss_kib_after_first_half": rss[0], "rss_kib_after_second_half": rss[1],
                   "rss_growth": round(growth, 4), "server_alive": alive, "pass": ok}
        print(json.dumps(summary, indent=1))
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(summary, f, indent=1)
                f.write("\n")
        return 0 if ok else 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
