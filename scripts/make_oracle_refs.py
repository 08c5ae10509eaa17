#!/usr/bin/env python3
"""Make the llama.cpp oracle reference outputs in tests/oracle/data/.

usage: scripts/make_oracle_refs.py [--model F32.gguf] [--q4-model Q4_1.gguf]
                                   [--data-dir /work/shared/data] [--out-dir tests/oracle/data]

The oracle is llama.cpp through the PyPI package llama-cpp-python, run on the
all-F32 GGUF made by scripts/make_f32_gguf.py (the Q4_1 weights dequantized to
f32), so that llama.cpp computes in f32 like swiftkv does (on the Q4_1 file it
would quantize activations to 8 bits inside its matmuls).

Settings: n_ctx 4096, n_batch = n_ubatch = 2048 (every prompt, <= 2048
tokens, is evaluated in ONE micro-batch), logits_all, F32 K and V cache
(type_k = type_v = GGML_TYPE_F32 = 0), flash attention off, 2 threads,
use_extra_bufts false (plain ggml CPU kernels: no weight repacking, no AMX),
fixed seed (no sampler is used at all: greedy is an argmax in numpy).
Outputs are bit-for-bit reproducible: two full runs gave identical files, and
so did a fresh process with 1 thread, prompts in reverse order, n_ubatch 512.

For each prompt:
  * prompt_ids: llama.cpp's own tokenization of `text` (the model's default
    BOS handling, which for SmolLM2 is: no BOS; special=True so ChatML markers
    such as <|im_start|> become single special tokens);
  * the full-vocabulary logits at the last prompt position, as float32 rows of
    last_logits.f32 (row `logits_row`, byte offset `logits_offset`);
  * greedy_ids: 32 tokens, each the argmax (lowest id on an exact tie) of the
    logits at the previous position, decoding one token per llama_decode call,
    never stopping at EOS; greedy_top2_margin[i] = top1 - top2 logit of the
    logits that chose greedy_ids[i] (small margins explain legitimate
    divergences), with the top-5 ids and logits of each step;
  * for a few prompts, per-position statistics of the prompt pass (argmax,
    max logit, logsumexp, log-prob of the next prompt token).

Outputs: oracle_refs.json and last_logits.f32 (raw little-endian float32,
n_prompts x n_vocab, row-major).
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_GREEDY = 32
MAX_PROMPT = 2048
SEED = 1234
GGML_TYPE_F32 = 0

# Prompts whose per-position statistics of the prompt pass are stored.
POSITION_STATS_PROMPTS = ("plain_capital_france", "medium_wiki_200", "chat_vicuna_default_system")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_string(path, key):
    import gguf

    r = gguf.GGUFReader(path)
    f = r.fields[key]
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class Prompts:
    """Builds the prompt list; token counts use llama.cpp's tokenizer."""

    def __init__(self, llm, data_dir, chat_template):
        import jinja2

        self.llm = llm
        self.data_dir = data_dir
        env = jinja2.Environment()  # SmolLM2's template uses no custom filters
        self.template = env.from_string(chat_template)
        self.items = []

    def ntok(self, text):
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def add(self, name, kind, text, source):
        self.items.append({"name": name, "kind": kind, "source": source, "text": text})

    def chat(self, messages):
        return self.template.render(messages=messages, add_generation_prompt=True)

    def excerpt(self, fname, start_line, target_tokens):
        """Text from the start of line start_line (0-based), cut at the end of a word so that it
        has as many tokens as possible but at most target_tokens."""
        with open(os.path.join(self.data_dir, fname), encoding="utf-8") as f:
            lines = f.read().split("\n")
        text = "\n".join(lines[start_line:])[: target_tokens * 12]
        # candidate cuts: just before a whitespace character that follows a non-whitespace one
        cuts = [i for i in range(1, len(text)) if text[i].isspace() and not text[i - 1].isspace()]
        lo, hi = 0, len(cuts) - 1  # binary search for the last cut with <= target tokens
        if self.ntok(text[: cuts[0]]) > target_tokens:
            raise SystemExit(f"excerpt {fname}:{start_line}: first word already > {target_tokens} tokens")
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.ntok(text[: cuts[mid]]) <= target_tokens:
                lo = mid
            else:
                hi = mid - 1
        out = text[: cuts[lo]]
        n_lines = out.count("\n") + 1
        return out, (f"{fname} from line {start_line + 1} (1-based), {len(out)} chars over {n_lines} lines, "
                     f"cut at a word end to fit {target_tokens} tokens")


def build_prompts(llm, data_dir, chat_template):
    p = Prompts(llm, data_dir, chat_template)

    # --- short plain prompts (tokenizer corner cases included) ---
    p.add("plain_capital_france", "short", "The capital of France is", "hand-written")
    p.add("plain_once_upon", "short", "Once upon a time", "hand-written")
    p.add("plain_single_word", "short", "Hello", "hand-written")
    p.add("plain_python_def", "short", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
          "hand-written")
    p.add("plain_numbers", "short", "1, 2, 3, 4, 5, 6, 7,", "hand-written")
    p.add("plain_unicode", "short", "Le café coûte 3,50 € — naïve 日本語 🍕 and", "hand-written")
    p.add("plain_whitespace", "short", "  Multiple   spaces\tand\ttabs\n\n\nthen newlines:", "hand-written")

    # --- medium prompts (a few hundred tokens) ---
    # (name, file, first line (0-based), token budget)
    for name, fname, line, target in [
        ("medium_wiki_200", "wikitext-2-raw.valid.raw", 1, 200),
        ("medium_wiki_400", "wikitext-2-raw.valid.raw", 47, 400),
        ("medium_shakespeare_250", "tinyshakespeare.txt", 0, 250),
        ("medium_shakespeare_500", "tinyshakespeare.txt", 2001, 500),
    ]:
        text, src = p.excerpt(fname, line, target)
        p.add(name, "medium", text, src)
    gsm = read_jsonl(os.path.join(data_dir, "gsm8k_train.jsonl"))
    p.add("medium_gsm8k_fewshot", "medium",
          "".join(f"Question: {g['question']}\nAnswer: {g['answer']}\n\n" for g in gsm[:2])
          + f"Question: {gsm[2]['question']}\nAnswer:",
          "gsm8k_train.jsonl records 1-3 (two solved examples, then a question)")

    # --- long prompts (~1000 and ~2000 tokens, all <= 2048) ---
    for name, fname, line, target in [
        ("long_wiki_1000", "wikitext-2-raw.valid.raw", 132, 1000),
        ("long_shakespeare_1000", "tinyshakespeare.txt", 10002, 1000),
        ("long_wiki_2000", "wikitext-2-raw.valid.raw", 979, 2000),
        ("long_shakespeare_2000", "tinyshakespeare.txt", 19999, 2000),
    ]:
        text, src = p.excerpt(fname, line, target)
        p.add(name, "long", text, src)

    # --- chat prompts, rendered with the GGUF's own chat_template (jinja2) ---
    mt = {q["question_id"]: q for q in read_jsonl(os.path.join(data_dir, "mt_bench_questions.jsonl"))}
    vic = {q["question_id"]: q for q in read_jsonl(os.path.join(data_dir, "vicuna_bench_questions.jsonl"))}
    sys_msg = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

    p.add("chat_vicuna_default_system", "chat",
          p.chat([{"role": "user", "content": vic[1]["turns"][0]}]),
          "vicuna_bench_questions.jsonl question_id 1; template inserts its default system message")
    p.add("chat_vicuna_fermi", "chat",
          p.chat([{"role": "system", "content": sys_msg}, {"role": "user", "content": vic[41]["turns"][0]}]),
          "vicuna_bench_questions.jsonl question_id 41")
    p.add("chat_vicuna_coding", "chat",
          p.chat([{"role": "system", "content": sys_msg}, {"role": "user", "content": vic[65]["turns"][0]}]),
          "vicuna_bench_questions.jsonl question_id 65")
    p.add("chat_mtbench_writing", "chat",
          p.chat([{"role": "system", "content": sys_msg}, {"role": "user", "content": mt[81]["turns"][0]}]),
          "mt_bench_questions.jsonl question_id 81 turn 1")
    p.add("chat_mtbench_custom_system", "chat",
          p.chat([{"role": "system", "content": "You are a concise math tutor. Answer in at most three sentences."},
                  {"role": "user", "content": mt[113]["turns"][0]}]),
          "mt_bench_questions.jsonl question_id 113 turn 1, custom system message")
    p.add("chat_mtbench_reasoning", "chat",
          p.chat([{"role": "system", "content": sys_msg}, {"role": "user", "content": mt[105]["turns"][0]}]),
          "mt_bench_questions.jsonl question_id 105 turn 1")
    p.add("chat_mtbench_two_turn", "chat",
          p.chat([{"role": "system", "content": sys_msg},
                  {"role": "user", "content": mt[129]["turns"][0]},
                  {"role": "assistant", "content": "Use a binary search on the smaller list: pick i elements from "
                   "it and k - i from the other, and move i until the two partitions are ordered. This runs in "
                   "O(log(min(m, n))) time."},
                  {"role": "user", "content": mt[129]["turns"][1]}]),
          "mt_bench_questions.jsonl question_id 129 turns 1-2, hand-written first answer")
    article, src = p.excerpt("wikitext-2-raw.valid.raw", 3, 900)
    p.add("chat_long_summarize", "chat",
          p.chat([{"role": "system", "content": sys_msg},
                  {"role": "user", "content": "Summarize the following article in three sentences.\n\n" + article}]),
          "instruction + " + src)

    for it in p.items:
        it["n_tokens"] = p.ntok(it["text"])
        if it["n_tokens"] > MAX_PROMPT:
            raise SystemExit(f"prompt {it['name']} has {it['n_tokens']} > {MAX_PROMPT} tokens")
    return p.items


def topk(row, k):
    # stable: equal logits ordered by ascending id
    idx = np.argsort(-row, kind="stable")[:k]
    return [int(i) for i in idx], [float(row[i]) for i in idx]


def logsumexp(rows):
    m = rows.max(axis=-1, keepdims=True).astype(np.float64)
    return (m[..., 0] + np.log(np.exp(rows.astype(np.float64) - m).sum(axis=-1)))


def run_prompt(llm, ids, n_vocab, want_position_stats):
    llm.reset()
    llm.eval(ids)
    n = len(ids)
    last = np.array(llm.scores[n - 1], dtype=np.float32, copy=True)
    pos_stats = None
    if want_position_stats:
        rows = np.array(llm.scores[:n], dtype=np.float32, copy=True)
        lse = logsumexp(rows)
        pos_stats = {
            "argmax": [int(a) for a in rows.argmax(axis=-1)],
            "max_logit": [float(x) for x in rows.max(axis=-1)],
            "logsumexp": [float(x) for x in lse],
            # log p(ids[i+1] | ids[:i+1]) for i < n-1
            "next_token_logprob": [float(rows[i, ids[i + 1]] - lse[i]) for i in range(n - 1)],
        }
    greedy, margins, top5_ids, top5_logits = [], [], [], []
    cur = last
    for step in range(N_GREEDY):
        ti, tl = topk(cur, 5)
        tok = int(np.argmax(cur))  # first (lowest id) maximum
        assert tok == ti[0]
        greedy.append(tok)
        margins.append(float(tl[0] - tl[1]))
        top5_ids.append(ti)
        top5_logits.append(tl)
        if step + 1 < N_GREEDY:
            llm.eval([tok])
            cur = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32, copy=True)
    assert llm.n_tokens == n + N_GREEDY - 1
    return last, greedy, margins, top5_ids, top5_logits, pos_stats


class CompactEncoder(json.JSONEncoder):
    """Indented JSON, but lists of scalars on one line."""

    def iterencode(self, o, _one_shot=False):
        return iter([self._enc(o, 0)])

    def _enc(self, o, lvl):
        pad = " " * (lvl + 1)
        if isinstance(o, dict):
            if not o:
                return "{}"
            items = [f"{pad}{json.dumps(k)}: {self._enc(v, lvl + 1)}" for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + " " * lvl + "}"
        if isinstance(o, list):
            if all(not isinstance(x, (dict, list)) for x in o):
                return "[" + ",".join(json.dumps(x) for x in o) + "]"
            if all(isinstance(x, list) and all(not isinstance(y, (dict, list)) for y in x) for x in o):
                return "[" + ",".join(self._enc(x, lvl + 1) for x in o) + "]"
            return "[\n" + ",\n".join(pad + self._enc(x, lvl + 1) for x in o) + "\n" + " " * lvl + "]"
        return json.dumps(o, ensure_ascii=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(REPO, "models", "SmolLM2-135M-Instruct.F32.gguf"))
    ap.add_argument("--q4-model", default=os.path.join(REPO, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                    help="the quantized source of --model (its sha256 is recorded)")
    ap.add_argument("--data-dir", default="/work/shared/data")
    ap.add_argument("--out-dir", default=os.path.join(REPO, "tests", "oracle", "data"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import llama_cpp
    from llama_cpp import Llama

    if not os.path.exists(args.model):
        sys.exit(f"{args.model} missing: run scripts/make_f32_gguf.py {args.q4_model} {args.model}")

    params = dict(n_ctx=4096, n_batch=MAX_PROMPT, n_ubatch=MAX_PROMPT, logits_all=True, seed=SEED,
                  n_threads=args.threads, n_threads_batch=args.threads, type_k=GGML_TYPE_F32,
                  type_v=GGML_TYPE_F32, flash_attn=False, n_gpu_layers=0, verbose=False)
    # Plain ggml CPU kernels only: no "extra buffer types" (weight repacking, AMX), like
    # llama-bench -nr 1. For an F32 model they are not used anyway (same logits, checked), and
    # ggml's AMX kernels die with SIGILL on some VMs.
    orig_default_params = llama_cpp.llama_cpp.llama_model_default_params

    def model_params_no_extra_bufts():
        mp = orig_default_params()
        mp.use_extra_bufts = False
        return mp

    llama_cpp.llama_cpp.llama_model_default_params = model_params_no_extra_bufts
    try:
        llm = Llama(model_path=args.model, **params)
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = orig_default_params
    assert llm.model_params.use_extra_bufts is False
    n_vocab = llm.n_vocab()
    cp = llm.context_params
    assert cp.n_ubatch == MAX_PROMPT and cp.n_batch == MAX_PROMPT
    assert cp.type_k == GGML_TYPE_F32 and cp.type_v == GGML_TYPE_F32
    assert cp.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED

    chat_template = gguf_string(args.model, "tokenizer.chat_template")
    prompts = build_prompts(llm, args.data_dir, chat_template)

    os.makedirs(args.out_dir, exist_ok=True)
    logits_path = os.path.join(args.out_dir, "last_logits.f32")
    row_bytes = n_vocab * 4
    out_prompts = []
    with open(logits_path, "wb") as lf:
        for row, it in enumerate(prompts):
            ids = llm.tokenize(it["text"].encode("utf-8"), add_bos=True, special=True)
            assert len(ids) == it["n_tokens"]
            last, greedy, margins, t5i, t5l, pos = run_prompt(
                llm, ids, n_vocab, it["name"] in POSITION_STATS_PROMPTS)
            lf.write(last.astype("<f4").tobytes())
            rec = {
                "name": it["name"],
                "kind": it["kind"],
                "source": it["source"],
                "text": it["text"],
                "n_prompt_tokens": len(ids),
                "prompt_ids": [int(t) for t in ids],
                "logits_file": "last_logits.f32",
                "logits_row": row,
                "logits_offset": row * row_bytes,
                "last_argmax": int(np.argmax(last)),
                "greedy_ids": greedy,
                "greedy_text": llm.detokenize(greedy, special=True).decode("utf-8", errors="replace"),
                "greedy_top2_margin": margins,
                "greedy_top5_ids": t5i,
                "greedy_top5_logits": t5l,
            }
            if pos is not None:
                rec["position_stats"] = pos
            out_prompts.append(rec)
            print(f"[{row:2d}] {it['name']:<28s} {len(ids):5d} tok  min margin {min(margins):.4f}  "
                  f"{rec['greedy_text'][:50]!r}", flush=True)

    ggml_commit = None
    try:
        import ctypes

        lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
        for fn in ("ggml_version", "ggml_commit"):
            getattr(lib, fn).restype = ctypes.c_char_p
        ggml_commit = {"ggml_version": lib.ggml_version().decode(), "ggml_commit": lib.ggml_commit().decode()}
    except Exception as e:  # pragma: no cover
        ggml_commit = f"unavailable: {e}"

    import gguf

    refs = {
        "tool": "llama-cpp-python",
        "tool_version": llama_cpp.__version__,
        "llama_cpp_commit_or_build_info": {
            "ggml": ggml_commit,
            "system_info": llama_cpp.llama_print_system_info().decode().strip(),
            "gguf_py_version": getattr(gguf, "__version__", None) or _dist_version("gguf"),
            "numpy_version": np.__version__,
            "python": platform.python_version(),
        },
        "script": "scripts/make_oracle_refs.py",
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf dequantized to F32 by scripts/make_f32_gguf.py",
        "model_sha256": sha256_file(args.q4_model),
        "f32_model_sha256": sha256_file(args.model),
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "llama_params": dict(params, use_extra_bufts=False),
        "notes": [
            "tokenization: llm.tokenize(text.encode(), add_bos=True, special=True); add_bos=True means the "
            "model's default, and SmolLM2's GGUF has tokenizer.ggml.add_bos_token=false, so no BOS is added",
            "prefill: each prompt in one llama_decode call (n_batch = n_ubatch = 2048) after llm.reset(); "
            "greedy: one token per llama_decode call",
            "greedy = numpy argmax (lowest id on exact ties) of the float32 logits; no sampler; never stops at EOS",
            "greedy_top2_margin[i] = top1 - top2 logit of the logits that chose greedy_ids[i]; "
            "greedy step 0 uses the last_logits row",
            "position_stats (only some prompts): over the prompt pass, per position i: argmax, max logit, "
            "logsumexp (float64), log p(prompt_ids[i+1]) (float64 from float32 logits)",
            "last_logits.f32: raw little-endian float32, row-major [n_prompts, n_vocab]; a prompt's row "
            "starts at logits_offset bytes",
        ],
        "n_vocab": n_vocab,
        "n_greedy": N_GREEDY,
        "logits_dtype": "float32 little-endian",
        "last_logits_sha256": sha256_file(logits_path),
        "prompts": out_prompts,
    }
    with open(os.path.join(args.out_dir, "oracle_refs.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(refs, cls=CompactEncoder, ensure_ascii=False))
        f.write("\n")
    print(f"wrote {len(out_prompts)} prompts to {args.out_dir}")


def _dist_version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


if __name__ == "__main__":
    main()
