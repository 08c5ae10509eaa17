#!/usr/bin/env python3
"""Random-weight Llama checkpoint in Hugging Face format, for checking swiftkv against transformers.

What: builds a transformers LlamaForCausalLM (LlamaConfig) with seeded random weights and saves it with
  save_pretrained(DIR, safe_serialization) in bf16: DIR/config.json + DIR/model.safetensors (or shards with
  model.safetensors.index.json) + generation_config.json. No tokenizer: drive it with token ids.

Presets:
  small      hidden 512, 8 layers, 8 heads, 2 kv heads, ffn 1408, vocab 4096, rope_theta 500000,
             max_position_embeddings 8192, rms_norm_eps 1e-5, untied embeddings
  8b-layers  Llama-3.1-8B layer shape: hidden 4096, 32 heads, 8 kv heads, ffn 14336, vocab 128256,
             rope_theta 500000, llama3 rope scaling (factor 8, low 1, high 4, original 8192),
             max_position_embeddings 131072, rms_norm_eps 1e-5, untied; --layers N (default 4)
  tiny       hidden 64, 2 layers, 4 heads, 2 kv heads, ffn 160, vocab 256, llama3 rope scaling
             (for CPU smoke tests of the scripts)

Init (deterministic for a given --seed, independent of the machine): every linear / embedding weight
  ~ N(0, --init-std=0.02) drawn in float32 from a seeded CPU generator in named_parameters() order, then
  rounded to bf16; every RMSNorm weight = 1. With std 0.02 the residual stream is ~1 after the first layer,
  the normed activations are O(1) and logits have std ~ 0.02*sqrt(hidden) (about 1.3 at hidden 4096), so
  nothing vanishes; the script prints per-layer hidden-state RMS and logit std of a short forward as a check.

config.json: transformers 5 writes RoPE as "rope_parameters" only; swiftkv's config reader (and
  transformers 4) read "rope_theta" / "rope_scaling", so this script adds those legacy keys too (same values).

Run (CPU is fine; the 8b-layers preset with 4 layers needs ~8 GB RAM and ~1 min):
  python3 scripts/gpu/make_hf_random_llama.py --out /tmp/hf_small --preset small --seed 0
  python3 scripts/gpu/make_hf_random_llama.py --out /tmp/hf_8b4 --preset 8b-layers --layers 4 --seed 0
"""
import argparse
import json
import os
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}

PRESETS = {
    "small": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                  intermediate_size=1408, vocab_size=4096, rope_theta=500000.0, rope_scaling=None,
                  max_position_embeddings=8192, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2),
    "8b-layers": dict(hidden_size=4096, num_hidden_layers=4, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, vocab_size=128256, rope_theta=500000.0, rope_scaling=LLAMA3_SCALING,
                      max_position_embeddings=131072, rms_norm_eps=1e-5, bos_token_id=128000,
                      eos_token_id=[128001, 128008, 128009]),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=160, vocab_size=256, rope_theta=500000.0, rope_scaling=LLAMA3_SCALING,
                 max_position_embeddings=131072, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2),
}

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def make_config(preset, layers):
    p = dict(PRESETS[preset])
    if layers is not None:
        p["num_hidden_layers"] = layers
    rope_theta = p.pop("rope_theta")
    scaling = p.pop("rope_scaling")
    rope = {"rope_type": "default", "rope_theta": rope_theta}
    if scaling:
        rope = dict(scaling, rope_theta=rope_theta)
    cfg = LlamaConfig(**p, rope_parameters=rope, tie_word_embeddings=False, initializer_range=0.02,
                      attention_bias=False, mlp_bias=False, hidden_act="silu")
    return cfg, rope_theta, scaling


@torch.no_grad()
def build_model(cfg, seed, std, dtype):
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to(dtype=dtype)
    model.to_empty(device="cpu")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or "layernorm" in name:
            p.fill_(1.0)
        else:
            w = torch.empty(p.shape, dtype=torch.float32)
            w.normal_(0.0, std, generator=gen)
            p.copy_(w)
    # to_empty() leaves non-persistent buffers (RoPE inv_freq) uninitialized: rebuild the rotary module.
    rot = type(model.model.rotary_emb)(config=cfg)
    model.model.rotary_emb = rot
    model.eval()
    return model


@torch.no_grad()
def sanity_forward(model, vocab, seed, n=16):
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, vocab, (1, n), generator=g)
    out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    rms = [float(h.float().pow(2).mean().sqrt()) for h in out.hidden_states]
    lg = out.logits.float()
    print("hidden-state RMS per layer (embeddings first):", " ".join(f"{r:.3g}" for r in rms))
    print(f"logits: std {float(lg.std()):.3f}, max |.| {float(lg.abs().max()):.3f}, "
          f"finite {bool(torch.isfinite(lg).all())}")
    if not torch.isfinite(lg).all() or float(lg.std()) < 1e-3:
        raise SystemExit("sanity forward gave non-finite or vanishing logits")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--layers", type=int, default=None, help="number of layers (8b-layers default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--init-std", type=float, default=0.02)
    ap.add_argument("--max-shard-size", default="50GB", help="save_pretrained max_shard_size (e.g. 2GB)")
    ap.add_argument("--no-sanity", action="store_true", help="skip the short sanity forward")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    cfg, rope_theta, scaling = make_config(args.preset, args.layers)
    dtype = DTYPES[args.dtype]
    t0 = time.time()
    model = build_model(cfg, args.seed, args.init_std, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"built {args.preset}: {cfg.num_hidden_layers} layers, {n_params / 1e6:.1f} M params, "
          f"{args.dtype}, seed {args.seed} ({time.time() - t0:.1f} s)")
    if not args.no_sanity:
        sanity_forward(model, cfg.vocab_size, args.seed)

    os.makedirs(args.out, exist_ok=True)
    model.config.dtype = dtype
    try:
        model.save_pretrained(args.out, safe_serialization=True, max_shard_size=args.max_shard_size)
    except TypeError:  # safe_serialization removed from the signature: safetensors is the only format
        model.save_pretrained(args.out, max_shard_size=args.max_shard_size)

    # Legacy RoPE keys for readers that don't know "rope_parameters" (swiftkv, transformers 4).
    cpath = os.path.join(args.out, "config.json")
    with open(cpath) as f:
        cj = json.load(f)
    cj["rope_theta"] = rope_theta
    if scaling:
        cj["rope_scaling"] = dict(scaling)
    cj.setdefault("torch_dtype", {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[args.dtype])
    with open(cpath, "w") as f:
        json.dump(cj, f, indent=2, sort_keys=True)
        f.write("\n")
    files = sorted(os.listdir(args.out))
    print(f"saved {args.out}: {' '.join(files)} ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
