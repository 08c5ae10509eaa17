#!/usr/bin/env python3
"""Make the llama.cpp reference log-likelihoods for swiftkv's multiple-choice scorer
(tests/eval/data/mc_llama_cpp_refs.json).

usage: scripts/make_eval_refs.py [--model F32.gguf] [--q4-model Q4_1.gguf]
                                 [--data-dir /work/shared/data] [--out tests/eval/data/mc_llama_cpp_refs.json]

The oracle is llama.cpp through the PyPI package llama-cpp-python, on the all-F32 GGUF made by
scripts/make_f32_gguf.py (the default model's Q4_1 weights dequantized, so llama.cpp computes in f32
like swiftkv's CPU backend). Everything here is done independently of swiftkv: the prompts are built
in Python with lm-eval's zero-shot templates, tokenized by llama.cpp's tokenizer, and scored from
llama.cpp's logits in float64 numpy.

Items: the first 20 records of ARC-Easy-Dev.jsonl and the first 8 of piqa-valid.jsonl (labels from
piqa-valid-labels.lst). For every choice, as lm-eval's TemplateLM._encode_pair does:
  context      = "Question: {stem or goal}\\nAnswer:"
  continuation = " " + choice text
  (trailing whitespace of the context moves to the continuation; whole = tokenize(context +
  continuation), ctx = tokenize(context), continuation tokens = whole[len(ctx):]; tokenize with the
  model's default BOS handling: llm.tokenize(add_bos=True) adds BOS only if the GGUF asks for it, and
  SmolLM2's does not).
The input (ctx + cont)[:-1] runs in one llama_decode call from an empty cache (llm.reset()), and
loglik = sum over the continuation of log_softmax(logits at the previous position)[token];
is_greedy = every continuation token is the argmax (lowest id on ties) of its position.

Perplexity: wikitext-2-raw.valid.raw tokenized whole as llama-perplexity does (llm.tokenize(text,
add_bos=True, special=False)), then its first PPL_CHUNKS windows of PPL_CTX tokens, each run alone
from an empty cache; positions ctx/2..ctx-2 predict the next token (llama-perplexity's scored half).
Stored: the token count of the whole text, the first windows' tokens, each window's mean NLL and the
overall PPL.
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
N_ARC = 20
N_PIQA = 8
PPL_CTX = 128
PPL_CHUNKS = 4
GGML_TYPE_F32 = 0


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def first_records(path, n):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line))
            if len(out) == n:
                break
    return out


def arc_items(data_dir):
    items = []
    for doc in first_records(os.path.join(data_dir, "ARC-Easy-Dev.jsonl"), N_ARC):
        labels = [c["label"] for c in doc["question"]["choices"]]
        texts = [c["text"] for c in doc["question"]["choices"]]
        items.append({"id": doc["id"], "context": f"Question: {doc['question']['stem']}\nAnswer:",
                      "choices": texts, "gold": labels.index(doc["answerKey"])})
    return items


def piqa_items(data_dir):
    docs = first_records(os.path.join(data_dir, "piqa-valid.jsonl"), N_PIQA)
    with open(os.path.join(data_dir, "piqa-valid-labels.lst"), encoding="utf-8") as f:
        labels = [int(l) for l in f.read().split()]
    return [{"id": d["id"], "context": f"Question: {d['goal']}\nAnswer:", "choices": [d["sol1"], d["sol2"]],
             "gold": labels[i]} for i, d in enumerate(docs)]


def encode_pair(llm, context, continuation):
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = llm.tokenize((context + continuation).encode("utf-8"), add_bos=True, special=True)
    ctx = llm.tokenize(context.encode("utf-8"), add_bos=True, special=True)
    return ctx, whole[len(ctx):]


def score(llm, n_vocab, ctx, cont):
    inp = (ctx + cont)[:-1]
    llm.reset()
    llm.eval(inp)
    logits = np.array(llm.scores[:len(inp)], dtype=np.float64)
    rows = logits[len(inp) - len(cont):]
    m = rows.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(rows - m).sum(axis=1, keepdims=True)))[:, 0]
    lp = np.array([rows[j, t] - lse[j] for j, t in enumerate(cont)])
    greedy = all(int(np.argmax(np.asarray(llm.scores[len(inp) - len(cont) + j], dtype=np.float32))) == t
                 for j, t in enumerate(cont))
    assert logits.shape[1] == n_vocab
    return float(lp.sum()), bool(greedy)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(REPO, "models", "SmolLM2-135M-Instruct.F32.gguf"))
    ap.add_argument("--q4-model", default=os.path.join(REPO, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--data-dir", default="/work/shared/data")
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "eval", "data", "mc_llama_cpp_refs.json"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import llama_cpp
    from llama_cpp import Llama

    if not os.path.exists(args.model):
        sys.exit(f"{args.model} missing: run scripts/make_f32_gguf.py {args.q4_model} {args.model}")
    params = dict(n_ctx=2048, n_batch=2048, n_ubatch=2048, logits_all=True, seed=1234, n_threads=args.threads,
                  n_threads_batch=args.threads, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, flash_attn=False,
                  n_gpu_layers=0, verbose=False)
    # Plain ggml CPU kernels (no weight repacking / AMX "extra buffer types"), as scripts/make_oracle_refs.py.
    default_params = llama_cpp.llama_cpp.llama_model_default_params

    def no_extra_bufts():
        mp = default_params()
        mp.use_extra_bufts = False
        return mp

    llama_cpp.llama_cpp.llama_model_default_params = no_extra_bufts
    try:
        llm = Llama(model_path=args.model, **params)
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = default_params
    n_vocab = llm.n_vocab()

    sets = {}
    for name, items in (("arc_easy", arc_items(args.data_dir)), ("piqa", piqa_items(args.data_dir))):
        out = []
        for it in items:
            rec = {"id": it["id"], "gold": it["gold"], "context": it["context"], "choices": []}
            for text in it["choices"]:
                ctx, cont = encode_pair(llm, it["context"], " " + text)
                ll, greedy = score(llm, n_vocab, ctx, cont)
                rec["choices"].append({"continuation": " " + text, "context_tokens": ctx, "continuation_tokens": cont,
                                       "loglik": ll, "is_greedy": greedy})
            lls = [c["loglik"] for c in rec["choices"]]
            rec["pred"] = int(np.argmax(lls))
            rec["pred_norm"] = int(np.argmax(np.array(lls) / np.array([float(len(t)) for t in it["choices"]])))
            out.append(rec)
            print(f"{name} {it['id']}: {[round(x, 4) for x in lls]} gold {it['gold']}", flush=True)
        sets[name] = out

    with open(os.path.join(args.data_dir, "wikitext-2-raw.valid.raw"), encoding="utf-8") as f:
        text = f.read()
    toks = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    first = PPL_CTX // 2
    chunk_nll = []
    for c in range(PPL_CHUNKS):
        w = toks[c * PPL_CTX:(c + 1) * PPL_CTX]
        llm.reset()
        llm.eval(w)
        rows = np.array(llm.scores[:PPL_CTX], dtype=np.float64)
        m = rows.max(axis=1, keepdims=True)
        lse = (m + np.log(np.exp(rows - m).sum(axis=1, keepdims=True)))[:, 0]
        nll = [lse[p] - rows[p, w[p + 1]] for p in range(first, PPL_CTX - 1)]
        chunk_nll.append(float(np.mean(nll)))
    ppl = {"file": "wikitext-2-raw.valid.raw", "text_tokens": len(toks), "ctx": PPL_CTX, "chunks": PPL_CHUNKS,
           "tokens": toks[:PPL_CTX * PPL_CHUNKS], "chunk_nll": chunk_nll,
           "ppl": float(np.exp(np.mean(chunk_nll)))}
    print(f"wikitext ppl ctx {PPL_CTX} x {PPL_CHUNKS}: {ppl['ppl']:.4f} ({len(toks)} tokens)", flush=True)

    refs = {
        "tool": "llama-cpp-python",
        "tool_version": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "script": "scripts/make_eval_refs.py",
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf dequantized to F32 by scripts/make_f32_gguf.py",
        "model_sha256": sha256_file(args.q4_model),
        "f32_model_sha256": sha256_file(args.model),
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "llama_params": dict(params, use_extra_bufts=False),
        "data": {"arc_easy": "first 20 records of ARC-Easy-Dev.jsonl",
                 "piqa": "first 8 records of piqa-valid.jsonl with piqa-valid-labels.lst",
                 "perplexity": f"first {PPL_CHUNKS} windows of {PPL_CTX} tokens of wikitext-2-raw.valid.raw"},
        "notes": "lm-eval zero-shot templates and TemplateLM._encode_pair tokenization; loglik in float64 from "
                 "llama.cpp's float32 logits; pred/pred_norm as lm-eval (norm = len(choice text) in characters)",
        "sets": sets,
        "perplexity": ppl,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(refs, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
