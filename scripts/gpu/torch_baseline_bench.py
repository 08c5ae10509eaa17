#!/usr/bin/env python3
"""PyTorch / transformers baseline for swiftkv's benchmark: Llama-3.1-8B shape, random bf16 weights.

What it measures (CUDA events, warm-up then median of N; every case catches out-of-memory and records "oom"):
  (a) roofline: device-to-device copy bandwidth (--copy-gib 4 GiB copy, bytes read + written) and the cuBLAS
      bf16 GEMM rate (torch.matmul --gemm-n^3 = 8192^3, random data, TFLOP/s);
  (b) prefill: LlamaForCausalLM (attn_implementation="sdpa", use_cache=False, logits_to_keep=1 like an
      inference server that only needs last-token logits) on [B, T] random tokens, B in --prefill-batches
      (1,8), T in --prefill-lens (512,2048,8192): ms, tokens/s, TTFT (= the B=1 prefill time), MFU =
      model FLOPs / time / measured GEMM rate (also vs the nominal dense bf16 peak when the card is known);
  (c) decode: B in --decode-batches (1,8,32,128) sequences of --decode-ctx (1024) tokens prefilled (in chunks)
      into a transformers StaticCache (DynamicCache with --cache dynamic or when StaticCache fails), then
      single-token steps (eager, argmax feedback): ms/step, tokens/s, and the fraction of the copy bandwidth
      achieved = (weight bytes + KV bytes at the current context) / step time / copy bandwidth; then the same
      with torch.compile(model, mode="reduce-overhead") (CUDA graphs; ~1.5 min of compiling on an H200 for the
      four batch sizes, bounded by --compile-budget-s; --no-compile skips it; off on CPU with --tiny);
  (d) SwiftKV prefill emulation: for a cut at layer L = --swiftkv-cuts (25%, 50% of the layers): layers < L run
      on all T tokens; one GEMM [B*T, hidden] x [hidden, 2*kv_dim*(N-L)] makes every later layer's K/V from
      the (normed) layer-L input (RoPE applied to K); layers >= L then run on the last token only, each
      attending over its T keys with sdpa (queries grouped per KV head); final norm + lm_head on the last
      token. Reported: ms and speedup over the full model's prefill of (b).
  Model weights are created on the device: model built on "meta", to_empty(device), normal_(std 0.02) under
  no_grad in bf16 (RMSNorm weights 1), RoPE buffers rebuilt; nothing is materialised on the CPU.

Run (GPU machine; ~3 minutes on one H200 incl. ~1.5 min compiling; peak ~36 GiB GPU memory, fits an H100):
  python3 scripts/gpu/torch_baseline_bench.py --out /tmp/torch_baseline.json
  CPU smoke test: python3 scripts/gpu/torch_baseline_bench.py --device cpu --tiny --out /tmp/tb.json
  (--tiny: hidden 256, 4 heads, 2 kv heads, ffn 512, vocab 1024, 2 layers, small shapes; --selftest also checks
  the emulation's last-token path against the full model in fp32.)

Output JSON (--out): device_name, torch / transformers / CUDA versions, model config and parameter counts,
  "copy" {GBps}, "gemm" {tflops}, "prefill" [{B, T, ms, tokens_per_s, ttft_ms (B=1), model_flops, mfu,
  mfu_vs_nominal_peak, peak_mem_gib} or {B, T, status: "oom"}], "decode" [{B, ctx, cache, ms_per_step,
  tokens_per_s, weight_bytes, kv_bytes, bw_fraction, compiled: {...}}], "swiftkv_prefill" [{B, T, cut_layer,
  ms, full_ms, speedup, flop_ratio}], total_s.
"""
import argparse
import gc
import inspect
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

GiB = 1024 ** 3
# Nominal dense bf16 tensor-core peaks (no sparsity), FLOP/s, SXM parts.
NOMINAL_BF16_PEAK = {"H100": 989.4e12, "H200": 989.4e12, "H20": 148e12, "A100": 312e12, "B200": 2250e12}


def is_oom(e):
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def free_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device, warmup, iters):
    """Median wall time of fn() in ms: CUDA events on the GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            fn()
            e1.record()
            e1.synchronize()
            times.append(e0.elapsed_time(e1))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), times


# ----------------------------------------------------------------------------------------------- model

def make_config(args):
    if args.tiny:
        shape = dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512,
                     vocab_size=1024)
    else:  # Llama-3.1-8B
        shape = dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
                     vocab_size=128256)
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = LlamaConfig(**shape, num_hidden_layers=args.layers, rope_parameters=rope,
                      max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
                      bos_token_id=None if args.tiny else 128000, eos_token_id=None if args.tiny else 128001,
                      attention_bias=False, mlp_bias=False)
    cfg._attn_implementation = "sdpa"
    cfg.dtype = torch.bfloat16
    return cfg


@torch.no_grad()
def build_model(cfg, device, seed, dtype=torch.bfloat16):
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to(dtype=dtype)
    model.to_empty(device=device)
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        else:
            p.normal_(0.0, 0.02)
    # to_empty() leaves the non-persistent RoPE inv_freq buffers uninitialised: rebuild them on the device.
    with torch.device(device):
        model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg)
    model.config._attn_implementation = "sdpa"
    return model.eval()


def param_counts(model):
    total = sum(p.numel() for p in model.parameters())
    emb = model.model.embed_tokens.weight.numel()
    head = model.lm_head.weight.numel()
    return total, emb, head, total - emb - head


def prefill_flops(cfg, nonemb_params, B, T):
    L, H, hd = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim
    # Dense matmuls: 2 FLOPs per multiply-add per non-embedding weight per token.
    dense = 2 * nonemb_params * B * T
    # Attention per layer per sequence: QK^T is T*T*hd*H multiply-adds = 2*T^2*hd*H FLOPs, PV the same, so
    # 4*T^2*H*hd, halved for causal masking (only the lower triangle is needed): 2*T^2*H*hd per layer.
    attn = B * L * 2 * T * T * H * hd
    # lm_head only for the last token of each sequence (logits_to_keep=1).
    head = B * 2 * cfg.hidden_size * cfg.vocab_size
    return dense + attn + head


def swiftkv_flops(cfg, nonemb_params, B, T, cut):
    """FLOPs of the emulation of (d): layers < cut on T tokens, the K/V GEMM, later layers on the last token."""
    N = cfg.num_hidden_layers
    per_layer = (nonemb_params - cfg.hidden_size) / N  # minus the final norm
    kv_dim = cfg.num_key_value_heads * cfg.head_dim
    H, hd = cfg.num_attention_heads, cfg.head_dim
    f = 2 * per_layer * cut * B * T + B * cut * 2 * T * T * H * hd
    f += 2 * B * T * cfg.hidden_size * 2 * kv_dim * (N - cut)
    f += (N - cut) * B * (2 * (per_layer - 2 * cfg.hidden_size * kv_dim) + 4 * T * H * hd)
    return f + B * 2 * cfg.hidden_size * cfg.vocab_size


# ----------------------------------------------------------------------------------------------- (a)

@torch.inference_mode()
def bench_roofline(args, device):
    out = {}
    n = int(args.copy_gib * GiB)
    try:
        src = torch.ones(n, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        ms, _ = time_ms(lambda: dst.copy_(src), device, 3, args.roof_iters)
        out["copy"] = {"bytes_per_copy": n, "bytes_moved": 2 * n, "ms": ms, "GBps": 2 * n / (ms * 1e-3) / 1e9}
        del src, dst
    except RuntimeError as e:
        if not is_oom(e):
            raise
        out["copy"] = {"status": "oom"}
    free_memory(device)
    g = args.gemm_n
    try:
        a = torch.randn(g, g, dtype=torch.bfloat16, device=device)
        b = torch.randn(g, g, dtype=torch.bfloat16, device=device)
        c = torch.empty(g, g, dtype=torch.bfloat16, device=device)
        ms, _ = time_ms(lambda: torch.matmul(a, b, out=c), device, 5, args.roof_iters * 2)
        out["gemm"] = {"m": g, "n": g, "k": g, "ms": ms, "tflops": 2 * g ** 3 / (ms * 1e-3) / 1e12}
        del a, b, c
    except RuntimeError as e:
        if not is_oom(e):
            raise
        out["gemm"] = {"status": "oom"}
    free_memory(device)
    return out


# ----------------------------------------------------------------------------------------------- (b)

@torch.inference_mode()
def bench_prefill(args, model, cfg, device, nonemb, gemm_flops, nominal):
    rows = []
    for T in args.prefill_lens:
        for B in args.prefill_batches:
            rec = {"B": B, "T": T}
            ids = None
            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                ids = torch.randint(0, cfg.vocab_size, (B, T), device=device)
                fn = lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1)
                iters = args.iters if B * T <= 16384 else max(1, args.iters - 1)
                ms, all_ms = time_ms(fn, device, args.warmup, iters)
                fl = prefill_flops(cfg, nonemb, B, T)
                rec.update(ms=ms, all_ms=all_ms, tokens_per_s=B * T / (ms * 1e-3), model_flops=fl,
                           achieved_tflops=fl / (ms * 1e-3) / 1e12,
                           mfu=fl / (ms * 1e-3) / gemm_flops if gemm_flops else None,
                           mfu_vs_nominal_peak=fl / (ms * 1e-3) / nominal if nominal else None)
                if B == 1:
                    rec["ttft_ms"] = ms
                if device.type == "cuda":
                    rec["peak_mem_gib"] = torch.cuda.max_memory_allocated() / GiB
            except RuntimeError as e:
                if not is_oom(e):
                    raise
                rec["status"] = "oom"
            del ids
            free_memory(device)
            rows.append(rec)
            print(f"  prefill B={B} T={T}: " + (f"{rec['ms']:.2f} ms, {rec['tokens_per_s']:.0f} tok/s"
                                                 + (f", MFU {rec['mfu']:.3f}" if rec.get("mfu") else "")
                                                 if "ms" in rec else rec["status"]), flush=True)
    return rows


# ----------------------------------------------------------------------------------------------- (c)

def make_cache(kind, cfg, B, max_len, device, dtype):
    from transformers.cache_utils import DynamicCache, StaticCache
    if kind == "static":
        params = inspect.signature(StaticCache.__init__).parameters
        kw = {"config": cfg, "max_cache_len": max_len}
        for name, val in (("max_batch_size", B), ("batch_size", B), ("device", device), ("dtype", dtype)):
            if name in params:  # older (v4) signatures allocate eagerly and want these
                kw[name] = val
        return StaticCache(**kw)
    params = inspect.signature(DynamicCache.__init__).parameters
    return DynamicCache(config=cfg) if "config" in params else DynamicCache()


def kv_bytes_per_token(cfg):
    return cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 2  # K and V, bf16


def decode_case(args, fwd, model, cfg, device, B, cache_kind, steps, warm):
    ctx = args.decode_ctx
    cache = make_cache(cache_kind, cfg, B, ctx + warm + steps + 1, device, torch.bfloat16)
    ids = torch.randint(0, cfg.vocab_size, (B, ctx), device=device)
    chunk = args.prefill_chunk
    out = None
    for s in range(0, ctx, chunk):
        e = min(ctx, s + chunk)
        pos = torch.arange(s, e, device=device)[None].expand(B, -1)
        out = model(input_ids=ids[:, s:e], past_key_values=cache, position_ids=pos, use_cache=True,
                    logits_to_keep=1)
    tok = out.logits[:, -1].argmax(-1, keepdim=True)
    del out, ids
    state = {"pos": ctx, "tok": tok}

    def step():
        p = torch.full((B, 1), state["pos"], dtype=torch.long, device=device)
        o = fwd(input_ids=state["tok"], past_key_values=cache, position_ids=p, use_cache=True, logits_to_keep=1)
        state["tok"] = o.logits[:, -1].argmax(-1, keepdim=True)
        state["pos"] += 1

    t0 = time.perf_counter()
    for _ in range(warm):
        step()
    sync(device)
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            step()
            e1.record()
            times.append((e0, e1))
        else:
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    sync(device)
    ms = [a.elapsed_time(b) for a, b in times] if device.type == "cuda" else [t * 1e3 for t in times]
    mid_ctx = ctx + warm + steps / 2
    del cache
    return statistics.median(ms), ms, mid_ctx, warm_s


@torch.inference_mode()
def bench_decode(args, model, cfg, device, weight_bytes, copy_bw):
    rows = []
    for B in args.decode_batches:
        rec = {"B": B, "ctx": args.decode_ctx, "steps": args.decode_steps}
        for kind in ([args.cache] if args.cache == "dynamic" else ["static", "dynamic"]):
            free_memory(device)  # after a failed try, once its traceback is gone
            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                ms, all_ms, mid_ctx, _ = decode_case(args, model, model, cfg, device, B, kind, args.decode_steps,
                                                     args.decode_warmup)
                kvb = B * mid_ctx * kv_bytes_per_token(cfg)
                rec.update(cache=kind, ms_per_step=ms, all_ms=all_ms, tokens_per_s=B / (ms * 1e-3),
                           weight_bytes=weight_bytes, kv_bytes=kvb, mean_ctx=mid_ctx,
                           achieved_GBps=(weight_bytes + kvb) / (ms * 1e-3) / 1e9,
                           bw_fraction=(weight_bytes + kvb) / (ms * 1e-3) / copy_bw if copy_bw else None)
                if device.type == "cuda":
                    rec["peak_mem_gib"] = torch.cuda.max_memory_allocated() / GiB
                rec.pop("status", None)
                rec.pop("error", None)
                break
            except RuntimeError as e:
                if is_oom(e):
                    rec["status"] = "oom"
                    break
                rec["status"] = "error"
                rec["error"] = f"{kind} cache: {type(e).__name__}: {str(e)[:300]}"
                print(f"  decode B={B}: {kind} cache failed ({str(e)[:200]}), trying the next", flush=True)
            except Exception as e:  # StaticCache API differences: fall back to the DynamicCache
                rec["status"] = "error"
                rec["error"] = f"{kind} cache: {type(e).__name__}: {str(e)[:300]}"
                print(f"  decode B={B}: {kind} cache failed ({str(e)[:200]}), trying the next", flush=True)
        free_memory(device)
        rows.append(rec)
        print(f"  decode B={B} ctx={args.decode_ctx}: " +
              (f"{rec['ms_per_step']:.2f} ms/step ({rec['cache']} cache), {rec['tokens_per_s']:.0f} tok/s"
               + (f", {rec['bw_fraction']:.2f} of copy bw" if rec.get("bw_fraction") else "")
               if "ms_per_step" in rec else rec["status"]), flush=True)

    if args.compile:
        t_all = time.perf_counter()
        try:
            compiled = torch.compile(model, mode="reduce-overhead")
        except Exception as e:
            compiled = None
            for r in rows:
                r["compiled"] = {"status": "error", "error": str(e)[:300]}
        for r in rows:
            if compiled is None or r["B"] not in args.compile_batches or "ms_per_step" not in r:
                continue
            if time.perf_counter() - t_all > args.compile_budget_s:
                r["compiled"] = {"status": "skipped: compile budget spent"}
                continue
            try:
                with torch.inference_mode():
                    ms, all_ms, mid_ctx, warm_s = decode_case(args, compiled, model, cfg, device, r["B"], "static",
                                                              args.decode_steps, max(args.decode_warmup, 3))
                kvb = r["B"] * mid_ctx * kv_bytes_per_token(cfg)
                r["compiled"] = {"mode": "reduce-overhead", "ms_per_step": ms, "tokens_per_s": r["B"] / (ms * 1e-3),
                                 "warmup_s": warm_s,
                                 "bw_fraction": (weight_bytes + kvb) / (ms * 1e-3) / copy_bw if copy_bw else None}
                print(f"  decode B={r['B']} compiled: {ms:.2f} ms/step (warm-up/compile {warm_s:.0f} s)", flush=True)
            except Exception as e:
                r["compiled"] = {"status": "error", "error": f"{type(e).__name__}: {str(e)[:300]}"}
                print(f"  decode B={r['B']} compiled: failed ({str(e)[:200]})", flush=True)
            free_memory(device)
    return rows


# ----------------------------------------------------------------------------------------------- (d)

def rope(x, cos, sin):
    """x [B, heads, T, hd]; cos/sin [B or 1, T, hd] (HF rotate-half convention)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def last_token_layer(layer, cfg, h_last, k, v, cos_l, sin_l):
    """One decoder layer for the last token only. h_last [B, 1, hidden]; k, v [B, kvh, T, hd] (k already
    RoPE'd); cos_l / sin_l [B or 1, 1, hd]. The H query heads are grouped by KV head as [B, kvh, H/kvh, hd]
    so one non-causal sdpa call covers GQA (the last token sees all T keys)."""
    B = h_last.shape[0]
    H, kvh, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    a = layer.self_attn
    q = a.q_proj(layer.input_layernorm(h_last)).view(B, 1, H, hd).transpose(1, 2)  # [B, H, 1, hd]
    q = rope(q, cos_l, sin_l).reshape(B, kvh, H // kvh, hd)
    o = F.scaled_dot_product_attention(q, k, v, scale=a.scaling)  # [B, kvh, H/kvh, hd]
    h = h_last + a.o_proj(o.reshape(B, 1, H * hd))
    return h + layer.mlp(layer.post_attention_layernorm(h))


def swiftkv_forward(model, cfg, ids, cut, w_kv):
    m = model.model
    B, T = ids.shape
    N, kvh, hd = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
    h = m.embed_tokens(ids)
    pos = torch.arange(T, device=ids.device)[None]
    cos, sin = m.rotary_emb(h, pos)
    for layer in m.layers[:cut]:
        h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=(cos, sin))
        if isinstance(h, tuple):
            h = h[0]
    # One projection of the layer-`cut` input gives every later layer's K and V.
    x = m.layers[cut].input_layernorm(h)
    kv = torch.matmul(x, w_kv).view(B, T, N - cut, 2, kvh, hd)
    h_last = h[:, -1:]
    cos_l, sin_l = cos[:, -1:], sin[:, -1:]
    for j, layer in enumerate(m.layers[cut:]):
        k = rope(kv[:, :, j, 0].transpose(1, 2), cos, sin)
        v = kv[:, :, j, 1].transpose(1, 2)
        h_last = last_token_layer(layer, cfg, h_last, k, v, cos_l, sin_l)
    return model.lm_head(m.norm(h_last))


@torch.inference_mode()
def bench_swiftkv(args, model, cfg, device, nonemb, prefill_rows):
    full = {(r["B"], r["T"]): r.get("ms") for r in prefill_rows}
    rows = []
    N = cfg.num_hidden_layers
    kv_dim = cfg.num_key_value_heads * cfg.head_dim
    cuts = sorted({min(N - 1, max(1, int(round(f * N)))) for f in args.swiftkv_cuts})
    for cut in cuts:
        try:
            w_kv = torch.empty(cfg.hidden_size, 2 * kv_dim * (N - cut), dtype=torch.bfloat16, device=device)
            w_kv.normal_(0.0, 0.02)
        except RuntimeError as e:
            if not is_oom(e):
                raise
            rows.append({"cut_layer": cut, "status": "oom (K/V weight)"})
            continue
        for T in args.prefill_lens:
            for B in args.prefill_batches:
                rec = {"B": B, "T": T, "cut_layer": cut, "cut_fraction": cut / N}
                ids = None
                try:
                    ids = torch.randint(0, cfg.vocab_size, (B, T), device=device)
                    iters = args.iters if B * T <= 16384 else max(1, args.iters - 1)
                    ms, all_ms = time_ms(lambda: swiftkv_forward(model, cfg, ids, cut, w_kv), device, args.warmup,
                                         iters)
                    f_ms = full.get((B, T))
                    rec.update(ms=ms, all_ms=all_ms, full_ms=f_ms, speedup=(f_ms / ms) if f_ms else None,
                               flop_ratio=prefill_flops(cfg, nonemb, B, T) / swiftkv_flops(cfg, nonemb, B, T, cut))
                except RuntimeError as e:
                    if not is_oom(e):
                        raise
                    rec["status"] = "oom"
                del ids
                free_memory(device)
                rows.append(rec)
                print(f"  swiftkv cut={cut} B={B} T={T}: " +
                      (f"{rec['ms']:.2f} ms" + (f", {rec['speedup']:.2f}x" if rec.get("speedup") else "")
                       if "ms" in rec else rec["status"]), flush=True)
        del w_kv
        free_memory(device)
    return rows


@torch.inference_mode()
def selftest(args, device):
    """The emulation's last-token path, fed the real model's K/V, must reproduce the full model's logits."""
    cfg = make_config(args)
    cfg.num_hidden_layers = max(2, min(args.layers, 4))
    model = build_model(cfg, device, args.seed, dtype=torch.float32)
    cfg._attn_implementation = "sdpa"
    T, B = 37, 2
    ids = torch.randint(0, cfg.vocab_size, (B, T), device=device)
    ref = model(input_ids=ids, use_cache=False, output_hidden_states=True)
    m = model.model
    pos = torch.arange(T, device=device)[None]
    cos, sin = m.rotary_emb(ref.hidden_states[0], pos)
    cut = cfg.num_hidden_layers // 2
    h_last = ref.hidden_states[cut][:, -1:]
    kvh, hd = cfg.num_key_value_heads, cfg.head_dim
    # The real K/V of every later layer need that layer's input on all tokens; take them from the full run.
    for j in range(cut, cfg.num_hidden_layers):
        layer = m.layers[j]
        x = layer.input_layernorm(ref.hidden_states[j])
        k = rope(layer.self_attn.k_proj(x).view(B, T, kvh, hd).transpose(1, 2), cos, sin)
        v = layer.self_attn.v_proj(x).view(B, T, kvh, hd).transpose(1, 2)
        h_last = last_token_layer(layer, cfg, h_last, k, v, cos[:, -1:], sin[:, -1:])
    got = model.lm_head(m.norm(h_last))[:, -1]
    want = ref.logits[:, -1]
    err = float((got - want).abs().max() / want.abs().max())
    # And the whole emulation runs (random K/V weight) with the right output shape.
    w = torch.randn(cfg.hidden_size, 2 * kvh * hd * (cfg.num_hidden_layers - cut), device=device) * 0.02
    out = swiftkv_forward(model, cfg, ids, cut, w)
    print(f"selftest: last-token path vs full model, max rel diff {err:.2e}; emulation output {tuple(out.shape)}")
    if err > 1e-4 or tuple(out.shape) != (B, 1, cfg.vocab_size):
        raise SystemExit("selftest FAILED")


# ----------------------------------------------------------------------------------------------- main

def device_is_cpu(name):
    return torch.device(name).type == "cpu"


def csv_ints(s):
    return [int(x) for x in s.split(",") if x.strip()]


def csv_floats(s):
    return [float(x) for x in s.split(",") if x.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output JSON")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=None, help="layers (default 32; 2 with --tiny)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes for CPU smoke tests")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--copy-gib", type=float, default=None, help="copy size for the bandwidth test (4)")
    ap.add_argument("--gemm-n", type=int, default=None, help="GEMM size n for n x n x n (8192)")
    ap.add_argument("--roof-iters", type=int, default=10)
    ap.add_argument("--prefill-batches", type=csv_ints, default=None, help="1,8")
    ap.add_argument("--prefill-lens", type=csv_ints, default=None, help="512,2048,8192")
    ap.add_argument("--iters", type=int, default=5, help="timed prefill iterations (one fewer above 16k tokens)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--decode-batches", type=csv_ints, default=None, help="1,8,32,128")
    ap.add_argument("--decode-ctx", type=int, default=None, help="1024")
    ap.add_argument("--decode-steps", type=int, default=None, help="timed decode steps (64)")
    ap.add_argument("--decode-warmup", type=int, default=4)
    ap.add_argument("--prefill-chunk", type=int, default=256, help="chunk of the decode context's prefill")
    ap.add_argument("--cache", choices=["static", "dynamic"], default="static")
    ap.add_argument("--no-compile", dest="compile", action="store_false",
                    help='skip the torch.compile(mode="reduce-overhead") decode runs')
    ap.add_argument("--compile-batches", type=csv_ints, default=None, help="default: all decode batches")
    ap.add_argument("--compile-budget-s", type=float, default=240.0,
                    help="start no further compiled decode case after this many seconds of compiled runs")
    ap.add_argument("--swiftkv-cuts", type=csv_floats, default=[0.25, 0.5])
    ap.add_argument("--skip", default="", help="comma list of sections to skip: roofline,prefill,decode,swiftkv")
    ap.add_argument("--selftest", action="store_true", help="check the SwiftKV emulation's math first (fp32)")
    args = ap.parse_args()

    t_start = time.time()
    tiny = args.tiny
    if args.layers is None:
        args.layers = 2 if tiny else 32
    dflt = lambda v, big, small: v if v is not None else (small if tiny else big)
    args.copy_gib = dflt(args.copy_gib, 4.0, 1 / 16)
    args.gemm_n = dflt(args.gemm_n, 8192, 256)
    args.prefill_batches = dflt(args.prefill_batches, [1, 8], [1, 2])
    args.prefill_lens = dflt(args.prefill_lens, [512, 2048, 8192], [32, 64])
    args.decode_batches = dflt(args.decode_batches, [1, 8, 32, 128], [1, 2])
    args.decode_ctx = dflt(args.decode_ctx, 1024, 32)
    args.decode_steps = dflt(args.decode_steps, 64, 4)
    if args.compile_batches is None:
        args.compile_batches = list(args.decode_batches)
    if tiny and device_is_cpu(args.device):
        args.compile = False  # inductor on a small CPU takes minutes; pass real shapes on a GPU to test it
    if tiny:
        args.prefill_chunk = min(args.prefill_chunk, 16)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available: pass --device cpu (with --tiny) for a smoke test")
    torch.backends.cuda.matmul.allow_tf32 = False
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    nominal = next((v for k, v in NOMINAL_BF16_PEAK.items() if k in dev_name), None)
    print(f"device {dev_name}, torch {torch.__version__}, transformers {transformers.__version__}", flush=True)

    if args.selftest:
        selftest(args, device)

    result = {"device_name": dev_name, "torch": torch.__version__, "transformers": transformers.__version__,
              "cuda": torch.version.cuda, "nominal_bf16_peak_flops": nominal, "tiny": tiny,
              "args": {k: v for k, v in vars(args).items()}}

    print("(a) roofline", flush=True)
    roof = bench_roofline(args, device) if "roofline" not in skip else {}
    result.update(roof)
    copy_bw = roof.get("copy", {}).get("GBps", 0) * 1e9 or None
    gemm_flops = roof.get("gemm", {}).get("tflops", 0) * 1e12 or None
    if copy_bw:
        print(f"  copy {copy_bw / 1e9:.0f} GB/s, GEMM {gemm_flops / 1e12 if gemm_flops else 0:.0f} TFLOP/s", flush=True)

    cfg = make_config(args)
    t0 = time.time()
    model = build_model(cfg, device, args.seed)
    total, emb, head, nonemb = param_counts(model)
    weight_bytes = (total - emb) * 2  # a decode step reads every weight but the embedding table (B rows of it)
    result["model"] = {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "heads": cfg.num_attention_heads,
                       "kv_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim, "ffn": cfg.intermediate_size,
                       "vocab": cfg.vocab_size, "params_total": total, "params_embedding": emb,
                       "params_lm_head": head, "params_nonembedding": nonemb, "decode_weight_bytes": weight_bytes,
                       "attn_implementation": model.config._attn_implementation, "dtype": "bfloat16",
                       "build_s": time.time() - t0}
    print(f"model: {cfg.num_hidden_layers} layers, {total / 1e9:.2f} B params ({nonemb / 1e9:.2f} B non-embedding),"
          f" built in {time.time() - t0:.1f} s", flush=True)

    result["prefill"] = []
    if "prefill" not in skip:
        print("(b) prefill", flush=True)
        result["prefill"] = bench_prefill(args, model, cfg, device, nonemb, gemm_flops, nominal)
    result["swiftkv_prefill"] = []
    if "swiftkv" not in skip:
        print("(d) SwiftKV prefill emulation", flush=True)
        result["swiftkv_prefill"] = bench_swiftkv(args, model, cfg, device, nonemb, result["prefill"])
    result["decode"] = []
    if "decode" not in skip:
        print("(c) decode", flush=True)
        result["decode"] = bench_decode(args, model, cfg, device, weight_bytes, copy_bw)
    result["total_s"] = time.time() - t_start

    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")

    # ---- compact summary
    print(f"\n== {dev_name} | torch {torch.__version__} | transformers {transformers.__version__} | "
          f"{cfg.num_hidden_layers} layers ==")
    if "copy" in result:
        c, g = result["copy"], result.get("gemm", {})
        print(f"copy {c.get('GBps', float('nan')):.0f} GB/s (read+write) | bf16 GEMM {g.get('tflops', float('nan')):.0f}"
              f" TFLOP/s (n={args.gemm_n})")
    if result["prefill"]:
        print(f"{'prefill':<8} {'B':>4} {'T':>6} {'ms':>10} {'tok/s':>10} {'TTFT ms':>9} {'MFU':>6} {'MFU/peak':>8}")
        for r in result["prefill"]:
            if "ms" not in r:
                print(f"{'':<8} {r['B']:>4} {r['T']:>6} {r.get('status'):>10}")
                continue
            mfu = f"{r['mfu']:.3f}" if r.get("mfu") else "-"
            mfn = f"{r['mfu_vs_nominal_peak']:.3f}" if r.get("mfu_vs_nominal_peak") else "-"
            ttft = f"{r['ttft_ms']:.1f}" if "ttft_ms" in r else ""
            print(f"{'':<8} {r['B']:>4} {r['T']:>6} {r['ms']:>10.2f} {r['tokens_per_s']:>10.0f} {ttft:>9} {mfu:>6} "
                  f"{mfn:>8}")
    if result["swiftkv_prefill"]:
        print(f"{'swiftkv':<8} {'B':>4} {'T':>6} {'cut':>4} {'ms':>10} {'full ms':>10} {'speedup':>8} {'FLOPx':>6}")
        for r in result["swiftkv_prefill"]:
            if "ms" not in r:
                print(f"{'':<8} {r.get('B', ''):>4} {r.get('T', ''):>6} {r['cut_layer']:>4} {r.get('status'):>10}")
                continue
            sp = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
            fm = f"{r['full_ms']:.2f}" if r.get("full_ms") else "-"
            print(f"{'':<8} {r['B']:>4} {r['T']:>6} {r['cut_layer']:>4} {r['ms']:>10.2f} {fm:>10} {sp:>8} "
                  f"{r['flop_ratio']:>5.2f}x")
    if result["decode"]:
        print(f"{'decode':<8} {'B':>4} {'ctx':>6} {'ms/step':>10} {'tok/s':>10} {'bw frac':>8} {'cache':>8} "
              f"{'compiled ms':>12}")
        for r in result["decode"]:
            if "ms_per_step" not in r:
                print(f"{'':<8} {r['B']:>4} {r['ctx']:>6} {r.get('status'):>10}")
                continue
            bw = f"{r['bw_fraction']:.3f}" if r.get("bw_fraction") else "-"
            cm = r.get("compiled", {})
            cms = f"{cm['ms_per_step']:.2f}" if "ms_per_step" in cm else (cm.get("status", "-")[:12] if cm else "-")
            print(f"{'':<8} {r['B']:>4} {r['ctx']:>6} {r['ms_per_step']:>10.2f} {r['tokens_per_s']:>10.0f} {bw:>8} "
                  f"{r['cache']:>8} {cms:>12}")
    print(f"total {result['total_s']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
