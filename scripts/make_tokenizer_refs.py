#!/usr/bin/env python3
"""Makes the tokenizer reference outputs that tests/tokenizer checks swiftkv's BpeTokenizer against.

The oracle is Hugging Face `tokenizers` (PyPI), never our own code. Steps:

1. Read the vocabulary of the default model's GGUF (models/SmolLM2-135M-Instruct.Q4_1.gguf) with the
   `gguf` package and build the equivalent Hugging Face tokenizer.json (byte-level BPE, SmolLM2's
   pre-tokenizer Sequence[Digits(individual_digits), ByteLevel(use_regex)], ByteLevel decoder,
   control tokens as special added tokens). Saved as tests/tokenizer/data/smollm2_tokenizer.json.
2. Two more tokenizers with the same vocabulary but other pre-tokenizers, to check the other code
   paths: Llama-3's (Split(llama3 regex, Isolated) + ByteLevel(use_regex=false), ignore_merges=true
   as Llama-3's tokenizer.json has) and GPT-2's (ByteLevel(use_regex=true)).
3. Encode with `tokenizers`: every file of shared/data by lines, by ~64 KB chunks and (for JSON
   files) by string values; adversarial strings; decode references. Invalid UTF-8 input is first
   decoded with bytes.decode('utf-8', errors='replace') (maximal-subpart replacement, the same as
   Rust's String::from_utf8_lossy), which is the rule BpeTokenizer implements.

Stored compactly in tests/tokenizer/data/tokenizer_refs.json: groups of text units with the sha256
of their source bytes and of their id sequences, full id lists for adversarial strings and the first
lines of each file. Hash of a group: sha256 over, for each unit, uint32-LE length followed by the
unit's bytes (source) or its ids as int32-LE (ids).

Usage: pip install tokenizers gguf numpy; python3 scripts/make_tokenizer_refs.py
"""
import base64
import hashlib
import json
import os
import random
import struct
import sys

import gguf
import tokenizers
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
SHARED_DATA = os.environ.get("SWIFTKV_SHARED_DIR", os.path.join(os.path.dirname(ROOT), "shared"))
SHARED_DATA = os.path.join(SHARED_DATA, "data")
OUT_DIR = os.path.join(ROOT, "tests", "tokenizer", "data")

GROUP = 64            # text units per hashed group
CHUNK = 64 * 1024     # whole-file chunk size in bytes (moved back to a UTF-8 character boundary)
FIRST_LINES = 15      # lines per file stored with full id lists

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def read_gguf_vocab(path):
    reader = gguf.GGUFReader(path)

    def strings(key):
        f = reader.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def ints(key):
        f = reader.fields[key]
        return [int(f.parts[i][0]) for i in f.data]

    def scalar(key):
        f = reader.fields[key]
        return f.contents() if hasattr(f, "contents") else f.parts[-1][0]

    assert scalar("tokenizer.ggml.model") == "gpt2"
    assert scalar("tokenizer.ggml.pre") == "smollm"
    return strings("tokenizer.ggml.tokens"), ints("tokenizer.ggml.token_type"), strings("tokenizer.ggml.merges")


def tokenizer_json(tokens, types, merges, pre_tokenizer, ignore_merges=False):
    added = []
    for i, (t, k) in enumerate(zip(tokens, types)):
        if k in (2, 3, 4):  # unknown, control -> special; user-defined -> added, not special
            added.append({"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": k != 4})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }


PRE_SMOLLM = {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
PRE_LLAMA3 = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
PRE_GPT2 = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def sha_units(units):
    h = hashlib.sha256()
    for u in units:
        h.update(struct.pack("<I", len(u)))
        h.update(u)
    return h.hexdigest()


def ids_bytes(ids):
    return struct.pack("<%di" % len(ids), *ids)


def lossy(b):
    return b.decode("utf-8", errors="replace")


def encode_many(tok, byte_units):
    texts = [lossy(u) for u in byte_units]
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def grouped(tok, byte_units):
    """[[n_units, n_tokens, sha256(sources), sha256(ids)], ...] over groups of GROUP units."""
    all_ids = encode_many(tok, byte_units)
    groups = []
    for g in range(0, len(byte_units), GROUP):
        src = byte_units[g:g + GROUP]
        ids = all_ids[g:g + GROUP]
        groups.append([len(src), sum(len(x) for x in ids), sha_units(src), sha_units([ids_bytes(x) for x in ids])])
    return groups, sum(len(x) for x in all_ids)


def file_lines(data):
    return data.split(b"\n")


def file_chunks(data):
    """(offset, length) of ~CHUNK-byte pieces, each ending on a UTF-8 character boundary."""
    out, start = [], 0
    while start < len(data):
        end = min(start + CHUNK, len(data))
        while end < len(data) and end > start and (data[end] & 0xC0) == 0x80:
            end -= 1
        out.append((start, end - start))
        start = end
    return out


def json_strings(name, data):
    """String values of a .json/.jsonl file in document order (ordered objects), UTF-8 encoded."""
    out = []

    def walk(v):
        if isinstance(v, str):
            out.append(v.encode("utf-8"))
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    if name.endswith(".jsonl"):
        for line in data.split(b"\n"):
            if line.strip():
                walk(json.loads(line))
    else:
        walk(json.loads(data))
    return out


def adversarial_strings():
    s = []
    add = lambda x: s.append(x.encode("utf-8") if isinstance(x, str) else x)
    for x in [
        "", " ", "  ", "\t", "\n", "\r\n", "\r", "\n\n\n", " \n ", "a", "Hello, world!", "hello world",
        "Hello world\n\nHow are you?  Fine.\tTabs\t\there",
        " " * 1000, "\t" * 300, "\n" * 500, " \t\n" * 200, "x" + " " * 50 + "y", "   leading", "trailing   ",
        "1", "12", "123", "1234", "12345678901234567890" * 20, "3.14159", "-42", "1,000,000", "v1.2.3", "0x1F",
        "٣٤٥ ١٢", "²³ ½ Ⅻ ⑫", "a1b2c3", " 1 22 333 4444",
        "I'm you're he's we've they'll I'd can't", "I'M YOU'RE HE'S WE'VE THEY'LL I'D CAN'T", "'s's's", "'ſ 'K",
        "don't  'tis 'twas", "rock 'n' roll",
        "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇸🇫🇷🇯🇵", "😀😃😄😁", "a😀b", " 😀 ", "🧑🏿‍🚀 astronaut", "❤️‍🔥",
        "日本語のテキストです。", "中文字符测试，标点。", "한국어 텍스트", "混合 mixed テキスト 123",
        "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "क्षत्रिय", "ภาษาไทย", "Ελληνικά", "Кириллица текст",
        "e\u0301 a\u0300 o\u0308 n\u0303", "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319",
        "ﬁ ﬀ ﬃ", "ǅ ǈ ǋ", "ß ẞ", "İstanbul ı",
        "\u00a0nbsp\u00a0", "\u2003em\u2003space", "\u3000ideographic", "\u200bzero\u200bwidth", "\u180emongolian",
        "\u2028line\u2029para", "\u0085nel", "\u000bvt\u000cff", "\x00nul\x00", "\x7f\x01\x1f",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n",
        "<|endoftext|>", "<|im_start|>", "<|im_start|><|im_start|>", "<|im_end|><|im_end|>",
        "<|im_start", "<|im_start|", "im_start|>", "<|im_", "<<|im_start|>>", " <|im_start|> ",
        "x<|im_end|>y", "<|im_end|>  \n", "<repo_name>a<file_sep>b<gh_stars>10", "<|endoftext|><|endoftext|>",
        "<|fake_token|>", "<|eot_id|>", "</s><s>",
        "def f(x):\n    return x * 2  # comment\n", "if (a && b || !c) { x->y = z[0]; }",
        "https://example.com/path?q=1&r=2#frag", "user@example.com", "$$\\frac{a}{b}$$", "~~~***___---===",
        "   \n\n   \n", "a\r\n\r\nb", "word\n\n\n\nword", ".\n.\n.", "!!!???...",
    ]:
        add(x)
    # Invalid UTF-8 byte strings (the tests check the replacement rule itself too).
    for b in [b"\xff", b"abc\x80def", b"\xe2\x82", b"\xe2\x82\x41", b"\xf0\x9f\x98x", b"\xed\xa0\x80",
              b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xf5\xf6", b"end\xf0\x9f\x98", b"\x80\x80\x80",
              b"ok \xe6\x97 \xe6\x97\xa5", b"\xc3\x28", b"\xe0\x80\xaf", b"\xf8\x88\x80\x80\x80",
              b"mix\xffed \xfe<|im_end|>\xc2"]:
        add(b)
    # A long random string over all of Unicode (fixed seed), surrogates excluded.
    rng = random.Random(20241126)
    chars = []
    total = 0
    while total < 100 * 1024:
        r = rng.random()
        if r < 0.15:
            cp = rng.choice([0x20, 0x0A, 0x09, 0x0D])
        elif r < 0.4:
            cp = rng.randrange(0x20, 0x7F)
        elif r < 0.6:
            cp = rng.randrange(0x80, 0x800)
        elif r < 0.85:
            cp = rng.randrange(0x800, 0x10000)
        else:
            cp = rng.randrange(0x10000, 0x110000)
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        chars.append(c)
        total += len(c.encode("utf-8"))
    add("".join(chars))
    return s


def text_entry(b):
    try:
        return {"text": b.decode("utf-8")}
    except UnicodeDecodeError:
        return {"hex": b.hex(), "lossy": lossy(b)}


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def write_gguf(path, model, pre, tokens, types, merges, extra=None):
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if merges:
        w.add_token_merges(merges)
    for fn, value in (extra or {}).items():
        getattr(w, fn)(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def small_ggufs(refs):
    """Tiny tokenizer-only GGUF files: a Llama-3-style one (llama-bpe: BOS added and ignore_merges by
    llama.cpp's defaults; a whole-word token no merge reaches), and two the reader must refuse."""
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "Ġa n", "Ġan d", "e r"]
    for m in merges:
        tokens.append(m.replace(" ", ""))
    tokens.append("Ġhello")  # reachable only with ignore_merges
    tokens += ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|reserved|>"]
    types = [1] * (len(tokens) - 4) + [3, 3, 3, 4]
    bos, eos = len(tokens) - 4, len(tokens) - 3
    path = os.path.join(OUT_DIR, "tiny_llama_bpe.gguf")
    write_gguf(path, "gpt2", "llama-bpe", tokens, types, merges,
               {"add_bos_token_id": bos, "add_eos_token_id": eos})
    doc = tokenizer_json(tokens, types, merges, PRE_LLAMA3, ignore_merges=True)
    doc["post_processor"] = {"type": "TemplateProcessing",
                             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                                        {"Sequence": {"id": "A", "type_id": 0}}],
                             "pair": [], "special_tokens": {"<|begin_of_text|>": {
                                 "id": "<|begin_of_text|>", "ids": [bos], "tokens": ["<|begin_of_text|>"]}}}
    tok = Tokenizer.from_str(json.dumps(doc))
    texts = ["hello", " hello the and", "Hello THE", "<|begin_of_text|>hi<|eot_id|>", "a<|reserved|>b",
             " hellohello", "I'M 12345 there\n\n"]
    refs["tiny_llama_bpe"] = {"file": os.path.basename(path), "bos_id": bos, "eos_id": eos,
                              "cases": [{"text": t, "ids": tok.encode(t, add_special_tokens=True).ids} for t in texts]}
    write_gguf(os.path.join(OUT_DIR, "tiny_spm.gguf"), "llama", None, ["<unk>", "<s>", "</s>", "a"], [2, 3, 3, 1], [])
    write_gguf(os.path.join(OUT_DIR, "tiny_qwen2.gguf"), "gpt2", "qwen2", tokens, types, merges)


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    tokens, types, merges = read_gguf_vocab(MODEL)
    doc_smollm = tokenizer_json(tokens, types, merges, PRE_SMOLLM)
    tok_path = os.path.join(OUT_DIR, "smollm2_tokenizer.json")
    with open(tok_path, "w", encoding="utf-8") as f:
        json.dump(doc_smollm, f, ensure_ascii=False, separators=(",", ":"))
    smollm = Tokenizer.from_file(tok_path)
    llama3 = Tokenizer.from_str(json.dumps(tokenizer_json(tokens, types, merges, PRE_LLAMA3, ignore_merges=True)))
    gpt2 = Tokenizer.from_str(json.dumps(tokenizer_json(tokens, types, merges, PRE_GPT2)))
    # Added-token lstrip/rstrip: <|im_start|> swallows whitespace on its right, <|im_end|> on its left.
    doc_strip = tokenizer_json(tokens, types, merges, PRE_SMOLLM)
    for a in doc_strip["added_tokens"]:
        if a["content"] == "<|im_start|>":
            a["rstrip"] = True
        if a["content"] == "<|im_end|>":
            a["lstrip"] = True
    strip = Tokenizer.from_str(json.dumps(doc_strip))

    refs = {
        "generator": "scripts/make_tokenizer_refs.py",
        "tokenizers_version": tokenizers.__version__,
        "gguf_version": getattr(gguf, "__version__", "unknown"),
        "model": os.path.basename(MODEL),
        "tokenizer_json": "smollm2_tokenizer.json",
        "group_size": GROUP,
        "chunk_size": CHUNK,
        "files": [],
        "first_lines": [],
        "adversarial": [],
        "decode": [],
    }
    totals = {"units": 0, "tokens": 0}

    adv = adversarial_strings()
    adv_ids = {name: encode_many(t, adv) for name, t in
               [("smollm", smollm), ("llama3", llama3), ("gpt2", gpt2), ("smollm_strip", strip)]}
    smollm.encode_special_tokens = True
    adv_plain = encode_many(smollm, adv)
    smollm.encode_special_tokens = False
    for i, b in enumerate(adv):
        e = text_entry(b)
        big = len(b) > 4096
        for name in ("smollm", "llama3", "gpt2", "smollm_strip"):
            ids = adv_ids[name][i]
            e[name] = {"count": len(ids), "sha256": hashlib.sha256(ids_bytes(ids)).hexdigest()} if big else ids
        e["smollm_no_special"] = adv_plain[i] if not big else {
            "count": len(adv_plain[i]), "sha256": hashlib.sha256(ids_bytes(adv_plain[i])).hexdigest()}
        refs["adversarial"].append(e)
        totals["units"] += 4
        totals["tokens"] += sum(len(adv_ids[n][i]) for n in adv_ids) + len(adv_plain[i])

    for name in sorted(os.listdir(SHARED_DATA)):
        path = os.path.join(SHARED_DATA, name)
        if not os.path.isfile(path):
            continue
        data = open(path, "rb").read()
        entry = {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        lines = file_lines(data)
        entry["lines"], n = grouped(smollm, lines)
        totals["units"] += len(lines)
        totals["tokens"] += n
        entry["lines_llama3"], n = grouped(llama3, lines)
        totals["units"] += len(lines)
        totals["tokens"] += n
        entry["lines_gpt2"], n = grouped(gpt2, lines)
        totals["units"] += len(lines)
        totals["tokens"] += n
        chunks = file_chunks(data)
        chunk_ids = encode_many(smollm, [data[o:o + l] for o, l in chunks])
        entry["chunks"] = [[o, l, len(ids), hashlib.sha256(ids_bytes(ids)).hexdigest()]
                           for (o, l), ids in zip(chunks, chunk_ids)]
        totals["units"] += len(chunks)
        totals["tokens"] += sum(len(x) for x in chunk_ids)
        if name.endswith(".json") or name.endswith(".jsonl"):
            strs = json_strings(name, data)
            entry["json_strings"], n = grouped(smollm, strs)
            totals["units"] += len(strs)
            totals["tokens"] += n
        refs["files"].append(entry)

        first = lines[:FIRST_LINES]
        for i, ids in enumerate(encode_many(smollm, first)):
            refs["first_lines"].append({"file": name, "line": i, "smollm": ids,
                                        "llama3": llama3.encode(lossy(first[i]), add_special_tokens=False).ids,
                                        "gpt2": gpt2.encode(lossy(first[i]), add_special_tokens=False).ids})

    # Decode references: HF decode (from_utf8_lossy of the bytes) of id sequences, with and without
    # special tokens: adversarial encodings, prefixes of them that cut characters, random ids.
    rng = random.Random(7)
    seqs = []
    for ids in adv_ids["smollm"]:
        if 0 < len(ids) < 400:
            seqs.append(ids)
            seqs.append(ids[: max(1, len(ids) // 2)])
    for _ in range(200):
        seqs.append([rng.randrange(len(tokens)) for _ in range(rng.randrange(1, 40))])
    seqs.append([rng.randrange(17) for _ in range(30)])
    for ids in seqs:
        refs["decode"].append({"ids": ids, "text": smollm.decode(ids, skip_special_tokens=False),
                               "text_skip_special": smollm.decode(ids, skip_special_tokens=True)})

    small_ggufs(refs)
    refs["totals"] = totals
    out = os.path.join(OUT_DIR, "tokenizer_refs.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(refs, f, ensure_ascii=False, separators=(",", ":"))
    print(f"wrote {out} ({os.path.getsize(out)} bytes), {tok_path} ({os.path.getsize(tok_path)} bytes)")
    print(f"tokenizers {tokenizers.__version__}: {totals['units']} text units, {totals['tokens']} tokens")


if __name__ == "__main__":
    sys.exit(main())
