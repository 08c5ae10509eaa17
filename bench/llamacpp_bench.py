#!/usr/bin/env python3
"""llama.cpp baseline benchmark, in the manner of llama-bench, through llama-cpp-python.

usage: bench/llamacpp_bench.py --model M.gguf [--reps 3] [--threads 2] [--type-k f32|f16]
                               [--type-v f32|f16] [--pp 512,2048] [--tg 128] [--tg-prompt 16]
                               [--n-batch 2048] [--n-ubatch 512] [--flash-attn] [--repack auto|on|off]
                               [--json-out PATH]

Tests (each: one untimed warm-up run, then --reps timed runs; KV cache cleared before every run):
  ppN  time to evaluate a prompt of N token ids from an empty KV cache, in one llama_decode call
       (n_batch >= N; llama.cpp splits it into micro-batches of n_ubatch tokens); logits are
       computed for the last token only, as in llama-bench. Speed = N / time.
  tgN  after an untimed prompt of --tg-prompt tokens (default 16; llama-bench uses 0), N
       sequential single-token llama_decode calls (the decode loop); speed = N / time. The
       next token is a fixed pseudo-random id, not sampled: this measures the model, not a sampler.
Token ids are pseudo-random (numpy default_rng(seed)) in [0, n_vocab), like llama-bench.

--repack: llama.cpp's "extra buffer types" (weight repacking for SIMD layouts, and AMX kernels on
CPUs that report AMX), i.e. llama-bench's default, or off as with llama-bench -nr 1. On some VMs
ggml's AMX kernels die with SIGILL (seen with Q4_1 on a Firecracker guest that reports amx_int8):
`auto` (default) first tries the model with them on in a child process and falls back to off when
the child dies; the JSON records what was used and why.

Reported per test: mean and sample stddev of tokens/s over the reps (as llama-bench), median and
best (less sensitive to other load on the machine), the raw times, and the peak
RSS of the process during the test (VmHWM, reset per test through /proc/self/clear_refs when the
kernel allows it; otherwise the process-wide peak so far). The JSON also records the
llama-cpp-python version, ggml version/commit, the CPU model, the thread count, the load average
before and after (other people may be using the machine) and every llama.cpp parameter used.
"""

import argparse
import ctypes
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

GGML_TYPES = {"f32": 0, "f16": 1}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def read_status_kb(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs). True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib():
    hwm = read_status_kb("VmHWM")
    if hwm is None:
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return hwm / 1024.0


def loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def ggml_info(llama_cpp):
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
        out = {}
        for fn in ("ggml_version", "ggml_commit"):
            getattr(lib, fn).restype = ctypes.c_char_p
            out[fn] = getattr(lib, fn)().decode()
        return out
    except Exception as e:  # pragma: no cover
        return {"error": str(e)}


def patch_extra_bufts(llama_cpp, enabled):
    """Make llama-cpp-python's Llama() load models with use_extra_bufts = enabled."""
    orig = llama_cpp.llama_cpp.llama_model_default_params

    def patched():
        p = orig()
        p.use_extra_bufts = enabled
        return p

    llama_cpp.llama_cpp.llama_model_default_params = patched


def probe_extra_bufts(model, threads):
    """Run a small prompt and a decode step with extra buffer types on, in a child process."""
    code = (
        "import sys, llama_cpp\n"
        "from llama_cpp import Llama\n"
        "llm = Llama(model_path=sys.argv[1], n_ctx=256, n_batch=64, n_ubatch=64, n_threads=int(sys.argv[2]),"
        " n_threads_batch=int(sys.argv[2]), verbose=False)\n"
        "llm.eval(list(range(100, 164))); llm.eval([5])\n"
    )
    r = subprocess.run([sys.executable, "-c", code, model, str(threads)], capture_output=True, text=True)
    return r.returncode, r.stderr[-500:]


def stats(values):
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--type-k", choices=sorted(GGML_TYPES), default="f16",
                    help="K cache type (llama.cpp default f16)")
    ap.add_argument("--type-v", choices=sorted(GGML_TYPES), default=None, help="V cache type (default: --type-k)")
    ap.add_argument("--pp", default="512,2048", help="comma-separated prompt sizes (empty: none)")
    ap.add_argument("--tg", type=int, default=128, help="tokens generated in the tg test (0: skip)")
    ap.add_argument("--tg-prompt", type=int, default=16, help="untimed prompt before the tg test")
    ap.add_argument("--n-batch", type=int, default=2048, help="logical batch (llama-bench default 2048)")
    ap.add_argument("--n-ubatch", type=int, default=512, help="micro-batch (llama-bench default 512)")
    ap.add_argument("--flash-attn", action="store_true", help="enable flash attention (default off)")
    ap.add_argument("--repack", choices=("auto", "on", "off"), default="auto",
                    help="llama.cpp extra buffer types (repack/AMX); auto: on unless a probe crashes")
    ap.add_argument("--seed", type=int, default=42, help="seed of the random token ids")
    ap.add_argument("--json-out", default=None,
                    help="JSON output (default bench/results/llamacpp-<model>-<type_k>.json)")
    args = ap.parse_args()
    type_v = args.type_v or args.type_k

    import llama_cpp
    from llama_cpp import Llama

    pp_sizes = [int(x) for x in args.pp.split(",") if x.strip()]
    for n in pp_sizes:
        if n > args.n_batch:
            sys.exit(f"pp{n} needs --n-batch >= {n} (one llama_decode call per prompt)")
    n_ctx_needed = max(pp_sizes + [args.tg_prompt + args.tg, 1])
    n_ctx = ((n_ctx_needed + 255) // 256) * 256

    repack_note = args.repack
    extra_bufts = args.repack != "off"
    if args.repack == "auto":
        rc, err = probe_extra_bufts(args.model, args.threads)
        if rc != 0:
            extra_bufts = False
            repack_note = f"auto: off (probe with extra buffer types exited with {rc}: {err.strip()[-200:]!r})"
        else:
            repack_note = "auto: on (probe ok)"
    patch_extra_bufts(llama_cpp, extra_bufts)
    print(f"  repack/extra buffer types: {repack_note}", file=sys.stderr, flush=True)

    load_before = loadavg()
    rss_start = peak_rss_mib()
    params = dict(n_ctx=n_ctx, n_batch=args.n_batch, n_ubatch=args.n_ubatch, n_threads=args.threads,
                  n_threads_batch=args.threads, type_k=GGML_TYPES[args.type_k], type_v=GGML_TYPES[type_v],
                  flash_attn=args.flash_attn, logits_all=False, n_gpu_layers=0, use_mmap=True, verbose=False)
    t0 = time.perf_counter()
    llm = Llama(model_path=args.model, **params)
    load_s = time.perf_counter() - t0
    rss_after_load = peak_rss_mib()
    n_vocab = llm.n_vocab()
    model_ptr = llm._model.model
    model_size = int(llama_cpp.llama_model_size(model_ptr))
    model_params = int(llama_cpp.llama_model_n_params(model_ptr))
    buf = ctypes.create_string_buffer(256)
    llama_cpp.llama_model_desc(model_ptr, buf, 256)
    model_desc = buf.value.decode()
    rng = np.random.default_rng(args.seed)

    def clear():
        llm.reset()
        mem = llama_cpp.llama_get_memory(llm._ctx.ctx)
        llama_cpp.llama_memory_clear(mem, True)

    def run_pp(n):
        toks = [int(t) for t in rng.integers(0, n_vocab, size=n)]
        clear()
        t = time.perf_counter()
        llm.eval(toks)
        return time.perf_counter() - t

    def run_tg(n):
        prompt = [int(t) for t in rng.integers(0, n_vocab, size=args.tg_prompt)]
        gen = [int(t) for t in rng.integers(0, n_vocab, size=n)]
        clear()
        if prompt:
            llm.eval(prompt)
        t = time.perf_counter()
        for tok in gen:
            llm.eval([tok])
        return time.perf_counter() - t

    tests = [(f"pp{n}", n, run_pp) for n in pp_sizes]
    if args.tg > 0:
        tests.append((f"tg{args.tg}", args.tg, run_tg))

    results = []
    for name, n, fn in tests:
        peak_reset = reset_peak_rss()
        fn(n)  # warm-up
        times = [fn(n) for _ in range(args.reps)]
        tps = [n / t for t in times]
        mean, sd = stats(tps)
        results.append({
            "test": name, "n_tokens": n, "reps": args.reps, "times_s": times, "tokens_per_s": tps,
            "tokens_per_s_mean": mean, "tokens_per_s_stddev": sd,
            "tokens_per_s_median": statistics.median(tps), "tokens_per_s_best": max(tps),
            "ms_per_token_mean": 1000.0 * statistics.fmean(times) / n,
            "peak_rss_mib": peak_rss_mib(), "peak_rss_is_per_test": peak_reset,
        })
        print(f"  {name}: {mean:.2f} ± {sd:.2f} t/s", file=sys.stderr, flush=True)

    load_after = loadavg()
    out = {
        "bench": "bench/llamacpp_bench.py",
        "tool": "llama-cpp-python",
        "tool_version": llama_cpp.__version__,
        "ggml": ggml_info(llama_cpp),
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": cpu_model(),
        "cpu_model": cpu_model(),
        "n_cpus_online": os.cpu_count(),
        "n_cpus_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "model": os.path.abspath(args.model),
        "model_desc": model_desc,
        "model_size_bytes": model_size,
        "model_n_params": model_params,
        "threads": args.threads,
        "type_k": args.type_k,
        "type_v": type_v,
        "n_batch": args.n_batch,
        "n_ubatch": min(args.n_batch, args.n_ubatch),
        "n_ctx": n_ctx,
        "flash_attn": args.flash_attn,
        "use_extra_bufts": extra_bufts,
        "repack": repack_note,
        "tg_prompt_tokens": args.tg_prompt,
        "token_seed": args.seed,
        "llama_params": params,
        "load_time_s": load_s,
        "rss_mib_at_start": rss_start,
        "peak_rss_mib_after_load": rss_after_load,
        "peak_rss_mib_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "results": results,
    }

    json_out = args.json_out
    if json_out is None:
        stem = os.path.splitext(os.path.basename(args.model))[0]
        json_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                f"llamacpp-{stem}-{args.type_k}.json")
    os.makedirs(os.path.dirname(os.path.abspath(json_out)), exist_ok=True)
    with open(json_out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")

    print(f"llama-cpp-python {llama_cpp.__version__} (ggml {out['ggml'].get('ggml_version')} "
          f"{out['ggml'].get('ggml_commit')}), CPU: {out['cpu_model']}, "
          f"load avg before/after: {load_before} / {load_after}")
    hdr = f"| {'model':<28} | {'size':>9} | {'params':>8} | threads | type_k | n_batch | n_ubatch | fa | rp | {'test':>7} | {'t/s':>20} | {'best t/s':>9} | peak RSS MiB |"
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for r in results:
        print(f"| {model_desc[:28]:<28} | {model_size / 2**20:>5.1f} MiB | {model_params / 1e6:>6.1f} M | "
              f"{args.threads:>7} | {args.type_k:>6} | {args.n_batch:>7} | {min(args.n_batch, args.n_ubatch):>8} | "
              f"{int(args.flash_attn):>2} | {int(extra_bufts):>2} | {r['test']:>7} | "
              f"{r['tokens_per_s_mean']:>11.2f} ± {r['tokens_per_s_stddev']:>6.2f} | {r['tokens_per_s_best']:>9.2f} | "
              f"{r['peak_rss_mib']:>12.1f} |")
    print(f"wrote {json_out}")


if __name__ == "__main__":
    main()
