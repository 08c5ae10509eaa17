#!/usr/bin/env python3
"""Check `swiftkv distill` against an independent PyTorch implementation of the same recipe.

What it checks: a few optimizer steps of SwiftKV self-distillation on a tiny random Llama give the same
per-step loss (and gradient norm, learning rate, final trained tensors) in swiftkv as in PyTorch, from the
same initial weights on the same batch.

Steps:
  1. builds a small random Llama in Hugging Face format, f32 safetensors + config.json (default hidden 256,
     8 layers, 4 heads, 2 KV heads, head_dim 64, ffn 512, vocab 1024, untied LM head, plain RoPE theta
     10000 or --rope-scaling llama3). Weights drawn with numpy (seeded): projections ~ N(0, --init-std
     0.05: attention is far from uniform at hidden 256), embeddings ~ N(0, --embed-std 1), lm_head
     ~ N(0, --head-std 0.1: logits of O(1), initial loss ~0.04-0.1); RMSNorm weights = 1 + N(0,
     --norm-jitter 0.1), so that norm_swiftkv's gradient and the frozen norms are not trivial;
  2. `swiftkv convert --swiftkv-layers 50% [--group G] --dtype f32 --no-tokenizer` for each case
     (default: g=1 and g=2);
  3. writes --batch-size documents of --seq-len random token ids as pre-tokenized {"input_ids": [...]}
     records. With exactly B documents of S tokens every step's batch is all B documents (only the row
     order changes between epochs, and the loss is a mean over rows), so PyTorch sees the same batch;
  4. runs `swiftkv distill` (--tokens = steps * B * S, --save-every 0, --no-plot) on every device of
     --swiftkv-devices (cpu: f32 weights and activations; cuda: bf16 frozen weights, compute copies and
     activations, f32 master weights and optimizer state) and reads OUT/train_log.jsonl and the trained
     tensors of OUT/model.safetensors;
  5. PyTorch, on --device, in --torch-dtype (float64 by default; TF32 off): loads the converted checkpoint,
     computes the teacher (SwiftKV off: original q/k/v_proj) and the SwiftKV student (layers < L shared;
     x = RMSNorm(h_L; norm_swiftkv); K/V of every later group = RoPE(k_proj_swiftkv x), v_proj_swiftkv x;
     layer j >= L uses q_proj_swiftkv and attends causally to its group's K/V), the loss
     mean_r T^2 KL(softmax(t_r/T) || softmax(s_r/T)), autograd for the trainable tensors only
     (norm_swiftkv, k/v_proj_swiftkv of group leaders, q_proj_swiftkv), then swiftkv's optimizer step
     exactly (src/train/distill_trainer.cpp, src/backend/cpu/cpu_train_ops.cpp): global gradient norm,
     clip when norm > clip (scale by clip/norm), lr = distill_lr_at (linear warmup over
     ceil(warmup * steps) steps, then linear decay to 0), AdamW with bias corrections
     p = p (1 - lr wd) - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps), t = step + 1; master
     weights, m and v kept in f32 like swiftkv (the update itself in float64);
  6. compares per step:
       swiftkv cpu  vs torch: |loss rel diff| < 1e-4, |grad-norm rel diff| < 1e-3, same lr (rel 1e-6),
                              same clipping decision, and the trained tensors' total update
                              ||d_skv - d_torch|| / ||d_torch|| < 1e-2 (Adam normalises every coordinate,
                              so coordinates whose gradient is ~0 move by O(lr) in a direction that rounding
                              decides; the tolerance covers that, the loss checks cover the rest);
       swiftkv cuda vs torch: |loss rel diff| < 3e-2 (bf16 compute); grad norm and update reported only.
     Prints a table and PASS/FAIL, writes --out RESULT.json with every number, the torch / transformers /
     numpy versions, the device name and the exact commands. Exit status 0 PASS, 1 FAIL, 2 error.

Requirements: python3 with torch, numpy, safetensors (transformers is not needed; its version is recorded
if it is installed). No network.

Defaults: 5 steps of 4 x 128 tokens, lr 1e-3, warmup 0.2 (1 warmup step), T = 2, --clip 0.05 instead of
swiftkv's 1.0: this model's gradient norms are ~0.03-0.13, so clip 1.0 would never clip; at 0.05 some steps
clip and some do not (the table's "clip" column), so both paths are checked.

How it was run (CPU, 2-core Xeon, torch 2.15.0 (PyPI wheel) on CPU in float64, about 15 s): PASS, swiftkv cpu vs torch
loss rel diff <= 1.0e-7, grad-norm rel diff <= 1.2e-7, trained-tensor update rel diff ~1e-5, for g=1
and g=2 (also with --rope-scaling llama3 --torch-dtype float32 --groups 4):
  python3 scripts/gpu/torch_distill_check.py --swiftkv build/release/tools/swiftkv --work /tmp/tdc \\
      --device cpu --swiftkv-devices cpu --out /tmp/tdc/result.json
GPU machine (torch on CUDA in float64, swiftkv on CPU and CUDA; the binary needs its libraries on
LD_LIBRARY_PATH as run_checks.sh sets them):
  python3 scripts/gpu/torch_distill_check.py --swiftkv $R/bin/swiftkv --work /tmp/tdc --device cuda \\
      --swiftkv-devices cpu,cuda --out $OUT/torch_distill_check.json
"""
import argparse
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np

try:
    import torch
except ImportError:  # pragma: no cover
    sys.exit("torch_distill_check.py needs PyTorch (pip install torch numpy safetensors)")
try:
    from safetensors.numpy import load_file as st_load, save_file as st_save
except ImportError:  # pragma: no cover
    sys.exit("torch_distill_check.py needs safetensors (pip install safetensors)")

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}

F32 = np.float32


# ---- the random base model --------------------------------------------------------------------------------

def make_base_model(out_dir, a):
    """Random f32 Llama checkpoint in Hugging Face layout (config.json + model.safetensors)."""
    os.makedirs(out_dir, exist_ok=True)
    H, N, nh, nkv, hd, F, V = a.hidden, a.layers, a.heads, a.kv_heads, a.head_dim, a.ffn, a.vocab
    rng = np.random.default_rng(a.seed)

    def mat(rows, cols, std=a.init_std):
        return (rng.standard_normal((rows, cols)) * std).astype(F32)

    def norm():
        return (1.0 + a.norm_jitter * rng.standard_normal(H)).astype(F32)

    t = {"model.embed_tokens.weight": mat(V, H, a.embed_std)}
    for l in range(N):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = norm()
        t[p + "self_attn.q_proj.weight"] = mat(nh * hd, H)
        t[p + "self_attn.k_proj.weight"] = mat(nkv * hd, H)
        t[p + "self_attn.v_proj.weight"] = mat(nkv * hd, H)
        t[p + "self_attn.o_proj.weight"] = mat(H, nh * hd)
        t[p + "post_attention_layernorm.weight"] = norm()
        t[p + "mlp.gate_proj.weight"] = mat(F, H)
        t[p + "mlp.up_proj.weight"] = mat(F, H)
        t[p + "mlp.down_proj.weight"] = mat(H, F)
    t["model.norm.weight"] = norm()
    t["lm_head.weight"] = mat(V, H, a.head_std)
    st_save(t, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
        "intermediate_size": F, "num_attention_heads": nh, "num_hidden_layers": N, "num_key_value_heads": nkv,
        "head_dim": hd, "vocab_size": V, "max_position_embeddings": max(2048, a.seq_len),
        "rms_norm_eps": a.rms_eps, "rope_theta": a.rope_theta,
        "rope_scaling": dict(LLAMA3_SCALING) if a.rope_scaling == "llama3" else None,
        "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32", "initializer_range": a.init_std,
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    return cfg


def write_data(path, a):
    rng = np.random.default_rng(a.seed + 1000)
    docs = rng.integers(0, a.vocab, size=(a.batch_size, a.seq_len))
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps({"input_ids": [int(x) for x in d]}) + "\n")
    return docs


# ---- RoPE exactly like swiftkv (model_config.cpp rope_inv_freq, cpu RopeTable) ----------------------------

def rope_inv_freq(cfg):
    """f32 inverse frequencies: 1 / theta^(2i/d) in f32 (HF's formula; numpy f32 power is C powf), then the
    rope_scaling adjustment computed in double and rounded to f32 (ModelConfig::rope_inv_freq)."""
    hd = cfg["head_dim"]
    half = hd // 2
    exps = (np.arange(half, dtype=np.float64) * 2).astype(F32) / F32(hd)
    inv = F32(1.0) / np.power(F32(cfg["rope_theta"]), exps.astype(F32))
    inv = inv.astype(F32)
    rs = cfg.get("rope_scaling")
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        factor, low, high = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old_len = float(rs["original_max_position_embeddings"])
        low_wl, high_wl = old_len / low, old_len / high
        out = inv.copy()
        for i, f in enumerate(inv):
            f = float(f)
            wl = 2.0 * math.pi / f
            if wl < high_wl:
                continue
            if wl > low_wl:
                out[i] = F32(f / factor)
            else:
                smooth = (old_len / wl - low) / (high - low)
                out[i] = F32((1.0 - smooth) * f / factor + smooth * f)
        inv = out
    elif rs and rs.get("rope_type", rs.get("type")) not in (None, "default"):
        raise SystemExit(f"rope_scaling {rs} is not implemented here")
    return inv


def rope_tables(cfg, seq_len):
    """cos/sin [S, half]: angle = float32(pos) * inv_freq in f32, cos/sin in double rounded to f32."""
    inv = rope_inv_freq(cfg)
    pos = np.arange(seq_len, dtype=F32)
    ang = (pos[:, None] * inv[None, :]).astype(F32)
    return np.cos(ang.astype(np.float64)).astype(F32), np.sin(ang.astype(np.float64)).astype(F32)


# ---- the PyTorch reference --------------------------------------------------------------------------------

class TorchDistill:
    def __init__(self, model_dir, tokens, a, device, dtype):
        with open(os.path.join(model_dir, "config.json")) as f:
            self.cfg = cfg = json.load(f)
        self.dev, self.dt = device, dtype
        self.N, self.L = cfg["num_hidden_layers"], cfg["num_key_value_layers"]
        self.g = cfg.get("key_value_group_size", 1)
        self.H, self.nh, self.nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.hd = cfg.get("head_dim") or self.H // self.nh
        self.eps = cfg["rms_norm_eps"]
        self.T = a.temperature
        raw = {}
        for fn in sorted(os.listdir(model_dir)):
            if fn.endswith(".safetensors"):
                raw.update(st_load(os.path.join(model_dir, fn)))
        self.w = {k: torch.from_numpy(np.ascontiguousarray(v.astype(F32))).to(device=device, dtype=dtype)
                  for k, v in raw.items()}
        S = tokens.shape[1]
        cos, sin = rope_tables(cfg, S)
        self.cos = torch.from_numpy(cos).to(device=device, dtype=dtype)[None, :, None, :]  # [1, S, 1, half]
        self.sin = torch.from_numpy(sin).to(device=device, dtype=dtype)[None, :, None, :]
        self.mask = torch.ones(S, S, dtype=torch.bool, device=device).tril()
        self.tokens = torch.from_numpy(np.asarray(tokens, dtype=np.int64)).to(device)
        # Trainable tensors, in swiftkv's storage order; f32 master copies like swiftkv's.
        self.groups = (self.N - self.L) // self.g
        leaders = [self.L + k * self.g for k in range(self.groups)]
        self.names = (["model.norm_swiftkv.weight"]
                      + [f"model.layers.{j}.self_attn.k_proj_swiftkv.weight" for j in leaders]
                      + [f"model.layers.{j}.self_attn.v_proj_swiftkv.weight" for j in leaders]
                      + [f"model.layers.{j}.self_attn.q_proj_swiftkv.weight" for j in range(self.L, self.N)])
        self.master = {n: torch.from_numpy(raw[n].astype(F32)).to(device) for n in self.names}
        self.initial = {n: v.clone() for n, v in self.master.items()}
        self.m = {n: torch.zeros_like(v) for n, v in self.master.items()}
        self.v = {n: torch.zeros_like(v) for n, v in self.master.items()}
        with torch.no_grad():
            self.h_L, self.t_logits = self.teacher()

    # -- ops --
    def rmsnorm(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x):  # x [B, S, heads, hd]; rotate pairs (i, i + half) like HF rotate_half
        half = self.hd // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * self.cos - x2 * self.sin, x2 * self.cos + x1 * self.sin], dim=-1)

    def attention(self, q, k, v):  # q [B, S, nh, hd], k/v [B, S, nkv, hd] -> [B, S, nh*hd]
        B, S = q.shape[:2]
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, S, hd]
        s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.hd))
        s = s.masked_fill(~self.mask, float("-inf"))
        o = torch.softmax(s, dim=-1) @ v
        return o.transpose(1, 2).reshape(B, S, self.nh * self.hd)

    def heads(self, x, n):
        return x.reshape(x.shape[0], x.shape[1], n, self.hd)

    def mlp_block(self, h, l):
        p, w = f"model.layers.{l}.", self.w
        x = self.rmsnorm(h, w[p + "post_attention_layernorm.weight"])
        gate, up = x @ w[p + "mlp.gate_proj.weight"].T, x @ w[p + "mlp.up_proj.weight"].T
        return h + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T

    def logits(self, h):
        return self.rmsnorm(h, self.w["model.norm.weight"]) @ self.w["lm_head.weight"].T

    def teacher(self):
        w = self.w
        h = w["model.embed_tokens.weight"][self.tokens]
        h_L = None
        for l in range(self.N):
            if l == self.L:
                h_L = h.clone()
            p = f"model.layers.{l}.self_attn."
            x = self.rmsnorm(h, w[f"model.layers.{l}.input_layernorm.weight"])
            q = self.rope(self.heads(x @ w[p + "q_proj.weight"].T, self.nh))
            k = self.rope(self.heads(x @ w[p + "k_proj.weight"].T, self.nkv))
            v = self.heads(x @ w[p + "v_proj.weight"].T, self.nkv)
            h = h + self.attention(q, k, v) @ w[p + "o_proj.weight"].T
            h = self.mlp_block(h, l)
        return h_L, self.logits(h)

    def student(self, tr):
        w = self.w
        xs = self.rmsnorm(self.h_L, tr["model.norm_swiftkv.weight"])
        kv = []
        for k in range(self.groups):
            j = self.L + k * self.g
            p = f"model.layers.{j}.self_attn."
            kv.append((self.rope(self.heads(xs @ tr[p + "k_proj_swiftkv.weight"].T, self.nkv)),
                       self.heads(xs @ tr[p + "v_proj_swiftkv.weight"].T, self.nkv)))
        h = self.h_L
        for j in range(self.L, self.N):
            p = f"model.layers.{j}.self_attn."
            x = self.rmsnorm(h, w[f"model.layers.{j}.input_layernorm.weight"])
            q = self.rope(self.heads(x @ tr[p + "q_proj_swiftkv.weight"].T, self.nh))
            K, Vv = kv[(j - self.L) // self.g]
            h = h + self.attention(q, K, Vv) @ w[p + "o_proj.weight"].T
            h = self.mlp_block(h, j)
        return self.logits(h)

    def loss(self, tr):
        T = self.T
        s = self.student(tr)
        lt = torch.log_softmax(self.t_logits / T, dim=-1)
        ls = torch.log_softmax(s / T, dim=-1)
        kl_rows = (lt.exp() * (lt - ls)).sum(-1)  # [B, S]
        return T * T * kl_rows.mean()

    # -- one optimizer step, like run_distill + TrainingOpsBackend::adamw_step --
    def step(self, t, total, warmup_steps, a):
        tr = {n: v.to(self.dt).requires_grad_(True) for n, v in self.master.items()}
        loss = self.loss(tr)
        grads = torch.autograd.grad(loss, [tr[n] for n in self.names])
        g32 = {n: g.detach().to(torch.float32) for n, g in zip(self.names, grads)}  # swiftkv's f32 grads
        gnorm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in g32.values()))
        clipped = a.clip > 0 and gnorm > a.clip
        if clipped:
            s = np.float32(a.clip / gnorm)
            g32 = {n: g * float(s) for n, g in g32.items()}  # f32 * f32, like backend scale()
        lr = float(np.float32(distill_lr_at(t, total, warmup_steps, a.lr)))  # AdamWParams.lr is float
        b1, b2 = float(np.float32(a.beta1)), float(np.float32(a.beta2))
        eps, wd = float(np.float32(a.adam_eps)), float(np.float32(a.weight_decay))
        st = t + 1
        step_size = lr / (1.0 - b1 ** st)
        inv_sqrt_bc2 = 1.0 / math.sqrt(1.0 - b2 ** st)
        decay = 1.0 - lr * wd
        with torch.no_grad():
            for n in self.names:
                g = g32[n].double()
                mi = b1 * self.m[n].double() + (1.0 - b1) * g
                vi = b2 * self.v[n].double() + (1.0 - b2) * g * g
                self.m[n] = mi.float()
                self.v[n] = vi.float()
                p = self.master[n].double() * decay - step_size * mi / (vi.sqrt() * inv_sqrt_bc2 + eps)
                self.master[n] = p.float()
        return {"loss": float(loss.detach()), "grad_norm": gnorm, "lr": lr, "clipped": bool(clipped)}


def distill_lr_at(t, total, warmup_steps, lr):  # distill_trainer.cpp
    if t < warmup_steps:
        return lr * float(t + 1) / float(warmup_steps)
    decay = total - warmup_steps
    if decay <= 0:
        return lr
    return lr * float(total - t) / float(decay)


# ---- helpers --------------------------------------------------------------------------------------------

def run_cmd(cmd, log_path, env=None):
    t0 = time.time()
    with open(log_path, "w") as log:
        r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    dt = time.time() - t0
    if r.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"command failed (exit {r.returncode}): {shlex.join(cmd)}\n{tail}")
    return dt


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def device_name(dev):
    if dev.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(dev))
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions():
    v = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    try:
        import safetensors
        v["safetensors"] = safetensors.__version__
    except Exception:
        pass
    try:
        import transformers
        v["transformers"] = transformers.__version__
    except Exception:
        v["transformers"] = None
    v["torch_cuda"] = torch.version.cuda
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--swiftkv", required=True, help="the swiftkv binary")
    ap.add_argument("--work", required=True, help="work directory (models, data, distill outputs)")
    ap.add_argument("--device", default="cpu", help="PyTorch device: cpu or cuda[:N]")
    ap.add_argument("--out", required=True, help="RESULT.json")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--swiftkv-devices", default="cpu", help="comma list of swiftkv devices: cpu, cuda")
    ap.add_argument("--groups", default="1,2", help="comma list of AcrossKV group sizes (one case each)")
    ap.add_argument("--swiftkv-layers", default="50%")
    ap.add_argument("--threads", type=int, default=0, help="swiftkv -t (0: its default, all cores)")
    ap.add_argument("--torch-dtype", choices=["float64", "float32"], default="float64")
    # model
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=0, help="default hidden / heads")
    ap.add_argument("--ffn", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--init-std", type=float, default=0.05, help="std of the projection weights")
    ap.add_argument("--embed-std", type=float, default=1.0, help="std of the embedding table")
    ap.add_argument("--head-std", type=float, default=0.1, help="std of lm_head")
    ap.add_argument("--norm-jitter", type=float, default=0.1, help="RMSNorm weights = 1 + N(0, this)")
    ap.add_argument("--rms-eps", type=float, default=1e-5)
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--rope-scaling", choices=["none", "llama3"], default="none",
                    help="llama3: factor 8, low 1, high 4, original_max_position_embeddings 64 (so that it "
                         "changes some frequencies at these lengths)")
    ap.add_argument("--seed", type=int, default=0)
    # recipe
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=float, default=0.2)
    ap.add_argument("--clip", type=float, default=0.05,
                    help="global gradient-norm clip (swiftkv's default is 1.0; this model's gradient norms are "
                         "~0.03-0.13, so 0.05 clips some steps and not others and both paths get checked)")
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--adam-eps", type=float, default=1e-8)
    # tolerances
    ap.add_argument("--cpu-loss-tol", type=float, default=1e-4)
    ap.add_argument("--cpu-gnorm-tol", type=float, default=1e-3)
    ap.add_argument("--cpu-update-tol", type=float, default=1e-2)
    ap.add_argument("--cuda-loss-tol", type=float, default=3e-2)
    a = ap.parse_args()
    if a.head_dim == 0:
        a.head_dim = a.hidden // a.heads

    skv = os.path.abspath(a.swiftkv)
    if not os.access(skv, os.X_OK):
        print(f"error: {skv} is not an executable", file=sys.stderr)
        return 2
    dtype = torch.float64 if a.torch_dtype == "float64" else torch.float32
    if a.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    skv_devices = [d.strip() for d in a.swiftkv_devices.split(",") if d.strip()]
    groups = [int(g) for g in a.groups.split(",") if g.strip()]
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    B, S = a.batch_size, a.seq_len
    tokens_arg = a.steps * B * S
    total_steps = a.steps
    warmup_steps = int(math.ceil(a.warmup * total_steps))

    result = {"what": "swiftkv distill vs PyTorch reference (same init, same batch)",
              "versions": versions(), "torch_device": a.device, "torch_device_name": device_name(a.device),
              "torch_dtype": a.torch_dtype, "swiftkv_binary": skv, "args": vars(a), "commands": [],
              "tolerances": {"cpu_loss_rel": a.cpu_loss_tol, "cpu_grad_norm_rel": a.cpu_gnorm_tol,
                             "cpu_update_rel": a.cpu_update_tol, "cuda_loss_rel": a.cuda_loss_tol},
              "schedule": {"total_steps": total_steps, "warmup_steps": warmup_steps, "tokens": tokens_arg},
              "cases": []}
    try:
        v = subprocess.run([skv, "--version"], capture_output=True, text=True, timeout=60)
        result["swiftkv_version"] = v.stdout.strip()
    except Exception:
        pass

    t_start = time.time()
    base = os.path.join(work, "base")
    shutil.rmtree(base, ignore_errors=True)
    cfg = make_base_model(base, a)
    result["base_config"] = cfg
    data_path = os.path.join(work, "data.jsonl")
    docs = write_data(data_path, a)
    print(f"base model: {base} (hidden {a.hidden}, {a.layers} layers, {a.heads}/{a.kv_heads} heads, head_dim "
          f"{a.head_dim}, ffn {a.ffn}, vocab {a.vocab}, rope {a.rope_scaling}); data: {B} x {S} tokens")

    ok = True
    for g in groups:
        case = {"group": g, "swiftkv_layers": a.swiftkv_layers, "runs": {}}
        conv = os.path.join(work, f"student_g{g}")
        cmd = [skv, "convert", "--model", base, "--swiftkv-layers", a.swiftkv_layers, "--group", str(g),
               "--out", conv, "--no-tokenizer", "--dtype", "f32", "--force"]
        result["commands"].append(shlex.join(cmd))
        run_cmd(cmd, os.path.join(work, f"convert_g{g}.log"))

        # PyTorch reference.
        t0 = time.time()
        ref = TorchDistill(conv, docs, a, a.device, dtype)
        tsteps = [ref.step(t, total_steps, warmup_steps, a) for t in range(total_steps)]
        case["torch"] = {"steps": tsteps, "seconds": time.time() - t0,
                         "L": ref.L, "groups": ref.groups, "trainables": ref.names}
        t_update = {n: (ref.master[n] - ref.initial[n]).double().cpu() for n in ref.names}
        t_upd_norm = math.sqrt(sum(float((d ** 2).sum()) for d in t_update.values()))

        for dev in skv_devices:
            out = os.path.join(work, f"distill_g{g}_{dev.replace(':', '')}")
            shutil.rmtree(out, ignore_errors=True)
            cmd = [skv, "distill", "--model", conv, "--data", data_path, "--tokens", str(tokens_arg),
                   "--seq-len", str(S), "--batch-size", str(B), "--out", out, "--save-every", "0", "--no-plot",
                   "-d", dev, "--lr", repr(a.lr), "--warmup", repr(a.warmup), "--clip", repr(a.clip),
                   "--temperature", repr(a.temperature), "--weight-decay", repr(a.weight_decay),
                   "--beta1", repr(a.beta1), "--beta2", repr(a.beta2), "--adam-eps", repr(a.adam_eps),
                   "--seed", str(a.seed), "--force"]
            if a.threads > 0:
                cmd += ["-t", str(a.threads)]
            result["commands"].append(shlex.join(cmd))
            secs = run_cmd(cmd, out + ".log")
            with open(os.path.join(out, "train_log.jsonl")) as f:
                slog = [json.loads(line) for line in f if line.strip()]
            with open(out + ".log") as f:
                log_head = [line.rstrip("\n") for line in f][:12]
            run = {"device": dev, "seconds": secs, "log": out + ".log", "log_head": log_head, "steps": []}
            is_cpu = dev == "cpu"
            if len(slog) != total_steps:
                run["error"] = f"train_log.jsonl has {len(slog)} steps, expected {total_steps}"
                ok = False
            for t, (s, r) in enumerate(zip(slog, tsteps)):
                row = {"step": t + 1, "skv_loss": s["loss"], "torch_loss": r["loss"],
                       "loss_rel": rel(s["loss"], r["loss"]), "skv_grad_norm": s["grad_norm"],
                       "torch_grad_norm": r["grad_norm"], "grad_norm_rel": rel(s["grad_norm"], r["grad_norm"]),
                       "skv_lr": s["lr"], "torch_lr": r["lr"], "lr_rel": rel(s["lr"], r["lr"]),
                       "skv_clipped": a.clip > 0 and s["grad_norm"] > a.clip, "torch_clipped": r["clipped"]}
                checks = []
                if is_cpu:
                    # The clipping decisions must agree unless the norm is within the tolerance of the clip.
                    near = a.clip > 0 and rel(r["grad_norm"], a.clip) < a.cpu_gnorm_tol
                    checks += [row["loss_rel"] < a.cpu_loss_tol, row["grad_norm_rel"] < a.cpu_gnorm_tol,
                               row["lr_rel"] < 1e-6, near or row["skv_clipped"] == row["torch_clipped"]]
                else:
                    checks += [row["loss_rel"] < a.cuda_loss_tol, row["lr_rel"] < 1e-6]
                row["pass"] = all(checks)
                ok = ok and row["pass"]
                run["steps"].append(row)
            # The trained tensors after the last step (covers the last optimizer update as well).
            mpath = os.path.join(out, "model.safetensors")
            if not os.path.exists(mpath):
                mpath = os.path.join(out, "swiftkv_tensors.safetensors")
            trained = st_load(mpath)
            diff2, per_tensor = 0.0, {}
            for n in ref.names:
                d_skv = torch.from_numpy(trained[n].astype(np.float64)) - ref.initial[n].double().cpu()
                e = float(((d_skv - t_update[n]) ** 2).sum())
                diff2 += e
                per_tensor[n] = math.sqrt(e) / max(math.sqrt(float((t_update[n] ** 2).sum())), 1e-30)
            run["update_rel"] = math.sqrt(diff2) / max(t_upd_norm, 1e-30)
            run["update_rel_per_tensor"] = per_tensor
            run["torch_update_norm"] = t_upd_norm
            if is_cpu:
                run["update_pass"] = run["update_rel"] < a.cpu_update_tol
                ok = ok and run["update_pass"]
            case["runs"][dev] = run
        result["cases"].append(case)

    # Table.
    print()
    hdr = (f"{'case':<6} {'dev':<5} {'step':>4} {'torch loss':>13} {'swiftkv loss':>13} {'rel':>9} "
           f"{'torch |g|':>11} {'swiftkv |g|':>11} {'rel':>9} {'lr':>9} {'clip':>5} {'ok':>4}")
    print(hdr)
    print("-" * len(hdr))
    for case in result["cases"]:
        for dev, run in case["runs"].items():
            for row in run["steps"]:
                clip = ("yes" if row["torch_clipped"] else "no") + ("" if row["skv_clipped"] == row["torch_clipped"]
                                                                   else "!")
                print(f"g={case['group']:<4} {dev:<5} {row['step']:>4} {row['torch_loss']:>13.7g} "
                      f"{row['skv_loss']:>13.7g} {row['loss_rel']:>9.2e} {row['torch_grad_norm']:>11.5g} "
                      f"{row['skv_grad_norm']:>11.5g} {row['grad_norm_rel']:>9.2e} {row['skv_lr']:>9.3g} "
                      f"{clip:>5} {'ok' if row['pass'] else 'FAIL':>4}")
            up = run["update_rel"]
            tag = ("ok" if run.get("update_pass") else "FAIL") if "update_pass" in run else "info"
            print(f"g={case['group']:<4} {dev:<5} final trained tensors: ||update_skv - update_torch|| / "
                  f"||update_torch|| = {up:.2e} ({tag})" + (f"  {run['error']}" if "error" in run else ""))
    result["pass"] = ok
    result["seconds"] = time.time() - t_start
    print(f"\ntolerances: swiftkv cpu vs torch: loss rel < {a.cpu_loss_tol:g}, grad norm rel < {a.cpu_gnorm_tol:g}, "
          f"update rel < {a.cpu_update_tol:g}; swiftkv cuda vs torch: loss rel < {a.cuda_loss_tol:g}")
    print(f"torch {torch.__version__} on {a.device} ({result['torch_device_name']}), {a.torch_dtype}; "
          f"{result['seconds']:.1f} s")
    print("PASS" if ok else "FAIL")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
