#!/usr/bin/env python3
"""Reference logits from Hugging Face transformers for a Llama checkpoint, for compare_logits.py.

What: for every prompt in --tokens (JSON {"prompts": [[ids...], ...]}, e.g. from make_prompt_tokens.py) runs
  (a) the model in bf16 with attn_implementation="sdpa" (the HF peer baseline: bf16 weights, bf16 activations,
      bf16 logits as transformers returns them), and
  (b) the model in fp32 (weights upcast from the bf16 checkpoint; attn "eager" by default, TF32 off) as the
      accuracy reference,
  one prompt at a time ([1, T], no padding, no cache), and saves the full logits [T, vocab] of both as float32.

Output (--out FILE.npz, uncompressed):
  bf16_{i}   float32 [T_i, vocab]  logits of run (a) for prompt i
  fp32_{i}   float32 [T_i, vocab]  logits of run (b) for prompt i
  tokens_{i} int64   [T_i]         the prompt
  meta       0-d str               JSON: model dir, device, versions, attention implementations, prompt count

Run (GPU machine):
  python3 scripts/gpu/hf_reference_logits.py --model /tmp/hf_8b4 --tokens /tmp/prompts.json --out /tmp/ref.npz
  CPU smoke test: add --device cpu.
"""
import argparse
import gc
import json
import sys
import time

import numpy as np
import torch
import transformers
from transformers import LlamaForCausalLM


def load(model_dir, dtype, attn, device):
    try:
        m = LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn)
    except TypeError:  # older transformers spell it torch_dtype
        m = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, attn_implementation=attn)
    return m.to(device).eval()


@torch.inference_mode()
def run_all(model, prompts, device):
    outs = []
    for ids in prompts:
        x = torch.tensor([ids], dtype=torch.long, device=device)
        lg = model(input_ids=x, use_cache=False).logits[0]
        outs.append(lg.float().cpu().numpy())
    return outs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF checkpoint directory")
    ap.add_argument("--tokens", required=True, help='JSON {"prompts": [[ids...], ...]}')
    ap.add_argument("--out", required=True, help="output .npz")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--fp32-attn", default="eager", choices=["eager", "sdpa"],
                    help="attention implementation of the fp32 reference run")
    args = ap.parse_args()

    # The fp32 reference must really be fp32: no TF32 in matmuls / convolutions.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")

    with open(args.tokens) as f:
        prompts = json.load(f)["prompts"]
    prompts = [[int(t) for t in p] for p in prompts]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise SystemExit("--tokens needs a non-empty list of non-empty prompts")

    arrays = {}
    for tag, dtype, attn in (("bf16", torch.bfloat16, "sdpa"), ("fp32", torch.float32, args.fp32_attn)):
        t0 = time.time()
        model = load(args.model, dtype, attn, args.device)
        vocab = model.config.vocab_size
        if max(max(p) for p in prompts) >= vocab or min(min(p) for p in prompts) < 0:
            raise SystemExit(f"token ids must lie in [0, {vocab})")
        outs = run_all(model, prompts, args.device)
        for i, lg in enumerate(outs):
            arrays[f"{tag}_{i}"] = lg
        print(f"{tag} ({attn}): {len(prompts)} prompts, lengths {[len(p) for p in prompts]}, vocab {vocab}, "
              f"{time.time() - t0:.1f} s")
        del model
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()

    for i, p in enumerate(prompts):
        arrays[f"tokens_{i}"] = np.asarray(p, dtype=np.int64)
        a, b = arrays[f"bf16_{i}"], arrays[f"fp32_{i}"]
        rel = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
        top1 = float((a.argmax(-1) == b.argmax(-1)).mean())
        print(f"prompt {i}: T={len(p)}  HF bf16 vs fp32: max|d| {float(np.abs(a - b).max()):.4g}  rel {rel:.4g}  "
              f"top1 {top1:.4f}  fp32 logit std {float(b.std()):.4g}")
    meta = {"model": args.model, "device": args.device,
            "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "bf16_attn": "sdpa", "fp32_attn": args.fp32_attn, "n_prompts": len(prompts)}
    arrays["meta"] = np.asarray(json.dumps(meta))
    np.savez(args.out, **arrays)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
