"""Every QuantLinear equals its dequantized reference; packing, fusing and scale folding are exact."""
import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.models.transformer import Transformer
from lmforge.quant import formats
from lmforge import kernels
from lmforge.quant.linear import (BlockEmbedding, BlockInt4Linear, BlockInt8Linear, FP8Linear, Int4Linear,
                                  Int8Linear, TiedHead, W8A8Linear)
from lmforge.quant.smoothing import fold_inverse_scale, fold_targets


def weight(n=48, k=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[:, 3] *= 20  # an outlier input column
    return w


def modules():
    w, b = weight(), torch.randn(48) * 0.1
    x_stats = torch.rand(128) + 0.5
    return {
        "int8": Int8Linear.from_float(w, b),
        "int4-g32-sym": Int4Linear.from_float(w, b, group_size=32, sym=True),
        "int4-g64-asym": Int4Linear.from_float(w, None, group_size=64, sym=False),
        "int4-pc-asym": Int4Linear.from_float(w, b, group_size=-1, sym=False),
        "w8a8-token": W8A8Linear.from_float(w, b),
        "w8a8-static": W8A8Linear.from_float(w, None, act_scale=torch.tensor(0.03)),
        "fp8": FP8Linear.from_float(w, b),
        "int4-perm-scaled": _with_perm_and_scale(Int4Linear.from_float(w, b, group_size=32, sym=False), x_stats),
        "q4-blocks": block_int4(w, b),
        "q8-blocks": block_int8(w),
    }


def block_int4(w, b=None):
    """A BlockInt4Linear holding w's asymmetric int4 codes per 32 columns (GGUF Q4_1-like, fp16 scales)."""
    qs, s, m = kernels.repack_int4(*formats.quantize_int4(w, 32, sym=False))
    module = BlockInt4Linear(w.shape[1], w.shape[0], bias=b is not None)
    return module._set({"qs": qs, "scales": s.half(), "mins": m.half()}, b)


def block_int8(w):
    """A BlockInt8Linear with one scale per 32 columns (GGUF Q8_0-like)."""
    g = w.reshape(w.shape[0], -1, 32)
    s = (g.abs().amax(-1) / 127).half()
    q = torch.round(g / s.float()[..., None]).clamp(-127, 127).to(torch.int8).reshape(w.shape)
    return BlockInt8Linear(w.shape[1], w.shape[0])._set({"q": q, "scales": s, "mins": s[:, :0]}, None)


def _with_perm_and_scale(m, s):
    m.perm = torch.randperm(m.in_features, generator=torch.Generator().manual_seed(1))
    m.input_scale = 1 / s
    return m


@pytest.mark.parametrize("name", list(modules()))
def test_forward_matches_dequantized_reference(name):
    m = modules()[name]
    x = torch.randn(2, 5, 128, generator=torch.Generator().manual_seed(1))
    m.act_bits = 32  # fp32 activations in the native kernels: the definition itself
    torch.testing.assert_close(m(x), m.reference(x), rtol=1e-5, atol=1e-5)
    m.act_bits = 16  # the default: these 10 rows are rounded to ~15 bits first. The kernels multiply the
    # rounded x with the codes times the scale (q s, up to 15 s for asymmetric int4, not w = (q - z) s),
    # so the per-channel asymmetric module with its outlier column (s ~ 0.3) sees errors up to ~2.4e-3
    # on outputs of ~5 (300 random inputs); a wrong layout would be off by the output itself.
    torch.testing.assert_close(m(x), m.reference(x), rtol=1e-3, atol=4e-3)


def test_block_embedding_gathers_dequantized_rows_and_ties_the_head():
    w = weight(n=64, k=128)
    for table in (block_int8(w), block_int4(w)):
        embed = BlockEmbedding(table, torch.float32)
        tokens = torch.tensor([[3, 0, 63], [5, 5, 1]])
        torch.testing.assert_close(embed(tokens), table.dequantize()[tokens], rtol=0, atol=0)
        head = TiedHead(embed)
        x = torch.randn(2, 3, 128)
        torch.testing.assert_close(head(x), table(x), rtol=0, atol=0)
        assert list(head.state_dict()) == []  # the table is saved once, with the embedding


@pytest.mark.parametrize("name", ["int8", "int4-g32-sym", "int4-g64-asym", "int4-perm-scaled", "w8a8-token", "fp8"])
def test_bf16_kernels_match_reference(name):
    # bf16 rounds the activations, scales and (int4 kernel) the zero term (8 - z) * s: a few percent at
    # worst; a wrong layout (nibble order, group mapping) would be off by the size of the output itself
    m = modules()[name]
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(2))
    ref = m.reference(x.float())
    out = m(x.bfloat16()).float()
    assert (out - ref).abs().max() <= 0.04 * ref.abs().max()


def test_weight_only_reference_is_linear_with_dequantized_weight():
    w = weight()
    x = torch.randn(4, 128)
    for m in (Int8Linear.from_float(w), Int4Linear.from_float(w, group_size=32), FP8Linear.from_float(w)):
        torch.testing.assert_close(m.reference(x), x @ m.dequantize().t(), rtol=0, atol=1e-6)


def test_rounding_error_is_within_half_a_step():
    w = weight()
    q, s = formats.quantize_int8(w)
    assert ((formats.dequantize_int8(q, s) - w).abs() <= s[:, None] / 2 + 1e-7).all()
    for sym in (True, False):
        packed, scales, zeros = formats.quantize_int4(w, 32, sym)
        err = (formats.dequantize_int4(packed, scales, zeros) - w).abs()
        assert (err <= scales.repeat_interleave(32, 1) / 2 + 1e-6).all()
    q8, s8 = formats.quantize_fp8(w)
    assert ((formats.dequantize_fp8(q8, s8) - w).abs() <= w.abs() / 16 + s8[:, None] * 2 ** -9).all()


def test_int4_pack_roundtrip():
    q = torch.randint(0, 16, (7, 64), dtype=torch.uint8)
    packed = formats.pack_int4(q)
    assert packed.shape == (7, 32) and packed.dtype == torch.uint8
    assert torch.equal(formats.unpack_int4(packed), q)
    assert packed[0, 0] == q[0, 0] | (q[0, 1] << 4)


def test_w8a8_reference_quantizes_activations_per_token():
    m = W8A8Linear.from_float(weight())
    x = torch.randn(3, 128)
    x[1] *= 100  # a loud token does not change the others' scales
    y = m.reference(x)
    torch.testing.assert_close(y[0], m.reference(x[:1])[0])
    qx, sx = formats.quantize_act_per_token(x)
    torch.testing.assert_close(y, (qx.float() * sx) @ m.dequantize().t() + 0)


@pytest.mark.parametrize("cls,kw", [(Int8Linear, {}), (Int4Linear, {"group_size": 32, "sym": False}),
                                    (FP8Linear, {}), (W8A8Linear, {})])
def test_cat_joins_output_rows(cls, kw):
    parts = [cls.from_float(weight(n, seed=n), torch.randn(n), **kw) for n in (16, 8, 8)]
    fused = cls.cat(parts)
    assert torch.equal(fused.dequantize(), torch.cat([p.dequantize() for p in parts]))
    x = torch.randn(2, 128)
    torch.testing.assert_close(fused(x), torch.cat([p(x) for p in parts], dim=-1))


def test_cat_refuses_parts_with_different_permutations():
    a, b = (Int4Linear.from_float(weight(seed=i), group_size=32) for i in range(2))
    a.perm = torch.randperm(128)
    b.perm = torch.arange(128)
    with pytest.raises(ValueError, match="perm"):
        Int4Linear.cat([a, b])


@pytest.mark.parametrize("n_kv", [4, 2])
@pytest.mark.parametrize("act", ["silu", "relu"])
def test_folding_scales_keeps_the_block_function(n_kv, act):
    cfg = ModelConfig(architecture="LlamaForCausalLM", vocab_size=32, dim=32, n_layers=1, n_heads=4,
                      n_kv_heads=n_kv, hidden_dim=48, mlp="gated" if act == "silu" else "plain", act=act,
                      qkv_bias=True)
    torch.manual_seed(0)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    block = model.layers[0]
    from lmforge.generation.engine import Engine
    tokens = torch.randint(0, 32, (1, 6))
    before = Engine(model, torch.device("cpu"), torch.float32).score(tokens)
    targets = fold_targets(block, cfg)
    with torch.no_grad():
        for name, lin in [("attn.wqkv", block.attn.wqkv), ("attn.wo", block.attn.wo),
                          ("mlp.w_in", block.mlp.w_in), ("mlp.w_out", block.mlp.w_out)]:
            s = torch.rand(lin.in_features) + 0.5
            if fold_inverse_scale(targets[name], s):
                lin.weight.mul_(s)
    after = Engine(model, torch.device("cpu"), torch.float32).score(tokens)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert (targets["attn.wo"] is None) == (n_kv != 4)


def test_activation_bits_outside_the_choices_is_a_clear_error():
    from lmforge.errors import LmforgeError
    from lmforge.quant.linear import set_activation_bits

    m = block_int8(weight(n=8, k=64))
    assert set_activation_bits(torch.nn.Sequential(m), 8) == 1 and m.act_bits == 8
    with pytest.raises(LmforgeError, match="activation bits must be one of 32, 16, 8, got 4"):
        set_activation_bits(m, 4)


def test_cuda_products_on_fake_cuda_tensors():
    """The CUDA branches (tinygemm int4, int8 scaled after the product) against torch's own shape and
    dtype rules, on fake CUDA tensors: no GPU needed. tinygemm takes column 2j in the high nibble,
    ours holds it in the low one: the packing swaps them."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    w = torch.randn(256, 512)
    packed, scales, zeros = formats.quantize_int4(w, 128, sym=False)
    codes = formats.unpack_int4(packed)
    assert torch.equal((packed << 4) | (packed >> 4), (codes[:, 0::2] << 4) | codes[:, 1::2])
    with FakeTensorMode(allow_non_fake_inputs=True):
        cuda = [torch.empty_like(t, device="cuda") for t in (packed, scales, zeros)]
        kernel = formats.int4_kernel_pack(*cuda)
        assert kernel is not None and kernel[1].dtype == torch.bfloat16
        x = torch.empty(3, 512, dtype=torch.bfloat16, device="cuda")
        y = formats.int4_matmul(x, *cuda, kernel)
        assert (y.shape, y.dtype, y.device.type) == ((3, 256), torch.bfloat16, "cuda")
        q8 = torch.empty(256, 512, dtype=torch.int8, device="cuda")
        y = formats.int8_matmul(x, q8, torch.empty(256, device="cuda"))
        assert (y.shape, y.dtype) == ((3, 256), torch.bfloat16)
