#!/usr/bin/env python3
"""Independent reference for saap's GGUF reader, from llama.cpp's own `gguf` Python package.

  reference_gguf.py model PATH OUTDIR   the header, metadata, tensor table and the first rows of a
                                        few tensors of each type of a real file, dequantized
  reference_gguf.py synth OUTDIR SEED   writes OUTDIR/synth.gguf with gguf.GGUFWriter: metadata of
                                        every value type and random tensors of every quant type
                                        saap dequantizes, then the same dump of it
  reference_gguf.py tiny OUTDIR         small valid files (one per quant type), the fuzzer's seeds

The dump (read by tests/model/test_gguf.cpp) is OUTDIR/reference.json plus one raw little-endian
float32 file per dumped tensor (OUTDIR/<index>.f32). Strings are hex, so any bytes compare exactly.
"""
import json
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q, GGUFValueType as V

ROWS_PER_TENSOR = 64  # rows dumped from each real-model tensor (enough to cover many blocks)


def field_value(field):
    """The field's value exactly as stored: ints/floats as Python numbers, strings as hex."""
    def one(idx, vtype):
        part = field.parts[idx]
        if vtype == V.STRING:
            return bytes(part).hex()
        return part.tolist()[0]

    main = field.types[0]
    if main == V.ARRAY:
        return [one(i, field.types[-1]) for i in field.data]
    return one(field.data[0], main)


def dequantize_rows(tensor, rows):
    if tensor.tensor_type == Q.Q8_K:  # gguf-py has no Q8_K dequantizer: fp32 d times int8 codes
        blocks = np.asarray(tensor.data).reshape(-1, 292)[: rows * tensor.shape[0] // 256]
        d = blocks[:, :4].copy().view(np.float32)
        qs = blocks[:, 4:260].copy().view(np.int8).astype(np.float32)
        return (d * qs).reshape(-1)
    data = np.asarray(tensor.data)
    data = data.reshape(-1, data.shape[-1])
    flat = gguf.quants.dequantize(data, tensor.tensor_type).reshape(-1, tensor.shape[0])
    return flat[:rows].astype(np.float32).reshape(-1)


def dump(path, outdir, rows_per_tensor, tensors_per_type):
    reader = gguf.GGUFReader(path)
    out = {"metadata": {}, "tensors": [], "dumped": []}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):  # the reader's own header pseudo-fields
            if key == "GGUF.version":
                out["version"] = int(field_value(field))
            continue
        entry = {"type": V(field.types[0]).name, "value": field_value(field)}
        if field.types[0] == V.ARRAY:
            entry["array_type"] = V(field.types[-1]).name
        out["metadata"][key] = entry
    out["alignment"] = int(reader.alignment)
    out["data_offset"] = int(reader.data_offset)
    by_type = {}
    for t in reader.tensors:
        out["tensors"].append({
            "name": t.name, "shape": [int(s) for s in t.shape], "type": int(t.tensor_type),
            "file_offset": int(t.data_offset), "n_bytes": int(t.n_bytes)})
        by_type.setdefault(t.tensor_type, []).append(t)
    out["quant_sizes"] = {str(int(k)): list(v) for k, v in gguf.GGML_QUANT_SIZES.items()}
    for qtype, ts in by_type.items():
        picks = ts if len(ts) <= tensors_per_type else [ts[0], ts[len(ts) // 2], ts[-1]]
        for t in picks:
            try:
                values = dequantize_rows(t, rows_per_tensor)
            except NotImplementedError:
                continue
            index = len(out["dumped"])
            values.astype("<f4").tofile(Path(outdir) / f"{index}.f32")
            out["dumped"].append({"name": t.name, "file": f"{index}.f32", "n": int(values.size)})
    (Path(outdir) / "reference.json").write_text(json.dumps(out))


# Where each block keeps its fp16 (or, for Q8_K, fp32) scales: random bytes there could be
# NaN/Inf, so these are overwritten with finite random scales.
SCALE_FIELDS = {
    Q.Q4_0: [(0, "h")], Q.Q4_1: [(0, "h"), (2, "h")], Q.Q5_0: [(0, "h")],
    Q.Q5_1: [(0, "h"), (2, "h")], Q.Q8_0: [(0, "h")], Q.Q2_K: [(80, "h"), (82, "h")],
    Q.Q3_K: [(108, "h")], Q.Q4_K: [(0, "h"), (2, "h")], Q.Q5_K: [(0, "h"), (2, "h")],
    Q.Q6_K: [(208, "h")], Q.Q8_K: [(0, "f")], Q.IQ4_NL: [(0, "h")],
}


def random_blocks(rng, qtype, shape):
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = int(np.prod(shape)) // block_elems
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for offset, kind in SCALE_FIELDS[qtype]:
        if kind == "h":
            scale = rng.uniform(-2, 2, n_blocks).astype(np.float16)
        else:
            scale = rng.uniform(-2, 2, n_blocks).astype(np.float32)
        blocks[:, offset:offset + scale.itemsize] = scale.view(np.uint8).reshape(n_blocks, -1)
    row_bytes = shape[0] // block_elems * block_bytes
    return blocks.reshape(*reversed(shape[1:]), row_bytes)


def synth(outdir, seed):
    rng = np.random.default_rng(seed)
    path = Path(outdir) / "synth.gguf"
    w = gguf.GGUFWriter(str(path), "synth")
    w.add_custom_alignment(64)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", float(np.float32(rng.normal())))
    w.add_uint64("t.u64", 2**64 - 5)
    w.add_int64("t.i64", -(2**62) - 7)
    w.add_float64("t.f64", float(rng.normal()))
    w.add_bool("t.bool", True)
    w.add_string("t.str", "h\u00e9llo \u4e16\u754c \U0001F600")
    w.add_string("t.empty", "")
    for vt, values in [
        (V.UINT8, [0, 255, 7]), (V.INT8, [-128, 127]), (V.UINT16, [65535, 1]),
        (V.INT16, [-32768, 5]), (V.UINT32, [2**32 - 1]), (V.INT32, [-(2**31), 3, 4]),
        (V.FLOAT32, [float(np.float32(x)) for x in rng.normal(size=5)]),
        (V.UINT64, [2**63 + 1, 0]), (V.INT64, [-(2**63), 2**63 - 1]),
        (V.FLOAT64, list(rng.normal(size=3))), (V.BOOL, [True, False, True]),
        (V.STRING, ["a", "", "\u00fcnicode", "x" * 300]),
    ]:
        w.add_key_value(f"t.arr.{vt.name.lower()}", values, V.ARRAY, sub_type=vt)

    w.add_tensor("f32", rng.normal(size=(3, 64)).astype(np.float32))
    # Every finite half bit pattern, so the fp16 conversion is checked exhaustively.
    halves = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    halves = halves[np.isfinite(halves.view(np.float16))].view(np.float16)
    w.add_tensor("f16", halves.reshape(-1, 64))
    bf16 = rng.normal(size=(4, 32)).astype(np.float32)
    w.add_tensor("bf16", gguf.quants.quantize(bf16, Q.BF16), raw_dtype=Q.BF16)
    shapes = {Q.Q8_0: [64, 3, 2], Q.Q4_K: [512, 2, 1, 2]}
    for qtype in SCALE_FIELDS:
        elems = gguf.GGML_QUANT_SIZES[qtype][0]
        shape = shapes.get(qtype, [2 * elems, 3])
        w.add_tensor(qtype.name.lower(), random_blocks(rng, qtype, shape), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    dump(str(path), outdir, rows_per_tensor=1 << 30, tensors_per_type=1 << 30)


def tiny(outdir):
    rng = np.random.default_rng(0)
    for qtype in [Q.F32, Q.F16, Q.BF16, *SCALE_FIELDS]:
        w = gguf.GGUFWriter(str(Path(outdir) / f"tiny_{qtype.name.lower()}.gguf"), "tiny")
        w.add_uint32("t.u32", 7)
        w.add_float32("t.f32", 0.5)
        w.add_bool("t.bool", True)
        w.add_string("t.str", "x")
        w.add_key_value("t.arr", [1, 2], V.ARRAY, sub_type=V.INT16)
        w.add_key_value("t.strs", ["a", "b"], V.ARRAY, sub_type=V.STRING)
        if qtype in SCALE_FIELDS:
            shape = [gguf.GGML_QUANT_SIZES[qtype][0], 1]
            w.add_tensor("w", random_blocks(rng, qtype, shape), raw_dtype=qtype)
        elif qtype == Q.BF16:
            w.add_tensor("w", gguf.quants.quantize(rng.normal(size=(2, 4)).astype(np.float32), Q.BF16),
                         raw_dtype=Q.BF16)
        else:
            w.add_tensor("w", rng.normal(size=(2, 4)).astype(np.float32 if qtype == Q.F32 else np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "model":
        dump(sys.argv[2], sys.argv[3], ROWS_PER_TENSOR, tensors_per_type=3)
    elif len(sys.argv) == 4 and sys.argv[1] == "synth":
        synth(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "tiny":
        tiny(sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
