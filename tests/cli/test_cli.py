"""The swiftkv command line on good and bad input.

Bad input (missing or unreadable model, wrong magic, truncated file, unknown dtype or architecture,
shapes that disagree with the config, prompts longer than the context, out-of-range sampling values)
must give a one-line `error:` message on stderr and exit status 1: never a crash (a signal), never
a traceback-like dump, never a partial output file.
"""
import json
import shutil
import struct
import subprocess

import pytest

from testpaths import MODEL, ROOT, SWIFTKV

pytestmark = pytest.mark.skipif(not SWIFTKV.exists(), reason=f"{SWIFTKV} not built")
needs_model = pytest.mark.skipif(not MODEL.exists(), reason="default model not fetched")


def run(*args, timeout=120, stdin=None):
    return subprocess.run([str(SWIFTKV), *map(str, args)], capture_output=True, timeout=timeout, input=stdin)


def assert_clean_error(proc, *needles):
    assert proc.returncode == 1, (proc.returncode, proc.stderr.decode(errors="replace"))
    err = proc.stderr.decode(errors="replace").strip()
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_missing_model():
    assert_clean_error(run("run", "-m", "/nonexistent/model.gguf", "-p", "hi"), "does not exist")


def test_wrong_magic(tmp_path):
    f = tmp_path / "bad.gguf"
    f.write_bytes(b"NOTAGGUF" + b"\0" * 64)
    assert_clean_error(run("run", "-m", f, "-p", "hi"), str(f))


def test_unreadable_model(tmp_path):
    f = tmp_path / "dir_without_config"
    f.mkdir()
    assert_clean_error(run("inspect", f), "config.json")


@needs_model
def test_truncated_model(tmp_path):
    f = tmp_path / "truncated.gguf"
    with open(MODEL, "rb") as src:
        f.write_bytes(src.read(5_000_000))
    assert_clean_error(run("run", "-m", f, "-p", "hi"), str(f))


def write_gguf(path, arch="llama", tensor_type=0, ne=(8, 4)):
    """A minimal GGUF v3 file: general.architecture plus one tensor."""
    def s(x):
        b = x.encode()
        return struct.pack("<Q", len(b)) + b
    kv = s("general.architecture") + struct.pack("<I", 8) + s(arch)
    info = s("token_embd.weight") + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
    info += struct.pack("<IQ", tensor_type, 0)
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + kv + info
    head += b"\0" * ((-len(head)) % 32)
    path.write_bytes(head + b"\0" * (4 * ne[0] * ne[1]))


def test_unknown_architecture(tmp_path):
    f = tmp_path / "arch.gguf"
    write_gguf(f, arch="mamba")
    assert_clean_error(run("run", "-m", f, "-p", "hi"), "mamba")


def test_unknown_dtype(tmp_path):
    f = tmp_path / "dtype.gguf"
    write_gguf(f, tensor_type=12, ne=(256, 4))  # Q4_K
    assert_clean_error(run("run", "-m", f, "-p", "hi"), "Q4_K")


def test_shapes_disagree_with_config(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    cfg = {"model_type": "llama", "num_hidden_layers": 1, "hidden_size": 8, "num_attention_heads": 2,
           "num_key_value_heads": 2, "intermediate_size": 16, "vocab_size": 4}
    (d / "config.json").write_text(json.dumps(cfg))
    header = json.dumps({"model.embed_tokens.weight": {"dtype": "F32", "shape": [4, 9], "data_offsets": [0, 144]}}).encode()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 144)
    (d / "tokenizer.json").write_text("{}")
    assert_clean_error(run("run", "-m", d, "-p", "hi"), "model.embed_tokens.weight")


@needs_model
@pytest.mark.parametrize("flag,value,needle", [
    ("--temp", "-1", "temperature"),
    ("--top-p", "0", "top_p"),
    ("--top-p", "1.5", "top_p"),
    ("--min-p", "2", "min_p"),
    ("--repeat-penalty", "0", "repetition_penalty"),
    ("--frequency-penalty", "5", "frequency_penalty"),
    ("--max-tokens", "-3", "max-tokens"),
])
def test_out_of_range_sampling(flag, value, needle):
    assert_clean_error(run("run", "-p", "hi", flag, value), needle)


@needs_model
def test_prompt_longer_than_context():
    assert_clean_error(run("run", "-c", "64", "-p", "word " * 200), "context")


@needs_model
def test_invalid_utf8_prompt_is_replaced_not_fatal():
    proc = run("run", "-n", "4", "-p", b"caf\xe9 \xff\xfe ok".decode("latin-1"))
    assert proc.returncode == 0, proc.stderr


@needs_model
def test_run_streams_and_reports_speed():
    proc = run("run", "-n", "8", "--ignore-eos", "-p", "The capital of France is")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().startswith("The capital of France is")
    assert b"tokens/s" in proc.stderr


@needs_model
def test_chat_answers_and_exits_on_eof():
    proc = run("chat", "-n", "16", stdin=b"What is 2+2?\n/exit\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "chat printed no answer"


@needs_model
def test_inspect_prints_config_tokenizer_tensors():
    proc = run("inspect", MODEL)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    for needle in ("num_hidden_layers", "byte-level BPE", "blk.0.attn_q.weight", "Q4_1"):
        assert needle in out


@needs_model
def test_convert_refuses_bad_cut_and_leaves_nothing(tmp_path):
    out = tmp_path / "student"
    assert_clean_error(run("convert", "--model", MODEL, "--swiftkv-layers", "15", "--group", "2", "--out", out),
                       "group")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_cuda_device_without_gpu_is_a_clean_error():
    # CI machines have no GPU: -d cuda must say why, not crash. (On a GPU machine this runs the model.)
    proc = run("run", "-m", MODEL, "-d", "cuda", "-p", "hi", "-n", "2")
    if proc.returncode == 0:
        pytest.skip("a CUDA device is available here")
    assert_clean_error(proc, "CUDA")


def test_unknown_device_is_a_clean_error():
    assert_clean_error(run("run", "-m", MODEL, "-d", "tpu", "-p", "hi"), "unknown device 'tpu'")


@needs_model
def test_score_npy_matches_json(tmp_path):
    np = pytest.importorskip("numpy")
    out_json, out_npy = tmp_path / "s.json", tmp_path / "s.npy"
    proc = run("score", "-m", MODEL, "--tokens", "1,504,3575,282", "--all-positions", "-o", out_json, "--npy", out_npy)
    assert proc.returncode == 0, proc.stderr.decode()
    logits = np.load(out_npy)
    ref = np.array(json.loads(out_json.read_text())["logits"], dtype=np.float32)
    assert logits.shape == (4, 49152) and np.array_equal(logits, ref)


@needs_model
def test_score_greedy_prompts_file(tmp_path):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"prompts": [[504, 3575, 282, 4649, 314], [1, 2, 3]]}))
    out = tmp_path / "g.json"
    proc = run("score", "-m", MODEL, "--prompts-file", prompts, "--greedy", "4", "-o", out)
    assert proc.returncode == 0, proc.stderr.decode()
    res = json.loads(out.read_text())["results"]
    assert len(res) == 2 and all(len(r["greedy_ids"]) == 4 for r in res)
    assert res[0]["greedy_ids"][0] == 7042  # " Paris", as llama.cpp (tests/oracle/data)
    bad = tmp_path / "bad.json"
    bad.write_text("{\"prompts\": 3}")
    assert_clean_error(run("score", "-m", MODEL, "--prompts-file", bad, "--greedy", "4"), "expected")


def test_synthetic_bench_on_cpu(tmp_path):
    out = tmp_path / "b.json"
    proc = run("bench", "--synthetic", "smollm2-135m:2", "-p", "32", "--prefill-batches", "1,2",
               "--decode-batches", "1,3", "--decode-context", "20", "--decode-steps", "6", "-r", "1",
               "--swiftkv-cuts", "50%", "-o", out, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    res = json.loads(out.read_text())
    assert [v["label"] for v in res["variants"]] == ["base", "SwiftKV 50% g1"]
    base, skv = res["variants"]
    assert base["kv_bytes_per_token"] == 2 * 2 * 3 * 64 * 4 and skv["kv_bytes_per_token"] == base["kv_bytes_per_token"]
    tests = {(r["test"], r["batch"]) for r in base["results"]}
    assert tests == {("pp32", 1), ("pp32", 2), ("decode@20", 1), ("decode@20", 3)}
    assert all(r.get("tokens_per_s", 0) > 0 for r in base["results"] + skv["results"])


@needs_model
def test_distill_refuses_a_base_model_and_leaves_nothing(tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("some text " * 200)
    out = tmp_path / "out"
    assert_clean_error(run("distill", "--model", MODEL, "--data", data, "--tokens", "1000", "--out", out),
                       "not a SwiftKV student")
    assert not out.exists()


def test_distill_resume_without_checkpoint(tmp_path):
    assert_clean_error(run("distill", "--out", tmp_path / "nothing", "--resume"), "no checkpoint")


@needs_model
def test_overlay_with_missing_base_is_a_clean_error(tmp_path):
    desc = tmp_path / "swiftkv_tensors.json"
    desc.write_text(json.dumps({"format": "swiftkv-overlay", "version": 1, "base": "missing.gguf",
                                "tensors": "swiftkv_tensors.safetensors", "num_key_value_layers": 15,
                                "key_value_group_size": 1}))
    assert_clean_error(run("run", "-m", desc, "-p", "hi"), "base model", "does not exist")


def test_swiftkv_config_key_and_flag(tmp_path):
    """A llama_swiftkv config's "swiftkv": false runs the checkpoint as its teacher (as Snowflake's modelling
    code does); --swiftkv on|off overrides the key either way. The checkpoint is the independently written
    tests/convert/data/tiny_swiftkv (N = 4, L = 2, g = 2, "swiftkv": true)."""
    tiny = ROOT / "tests" / "convert" / "data" / "tiny_swiftkv"
    off = tmp_path / "off"
    shutil.copytree(tiny, off)
    config = json.loads((off / "config.json").read_text())
    config["swiftkv"] = False
    (off / "config.json").write_text(json.dumps(config))

    def score(model, *flags):
        out = tmp_path / "score.json"
        proc = run("score", "-m", model, "--tokens", "5,17,42,99,3,250", "--all-positions", "-o", out, *flags)
        assert proc.returncode == 0, proc.stderr.decode()
        res = json.loads(out.read_text())
        return res["swiftkv_layers"], res["logits"]

    student, teacher = score(tiny), score(tiny, "--swiftkv", "off")
    assert student[0] == 2 and teacher[0] == 4 and student[1] != teacher[1]
    assert score(off) == teacher
    assert score(off, "--swiftkv", "on") == student
    assert score(off, "--swiftkv", "off") == teacher
    proc = run("inspect", off)
    assert proc.returncode == 0, proc.stderr.decode()
    assert '"swiftkv": false' in proc.stdout.decode() and "runs as its teacher by default" in proc.stdout.decode()
