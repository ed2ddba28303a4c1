"""Write a TinyLlama-1.1B-shaped Llama GGUF with random weights, for speed benchmarks (not a test).

The shapes are TinyLlama-1.1B's (dim 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632, vocabulary 32000);
the weights are random (normal, std 0.02), so the text is noise, but every byte a decode step reads is
there. The 2-D weights are written in the chosen type (Q4_0, Q8_0 via gguf-py's quantizer; Q4_K, Q5_K and
Q6_K by quantize_q4_k / quantize_q5_k / quantize_q6_k below, as gguf-py has no K-quant quantizer; Q4_K_M /
Q5_K_M: Q4_K / Q5_K with the head and, as llama.cpp's mixes pick them, attn_v and ffn_down of 10 of the
22 layers in Q6_K; or F32), the
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


def _k_quant(w: np.ndarray, levels: int):
    """float32 [N, K] (K a multiple of 256) -> the fields of Q4_K / Q5_K blocks, rounded to nearest: each
    32-weight sub-block spans its own minimum (at most 0) to maximum in `levels` steps, and the 8 steps
    and minimums of a super-block are 6-bit multiples of its fp16 d and dmin (llama.cpp searches for
    better ones; for speed runs the values do not matter). Returns (d, dmin, the 12 bytes of packed
    scales and mins [N, K/256, 12], codes [N, K/256, 4, 2, 32]: 64-weight chunk c, half h, weight l)."""
    N, K = w.shape
    sub = w.reshape(N, K // 256, 8, 32)
    low = np.minimum(sub.min(-1), 0)
    step = (sub.max(-1) - low) / levels
    d = (step.max(-1) / 63).astype(np.float16)
    dmin = (-low.min(-1) / 63).astype(np.float16)
    df, dminf = d.astype(np.float32)[..., None], dmin.astype(np.float32)[..., None]
    sc = np.clip(np.rint(np.divide(step, df, out=np.zeros_like(step), where=df > 0)), 0, 63).astype(np.uint8)
    m = np.clip(np.rint(np.divide(-low, dminf, out=np.zeros_like(low), where=dminf > 0)), 0, 63).astype(np.uint8)
    scale, offset = (df * sc)[..., None], (dminf * m)[..., None]
    q = np.clip(np.rint(np.divide(sub + offset, scale, out=np.zeros_like(sub), where=scale > 0)), 0, levels)
    packed = np.concatenate([sc[..., :4] | ((sc[..., 4:] >> 4) << 6), m[..., :4] | ((m[..., 4:] >> 4) << 6),
                             (sc[..., 4:] & 0x0F) | ((m[..., 4:] & 0x0F) << 4)], axis=-1)
    return d, dmin, packed, q.astype(np.uint8).reshape(N, K // 256, 4, 2, 32)


def quantize_q4_k(w: np.ndarray) -> np.ndarray:
    """float32 [N, K] (K a multiple of 256) -> Q4_K blocks uint8 [N, K / 256 * 144] (see _k_quant)."""
    N, K = w.shape
    d, dmin, packed, q = _k_quant(w, 15)
    blocks = np.concatenate([d[..., None].view(np.uint8), dmin[..., None].view(np.uint8), packed,
                             (q[..., 0, :] | (q[..., 1, :] << 4)).reshape(N, K // 256, 128)], axis=-1)
    return blocks.reshape(N, -1)


def quantize_q5_k(w: np.ndarray) -> np.ndarray:
    """float32 [N, K] (K a multiple of 256) -> Q5_K blocks uint8 [N, K / 256 * 176] (see _k_quant): the
    low 4 bits of the codes as Q4_K's nibbles, bit 4 of chunk c's half h at bit 2c + h of qh byte l."""
    N, K = w.shape
    d, dmin, packed, q = _k_quant(w, 31)
    low = q & 0x0F
    top = (q >> 4).reshape(N, K // 256, 8, 32)  # bit index 2c + h
    qh = np.bitwise_or.reduce(top << np.arange(8, dtype=np.uint8)[:, None], axis=2)
    blocks = np.concatenate([d[..., None].view(np.uint8), dmin[..., None].view(np.uint8), packed, qh,
                             (low[..., 0, :] | (low[..., 1, :] << 4)).reshape(N, K // 256, 128)], axis=-1)
    return blocks.reshape(N, -1)


def quantize_q6_k(w: np.ndarray) -> np.ndarray:
    """float32 [N, K] (K a multiple of 256) -> Q6_K blocks uint8 [N, K / 256 * 210], rounded to nearest:
    each 16-weight sub-block's step spans its largest magnitude in 31 steps, an int8 multiple of the
    super-block's fp16 d (llama.cpp searches for better ones)."""
    N, K = w.shape
    sub = w.reshape(N, K // 256, 16, 16)
    step = np.abs(sub).max(-1) / 31
    d = (step.max(-1) / 127).astype(np.float16)
    df = d.astype(np.float32)[..., None]
    sc = np.clip(np.rint(np.divide(step, df, out=np.zeros_like(step), where=df > 0)), 0, 127).astype(np.int8)
    scale = (df * sc)[..., None]
    q = np.clip(np.rint(np.divide(sub, scale, out=np.zeros_like(sub), where=scale > 0)) + 32, 0, 63).astype(np.uint8)
    q = q.reshape(N, K // 256, 2, 4, 32)  # halves of 128: weight 32 k + l
    low, top = q & 0x0F, q >> 4  # ql byte 32 (k % 2) + l: low nibble k < 2, high k >= 2; qh byte l: bits 2k
    ql = np.concatenate([low[..., 0, :] | (low[..., 2, :] << 4), low[..., 1, :] | (low[..., 3, :] << 4)], axis=-1)
    qh = top[..., 0, :] | (top[..., 1, :] << 2) | (top[..., 2, :] << 4) | (top[..., 3, :] << 6)
    blocks = np.concatenate([ql.reshape(N, K // 256, 128), qh.reshape(N, K // 256, 64),
                             sc.view(np.uint8), d[..., None].view(np.uint8)], axis=-1)
    return blocks.reshape(N, -1)


def k_m_type(name: str, base: GGMLQuantizationType) -> GGMLQuantizationType:
    """The type llama.cpp's Q4_K_M / Q5_K_M gives a 2-D weight: Q6_K for the head, and for attn_v and
    ffn_down of the first and last eighth of the layers and every third between; `base` (Q4_K / Q5_K)
    elsewhere."""
    n = SHAPE["layers"]
    if name == "output.weight":
        return GGMLQuantizationType.Q6_K
    if name.endswith(("attn_v.weight", "ffn_down.weight")):
        i = int(name.split(".")[1])
        if i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2:
            return GGMLQuantizationType.Q6_K
    return base


MIXES = {"Q4_K_M": (GGMLQuantizationType.Q4_K, 15), "Q5_K_M": (GGMLQuantizationType.Q5_K, 17)}  # base, file type


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--type", choices=("Q4_0", "Q4_K", "Q4_K_M", "Q5_K", "Q5_K_M", "Q6_K", "Q8_0", "F32"),
                    default="Q4_0")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    mixed = args.type in MIXES
    qtype = MIXES[args.type][0] if mixed else GGMLQuantizationType[args.type]
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
    if mixed:
        writer.add_file_type(MIXES[args.type][1])  # LLAMA_FTYPE_MOSTLY_Q4_K_M / _Q5_K_M
    own = {GGMLQuantizationType.Q4_K: quantize_q4_k, GGMLQuantizationType.Q5_K: quantize_q5_k,
           GGMLQuantizationType.Q6_K: quantize_q6_k}
    for name, a in tensors(np.random.default_rng(0)):
        kind = k_m_type(name, qtype) if mixed else qtype
        if a.ndim == 2 and kind in own:
            writer.add_tensor(name, own[kind](a), raw_dtype=kind)
        elif a.ndim == 2 and kind != GGMLQuantizationType.F32:
            writer.add_tensor(name, quants.quantize(a, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, a)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
