"""Interop: the reference `safetensors` package reads what swiftkv's write_safetensors writes.

How: this test runs the C++ gtest SafetensorsInterop.WriteForPython from the test_io binary with
SWIFTKV_IO_INTEROP_OUT set to a temporary directory; that test writes cpp_written.safetensors there
(element i of every tensor is (i % 7) - 3 + 0.5 * (i % 2), exact in every dtype used; I32/I64 take
its floor, I64 times 1e12; U8 element i is 40 * i). Then the file is read back here with the
safetensors package, which validates the header exactly as Hugging Face tooling does.

The binary is $SWIFTKV_BUILD_DIR/tests/io/test_io; without SWIFTKV_BUILD_DIR the usual build
folders (build/io, build/release, build/debug, build/asan) are tried. Skipped when no binary is
found or safetensors/numpy are not installed. The other direction (C++ reading a file the package
wrote) is the gtest SafetensorsPyWritten.MatchesReference.
"""
from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
safetensors = pytest.importorskip("safetensors")
from safetensors.numpy import safe_open  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def find_test_io() -> Path | None:
    env = os.environ.get("SWIFTKV_BUILD_DIR")
    candidates = [Path(env)] if env else [ROOT / "build" / d for d in ("io", "release", "debug", "asan")]
    for build in candidates:
        binary = build / "tests" / "io" / "test_io"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    return None


def value(i: int) -> float:
    return (i % 7) - 3 + 0.5 * (i % 2)


@pytest.fixture(scope="module")
def cpp_written(tmp_path_factory) -> Path:
    binary = find_test_io()
    if binary is None:
        pytest.skip("test_io binary not found (set SWIFTKV_BUILD_DIR)")
    out = tmp_path_factory.mktemp("interop")
    env = dict(os.environ, SWIFTKV_IO_INTEROP_OUT=str(out))
    run = subprocess.run([str(binary), "--gtest_filter=SafetensorsInterop.WriteForPython"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    path = out / "cpp_written.safetensors"
    assert path.is_file(), run.stdout
    return path


def test_reference_library_reads_every_tensor(cpp_written: Path):
    tensors = dict(safetensors.deserialize(cpp_written.read_bytes()))
    assert set(tensors) == {"model.layers.0.weight", "model.layers.0.f16", "model.layers.0.bf16",
                            "ids.i32", "ids.i64", "mask.u8", "empty"}

    def check(name, dtype, shape, np_dtype, expected):
        t = tensors[name]
        assert t["dtype"] == dtype and list(t["shape"]) == shape, (name, t["dtype"], t["shape"])
        got = np.frombuffer(bytes(t["data"]), dtype=np_dtype)
        np.testing.assert_array_equal(got, np.array(expected, dtype=np_dtype), err_msg=name)

    check("model.layers.0.weight", "F32", [4, 6], np.float32, [value(i) for i in range(24)])
    check("model.layers.0.f16", "F16", [2, 5], np.float16, [value(i) for i in range(10)])
    bf16 = tensors["model.layers.0.bf16"]
    assert bf16["dtype"] == "BF16" and list(bf16["shape"]) == [6]
    as_f32 = (np.frombuffer(bytes(bf16["data"]), np.uint16).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(as_f32, np.array([value(i) for i in range(6)], np.float32))
    check("ids.i32", "I32", [5], np.int32, [math.floor(value(i)) for i in range(5)])
    check("ids.i64", "I64", [3], np.int64, [math.floor(value(i)) * 10**12 for i in range(3)])
    check("mask.u8", "U8", [7], np.uint8, [40 * i for i in range(7)])
    check("empty", "F32", [0], np.float32, [])


def test_reference_library_reads_metadata_and_numpy_tensors(cpp_written: Path):
    with safe_open(str(cpp_written), framework="numpy") as f:
        assert f.metadata() == {"format": "pt", "writer": "swiftkv"}
        w = f.get_tensor("model.layers.0.weight")
        assert w.shape == (4, 6) and w.dtype == np.float32
        assert w[3, 5] == value(23)
        assert f.get_tensor("ids.i64").dtype == np.int64


def test_header_is_padded_to_eight_bytes(cpp_written: Path):
    data = cpp_written.read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert n % 8 == 0
    header = data[8:8 + n]
    assert header.startswith(b"{") and header.rstrip(b" ").endswith(b"}")
