#!/usr/bin/env python3
"""Writes a tiny random llama_swiftkv checkpoint directory, independently of swiftkv's own code.

Only numpy, json and the `safetensors` package (PyPI) are used, and the format follows the published
llama_swiftkv layout (DESIGN.md section 1; Snowflake's LlamaSwiftKVConfig), so swiftkv's loader can be
tested against a writer it did not write. The directory holds:

  config.json             model_type llama_swiftkv, LlamaSwiftKVForCausalLM, num_key_value_layers,
                          key_value_group_size, swiftkv true
  model.safetensors       every teacher tensor (q/k/v of all layers, untied lm_head) plus
                          norm_swiftkv, q_proj_swiftkv for layers >= L, k/v_proj_swiftkv for group
                          leaders; the SwiftKV tensors are random (like a distilled student), not
                          copies of the teacher
  tokenizer.json          a byte-level BPE: the 256 GPT-2 byte symbols, merges learned here from a
                          fixed English text, then <|endoftext|>, <|im_start|>, <|im_end|>
  tokenizer_config.json   ChatML chat template, bos/eos, add_bos_token false
  generation_config.json

With --gguf PATH the teacher (the same values, bf16 ones widened exactly to f32) is also written as a
llama.cpp-style GGUF with the `gguf` package: llama.cpp's tensor names, its Q/K row permutation
(convert_hf_to_gguf.py's LlamaModel.permute), the vocabulary as tokenizer.ggml.* — a base model for
`swiftkv convert` whose result can be compared with this checkpoint.

f32 tensors are written with safetensors.numpy.save_file; bf16 ones (which numpy cannot hold) by
writing the documented file layout directly (u64 little-endian header length, JSON header, data),
then read back with `safetensors` to check it.

Usage: pip install numpy safetensors tokenizers
       python3 scripts/make_tiny_swiftkv_checkpoint.py OUT_DIR [--dtype bf16|f32] [--layers 4]
              [--swiftkv-layers 2] [--group 2] [--seed 0] [--gguf TEACHER.gguf]
The committed copies were made with
  python3 scripts/make_tiny_swiftkv_checkpoint.py tests/convert/data/tiny_swiftkv \
      --gguf tests/convert/data/tiny_teacher.gguf
"""
import argparse
import json
import os
import re
import struct
import sys
from collections import Counter

import numpy as np
import safetensors
from safetensors import safe_open
from safetensors.numpy import save_file

HIDDEN = 64
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 16
FFN = 128
MAX_POSITION = 256
MERGES = 61            # 256 bytes + 61 merges + 3 special tokens = 320 tokens
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TRAINING_TEXT = """The quick brown fox jumps over the lazy dog. The dog sleeps in the sun, and the fox
runs into the forest. There is a house at the end of the road where the people of the town meet
in the evening to talk about the weather, the harvest and the news from the city. In the morning
the children walk to the school on the hill, and in the afternoon they play in the field near the
river. Prefill processes the prompt; decode generates one token at a time. A model that skips the
later layers for the prompt tokens saves compute, and the key value cache of those layers is
computed from the hidden state entering the first skipped layer."""


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def learn_merges(text, count):
    """A small BPE trainer: words split GPT-2 style (optional leading space), most frequent pair first,
    ties broken by the pair itself so the result is deterministic."""
    b2u = bytes_to_unicode()
    words = Counter(re.findall(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+", text))
    seqs = {w: [b2u[b] for b in w.encode("utf-8")] for w in words}
    merges = []
    for _ in range(count):
        pairs = Counter()
        for w, freq in words.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += freq
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        for w in words:
            s, out, i = seqs[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


def tokenizer_files():
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    merges = learn_merges(TRAINING_TEXT, MERGES)
    for a, b in merges:
        tokens.append(a + b)
    assert len(set(tokens)) == len(tokens), "merged tokens must be new strings"
    first_special = len(tokens)
    tokens += SPECIALS
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": first_special + i, "content": s, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True} for i, s in enumerate(SPECIALS)],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": [a + " " + b for a, b in merges]},
    }
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITION,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    return tokenizer, config, len(tokens), first_special


def to_bf16_bits(x):
    """float32 -> bfloat16 bit patterns, round to nearest even (what torch's .to(bfloat16) does)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def write_bf16_safetensors(path, tensors, metadata):
    """The safetensors layout: u64-LE header size, JSON header (padded with spaces to 8 bytes), data."""
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        bits = to_bf16_bits(tensors[name])
        data = bits.astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def from_bf16_bits(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def permute_for_gguf(w, n_head):
    """llama.cpp's converter (LlamaModel.permute): each head's rows reordered for interleaved RoPE."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_teacher_gguf(path, weights, layers, vocab_tokens, first_special, merges, tok_config, bos, eos):
    import gguf

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny swiftkv teacher")
    w.add_block_count(layers)
    w.add_context_length(MAX_POSITION)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(vocab_tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(vocab_tokens)
    w.add_token_types([1] * first_special + [3] * (len(vocab_tokens) - first_special))
    w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_pad_token_id(bos)
    w.add_add_bos_token(False)
    w.add_chat_template(tok_config["chat_template"])
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
                 "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
                 "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
                 "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
                 "mlp.down_proj.weight": "ffn_down.weight"}
    for name, value in weights.items():
        if "swiftkv" in name:
            continue
        if name in names:
            w.add_tensor(names[name], value)
            continue
        layer, rest = name[len("model.layers."):].split(".", 1)
        if rest == "self_attn.q_proj.weight":
            value = permute_for_gguf(value, HEADS)
        elif rest == "self_attn.k_proj.weight":
            value = permute_for_gguf(value, KV_HEADS)
        w.add_tensor(f"blk.{layer}.{per_layer[rest]}", np.ascontiguousarray(value, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def make_weights(rng, layers, cut, group, vocab):
    def mat(rows, cols, scale):
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    qd, kvd = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    w = {"model.embed_tokens.weight": mat(vocab, HIDDEN, 0.5),
         "model.norm.weight": norm(HIDDEN),
         "lm_head.weight": mat(vocab, HIDDEN, 0.1)}
    for l in range(layers):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = norm(HIDDEN)
        w[p + "post_attention_layernorm.weight"] = norm(HIDDEN)
        w[p + "self_attn.q_proj.weight"] = mat(qd, HIDDEN, 0.15)
        w[p + "self_attn.k_proj.weight"] = mat(kvd, HIDDEN, 0.15)
        w[p + "self_attn.v_proj.weight"] = mat(kvd, HIDDEN, 0.15)
        w[p + "self_attn.o_proj.weight"] = mat(HIDDEN, qd, 0.1)
        w[p + "mlp.gate_proj.weight"] = mat(FFN, HIDDEN, 0.1)
        w[p + "mlp.up_proj.weight"] = mat(FFN, HIDDEN, 0.1)
        w[p + "mlp.down_proj.weight"] = mat(HIDDEN, FFN, 0.1)
    if cut < layers:
        w["model.norm_swiftkv.weight"] = norm(HIDDEN)
        for l in range(cut, layers):
            w[f"model.layers.{l}.self_attn.q_proj_swiftkv.weight"] = mat(qd, HIDDEN, 0.15)
            if (l - cut) % group == 0:
                w[f"model.layers.{l}.self_attn.k_proj_swiftkv.weight"] = mat(kvd, HIDDEN, 0.15)
                w[f"model.layers.{l}.self_attn.v_proj_swiftkv.weight"] = mat(kvd, HIDDEN, 0.15)
    return w


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--swiftkv-layers", type=int, default=2)
    ap.add_argument("--group", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gguf", help="also write the teacher as a llama.cpp-style GGUF file here")
    args = ap.parse_args()
    n, cut, group = args.layers, args.swiftkv_layers, args.group
    if not (0 < cut <= n) or group < 1 or (n - cut) % group != 0:
        sys.exit(f"invalid cut: layers {n}, swiftkv-layers {cut}, group {group}")

    tokenizer, tok_config, vocab, first_special = tokenizer_files()
    bos, eos = first_special, first_special + 2
    weights = make_weights(np.random.default_rng(args.seed), n, cut, group, vocab)
    config = {
        "architectures": ["LlamaSwiftKVForCausalLM"],
        "model_type": "llama_swiftkv",
        "num_key_value_layers": cut,
        "key_value_group_size": group,
        "swiftkv": True,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": n,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITION,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "vocab_size": vocab,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "initializer_range": 0.02,
        "torch_dtype": "bfloat16" if args.dtype == "bf16" else "float32",
    }

    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "model.safetensors")
    if args.dtype == "f32":
        save_file(weights, path, metadata={"format": "pt"})
    else:
        write_bf16_safetensors(path, weights, {"format": "pt"})
    with open(os.path.join(args.out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(args.out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False, indent=1)
    with open(os.path.join(args.out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tok_config, f, indent=2)
    with open(os.path.join(args.out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": bos, "eos_token_id": eos}, f, indent=2)

    # Read back with the safetensors package: names, shapes, dtypes, and the values where numpy can.
    with safe_open(path, framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}
        assert sorted(f.keys()) == sorted(weights), "tensor names differ after writing"
        for name, w in weights.items():
            sl = f.get_slice(name)
            assert list(sl.get_shape()) == list(w.shape), name
            assert sl.get_dtype() == ("BF16" if args.dtype == "bf16" else "F32"), (name, sl.get_dtype())
            if args.dtype == "f32":
                assert np.array_equal(f.get_tensor(name), w), name
    try:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(os.path.join(args.out_dir, "tokenizer.json"))
        ids = tok.encode("<|im_start|>user\nThe dog runs to the house.<|im_end|>").ids
        assert ids[0] == first_special + 1 and ids[-1] == eos, ids
    except ImportError:
        pass
    if args.gguf:
        stored = {k: (from_bf16_bits(to_bf16_bits(v)) if args.dtype == "bf16" else v) for k, v in weights.items()}
        vocab_tokens = sorted(tokenizer["model"]["vocab"], key=tokenizer["model"]["vocab"].get)
        write_teacher_gguf(args.gguf, stored, n, vocab_tokens, first_special, tokenizer["model"]["merges"], tok_config,
                           bos, eos)
        print(f"wrote {args.gguf}: the teacher as GGUF ({os.path.getsize(args.gguf)} bytes)")
    total = sum(os.path.getsize(os.path.join(args.out_dir, x)) for x in os.listdir(args.out_dir))
    print(f"wrote {args.out_dir}: {len(weights)} tensors ({args.dtype}), vocab {vocab}, {n} layers, "
          f"L={cut}, g={group}, {total} bytes; safetensors {safetensors.__version__}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
