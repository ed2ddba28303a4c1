"""GPTQ (AutoGPTQ / GPTQModel) and AWQ (AutoAWQ GEMM) checkpoints, built here from the documented
layouts on a tiny random Llama, load into fused int4 layers that equal the dequantized reference."""
import json

import pytest
import torch
from safetensors.torch import save_file

from lmforge import LLM
from lmforge.errors import LmforgeError
from lmforge.quant.linear import Int4Linear, decoder_linears

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
          "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "vocab_size": 96, "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "hidden_act": "silu",
          "tie_word_embeddings": False}
PROJ = {"self_attn.q_proj": (64, 64), "self_attn.k_proj": (32, 64), "self_attn.v_proj": (32, 64),
        "self_attn.o_proj": (64, 64), "mlp.gate_proj": (128, 64), "mlp.up_proj": (128, 64),
        "mlp.down_proj": (64, 128)}  # (out N, in K)
SHARED_INPUT = {"self_attn.q_proj": "qkv", "self_attn.k_proj": "qkv", "self_attn.v_proj": "qkv",
                "mlp.gate_proj": "gate_up", "mlp.up_proj": "gate_up"}
TOKENS = torch.tensor([[1, 5, 9, 33, 2, 70, 11, 8, 41, 95]])
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


# ------------------------------------------------------------------ packing, as the tools document it

def pack_rows(values):
    """[R, C] ints 0..15 -> int32 [R/8, C]: row 8i+j of a column in bits 4j (GPTQ qweight)."""
    v = values.to(torch.int64).reshape(-1, 8, values.shape[1])
    word = sum(v[:, j] << (4 * j) for j in range(8))
    return _int32(word)


def pack_cols(values, order=range(8)):
    """[R, C] ints 0..15 -> int32 [R, C/8]: nibble i holds column 8c + order[i] (GPTQ qzeros, AWQ)."""
    v = values.to(torch.int64).reshape(values.shape[0], -1, 8)
    word = sum(v[:, :, o] << (4 * i) for i, o in enumerate(order))
    return _int32(word)


def _int32(word):
    return torch.where(word >= 2 ** 31, word - 2 ** 32, word).to(torch.int32)


def random_layer(N, K, gs, g_idx, gen, sym, min_zero=0):
    """(codes [K, N], zeros [G, N], scales fp16 [G, N], dequantized weight [N, K])."""
    G = K // gs
    q = torch.randint(0, 16, (K, N), generator=gen)
    z = torch.full((G, N), 8) if sym else torch.randint(min_zero, 16, (G, N), generator=gen)
    s = (torch.rand(G, N, generator=gen) * 0.02 + 0.005).half()
    w = (q - z[g_idx]).float() * s.float()[g_idx]  # [K, N]
    return q, z, s, w.t().contiguous()


def write_model(folder, tensors, quantization_config=None):
    folder.mkdir()
    cfg = dict(CONFIG, **({"quantization_config": quantization_config} if quantization_config else {}))
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def build_pair(tmp_path, method, gs=32, act_order=False, sym=False, v2=False, same_order=True):
    """(quantized checkpoint folder, the same model with dequantized fp32 weights)."""
    gen = torch.Generator().manual_seed(0)
    plain = {"model.embed_tokens.weight": torch.randn(96, 64, generator=gen),
             "model.norm.weight": torch.rand(64, generator=gen) + 0.5,
             "lm_head.weight": torch.randn(96, 64, generator=gen) * 0.1}
    quant, dense = {}, {}
    for layer in range(2):
        p = f"model.layers.{layer}."
        plain[p + "input_layernorm.weight"] = torch.rand(64, generator=gen) + 0.5
        plain[p + "post_attention_layernorm.weight"] = torch.rand(64, generator=gen) + 0.5
        orders = {}
        for proj, (N, K) in PROJ.items():
            g_idx = torch.arange(K) // gs
            if act_order:  # GPTQ's desc_act: row k belongs to group (rank of k in the order) // gs
                key = SHARED_INPUT.get(proj, proj) if same_order else proj
                if key not in orders:
                    orders[key] = torch.randperm(K, generator=gen)
                g_idx = torch.argsort(orders[key]) // gs
            # the v1 format stores zero - 1 in a nibble, so a v1 tool never writes a zero point of 0
            q, z, s, w = random_layer(N, K, gs, g_idx, gen, sym, min_zero=0 if v2 or method == "awq" else 1)
            name = p + proj
            dense[name + ".weight"] = w
            if method == "gptq":
                quant[name + ".qweight"] = pack_rows(q)
                quant[name + ".qzeros"] = pack_cols(z if v2 else z - 1)  # v1 stores zero - 1 (wrapping)
                quant[name + ".g_idx"] = g_idx.to(torch.int32)
            else:
                quant[name + ".qweight"] = pack_cols(q, AWQ_ORDER)
                quant[name + ".qzeros"] = pack_cols(z, AWQ_ORDER)
            quant[name + ".scales"] = s
    qc = ({"quant_method": "gptq", "bits": 4, "group_size": gs, "desc_act": act_order, "sym": sym,
           "checkpoint_format": "gptq_v2" if v2 else "gptq"} if method == "gptq" else
          {"quant_method": "awq", "bits": 4, "group_size": gs, "zero_point": not sym, "version": "gemm"})
    q_folder = write_model(tmp_path / f"{method}-q", {**plain, **quant}, qc)
    ref_folder = write_model(tmp_path / f"{method}-ref", {**plain, **dense})
    return q_folder, ref_folder


@pytest.mark.parametrize("kw", [dict(), dict(act_order=True), dict(sym=True), dict(v2=True, act_order=True),
                                dict(gs=64, act_order=True)])
def test_gptq_checkpoint_equals_dequantized_reference(tmp_path, kw):
    q_folder, ref_folder = build_pair(tmp_path, "gptq", **kw)
    llm, ref = LLM(q_folder, act_bits=32), LLM(ref_folder)  # fp32 activations: exact
    layers = dict(decoder_linears(llm.model))
    assert all(isinstance(m, Int4Linear) for m in layers.values())
    assert layers["layers.0.attn.wqkv"].out_features == 128 and layers["layers.0.mlp.w_in"].out_features == 256
    assert (layers["layers.0.attn.wqkv"].perm is not None) == (kw.get("act_order", False) and kw.get("gs", 32) < 64)
    assert (layers["layers.0.mlp.w_out"].perm is not None) == kw.get("act_order", False)  # 128 inputs
    ref_layers = dict(decoder_linears(ref.model))
    for name, m in layers.items():  # the fused int4 weight is exactly the reference, columns permuted
        w = m.dequantize()
        expected = ref_layers[name].weight if m.perm is None else ref_layers[name].weight[:, m.perm]
        assert torch.equal(w, expected), name
    torch.testing.assert_close(llm.score(TOKENS), ref.score(TOKENS), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(sym=True), dict(gs=64)])
def test_awq_checkpoint_equals_dequantized_reference(tmp_path, kw):
    q_folder, ref_folder = build_pair(tmp_path, "awq", **kw)
    llm, ref = LLM(q_folder, act_bits=32), LLM(ref_folder)  # fp32 activations: exact
    ref_layers = dict(decoder_linears(ref.model))
    for name, m in decoder_linears(llm.model):
        assert isinstance(m, Int4Linear) and m.perm is None
        assert torch.equal(m.dequantize(), ref_layers[name].weight), name
    torch.testing.assert_close(llm.score(TOKENS), ref.score(TOKENS), rtol=1e-5, atol=1e-5)


def test_imported_checkpoint_saves_as_lmforge_folder(tmp_path):
    from lmforge.io.native import save_native

    q_folder, _ = build_pair(tmp_path, "gptq", act_order=True)
    llm = LLM(q_folder)
    out = save_native(llm.model, llm._tokenizer, tmp_path / "native", {"format": "int4", "group_size": 32,
                                                                       "method": "gptq (imported)"}, str(q_folder))
    assert torch.equal(LLM(out).score(TOKENS), llm.score(TOKENS))


def test_act_order_that_differs_between_q_k_v_cannot_fuse(tmp_path):
    q_folder, _ = build_pair(tmp_path, "gptq", act_order=True, same_order=False)
    with pytest.raises(LmforgeError, match="cannot fuse (q/k/v|gate/up) into layers.0"):
        LLM(q_folder)


def test_unsupported_quantization_configs(tmp_path):
    q_folder, _ = build_pair(tmp_path, "gptq")
    cfg = json.loads((q_folder / "config.json").read_text())
    for change, message in [({"bits": 3}, "3 bits is not supported"), ({"quant_method": "bitsandbytes"}, "not supported")]:
        (q_folder / "config.json").write_text(json.dumps({**cfg, "quantization_config": {
            **cfg["quantization_config"], **change}}))
        with pytest.raises(LmforgeError, match=message):
            LLM(q_folder)
