#!/usr/bin/env python3
"""Checks a llama_swiftkv directory (e.g. written by `swiftkv convert`) against the published format,
with tools swiftkv did not write: the `safetensors` and `tokenizers` packages (PyPI) and numpy.

The format (DESIGN.md section 1; Snowflake's LlamaSwiftKVConfig / LlamaSwiftKVForCausalLM):
  config.json: model_type "llama_swiftkv", architectures ["LlamaSwiftKVForCausalLM"],
    num_key_value_layers L (0 < L <= N), key_value_group_size g (>= 1, (N - L) % g == 0), swiftkv
    (bool), plus the Llama keys (hidden_size, intermediate_size, num_hidden_layers,
    num_attention_heads, num_key_value_heads, rms_norm_eps, rope_theta, vocab_size, ...).
  tensors (model.safetensors, or shards listed by model.safetensors.index.json, with
    __metadata__ {"format": "pt"}, which transformers requires):
    model.embed_tokens.weight [V, H], model.norm.weight [H], lm_head.weight [V, H] unless
    tie_word_embeddings; per layer input_layernorm / post_attention_layernorm [H],
    self_attn.q_proj [nh*hd, H], k_proj / v_proj [nkv*hd, H], o_proj [H, nh*hd],
    mlp.gate_proj / up_proj [F, H], mlp.down_proj [H, F];
    model.norm_swiftkv.weight [H] when L < N; self_attn.q_proj_swiftkv [nh*hd, H] for layers >= L;
    self_attn.k_proj_swiftkv / v_proj_swiftkv [nkv*hd, H] for group leaders L, L+g, ... only.
    No other tensors; one floating dtype (F32, BF16 or F16) throughout.
  tokenizer.json loads in Hugging Face `tokenizers`; tokenizer_config.json names bos/eos tokens
    that exist; the vocabulary fits vocab_size.

Options:
  --expect FILE         JSON list of {"text": ..., "ids": [...]}: the tokenizer must give these ids
                        (encode without special-token insertion, special tokens parsed).
  --reference-tokenizer PATH  another tokenizer.json; both must tokenize a built-in set of strings
                        (and the --text strings) identically.
  --text STRING         extra strings to encode (repeatable).
  --write-expect FILE   write {"text", "ids"} of the strings encoded here, for a test to compare with.
  --check-init          also check the values of the distillation init (a fresh convert):
                        q_proj_swiftkv == q_proj, k/v_proj_swiftkv == mean of the group's k/v_proj,
                        norm_swiftkv == layers[L].input_layernorm (tolerance per dtype).

Exit status 0 when everything matches, 1 with a list of problems otherwise.

Usage: pip install safetensors numpy tokenizers
       python3 scripts/check_swiftkv_format.py DIR [--check-init] [--reference-tokenizer T] [--expect F]
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
from safetensors import safe_open

STRINGS = [
    "Hello, world!", "hello world", " The quick brown fox jumps over the lazy dog.", "12345 67.89 -0x1F",
    "I'm you're he's we've they'll I'd can't", "def f(x):\n    return x * 2  # comment\n",
    "日本語のテキスト 中文 한국어", "😀 👍🏽 🇺🇸", "   leading and trailing   ", "\n\n\ttabs\tand\nnewlines\n",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>", "<|begin_of_text|>x<|eot_id|>",
]

ELEMENT_BYTES = {"F32": 4, "BF16": 2, "F16": 2}


class Problems:
    def __init__(self):
        self.items = []

    def check(self, cond, message):
        if not cond:
            self.items.append(message)
        return cond


def expected_tensors(cfg):
    n, h = cfg["num_hidden_layers"], cfg["hidden_size"]
    nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or h // nh
    f, v = cfg["intermediate_size"], cfg["vocab_size"]
    L, g = cfg["num_key_value_layers"], cfg.get("key_value_group_size", 1)
    qd, kvd = nh * hd, nkv * hd
    t = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h]}
    if not cfg.get("tie_word_embeddings", False):
        t["lm_head.weight"] = [v, h]
    for l in range(n):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = [h]
        t[p + "post_attention_layernorm.weight"] = [h]
        t[p + "self_attn.q_proj.weight"] = [qd, h]
        t[p + "self_attn.k_proj.weight"] = [kvd, h]
        t[p + "self_attn.v_proj.weight"] = [kvd, h]
        t[p + "self_attn.o_proj.weight"] = [h, qd]
        t[p + "mlp.gate_proj.weight"] = [f, h]
        t[p + "mlp.up_proj.weight"] = [f, h]
        t[p + "mlp.down_proj.weight"] = [h, f]
        if l >= L:
            t[p + "self_attn.q_proj_swiftkv.weight"] = [qd, h]
            if (l - L) % g == 0:
                t[p + "self_attn.k_proj_swiftkv.weight"] = [kvd, h]
                t[p + "self_attn.v_proj_swiftkv.weight"] = [kvd, h]
    if L < n:
        t["model.norm_swiftkv.weight"] = [h]
    return t


def check_config(d, p):
    cfg = json.load(open(os.path.join(d, "config.json")))
    p.check(cfg.get("model_type") == "llama_swiftkv", f"config model_type is {cfg.get('model_type')!r}")
    p.check(cfg.get("architectures") == ["LlamaSwiftKVForCausalLM"], f"config architectures is {cfg.get('architectures')!r}")
    for key in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "vocab_size", "max_position_embeddings", "num_key_value_layers", "key_value_group_size"]:
        p.check(isinstance(cfg.get(key), int) and not isinstance(cfg.get(key), bool) and cfg[key] > 0,
                f"config {key} must be a positive integer, got {cfg.get(key)!r}")
    for key in ["rms_norm_eps", "rope_theta"]:
        p.check(isinstance(cfg.get(key), (int, float)) and cfg[key] > 0, f"config {key} must be a positive number")
    p.check(isinstance(cfg.get("swiftkv"), bool), f"config swiftkv must be a bool, got {cfg.get('swiftkv')!r}")
    p.check(isinstance(cfg.get("tie_word_embeddings", False), bool), "config tie_word_embeddings must be a bool")
    p.check(cfg.get("hidden_act", "silu") == "silu", f"config hidden_act is {cfg.get('hidden_act')!r}")
    p.check(not cfg.get("attention_bias", False) and not cfg.get("mlp_bias", False), "config has attention/mlp bias")
    if p.items:
        return None
    n, L, g = cfg["num_hidden_layers"], cfg["num_key_value_layers"], cfg["key_value_group_size"]
    p.check(0 < L <= n, f"num_key_value_layers {L} is not in 1..{n}")
    p.check((n - L) % g == 0, f"key_value_group_size {g} does not divide {n - L}")
    nh = cfg["num_attention_heads"]
    p.check(nh % cfg["num_key_value_heads"] == 0, "num_attention_heads is not a multiple of num_key_value_heads")
    if cfg.get("head_dim") is None:
        p.check(cfg["hidden_size"] % nh == 0, "hidden_size is not a multiple of num_attention_heads (no head_dim)")
    if "rope_scaling" in cfg and cfg["rope_scaling"] is not None:
        rs = cfg["rope_scaling"]
        p.check(rs.get("rope_type", rs.get("type")) in ("llama3", "linear", "default", "dynamic", "yarn"),
                f"rope_scaling type {rs!r}")
    return cfg


def tensor_files(d, p):
    """{name: (file, dtype, shape)} from the single file or the sharded index."""
    index_path = os.path.join(d, "model.safetensors.index.json")
    out = {}
    if os.path.exists(index_path):
        index = json.load(open(index_path))
        weight_map = index.get("weight_map", {})
        p.check(bool(weight_map), "model.safetensors.index.json has no weight_map")
        files = sorted(set(weight_map.values()))
        total = 0
        for fname in files:
            with safe_open(os.path.join(d, fname), framework="numpy") as f:
                p.check((f.metadata() or {}).get("format") == "pt", f"{fname}: __metadata__ format is not 'pt'")
                for name in f.keys():
                    sl = f.get_slice(name)
                    out[name] = (fname, sl.get_dtype(), list(sl.get_shape()))
                    total += int(np.prod(sl.get_shape(), dtype=np.int64)) * ELEMENT_BYTES.get(sl.get_dtype(), 0)
        for name, fname in weight_map.items():
            p.check(name in out and out[name][0] == fname, f"index maps {name} to {fname}, which does not hold it")
        for name, (fname, _, _) in out.items():
            p.check(weight_map.get(name) == fname, f"{fname} holds {name}, which the index does not map there")
        ts = index.get("metadata", {}).get("total_size")
        p.check(ts == total, f"index total_size {ts} != {total} bytes of tensor data")
    else:
        path = os.path.join(d, "model.safetensors")
        if not p.check(os.path.exists(path), "no model.safetensors and no model.safetensors.index.json"):
            return out
        with safe_open(path, framework="numpy") as f:
            p.check((f.metadata() or {}).get("format") == "pt", "model.safetensors: __metadata__ format is not 'pt'")
            for name in f.keys():
                sl = f.get_slice(name)
                out[name] = ("model.safetensors", sl.get_dtype(), list(sl.get_shape()))
    return out


def read_f32(d, fname, name):
    """A tensor as float32, reading the file layout directly for BF16 (numpy has no bfloat16)."""
    path = os.path.join(d, fname)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        info = header[name]
        begin, end = info["data_offsets"]
        f.seek(8 + n + begin)
        raw = f.read(end - begin)
    shape = info["shape"]
    if info["dtype"] == "F32":
        return np.frombuffer(raw, dtype="<f4").reshape(shape)
    if info["dtype"] == "F16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float32).reshape(shape)
    if info["dtype"] == "BF16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    raise ValueError(f"{name}: dtype {info['dtype']}")


def check_init(d, cfg, files, p):
    n, L, g = cfg["num_hidden_layers"], cfg["num_key_value_layers"], cfg.get("key_value_group_size", 1)
    dtype = next(iter(files.values()))[1]
    # Copies are exact; a bf16/f16 mean is rounded once to the stored dtype.
    rtol = 1e-6 if dtype == "F32" else 1e-2

    def get(name):
        return read_f32(d, files[name][0], name).astype(np.float64)

    def close(a, b, what):
        err = float(np.max(np.abs(a - b))) if a.size else 0.0
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        p.check(err <= rtol * scale, f"{what}: max abs diff {err} (max |value| {scale})")

    if L < n:
        close(get("model.norm_swiftkv.weight"), get(f"model.layers.{L}.input_layernorm.weight"),
              "norm_swiftkv != layers[L].input_layernorm")
    for j in range(L, n):
        close(get(f"model.layers.{j}.self_attn.q_proj_swiftkv.weight"), get(f"model.layers.{j}.self_attn.q_proj.weight"),
              f"layer {j} q_proj_swiftkv != q_proj")
    for leader in range(L, n, g):
        for which in ("k", "v"):
            members = [get(f"model.layers.{j}.self_attn.{which}_proj.weight") for j in range(leader, leader + g)]
            close(get(f"model.layers.{leader}.self_attn.{which}_proj_swiftkv.weight"), np.mean(np.stack(members), axis=0),
                  f"layer {leader} {which}_proj_swiftkv != mean of layers {leader}..{leader + g - 1}")


def check_tokenizer(d, cfg, args, p):
    from tokenizers import Tokenizer

    path = os.path.join(d, "tokenizer.json")
    if not p.check(os.path.exists(path), "no tokenizer.json"):
        return
    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
        p.check(False, f"Hugging Face tokenizers cannot load tokenizer.json: {e}")
        return
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    p.check(vocab_size <= cfg["vocab_size"], f"tokenizer has {vocab_size} tokens, config vocab_size {cfg['vocab_size']}")
    tc_path = os.path.join(d, "tokenizer_config.json")
    if p.check(os.path.exists(tc_path), "no tokenizer_config.json"):
        tc = json.load(open(tc_path))
        for key in ("bos_token", "eos_token"):
            v = tc.get(key)
            if isinstance(v, dict):
                v = v.get("content")
            if v is not None:
                p.check(tok.token_to_id(v) is not None, f"tokenizer_config {key} {v!r} is not in the vocabulary")
        p.check(isinstance(tc.get("chat_template", ""), (str, list)), "tokenizer_config chat_template is not a string")
    texts = STRINGS + (args.text or [])
    encoded = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in texts]
    for e in encoded:
        p.check(all(0 <= i < cfg["vocab_size"] for i in e["ids"]), f"ids of {e['text']!r} exceed vocab_size")
    if args.reference_tokenizer:
        ref = Tokenizer.from_file(args.reference_tokenizer)
        for e in encoded:
            want = ref.encode(e["text"], add_special_tokens=False).ids
            p.check(e["ids"] == want, f"tokenizes {e['text']!r} as {e['ids']}, the reference as {want}")
    if args.expect:
        for e in json.load(open(args.expect)):
            got = tok.encode(e["text"], add_special_tokens=False).ids
            p.check(got == e["ids"], f"tokenizes {e['text']!r} as {got}, expected {e['ids']}")
    if args.write_expect:
        with open(args.write_expect, "w", encoding="utf-8") as f:
            json.dump(encoded, f, ensure_ascii=False, indent=1)


def main():
    ap = argparse.ArgumentParser(description="Check a llama_swiftkv directory against the published format.")
    ap.add_argument("dir")
    ap.add_argument("--expect")
    ap.add_argument("--reference-tokenizer")
    ap.add_argument("--text", action="append")
    ap.add_argument("--write-expect")
    ap.add_argument("--check-init", action="store_true")
    args = ap.parse_args()

    p = Problems()
    cfg = check_config(args.dir, p)
    if cfg is None:
        print("\n".join(["FAIL " + args.dir] + ["  " + x for x in p.items]))
        return 1
    files = tensor_files(args.dir, p)
    want = expected_tensors(cfg)
    for name, shape in want.items():
        if p.check(name in files, f"tensor {name} is missing"):
            p.check(files[name][2] == shape, f"tensor {name} has shape {files[name][2]}, expected {shape}")
    for name in files:
        p.check(name in want, f"unexpected tensor {name}")
    dtypes = sorted({v[1] for v in files.values()})
    p.check(len(dtypes) == 1 and dtypes[0] in ELEMENT_BYTES, f"tensor dtypes {dtypes}: expected one of F32/BF16/F16")
    torch_dtype = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}.get(dtypes[0] if dtypes else "")
    if cfg.get("torch_dtype") not in (None, torch_dtype):
        print(f"note: torch_dtype {cfg.get('torch_dtype')!r} but tensors are {dtypes}")
    if args.check_init and not p.items:
        check_init(args.dir, cfg, files, p)
    check_tokenizer(args.dir, cfg, args, p)

    if p.items:
        print("\n".join([f"FAIL {args.dir}: {len(p.items)} problem(s)"] + ["  " + x for x in p.items[:50]]))
        return 1
    n, L, g = cfg["num_hidden_layers"], cfg["num_key_value_layers"], cfg.get("key_value_group_size", 1)
    print(f"OK {args.dir}: llama_swiftkv N={n} L={L} g={g}, {len(files)} tensors ({dtypes[0]}), "
          f"{len(set(v[0] for v in files.values()))} weight file(s), tokenizer loads"
          + (", init values match" if args.check_init else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
