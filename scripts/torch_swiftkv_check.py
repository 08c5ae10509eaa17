#!/usr/bin/env python3
"""SwiftKV student in PyTorch, built from Hugging Face transformers' Llama modules, against swiftkv.

Runs where PyTorch and transformers are installed (the GPU machine). For each checkpoint directory
(llama_swiftkv format, safetensors) and each scored prompt in swiftkv_scores.json (written here by
`swiftkv score`, survivor path), it computes the student's logits independently, following
DESIGN.md section 1:
  layers 0..L-1 unchanged; h_L = residual stream entering layer L; x = norm_swiftkv(h_L);
  for each AcrossKV group leader j: K = x k_proj_swiftkv[j]^T, V = x v_proj_swiftkv[j]^T, RoPE on K;
  every later layer j: q = q_proj_swiftkv[j](input_layernorm_j(h)), RoPE, causal attention over its
  group's K/V, then the original o_proj, post_attention_layernorm and MLP.
It runs every token through every layer (the full student) in float64 on the CPU and float32 on the
GPU, and compares with swiftkv's survivor logits at the scored positions.

usage: torch_swiftkv_check.py SCORES_JSON [--out RESULT_JSON]
"""
import argparse
import json
import math
import os
import sys

import torch
from safetensors.torch import load_file
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding,
                                                      apply_rotary_pos_emb, repeat_kv)


class SwiftKVStudent(torch.nn.Module):
    def __init__(self, ckpt_dir, dtype, device):
        super().__init__()
        with open(os.path.join(ckpt_dir, "config.json")) as f:
            raw = json.load(f)
        assert raw["model_type"] == "llama_swiftkv", raw["model_type"]
        self.L = raw["num_key_value_layers"]
        self.g = raw.get("key_value_group_size", 1)
        base = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "num_key_value_layers",
                                                          "key_value_group_size", "swiftkv")}
        cfg = LlamaConfig(**base)
        cfg._attn_implementation = "eager"
        self.cfg = cfg
        self.N = cfg.num_hidden_layers
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.nh, self.nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        w = load_file(os.path.join(ckpt_dir, "model.safetensors"))
        w = {k: v.to(dtype=dtype, device=device) for k, v in w.items()}
        self.w = w
        self.rotary = LlamaRotaryEmbedding(config=cfg, device=device)
        H, eps = cfg.hidden_size, cfg.rms_norm_eps

        def norm(name):
            n = LlamaRMSNorm(H, eps=eps).to(device=device, dtype=dtype)
            n.weight.data.copy_(w[name])
            return n

        def mlp(i):
            m = LlamaMLP(cfg).to(device=device, dtype=dtype)
            for p in ("gate_proj", "up_proj", "down_proj"):
                getattr(m, p).weight.data.copy_(w[f"model.layers.{i}.mlp.{p}.weight"])
            return m

        self.in_norm = [norm(f"model.layers.{i}.input_layernorm.weight") for i in range(self.N)]
        self.post_norm = [norm(f"model.layers.{i}.post_attention_layernorm.weight") for i in range(self.N)]
        self.mlps = [mlp(i) for i in range(self.N)]
        self.final_norm = norm("model.norm.weight")
        self.swiftkv_norm = norm("model.norm_swiftkv.weight")
        self.lm_head = w.get("lm_head.weight", w["model.embed_tokens.weight"])

    def attend(self, q, k, v):
        # q [1, nh, T, hd], k/v [1, nkv, T, hd]; causal softmax attention, eager.
        k, v = repeat_kv(k, self.nh // self.nkv), repeat_kv(v, self.nh // self.nkv)
        T = q.shape[2]
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.hd)
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v

    def heads(self, x, n):
        return x.view(1, -1, n, self.hd).transpose(1, 2)

    @torch.no_grad()
    def forward(self, tokens):
        w, dev = self.w, self.lm_head.device
        ids = torch.tensor([tokens], device=dev)
        pos = torch.arange(len(tokens), device=dev)[None]
        h = w["model.embed_tokens.weight"][ids]
        cos, sin = self.rotary(h, pos)
        group_kv = {}
        for i in range(self.N):
            p = f"model.layers.{i}.self_attn."
            if i == self.L:
                x = self.swiftkv_norm(h)  # h_L: the residual stream entering layer L
                for leader in range(self.L, self.N, self.g):
                    lp = f"model.layers.{leader}.self_attn."
                    k = self.heads(x @ w[lp + "k_proj_swiftkv.weight"].T, self.nkv)
                    v = self.heads(x @ w[lp + "v_proj_swiftkv.weight"].T, self.nkv)
                    _, k = apply_rotary_pos_emb(k, k, cos, sin)
                    group_kv[leader] = (k, v)
            hn = self.in_norm[i](h)
            if i < self.L:
                q = self.heads(hn @ w[p + "q_proj.weight"].T, self.nh)
                k = self.heads(hn @ w[p + "k_proj.weight"].T, self.nkv)
                v = self.heads(hn @ w[p + "v_proj.weight"].T, self.nkv)
                q, k = apply_rotary_pos_emb(q, k, cos, sin)
            else:
                q = self.heads(hn @ w[p + "q_proj_swiftkv.weight"].T, self.nh)
                q, _ = apply_rotary_pos_emb(q, q, cos, sin)
                k, v = group_kv[self.L + (i - self.L) // self.g * self.g]
            a = self.attend(q, k, v).transpose(1, 2).reshape(1, len(tokens), self.nh * self.hd)
            h = h + a @ w[p + "o_proj.weight"].T
            h = h + self.mlps[i](self.post_norm[i](h))
        return (self.final_norm(h) @ self.lm_head.T)[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("scores")
    ap.add_argument("--out")
    args = ap.parse_args()
    with open(args.scores) as f:
        cases = json.load(f)
    base_dir = os.path.dirname(os.path.abspath(args.scores))
    setups = [("cpu-float64", torch.float64, "cpu")]
    if torch.cuda.is_available():
        setups.append((f"cuda-float32 ({torch.cuda.get_device_name(0)})", torch.float32, "cuda"))
    report = {"script": "scripts/torch_swiftkv_check.py", "torch": torch.__version__,
              "transformers": __import__("transformers").__version__, "results": []}
    ok = True
    for ckpt, entries in cases["checkpoints"].items():
        for label, dtype, device in setups:
            model = SwiftKVStudent(os.path.join(base_dir, ckpt), dtype, device)
            worst_abs, worst_rel, agree, rows = 0.0, 0.0, 0, 0
            for e in entries:
                ref = torch.tensor(e["logits"], dtype=torch.float64)
                ours = model(e["tokens"]).double().cpu()[e["positions"]]
                diff = (ours - ref).abs().max().item()
                worst_abs = max(worst_abs, diff)
                worst_rel = max(worst_rel, diff / ref.abs().max().item())
                agree += int((ours.argmax(-1) == ref.argmax(-1)).sum())
                rows += len(e["positions"])
            tol = 1e-4
            passed = worst_rel < tol and agree == rows
            ok &= passed
            r = {"checkpoint": ckpt, "setup": label, "L": model.L, "g": model.g, "rows": rows,
                 "max_abs_diff": worst_abs, "max_rel_diff": worst_rel, "top1_agree": agree, "tolerance_rel": tol,
                 "passed": passed}
            report["results"].append(r)
            print(json.dumps(r))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print("ALL PASSED" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
