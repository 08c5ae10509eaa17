#!/usr/bin/env python3
"""Markdown tables for bench/README.md from one GPU run: swiftkv bench --synthetic JSON and the
PyTorch baseline JSON (torch_baseline_bench.py), measured in the same call on the same device.
    python3 scripts/gpu/make_table.py bench/results/gpu_h200_swiftkv_bench.json bench/results/gpu_h200_torch_baseline.json
"""
import json
import sys


def main(skv_path, torch_path):
    s = json.load(open(skv_path))
    t = json.load(open(torch_path))
    base = next(v for v in s["variants"] if v["label"] == "base")
    print(f"Device: {s['device']}; copy {s['copy_gbps']:.0f} GB/s (read+write), bf16 GEMM 8192^3 "
          f"{s['gemm_tflops']:.0f} TFLOP/s measured by swiftkv; PyTorch measured copy {t['copy']['GBps']:.0f} GB/s, "
          f"GEMM {t['gemm']['tflops']:.0f} TFLOP/s (torch {t['torch']}, transformers {t['transformers']}).\n")
    print("Prefill (whole prompt in one step; MFU = model FLOPs / time / GEMM rate of the same run)\n")
    print("| batch | prompt | swiftkv ms | swiftkv tok/s | swiftkv MFU | PyTorch sdpa ms | PyTorch tok/s | PyTorch MFU | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    tp = {(r["B"], r["T"]): r for r in t["prefill"] if isinstance(r, dict) and "ms" in r}
    for r in base["results"]:
        if not r["test"].startswith("pp"):
            continue
        T = int(r["test"][2:])
        o = tp.get((r["batch"], T))
        ot = f"{o['ms']:.1f} | {o['tokens_per_s']:.0f} | {o['mfu']*100:.1f}% | {o['ms']/r['ms']:.2f}x" if o else "oom | | |"
        print(f"| {r['batch']} | {T} | {r['ms']:.1f} | {r['tokens_per_s']:.0f} | {r['mfu']*100:.1f}% | {ot} |")
    print("\nSwiftKV prefill speed-up over the same engine's base model (PyTorch: the emulation in torch_baseline_bench.py)\n")
    print("| cut | batch | prompt | swiftkv ms | vs swiftkv base | PyTorch emulation vs PyTorch full |")
    print("|---|---:|---:|---:|---:|---:|")
    te = {(r["cut_fraction"], r["B"], r["T"]): r for r in t["swiftkv_prefill"] if isinstance(r, dict) and "speedup" in r}
    for v in s["variants"]:
        if v["label"] == "base" or not v["results"]:
            continue
        frac = (v["n_layers"] - v["swiftkv_layers"]) / v["n_layers"]
        for r in v["results"]:
            if not r["test"].startswith("pp"):
                continue
            T = int(r["test"][2:])
            o = te.get((round(1 - frac, 2), r["batch"], T)) or te.get((1 - frac, r["batch"], T))
            print(f"| {v['label']} | {r['batch']} | {T} | {r['ms']:.1f} | {r['speedup_vs_base']:.2f}x | "
                  f"{o['speedup']:.2f}x |" if o else f"| {v['label']} | {r['batch']} | {T} | {r['ms']:.1f} | "
                  f"{r['speedup_vs_base']:.2f}x | |")
    print("\nDecode (context 1024; ms per step; graphs replayed; greedy sampling on the GPU)\n")
    print("| batch | swiftkv base | of copy BW | SwiftKV 25% | SwiftKV 50% | 50% vs base | PyTorch eager | PyTorch compiled |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    td = {r["B"]: r for r in t["decode"] if isinstance(r, dict) and "ms_per_step" in r}
    var = {v["label"]: {r["batch"]: r for r in v["results"] if r["test"].startswith("decode")} for v in s["variants"]}
    for B, r in var["base"].items():
        q = var.get("SwiftKV 25% g1", {}).get(B)
        h = var.get("SwiftKV 50% g1", {}).get(B)
        o = td.get(B)
        comp = o.get("compiled", {}).get("ms_per_step") if o else None
        print(f"| {B} | {r['ms_per_step']:.2f} | {r['fraction_of_copy_bw']*100:.1f}% | "
              f"{q['ms_per_step']:.2f} | {h['ms_per_step']:.2f} | {r['ms_per_step']/h['ms_per_step']:.2f}x | "
              f"{o['ms_per_step']:.2f} | {comp:.2f} |" if (q and h and o and comp) else f"| {B} | {r['ms_per_step']:.2f} | | | | | | |")
    print("\nKV cache per token, and the largest decode batch at context 1024+33 tokens in the KV pool the base "
          "model gets (0.9 of the memory left after its weights and workspace)\n")
    print("| variant | L/N | g | KV bytes/token | max batch | vs base |")
    print("|---|---|---:|---:|---:|---:|")
    pool = base["max_decode_batch_at_context"] * base["kv_bytes_per_token"]
    for v in s["variants"]:
        b = pool // v["kv_bytes_per_token"]
        print(f"| {v['label']} | {v['swiftkv_layers']}/{v['n_layers']} | {v['kv_group_size']} | "
              f"{v['kv_bytes_per_token']} | {b} | {b / base['max_decode_batch_at_context']:.2f}x |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
