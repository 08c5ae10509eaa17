#!/usr/bin/env python3
"""Writes the reference data that tests/io/ checks swiftkv's GGUF and safetensors readers against.

Everything here comes from code we did not write: the `gguf` package (llama.cpp's own Python
reader, writer and quantizers) and the `safetensors` package (the reference implementation).

Outputs, in tests/io/data/ (kept small, well under 1 MB together):
  gguf_reference.json       the real model's metadata and tensor table (names, ggml types, shapes,
                            absolute offsets, byte sizes), and for a few tensors (one of each type it
                            holds) the first 4096 dequantized values and float64 sums over the
                            whole tensor. Skipped when the model file is absent.
  gguf_types.gguf           a tiny GGUF written by gguf.GGUFWriter: tensors of every type swiftkv
                            reads (F32, F16, BF16, Q8_0, Q4_0, Q4_1; quantized by gguf.quants) and
                            metadata of every GGUF value type.
  gguf_types.json           what gguf.quants.dequantize and the writer say that file holds.
  python_written.safetensors + safetensors_reference.json
                            a small file written by safetensors.serialize (F32, F16, BF16, I32, I64,
                            U8, an empty and a scalar tensor, metadata), and its expected contents.

Usage: pip install gguf numpy safetensors
       python3 scripts/make_io_refs.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT
import safetensors

SCRIPT = "scripts/make_io_refs.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def versions() -> dict:
    return {
        "generator": SCRIPT,
        "gguf_version": importlib.metadata.version("gguf"),
        "safetensors_version": importlib.metadata.version("safetensors"),
        "numpy_version": np.__version__,
    }


def field_json(field) -> dict:
    """A metadata field as {type, value} (scalars) or {type, element_type, length, head, tail}."""
    t = field.types[0]
    if t == gguf.GGUFValueType.ARRAY:
        et = field.types[1] if len(field.types) > 1 else None
        n = len(field.data)
        def elem(i):
            part = field.parts[field.data[i]]
            if et == gguf.GGUFValueType.STRING:
                return bytes(part).decode("utf-8")
            v = part.tolist()[0]
            return bool(v) if et == gguf.GGUFValueType.BOOL else v
        return {
            "type": "ARRAY",
            "element_type": et.name if et is not None else None,
            "length": n,
            "head": [elem(i) for i in range(min(n, 8))],
            "tail": [elem(i) for i in range(max(0, n - 2), n)],
        }
    part = field.parts[field.data[0]]
    if t == gguf.GGUFValueType.STRING:
        value = bytes(part).decode("utf-8")
    else:
        value = part.tolist()[0]
        if t == gguf.GGUFValueType.BOOL:
            value = bool(value)
    return {"type": t.name, "value": value}


def dequantized(tensor) -> np.ndarray:
    """Dequantizes a ReaderTensor into float32 in file order (ggml ne[0] fastest)."""
    return np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(-1)


def make_model_reference(model: str, out: str) -> None:
    reader = gguf.GGUFReader(model)
    tensors = []
    for t in reader.tensors:
        ne = [int(x) for x in t.shape]
        tensors.append({
            "name": t.name,
            "ggml_type": int(t.tensor_type),
            "type_name": t.tensor_type.name,
            "ne": ne,
            "shape": ne[::-1],
            "offset": int(t.data_offset),
            "nbytes": int(t.n_bytes),
        })
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue  # header fields the reader exposes as pseudo-keys
        metadata[key] = field_json(field)

    # One tensor of each type the file holds, plus a norm weight (F32).
    wanted = ["blk.0.attn_q.weight", "blk.0.attn_norm.weight", "token_embd.weight", "blk.29.ffn_down.weight"]
    by_name = {t.name: t for t in reader.tensors}
    seen_types = {by_name[n].tensor_type for n in wanted if n in by_name}
    for t in reader.tensors:
        if t.tensor_type not in seen_types:
            wanted.append(t.name)
            seen_types.add(t.tensor_type)
    values = []
    for name in wanted:
        if name not in by_name:
            continue
        x = dequantized(by_name[name])
        values.append({
            "name": name,
            "type_name": by_name[name].tensor_type.name,
            "count": int(x.size),
            "first": [float(v) for v in x[:4096]],
            "sum": float(x.astype(np.float64).sum()),
            "sum_abs": float(np.abs(x.astype(np.float64)).sum()),
        })

    doc = dict(versions())
    doc.update({
        "model_file": os.path.basename(model),
        "file_size": os.path.getsize(model),
        "version": int(reader.fields["GGUF.version"].parts[-1][0]),
        "alignment": int(reader.alignment),
        "data_offset": int(reader.data_offset),
        "metadata": metadata,
        "tensors": tensors,
        "values": values,
    })
    path = os.path.join(out, "gguf_reference.json")
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def make_types_gguf(out: str) -> None:
    rng = np.random.default_rng(20240611)
    path = os.path.join(out, "gguf_types.gguf")
    w = gguf.GGUFWriter(path, "llama")
    meta = {}

    def add(key, value, vtype, sub_type=None):
        w.add_key_value(key, value, vtype, sub_type=sub_type)
        meta[key] = {"type": vtype.name, "value": value}
        if sub_type is not None:
            meta[key]["element_type"] = sub_type.name

    VT = gguf.GGUFValueType
    meta["general.architecture"] = {"type": "STRING", "value": "llama"}
    add("test.u8", 200, VT.UINT8)
    add("test.i8", -100, VT.INT8)
    add("test.u16", 60000, VT.UINT16)
    add("test.i16", -30000, VT.INT16)
    add("test.u32", 4000000000, VT.UINT32)
    add("test.i32", -2000000000, VT.INT32)
    add("test.u64", 18000000000000000000, VT.UINT64)
    add("test.i64", -9000000000000000000, VT.INT64)
    add("test.f32", 0.15625, VT.FLOAT32)
    add("test.f64", 3.141592653589793, VT.FLOAT64)
    add("test.bool_true", True, VT.BOOL)
    add("test.bool_false", False, VT.BOOL)
    add("test.string", "héllo, wörld", VT.STRING)
    add("test.empty_string", "", VT.STRING)
    add("test.array_i32", [1, -2, 3], VT.ARRAY, VT.INT32)
    add("test.array_u8", [0, 255], VT.ARRAY, VT.UINT8)
    add("test.array_f32", [0.5, -1.25], VT.ARRAY, VT.FLOAT32)
    add("test.array_string", ["a", "", "ccc"], VT.ARRAY, VT.STRING)
    add("test.array_bool", [True, False, True], VT.ARRAY, VT.BOOL)

    specs = [  # name, type, numpy shape (HF order; the last axis is ggml's ne[0])
        ("t.f32", QT.F32, (3, 64)),
        ("t.f16", QT.F16, (2, 64)),
        ("t.bf16", QT.BF16, (2, 64)),
        ("t.q8_0", QT.Q8_0, (4, 64)),
        ("t.q4_0", QT.Q4_0, (4, 64)),
        ("t.q4_1", QT.Q4_1, (4, 64)),
        ("t.vector", QT.F32, (5,)),
        ("t.cube", QT.F16, (2, 3, 4)),
    ]
    expected = []
    for name, qt, shape in specs:
        x = (rng.standard_normal(shape) * 0.7).astype(np.float32)
        if name == "t.f16":  # edge values: f16 subnormals, signed zero, the largest finite f16
            x.reshape(-1)[:6] = [6.0e-8, -3.0e-6, -0.0, 65504.0, -65504.0, 1.0e-4]
        if qt == QT.F32:
            data = x
            w.add_tensor(name, data)
        elif qt == QT.F16:
            data = x.astype(np.float16)
            w.add_tensor(name, data)
        else:
            data = gguf.quants.quantize(x, qt)
            w.add_tensor(name, data, raw_dtype=qt)
        deq = np.asarray(gguf.quants.dequantize(data, qt), dtype=np.float32).reshape(-1)
        expected.append({"name": name, "ggml_type": int(qt), "type_name": qt.name, "shape": list(shape),
                         "values": [float(v) for v in deq]})
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # The tensor table as gguf's own reader sees the file we just wrote.
    reader = gguf.GGUFReader(path)
    offsets = {t.name: int(t.data_offset) for t in reader.tensors}
    for e in expected:
        e["offset"] = offsets[e["name"]]
    doc = dict(versions())
    doc.update({"file": "gguf_types.gguf", "alignment": int(reader.alignment),
                "data_offset": int(reader.data_offset), "metadata": meta, "tensors": expected})
    with open(os.path.join(out, "gguf_types.json"), "w") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
    print(f"wrote {path} ({os.path.getsize(path)} bytes) and gguf_types.json")


def make_safetensors(out: str) -> None:
    tensors = {  # name: (safetensors dtype, serialize dtype, numpy dtype, shape, values)
        "weight.f32": ("F32", "float32", np.float32, [2, 3], [1.5, -2.25, 0.0, 3.0e-8, 1e20, -7.0]),
        "weight.f16": ("F16", "float16", np.float16, [4], [0.5, -1.0, 65504.0, 6.0e-8]),
        "weight.bf16": ("BF16", "bfloat16", None, [2, 2], [1.0, -2.5, 3.140625, 1.0e30]),
        "ids.i32": ("I32", "int32", np.int32, [3], [-1, 0, 2147483647]),
        "ids.i64": ("I64", "int64", np.int64, [2], [-9000000000000000000, 42]),
        "mask.u8": ("U8", "uint8", np.uint8, [5], [0, 1, 2, 254, 255]),
        "empty.f32": ("F32", "float32", np.float32, [0, 3], []),
        "scalar.f32": ("F32", "float32", np.float32, [], [0.25]),
    }
    buffers, specs, expected = [], {}, []
    for name, (st_dtype, ser_dtype, np_dtype, shape, values) in tensors.items():
        if np_dtype is None:  # bf16: numpy has no bf16; truncate f32
            raw = (np.array(values, np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
        else:
            raw = np.array(values, np_dtype).tobytes()
        buf = np.frombuffer(raw, np.uint8).copy() if raw else np.zeros(1, np.uint8)
        buffers.append(buf)
        specs[name] = safetensors.TensorSpec(dtype=ser_dtype, shape=shape, data_ptr=buf.ctypes.data,
                                             data_len=len(raw))
        if st_dtype == "BF16":  # what the stored bits mean (1e30 is not exact in bf16)
            exact = [float(v) for v in (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)]
        elif st_dtype in ("F32", "F16"):
            exact = [float(v) for v in np.array(values, np_dtype).astype(np.float64)]
        else:
            exact = [int(v) for v in values]
        expected.append({"name": name, "dtype": st_dtype, "shape": shape, "values": exact})
    metadata = {"format": "pt", "written_by": SCRIPT}
    data = bytes(safetensors.serialize(specs, metadata=metadata))
    path = os.path.join(out, "python_written.safetensors")
    with open(path, "wb") as f:
        f.write(data)
    doc = dict(versions())
    doc.update({"file": "python_written.safetensors", "metadata": metadata, "tensors": expected})
    with open(os.path.join(out, "safetensors_reference.json"), "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {path} ({len(data)} bytes) and safetensors_reference.json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "io", "data"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if os.path.exists(args.model):
        make_model_reference(args.model, args.out)
    else:
        print(f"{args.model} not found: gguf_reference.json not regenerated", file=sys.stderr)
    make_types_gguf(args.out)
    make_safetensors(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
