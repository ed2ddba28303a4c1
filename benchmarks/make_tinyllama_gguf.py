"""Write a TinyLlama-1.1B-shaped Llama GGUF with random weights, for speed benchmarks (not a test).

The shapes are TinyLlama-1.1B's (dim 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632, vocabulary 32000);
the weights are random (normal, std 0.02), so the text is noise, but every byte a decode step reads is
there. The 2-D weights are written in the chosen type (Q4_0, Q8_0 via gguf-py's quantizer, or F32), the
norms in F32; a small vocabulary of byte tokens makes the file loadable with its tokenizer.

    python benchmarks/make_tinyllama_gguf.py --type Q4_0 --out /tmp/tinyllama-q4_0.gguf
    lmforge bench --model /tmp/tinyllama-q4_0.gguf --random-prompt -p 32 -n 64 --compare llamacpp
"""
from __future__ import annotations

import argparse

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, quants

SHAPE = dict(dim=2048, layers=22, heads=32, kv_heads=4, hidden=5632, vocab=32000, context=2048)


def tensors(rng: np.random.Generator):
    d, hd = SHAPE["dim"], SHAPE["dim"] // SHAPE["heads"]
    kv = SHAPE["kv_heads"] * hd

    def w(n, k):
        return (rng.standard_normal((n, k), dtype=np.float32) * 0.02)

    yield "token_embd.weight", w(SHAPE["vocab"], d)
    for i in range(SHAPE["layers"]):
        yield f"blk.{i}.attn_norm.weight", np.ones(d, np.float32)
        yield f"blk.{i}.attn_q.weight", w(d, d)
        yield f"blk.{i}.attn_k.weight", w(kv, d)
        yield f"blk.{i}.attn_v.weight", w(kv, d)
        yield f"blk.{i}.attn_output.weight", w(d, d)
        yield f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32)
        yield f"blk.{i}.ffn_gate.weight", w(SHAPE["hidden"], d)
        yield f"blk.{i}.ffn_up.weight", w(SHAPE["hidden"], d)
        yield f"blk.{i}.ffn_down.weight", w(d, SHAPE["hidden"])
    yield "output_norm.weight", np.ones(d, np.float32)
    yield "output.weight", w(SHAPE["vocab"], d)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--type", choices=("Q4_0", "Q8_0", "F32"), default="Q4_0")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    qtype = GGMLQuantizationType[args.type]
    writer = GGUFWriter(args.out, "llama")
    writer.add_block_count(SHAPE["layers"])
    writer.add_context_length(SHAPE["context"])
    writer.add_embedding_length(SHAPE["dim"])
    writer.add_feed_forward_length(SHAPE["hidden"])
    writer.add_head_count(SHAPE["heads"])
    writer.add_head_count_kv(SHAPE["kv_heads"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(SHAPE["vocab"])
    writer.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"t{i}" for i in range(SHAPE["vocab"] - len(tokens))]
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for name, a in tensors(np.random.default_rng(0)):
        if a.ndim == 2 and qtype != GGMLQuantizationType.F32:
            writer.add_tensor(name, quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, a)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
