"""Interop: the reference `gguf` package (llama.cpp's gguf-py) reads what swiftkv writes as GGUF.

1. GgufWriter: the gtest GgufWriterInterop.WriteForPython (test_convert binary) writes a file with
   every metadata value type and the tensor dtypes F32, F16, BF16, Q8_0 (the values are spelled out
   in tests/convert/test_convert_gguf.cpp, write_interop_file, and again below); gguf.GGUFReader
   must read each value with its type, each tensor with its shape, and our Q8_0 bytes must equal
   gguf.quants.quantize of the same f32 data.
2. `swiftkv convert --format gguf` on the default model (50% g=1 and 15 g=3): architecture
   llama_swiftkv, the swiftkv keys, the llama keys under the llama_swiftkv prefix, the tensor names
   and shapes llama.cpp would use, the teacher tensors equal to the source's dequantized by gguf-py
   (in llama.cpp's row order, so the Q/K permutation is checked against llama.cpp's own layout), the
   SwiftKV tensors at their distillation init, and the tokenizer metadata copied.
3. At L = N the file is a plain "llama" GGUF: llama.cpp (llama-cpp-python) loads it and predicts
   like the source model.

Binaries come from $SWIFTKV_BUILD_DIR (default build/release): tests/convert/test_convert and
tools/swiftkv. Skipped when they, the default model or the packages are absent.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_dir() -> Path:
    build = Path(os.environ.get("SWIFTKV_BUILD_DIR", ROOT / "build" / "release"))
    return build if build.is_absolute() else ROOT / build


def binary(rel: str) -> Path:
    path = build_dir() / rel
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.skip(f"{path} not found (set SWIFTKV_BUILD_DIR)")
    return path


def field_value(reader: GGUFReader, key: str):
    field = reader.fields[key]
    return field.contents()


def field_types(reader: GGUFReader, key: str) -> list[GGUFValueType]:
    return list(reader.fields[key].types)


# --- 1. The writer's interop file ---------------------------------------------------------------


@pytest.fixture(scope="module")
def writer_file(tmp_path_factory) -> Path:
    exe = binary("tests/convert/test_convert")
    out = tmp_path_factory.mktemp("gguf_interop")
    env = dict(os.environ, SWIFTKV_GGUF_INTEROP_OUT=str(out))
    run = subprocess.run([str(exe), "--gtest_filter=GgufWriterInterop.WriteForPython"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    path = out / "cpp_written.gguf"
    assert path.is_file(), run.stdout
    return path


T = GGUFValueType
SCALARS = {
    "test.u8": (T.UINT8, 200),
    "test.i8": (T.INT8, -100),
    "test.u16": (T.UINT16, 60000),
    "test.i16": (T.INT16, -30000),
    "test.u32": (T.UINT32, 4000000000),
    "test.i32": (T.INT32, -2000000000),
    "test.u64": (T.UINT64, 18000000000000000000),
    "test.i64": (T.INT64, -9000000000000000000),
    "test.f32": (T.FLOAT32, 3.25),
    "test.f64": (T.FLOAT64, -1.0e300),
    "test.bool": (T.BOOL, True),
    "test.string": (T.STRING, "héllo ✓ wörld"),
    "test.empty_string": (T.STRING, ""),
    "general.architecture": (T.STRING, "test"),
    "general.name": (T.STRING, "gguf writer interop"),
    "general.alignment": (T.UINT32, 32),
}
ARRAYS = {
    "test.array.u8": (T.UINT8, [0, 1, 255]),
    "test.array.i8": (T.INT8, [-128, 0, 127]),
    "test.array.u16": (T.UINT16, [0, 65535]),
    "test.array.i16": (T.INT16, [-32768, 32767]),
    "test.array.u32": (T.UINT32, [0, 4294967295]),
    "test.array.i32": (T.INT32, [-2147483648, 2147483647]),
    "test.array.u64": (T.UINT64, [0, 1 << 63]),
    "test.array.i64": (T.INT64, [-(1 << 63), (1 << 63) - 1]),
    "test.array.f32": (T.FLOAT32, [0.5, -1.5, float(np.float32(1e30))]),
    "test.array.f64": (T.FLOAT64, [0.1, -2.5e-300]),
    "test.array.bool": (T.BOOL, [True, False, True]),
    "test.array.string": (T.STRING, ["a", "", "ünïcode", "with space"]),
    "test.array.empty": (T.INT32, []),
}


def interop_values(n: int, variant: int) -> np.ndarray:
    i = np.arange(n)
    if variant == 0:
        return (i.astype(np.float32) * np.float32(0.25) - np.float32(1.0)).astype(np.float32)
    return ((i % 7) - 3 + 0.5 * (i % 2)).astype(np.float32)


def test_writer_metadata_reads_in_gguf_package(writer_file: Path):
    reader = GGUFReader(writer_file)
    assert reader.alignment == 32
    assert int(field_value(reader, "GGUF.version")) == 3
    assert set(SCALARS) | set(ARRAYS) <= set(reader.fields)
    for key, (vtype, expected) in SCALARS.items():
        assert field_types(reader, key) == [vtype], key
        assert field_value(reader, key) == expected, key
    for key, (etype, expected) in ARRAYS.items():
        assert field_types(reader, key)[0] == T.ARRAY, key
        if expected:
            assert field_types(reader, key)[1] == etype, key
        assert list(field_value(reader, key)) == expected, key
    # Nothing else but the GGUF header pseudo-fields.
    extra = {k for k in reader.fields if not k.startswith("GGUF.")} - set(SCALARS) - set(ARRAYS)
    assert not extra


def test_writer_tensors_read_in_gguf_package(writer_file: Path):
    reader = GGUFReader(writer_file)
    tensors = {t.name: t for t in reader.tensors}
    assert [t.name for t in reader.tensors] == ["t.f32", "t.f16", "t.bf16", "t.q8_0", "t.q8_0.source", "t.3d"]
    expected = {  # ggml order (ne[0] fastest), as gguf-py reports shapes
        "t.f32": (GGMLQuantizationType.F32, [5, 3]),
        "t.f16": (GGMLQuantizationType.F16, [4, 2]),
        "t.bf16": (GGMLQuantizationType.BF16, [8]),
        "t.q8_0": (GGMLQuantizationType.Q8_0, [64, 2]),
        "t.q8_0.source": (GGMLQuantizationType.F32, [64, 2]),
        "t.3d": (GGMLQuantizationType.F32, [4, 3, 2]),
    }
    for name, (qtype, shape) in expected.items():
        t = tensors[name]
        assert t.tensor_type == qtype, name
        assert list(map(int, t.shape)) == shape, name
        assert t.data_offset % 32 == 0, name

    def values(name: str) -> np.ndarray:
        t = tensors[name]
        return dequantize(np.asarray(t.data), t.tensor_type).reshape(-1)

    np.testing.assert_array_equal(values("t.f32"), interop_values(15, 0))
    np.testing.assert_array_equal(values("t.f16"), interop_values(8, 1))
    np.testing.assert_array_equal(values("t.bf16"), interop_values(8, 1))
    np.testing.assert_array_equal(values("t.3d"), interop_values(24, 0))
    np.testing.assert_array_equal(np.asarray(tensors["t.3d"].data).shape, (2, 3, 4))
    # Q8_0: our bytes are gguf-py's quantization of the same f32 data (bit-exact with ggml's).
    source = np.asarray(tensors["t.q8_0.source"].data, dtype=np.float32).reshape(2, 64)
    ours = np.asarray(tensors["t.q8_0"].data).reshape(-1)
    reference = quantize(source, GGMLQuantizationType.Q8_0).reshape(-1)
    np.testing.assert_array_equal(ours, reference)
    np.testing.assert_allclose(values("t.q8_0"), source.reshape(-1), atol=3.0 / 127)


# --- 2. swiftkv convert --format gguf -------------------------------------------------------------


def convert(tmp: Path, name: str, *args: str) -> Path:
    if not MODEL.is_file():
        pytest.skip(f"default model not found at {MODEL}")
    exe = binary("tools/swiftkv")
    out = tmp / name
    run = subprocess.run([str(exe), "convert", "--model", str(MODEL), "--format", "gguf", "--out", str(out), *args],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[int, Path]:
    tmp = tmp_path_factory.mktemp("gguf_convert")
    return {
        1: convert(tmp, "half.gguf", "--swiftkv-layers", "50%"),
        3: convert(tmp, "g3.gguf", "--swiftkv-layers", "15", "--group", "3"),
    }


N, L, H, Q, KV, F, V = 30, 15, 576, 576, 192, 1536, 49152


def expected_tensors(g: int) -> dict[str, list[int]]:
    """llama.cpp names and ggml shapes of the student's tensors (tied embeddings: no output.weight)."""
    t = {"token_embd.weight": [H, V], "output_norm.weight": [H], "swiftkv_norm.weight": [H]}
    for j in range(N):
        b = f"blk.{j}."
        t |= {b + "attn_norm.weight": [H], b + "attn_q.weight": [H, Q], b + "attn_k.weight": [H, KV],
              b + "attn_v.weight": [H, KV], b + "attn_output.weight": [Q, H], b + "ffn_norm.weight": [H],
              b + "ffn_gate.weight": [H, F], b + "ffn_up.weight": [H, F], b + "ffn_down.weight": [F, H]}
        if j >= L:
            t[b + "attn_q_swiftkv.weight"] = [H, Q]
        if j >= L and (j - L) % g == 0:
            t[b + "attn_k_swiftkv.weight"] = [H, KV]
            t[b + "attn_v_swiftkv.weight"] = [H, KV]
    return t


@pytest.mark.parametrize("g", [1, 3])
def test_converted_metadata(converted, g):
    reader = GGUFReader(converted[g])
    source = GGUFReader(MODEL)
    assert field_value(reader, "general.architecture") == "llama_swiftkv"
    assert reader.alignment == 32
    assert field_types(reader, "llama_swiftkv.swiftkv.num_key_value_layers") == [T.UINT32]
    assert field_value(reader, "llama_swiftkv.swiftkv.num_key_value_layers") == L
    assert field_value(reader, "llama_swiftkv.swiftkv.key_value_group_size") == g
    # The llama hyper-parameters under the new prefix, with llama.cpp's types.
    for key in ["block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count",
                "attention.head_count_kv", "rope.freq_base", "attention.layer_norm_rms_epsilon", "vocab_size",
                "rope.dimension_count"]:
        if f"llama.{key}" in source.fields:
            assert field_types(reader, f"llama_swiftkv.{key}") == field_types(source, f"llama.{key}"), key
            assert field_value(reader, f"llama_swiftkv.{key}") == field_value(source, f"llama.{key}"), key
    assert field_value(reader, "llama_swiftkv.attention.key_length") == 64
    assert not [k for k in reader.fields if k.startswith("llama.")]
    # The tokenizer, copied.
    for key in [k for k in source.fields if k.startswith("tokenizer.")]:
        assert field_types(reader, key) == field_types(source, key), key
        a, b = field_value(reader, key), field_value(source, key)
        assert (list(a) == list(b)) if isinstance(a, (list, np.ndarray)) else a == b, key


@pytest.mark.parametrize("g", [1, 3])
def test_converted_tensors(converted, g):
    reader = GGUFReader(converted[g])
    tensors = {t.name: t for t in reader.tensors}
    expected = expected_tensors(g)
    assert set(tensors) == set(expected)
    for name, shape in expected.items():
        assert list(map(int, tensors[name].shape)) == shape, name
        assert tensors[name].tensor_type == GGMLQuantizationType.F32, name
        assert tensors[name].data_offset % 32 == 0, name

    source = {t.name: t for t in GGUFReader(MODEL).tensors}

    def src(name: str) -> np.ndarray:
        t = source[name]
        return dequantize(np.asarray(t.data), t.tensor_type).reshape(list(reversed(list(map(int, t.shape)))))

    def ours(name: str) -> np.ndarray:
        return np.asarray(tensors[name].data, dtype=np.float32)

    # The teacher: the source tensors exactly, in llama.cpp's layout (Q/K rows in its RoPE order).
    for name in source:
        if name in tensors:
            np.testing.assert_array_equal(ours(name), src(name), err_msg=name)
    # The SwiftKV tensors at their distillation init. llama.cpp's Q/K row permutation is the same
    # for every member of a group, so the mean commutes with it.
    np.testing.assert_array_equal(ours("swiftkv_norm.weight"), src(f"blk.{L}.attn_norm.weight"))
    for j in range(L, N):
        np.testing.assert_array_equal(ours(f"blk.{j}.attn_q_swiftkv.weight"), src(f"blk.{j}.attn_q.weight"))
    for leader in range(L, N, g):
        for which in "kv":
            members = [src(f"blk.{j}.attn_{which}.weight") for j in range(leader, leader + g)]
            mean = members[0].copy()
            for m in members[1:]:
                mean += m
            mean *= np.float32(1.0) / np.float32(g)
            np.testing.assert_allclose(ours(f"blk.{leader}.attn_{which}_swiftkv.weight"), mean, rtol=0, atol=1e-6)


# --- 3. L = N: a plain llama GGUF that llama.cpp runs ---------------------------------------------


def test_full_cut_runs_in_llama_cpp(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    out = convert(tmp_path, "base.gguf", "--swiftkv-layers", "30")
    reader = GGUFReader(out)
    assert field_value(reader, "general.architecture") == "llama"
    assert "llama.swiftkv.num_key_value_layers" not in reader.fields

    # Plain ggml CPU kernels, no "extra buffer types" (ggml's AMX kernels die with SIGILL on some
    # VMs), as scripts/make_oracle_refs.py runs llama.cpp.
    orig_default_params = llama_cpp.llama_cpp.llama_model_default_params

    def model_params_no_extra_bufts():
        params = orig_default_params()
        params.use_extra_bufts = False
        return params

    def last_logits(path: Path, prompts: list[str]) -> list[np.ndarray]:
        llama_cpp.llama_cpp.llama_model_default_params = model_params_no_extra_bufts
        try:
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, n_threads_batch=2, logits_all=True,
                                  verbose=False)
        finally:
            llama_cpp.llama_cpp.llama_model_default_params = orig_default_params
        result = []
        for p in prompts:
            llm.reset()
            llm.eval(llm.tokenize(p.encode(), add_bos=False, special=True))
            result.append(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))
        llm.close()
        return result

    prompts = ["<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
               "def fibonacci(n):\n    return", "The quick brown fox jumps over the"]
    ours, base = last_logits(out, prompts), last_logits(MODEL, prompts)
    for a, b in zip(ours, base):
        # The source runs Q4_1 matmuls on Q8_1-quantized activations, ours f32 on the same weights:
        # close, not equal. A wrong Q/K row order or metadata would give unrelated logits.
        assert int(np.argmax(a)) == int(np.argmax(b))
        assert np.corrcoef(a, b)[0, 1] > 0.99
