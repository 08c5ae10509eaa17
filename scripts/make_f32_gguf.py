#!/usr/bin/env python3
"""Write an all-F32 copy of a GGUF model: same metadata, every tensor dequantized.

usage: scripts/make_f32_gguf.py IN.gguf OUT.gguf [--no-verify]

Why: swiftkv dequantizes quantized weights to f32 at load and computes in f32.
llama.cpp run on the quantized file would quantize activations to 8 bits inside
its matmuls (Q4_1 x Q8_1 dot products), so for a tight logits comparison the
oracle (llama-cpp-python) has to run on a GGUF that holds exactly the
dequantized weights in F32.  This script produces that file.

What it guarantees:
  * every KV pair of IN is copied, in order, with its original GGUF value type
    (strings and string arrays are copied as raw bytes, so the tokenizer
    vocabulary, merges and chat template are byte-identical); the one change is
    general.file_type, set to 0 (LLAMA_FTYPE_ALL_F32) to stay consistent;
  * every tensor keeps its name, shape (ne[]) and order, and is stored as F32
    holding gguf.quants.dequantize() of the original data (F32 tensors are
    copied bit for bit);
  * after writing, the file is read back and checked field by field and tensor
    by tensor (unless --no-verify).

Dequantization in gguf-py matches ggml's reference dequantizers (e.g. Q4_1:
w = d * q + m with d, m in f16; Q8_0: w = d * q), which is what swiftkv does too.
"""

import argparse
import sys

import numpy as np

try:
    import gguf
    from gguf import GGUFReader, GGUFWriter, GGUFValueType, GGMLQuantizationType
except ImportError:  # pragma: no cover
    sys.exit("make_f32_gguf.py needs the `gguf` package: pip install gguf")

FILE_TYPE_KEY = "general.file_type"
ALL_F32 = 0  # LLAMA_FTYPE_ALL_F32 (gguf.LlamaFileType.ALL_F32)


def _scalar(field, part_index):
    """Value of one scalar (non-string) element of a field, as a Python number."""
    v = field.parts[part_index]
    assert v.size == 1
    return v[0].item()


def field_value(field):
    """(value, vtype, sub_type) of a reader field, strings kept as raw bytes."""
    vtype = field.types[0]
    if vtype == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]), vtype, None
    if vtype == GGUFValueType.ARRAY:
        sub = field.types[1] if len(field.types) > 1 else None
        if sub == GGUFValueType.ARRAY:
            raise NotImplementedError(f"nested arrays not supported ({field.name})")
        if sub == GGUFValueType.STRING:
            vals = [bytes(field.parts[i]) for i in field.data]
        elif sub == GGUFValueType.BOOL:
            vals = [bool(_scalar(field, i)) for i in field.data]
        else:
            vals = [_scalar(field, i) for i in field.data]
        return vals, vtype, sub
    val = _scalar(field, field.data[0])
    if vtype == GGUFValueType.BOOL:
        val = bool(val)
    return val, vtype, None


def tensor_to_f32(t):
    """Dequantized data of a reader tensor as a C-contiguous float32 array (numpy shape = reversed ne)."""
    qtype = GGMLQuantizationType(int(t.tensor_type))
    if qtype == GGMLQuantizationType.F32:
        arr = np.asarray(t.data, dtype=np.float32)
    else:
        arr = gguf.quants.dequantize(np.asarray(t.data), qtype).astype(np.float32, copy=False)
    np_shape = tuple(int(x) for x in reversed(list(t.shape)))
    arr = np.ascontiguousarray(arr.reshape(np_shape))
    assert arr.size == int(t.n_elements), (t.name, arr.shape, t.n_elements)
    return arr


def convert(src, dst):
    r = GGUFReader(src)
    arch_field = r.fields.get("general.architecture")
    if arch_field is None:
        raise SystemExit("input has no general.architecture")
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode("utf-8")

    w = GGUFWriter(dst, arch)
    w.kv_data[0].clear()  # drop the writer's own general.architecture: copy the source's KV order exactly
    align_field = r.fields.get("general.alignment")
    if align_field is not None:
        w.data_alignment = int(_scalar(align_field, align_field.data[0]))

    n_kv = 0
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue  # header pseudo-fields (version, counts)
        val, vtype, sub = field_value(field)
        if name == FILE_TYPE_KEY:
            val = ALL_F32
        w.add_key_value(name, val, vtype, sub)
        n_kv += 1
    if FILE_TYPE_KEY not in r.fields:
        w.add_key_value(FILE_TYPE_KEY, ALL_F32, GGUFValueType.UINT32)

    types = {}
    for t in r.tensors:
        arr = tensor_to_f32(t)
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        w.add_tensor(t.name, arr, raw_dtype=GGMLQuantizationType.F32)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {dst}: {n_kv} KV pairs, {len(r.tensors)} tensors (source types: {types}) -> all F32")


def verify(src, dst):
    a = GGUFReader(src)
    b = GGUFReader(dst)
    ka = [k for k in a.fields if not k.startswith("GGUF.")]
    kb = [k for k in b.fields if not k.startswith("GGUF.")]
    if ka != kb:
        raise SystemExit(f"verify: KV keys differ:\n{ka}\n{kb}")
    for k in ka:
        va, ta, sa = field_value(a.fields[k])
        vb, tb, sb = field_value(b.fields[k])
        if k == FILE_TYPE_KEY:
            if vb != ALL_F32 or tb != ta:
                raise SystemExit(f"verify: {k} = {vb} ({tb}), expected {ALL_F32}")
            continue
        if (ta, sa) != (tb, sb) or va != vb:
            raise SystemExit(f"verify: KV {k} differs")
    if [t.name for t in a.tensors] != [t.name for t in b.tensors]:
        raise SystemExit("verify: tensor names/order differ")
    for ta, tb in zip(a.tensors, b.tensors):
        if list(ta.shape) != list(tb.shape):
            raise SystemExit(f"verify: shape of {ta.name} differs: {list(ta.shape)} vs {list(tb.shape)}")
        if tb.tensor_type != GGMLQuantizationType.F32:
            raise SystemExit(f"verify: {tb.name} is {tb.tensor_type.name}, not F32")
        ref = tensor_to_f32(ta)
        got = np.asarray(tb.data, dtype=np.float32).reshape(ref.shape)
        if not np.array_equal(ref.view(np.uint32), got.view(np.uint32)):
            raise SystemExit(f"verify: data of {ta.name} differs")
    print(f"verified {dst}: {len(ka)} KV pairs identical (except {FILE_TYPE_KEY}={ALL_F32}), "
          f"{len(a.tensors)} tensors F32, bit-identical to gguf.quants.dequantize of the source")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--no-verify", action="store_true", help="skip reading the output back")
    args = ap.parse_args()
    convert(args.input, args.output)
    if not args.no_verify:
        verify(args.input, args.output)


if __name__ == "__main__":
    main()
