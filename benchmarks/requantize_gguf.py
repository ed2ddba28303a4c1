"""Copy a GGUF file with its quantized weights re-quantized to another type (not a test).

Every Q4_0 / Q4_1 / Q8_0 tensor is dequantized and quantized again to --type with gguf-py's own
quantizer (Q4_K: make_tinyllama_gguf.quantize_q4_k, where the row length is a multiple of 256, else
Q5_0 as llama.cpp falls back); F32 tensors (norms) and all metadata (tokenizer, chat template) are
copied as they are. The speed runs use it to give the default model an int8 (Q8_0) twin that both
lmforge and llama.cpp run natively:

    python benchmarks/requantize_gguf.py --type Q8_0 --out /tmp/smollm2-135m-q8_0.gguf
    lmforge bench --model /tmp/smollm2-135m-q8_0.gguf -p 32 -n 64 --compare llamacpp
"""
from __future__ import annotations

import argparse

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, quants
from make_tinyllama_gguf import quantize_q4_k

REQUANTIZE = {GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0}
SKIP_KEYS = ("GGUF.", "general.architecture")  # the writer adds these itself


def copy_metadata(reader: GGUFReader, writer: GGUFWriter) -> None:
    for name, field in reader.fields.items():
        if name.startswith(SKIP_KEYS):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == GGUFValueType.ARRAY and len(field.types) > 1 else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)


def main():
    from lmforge.loader import resolve

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="the GGUF to copy (default: the default model's file)")
    ap.add_argument("--type", choices=("Q8_0", "Q5_0", "Q4_0", "Q4_1", "Q4_K"), default="Q8_0")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    reader = GGUFReader(resolve(args.model))
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(args.out, arch)
    copy_metadata(reader, writer)
    target = GGMLQuantizationType[args.type]
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))  # numpy order: rows first
        if t.tensor_type in REQUANTIZE:
            w = quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
            kind = target
            if target == GGMLQuantizationType.Q4_K and shape[-1] % 256:
                kind = GGMLQuantizationType.Q5_0
            data = quantize_q4_k(w) if kind == GGMLQuantizationType.Q4_K else quants.quantize(w, kind)
            writer.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=kind)
        else:
            writer.add_tensor(t.name, np.asarray(t.data).reshape(shape), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {args.out} ({target.name})")


if __name__ == "__main__":
    main()
