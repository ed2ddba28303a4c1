"""Native CPU kernels (lmforge.kernels): each op against its reference, repacking, fallback, compile."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge import kernels
from lmforge.kernels import build, reference
from lmforge.quant import formats

# (M, N, K): odd M, N not a multiple of 4 or 8, M = 1 decode, M >= 32 (the dequantized-GEMM path);
# K = 256 is one interleaved int4 group of 8 blocks, 576 two groups and two plain blocks
SHAPES = [(1, 64, 32), (1, 13, 96), (3, 37, 128), (5, 1, 64), (7, 96, 256), (33, 21, 128), (40, 72, 192),
          (1, 11, 576), (2, 19, 512), (4, 9, 576), (34, 5, 576),
          # 1, 2 and 4 plain blocks after the interleaved groups, several rows of x, rows past whole tiles
          (2, 17, 288), (3, 16, 320), (4, 21, 384), (6, 24, 64)]


def assert_matches_reference(y, ref):
    # the kernels and the reference sum the same exact products in a different order (fp32)
    tol = 2e-5 * ref.abs().max().item() + 1e-5
    assert y.shape == ref.shape and y.dtype == ref.dtype
    assert (y - ref).abs().max().item() <= tol


def random_int4(N, K, group, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    qs = torch.randint(0, 256, (N, K // 2), dtype=torch.uint8, generator=g)
    scales = (torch.rand(N, K // group, generator=g) * 0.1).to(dtype)
    mins = (-torch.rand(N, K // group, generator=g) * 0.8).to(dtype)
    return qs, scales, mins


def random_k_scales(N, K, seed=0):
    """int4 codes with K-quant scales and mins (uint8, as GGUF Q4_K loads): 6-bit multipliers of a step
    per 8 blocks."""
    g = torch.Generator().manual_seed(seed)
    qs = torch.randint(0, 256, (N, K // 2), dtype=torch.uint8, generator=g)
    step, low = torch.rand(N, K // 256, generator=g) * 0.01 + 1e-3, torch.rand(N, K // 256, generator=g) * -0.02
    mult = [torch.randint(0, 64, (N, K // 32), dtype=torch.uint8, generator=g) for _ in range(2)]
    return qs, reference.pack_k_scales(step, mult[0]), reference.pack_k_scales(low, mult[1])


@pytest.fixture(scope="module")
def native():
    if kernels.backend() != "native":
        pytest.skip("the native kernels are not available here")


@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_int4_linear_matches_reference(native, M, N, K, dtype):
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(1))
    for group in (g for g in (32, 64, K) if K % g == 0):
        weights = random_int4(N, K, group, dtype)
        assert_matches_reference(kernels.int4_linear(x, *weights), reference.int4_linear(x, *weights))


@pytest.mark.parametrize("act_bits", [32, 16, 8])
@pytest.mark.parametrize("M", [1, 5, 40])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_symmetric_int4_empty_mins_mean_minus_eight_scales(native, act_bits, M, dtype):
    """Empty mins [N, 0] (GGUF Q4_0) compute what mins = -8 * scale compute, in every path."""
    qs, scales, _ = random_int4(72, 256, 32, dtype, seed=3)
    x = torch.randn(M, 256, generator=torch.Generator().manual_seed(4))
    empty, explicit = scales.new_empty((72, 0)), scales * -8
    y = kernels.int4_linear(x, qs, scales, empty, act_bits)
    assert_matches_reference(y, kernels.int4_linear(x, qs, scales, explicit, act_bits))
    assert_matches_reference(y, reference.int4_linear(x, qs, scales, empty, act_bits))
    assert torch.equal(reference.dequantize_int4_blocks(qs, scales, empty),
                       reference.dequantize_int4_blocks(qs, scales, explicit))
    with pytest.raises(RuntimeError, match="mins must match scales"):
        kernels.int4_linear(x, qs, scales, scales.new_empty((72, 1)), act_bits)


@pytest.mark.parametrize("act_bits", [32, 16, 8])
@pytest.mark.parametrize("M,N,K", [(1, 11, 256), (2, 19, 512), (3, 16, 768), (4, 9, 256), (5, 13, 512),
                                   (40, 7, 256), (1, 130, 1536)])
def test_int4_k_quant_scales(native, act_bits, M, N, K):
    """K-quant scales and mins (uint8 [N, G/8 * 10], GGUF Q4_K at load) in every path (the tiles at 1-4
    rows of x, the panels and the dequantized GEMM past them, table rows): the reference's result, and
    to the bit what fp32 scales and mins of the same values give."""
    qs, s, m = random_k_scales(N, K, seed=M)
    s32, m32 = reference.block_values(s), reference.block_values(m)
    assert s.dtype == torch.uint8 and s.shape == (N, K // 256 * 10) and s32.shape == (N, K // 32)
    assert reference.scale_groups(s) == reference.scale_groups(s32) == K // 32
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(N))
    y = kernels.int4_linear(x, qs, s, m, act_bits)
    assert_matches_reference(y, reference.int4_linear(x, qs, s, m, act_bits))
    assert torch.equal(y, kernels.int4_linear(x, qs, s32, m32, act_bits))
    ids = torch.tensor([0, N - 1, N // 2])
    assert torch.equal(kernels.int4_rows(ids, qs, s, m), reference.dequantize_int4_blocks(qs, s32, m32)[ids])
    assert torch.equal(reference.int4_rows(ids, qs, s, m), reference.dequantize_int4_blocks(qs, s32, m32)[ids])
    with pytest.raises(RuntimeError, match="K-quant scales must be uint8"):
        kernels.int4_linear(x, qs, s[:, :-5], m[:, :-5], act_bits)  # not whole steps of 8 groups
    if K == 768:
        with pytest.raises(RuntimeError, match="group size K/G must be a multiple of 32"):
            kernels.int4_linear(x, qs, s[:, :-10], m[:, :-10], act_bits)  # 16 groups of 48 columns


@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_int8_linear_matches_reference(native, M, N, K, dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(M, K, generator=g)
    q = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g)  # -128 too: the sign trick
    grouped = reference.pack_int8_groups(q)  # the same weight in the grouped layout (uint8)
    for group in (32, K):
        scales = (torch.rand(N, K // group, generator=g) * 0.01).to(dtype)
        ref = reference.int8_linear(x, q, scales)
        assert_matches_reference(kernels.int8_linear(x, q, scales), ref)
        assert_matches_reference(kernels.int8_linear(x, grouped, scales), ref)


# K-quant int8 shapes: K a multiple of 128 (whole records of 8 half blocks), some with blocks left over
# after the last 8 (the tiles' partial steps), and every row count of the tiles, panels and the GEMM
K_INT8_SHAPES = [(1, 64, 128), (1, 11, 640), (2, 19, 512), (3, 37, 384), (4, 9, 768), (5, 13, 256), (40, 7, 256),
                 (1, 130, 1536)]


@pytest.mark.parametrize("act_bits", [32, 16, 8])
@pytest.mark.parametrize("M,N,K", K_INT8_SHAPES)
def test_int8_half_block_scales(native, act_bits, M, N, K):
    """int8 with K-quant scales per 16 columns (GGUF Q6_K at load), plain and grouped, in every path (tiles
    at 1-4 rows of x, panels and the dequantized GEMM past them, table rows): the reference's result.
    Multipliers that differ 10-fold between a block's halves catch a half taking the other's scale."""
    g = torch.Generator().manual_seed(M * 7 + N)
    x = torch.randn(M, K, generator=g)
    q = torch.randint(-32, 33, (N, K), dtype=torch.int8, generator=g)
    mult = torch.randint(1, 13, (N, K // 16), generator=g)
    mult[:, 1::2] *= 10  # up to 120 (Q6_K's |sc| <= 128)
    steps = torch.rand(N, K // 128, generator=g) * 1e-3 + 1e-4
    s = reference.pack_k_scales(steps, mult)
    assert s.dtype == torch.uint8 and s.shape == (N, K // 128 * 10)
    w = q.float() * (steps.half().float().repeat_interleave(8, dim=1) * mult).repeat_interleave(16, dim=1)
    assert torch.equal(reference.dequantize_int8_blocks(q, s), w)
    y = kernels.int8_linear(x, q, s, act_bits)
    assert_matches_reference(y, reference.int8_linear(x, q, s, act_bits))
    if act_bits == 32:
        assert_matches_reference(y, x @ w.T)
    ids = torch.tensor([0, N - 1, N // 2])
    assert torch.equal(kernels.int8_rows(ids, q, s), w[ids])
    grouped = reference.pack_int8_groups(q)  # the grouped tiles sum each block's halves apart
    y = kernels.int8_linear(x, grouped, s, act_bits)
    assert_matches_reference(y, reference.int8_linear(x, grouped, s, act_bits))
    assert torch.equal(kernels.int8_rows(ids, grouped, s), w[ids])
    with pytest.raises(RuntimeError, match="multiple of 32"):
        kernels.int8_linear(x, q, reference.block_values(s).half(), act_bits)  # fp16: groups of 32 or more


@pytest.mark.parametrize("act_bits", [32, 16, 8])
@pytest.mark.parametrize("M,N,K", [(M, N, K // 128 * 256) for M, N, K in K_INT8_SHAPES])  # whole records of 8 blocks
def test_int8_k_quant_mins(native, act_bits, M, N, K):
    """int8 codes 0..31 with K-quant scales and mins per block of 32 (GGUF Q5_K at load), w = q * scale +
    min, plain and grouped, in every path: the reference's result, whose mins multiply the exact block
    sums of x."""
    g = torch.Generator().manual_seed(M * 5 + N)
    x = torch.randn(M, K, generator=g)
    q = torch.randint(0, 32, (N, K), dtype=torch.int8, generator=g)
    G = K // 32
    s = reference.pack_k_scales(torch.rand(N, G // 8, generator=g) * 1e-3 + 1e-4, torch.randint(0, 64, (N, G), generator=g))
    m = reference.pack_k_scales(-torch.rand(N, G // 8, generator=g) * 1e-3, torch.randint(0, 64, (N, G), generator=g))
    w = q.float() * reference.block_values(s).repeat_interleave(32, dim=1) + reference.block_values(m).repeat_interleave(32, dim=1)
    assert torch.equal(reference.dequantize_int8_blocks(q, s, m), w)
    ids = torch.tensor([0, N - 1, N // 2])
    for layout in (q, reference.pack_int8_groups(q)):  # plain, and grouped (where the kernels have VNNI)
        y = kernels.int8_linear(x, layout, s, act_bits, m)
        assert_matches_reference(y, reference.int8_linear(x, layout, s, act_bits, m))
        if act_bits == 32:
            assert_matches_reference(y, x @ w.T)
        assert torch.equal(kernels.int8_rows(ids, layout, s, m), w[ids])
        assert torch.equal(reference.int8_rows(ids, layout, s, m), w[ids])
    with pytest.raises(RuntimeError, match="need their mins"):
        kernels.int8_linear(x, q, s, act_bits)
    with pytest.raises(RuntimeError, match="int8 mins go with K-quant scales"):
        kernels.int8_linear(x, q, reference.block_values(s), act_bits, reference.block_values(m))


@pytest.mark.parametrize("K", [64, 576])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_table_rows_equal_the_dequantized_rows(native, K, dtype):
    """int4_rows / int8_rows (a quantized embedding's lookup) give exactly the reference's dequantized
    rows, in the ids' shape, for every layout: int4 with and without mins, plain and grouped int8."""
    N, g = 40, torch.Generator().manual_seed(8)
    ids = torch.tensor([[3, 0, 39], [3, 17, 5]])
    for group in (32, K):
        qs, scales, mins = random_int4(N, K, group, dtype)
        for m in (mins, mins[:, :0]):
            want = reference.dequantize_int4_blocks(qs, scales, m)[ids]
            assert torch.equal(kernels.int4_rows(ids, qs, scales, m), want)
            assert torch.equal(reference.int4_rows(ids, qs, scales, m), want)
        q = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g)
        for layout in (q, reference.pack_int8_groups(q)):
            want = reference.dequantize_int8_blocks(layout, scales)[ids]
            assert torch.equal(kernels.int8_rows(ids, layout, scales), want)
            assert torch.equal(reference.int8_rows(ids, layout, scales), want)
    with pytest.raises(RuntimeError, match="id 40 is out of range for a table of 40 rows"):
        kernels.int8_rows(torch.tensor([1, 40]), q, scales)
    with pytest.raises(RuntimeError, match="id -1 is out of range"):
        kernels.int4_rows(torch.tensor([-1]), qs, scales, mins)
    with pytest.raises(RuntimeError, match="ids must be an integer tensor"):
        kernels.int4_rows(torch.tensor([1.0]), qs, scales, mins)


@pytest.mark.parametrize("M", [1, 3, 4, 5, 6, 7, 13, 40, 400])
@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dense_linear_matches_reference(native, M, wdtype):
    """dense_linear at decode sizes (up to 4 rows) and prompt sizes (the prompt kernel where the build
    has it: blocks of 6 or 4 rows, tiles of 4 or 3 weight rows; in the 256-bit build ATen's GEMM past 384
    rows; ATen's GEMM elsewhere), with weight rows and columns left over: the fp32 product of the widened
    weight."""
    g = torch.Generator().manual_seed(9)
    for N, K in ((37, 45), (8, 96), (13, 1000)):
        w = torch.randn(N, K, generator=g).to(wdtype)
        for x in (torch.randn(M, K, generator=g), torch.randn(2, M, K, generator=g)):  # M or 2 M rows
            y, ref = kernels.dense_linear(x, w), reference.dense_linear(x, w)
            assert y.shape == (*x.shape[:-1], N)
            assert (y - ref).abs().max().item() <= 2e-5 * ref.abs().max().item() + 1e-5
        assert kernels.dense_linear(torch.randn(0, K), w).shape == (0, N)  # no rows: nothing read
    with pytest.raises(RuntimeError, match="x has 12 features, the weight 1000"):
        kernels.dense_linear(torch.randn(M, 12), w)


def test_batch_dims_and_dtypes(native):
    qs, s, m = random_int4(24, 64, 32, torch.float16)
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(3))
    y = kernels.int4_linear(x, qs, s, m)
    assert y.shape == (2, 3, 24)
    assert_matches_reference(y, reference.int4_linear(x, qs, s, m))
    xb = x.bfloat16()  # computed in fp32, returned in bf16
    yb, ref = kernels.int4_linear(xb, qs, s, m), reference.int4_linear(xb, qs, s, m)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), ref.float(), rtol=1e-2, atol=1e-2)


def test_zero_activation_block(native):
    """An all-zero 32-column block has scale 0; it must contribute 0, not NaN."""
    x = torch.randn(2, 96)
    x[:, 32:64] = 0
    q = torch.randint(-127, 128, (8, 96), dtype=torch.int8)
    s = torch.rand(8, 3)
    y = kernels.int8_linear(x, q, s)
    assert torch.isfinite(y).all()
    assert_matches_reference(y, reference.int8_linear(x, q, s))


def test_rejects_bad_shapes(native):
    qs, s, m = random_int4(8, 64, 32, torch.float16)
    with pytest.raises(RuntimeError, match="features"):
        kernels.int4_linear(torch.randn(1, 32), qs, s, m)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        kernels.int8_linear(torch.randn(1, 48), torch.zeros(8, 48, dtype=torch.int8), torch.ones(8, 3))


# ------------------------------------------------------------------------ rounded activations

@pytest.mark.parametrize("bits", [16, 8])
@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_rounded_activation_linears_match_reference(native, bits, M, N, K, dtype):
    """act_bits 16 / 8: the kernels' integer products equal the reference's rounding of x (one pass over
    the weights up to 4 rows, panels of weight rows past all the rows of x from 5 on)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(M, K, generator=g) * torch.rand(1, K, generator=g) * 3  # uneven block ranges
    q8 = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g)
    for group in (g for g in (32, 64, K) if K % g == 0):
        weights = random_int4(N, K, group, dtype)
        y, ref = kernels.int4_linear(x, *weights, bits), reference.int4_linear(x, *weights, act_bits=bits)
        assert_matches_reference(y, ref)
        scales = (torch.rand(N, K // group, generator=g) * 0.01).to(dtype)
        ref8 = reference.int8_linear(x, q8, scales, act_bits=bits)
        assert_matches_reference(kernels.int8_linear(x, q8, scales, bits), ref8)
        assert_matches_reference(kernels.int8_linear(x, reference.pack_int8_groups(q8), scales, bits), ref8)


@pytest.mark.parametrize("bits", [16, 8])
@pytest.mark.parametrize("M", [1, 2, 4])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_rounded_activations_at_the_extremes(native, bits, M, sign):
    """Every int4 code 15 against activations that round to +-127 in every block: the tiles' int16 pair
    sums reach their bound (8 vectors x 2 x 15 x 127 per group) and must not wrap."""
    N, K = 6, 576
    qs = torch.full((N, K // 2), 0xFF, dtype=torch.uint8)
    scales = torch.full((N, K // 32), 0.01, dtype=torch.float16)
    mins = torch.zeros(N, K // 32, dtype=torch.float16)
    x = torch.full((M, K), sign * 2.5)
    x[:, ::7] = sign * 2.499  # a second plane that is not all zeros
    y = kernels.int4_linear(x, qs, scales, mins, bits)
    assert_matches_reference(y, reference.int4_linear(x, qs, scales, mins, act_bits=bits))


@pytest.mark.parametrize("bits", [16, 8])
@pytest.mark.parametrize("M", [1, 2, 3, 4])
def test_integer_tiles_with_plain_blocks_after_the_groups(native, bits, M):
    """Decode-sized x (1-4 rows) through the integer tiles, with 1, 2 and 4 plain blocks after the
    interleaved groups (K = 288, 320, 384, 576) and every whole-block layout, mins and no mins: the
    reference's result. N = 21 takes whole tiles of 4 weight rows and the rows past them."""
    N = 21
    for K in (288, 320, 384, 576):
        g = torch.Generator().manual_seed(M * 7 + bits + K)
        x = torch.randn(M, K, generator=g) * torch.rand(1, K, generator=g) * 3
        qs, s, m = random_int4(N, K, 32, torch.float16, seed=K)
        wider = random_int4(N, K, 96 if K % 64 else 64, torch.float32, seed=K + 1)  # scale groups of 2-3 blocks
        for w in [(qs, s, m), (qs, s, m[:, :0]), wider]:
            assert_matches_reference(kernels.int4_linear(x, *w, bits), reference.int4_linear(x, *w, act_bits=bits))
        q8 = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g)
        s8 = (torch.rand(N, K // 32, generator=g) * 0.01).half()
        for q in (q8, reference.pack_int8_groups(q8)):
            assert_matches_reference(kernels.int8_linear(x, q, s8, bits), reference.int8_linear(x, q, s8, bits))


@pytest.mark.parametrize("bits", [16, 8])
@pytest.mark.parametrize("M", [16, 17, 40])
def test_prompt_products_in_every_layout(native, bits, M):
    """From 16 rows of x the integer products take whole tiles of 16 weight rows (on the AMX tiles where
    the CPU has them, kernels.amx_products(); passes of 8 or 16 rows, the last one shorter) and the
    vector tiles for the weight rows past them: every layout against the reference. K = 576 leaves two
    plain blocks after the groups; K-quant int8 needs whole records (K a multiple of 128 or 256)."""
    N = 37
    for K in (256, 576, 768):
        g = torch.Generator().manual_seed(M * 3 + bits + K)
        x = torch.randn(M, K, generator=g) * torch.rand(1, K, generator=g) * 3  # uneven block ranges
        qs, s, m = random_int4(N, K, 32, torch.float16, seed=K)
        int4 = [(qs, s, m), (qs, s, m[:, :0]), random_int4(N, K, 64, torch.float32, seed=K + 1)]
        if K % 256 == 0:
            int4.append(random_k_scales(N, K, seed=K))
        q8 = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g)
        s8 = (torch.rand(N, K // 32, generator=g) * 0.01).half()
        int8 = [(q, s8, None) for q in (q8, reference.pack_int8_groups(q8))]
        if K % 128 == 0:  # half-block K-quant scales (GGUF Q6_K), codes -32..32
            q6 = torch.randint(-32, 33, (N, K), dtype=torch.int8, generator=g)
            mult = torch.randint(1, 13, (N, K // 16), generator=g) * torch.tensor([1, 10]).repeat(K // 32)
            s6 = reference.pack_k_scales(torch.rand(N, K // 128, generator=g) * 1e-3 + 1e-4, mult)
            int8 += [(q, s6, None) for q in (q6, reference.pack_int8_groups(q6))]
        if K % 256 == 0:  # K-quant scales and mins per block (GGUF Q5_K), codes 0..31
            q5 = torch.randint(0, 32, (N, K), dtype=torch.int8, generator=g)
            G = K // 32
            s5 = reference.pack_k_scales(torch.rand(N, G // 8, generator=g) * 1e-3 + 1e-4, torch.randint(0, 64, (N, G), generator=g))
            m5 = reference.pack_k_scales(-torch.rand(N, G // 8, generator=g) * 1e-3, torch.randint(0, 64, (N, G), generator=g))
            int8 += [(q, s5, m5) for q in (q5, reference.pack_int8_groups(q5))]
        for w in int4:
            assert_matches_reference(kernels.int4_linear(x, *w, bits), reference.int4_linear(x, *w, act_bits=bits))
        for q, sc, mn in int8:
            assert_matches_reference(kernels.int8_linear(x, q, sc, bits, mn), reference.int8_linear(x, q, sc, bits, mn))


@pytest.mark.parametrize("bits", [16, 8])
def test_rounded_activations_for_long_prompts(native, bits):
    """Past 1,024 rows of x the kernels round and multiply in chunks of rows, with the same result as
    the reference's rounding; act_bits 32 stays the exact fp32 product."""
    g = torch.Generator().manual_seed(5)
    N, K, M = 37, 96, 1030
    weights = random_int4(N, K, 32, torch.float16)
    x = torch.randn(M, K, generator=g)
    y = kernels.int4_linear(x, *weights, bits)
    assert_matches_reference(y, reference.int4_linear(x, *weights, act_bits=bits))
    exact = reference.int4_linear(x, *weights)
    assert_matches_reference(kernels.int4_linear(x, *weights, 32), exact)
    if bits == 8:  # one int8 plane is visibly rounded
        assert (y - exact).abs().max() > 1e-3 * exact.abs().max()


def test_round_activations_error_bounds():
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(7)) * torch.logspace(-3, 2, 256)
    blocks_max = x.unflatten(-1, (-1, 32)).abs().amax(-1, keepdim=True)
    for bits, bound in ((8, 0.5 / 127), (16, 0.5 / 127 / 254)):
        err = (reference.round_activations(x, bits) - x).unflatten(-1, (-1, 32)).abs()
        assert (err <= blocks_max * bound * 1.01).all()  # 1%: the fp32 rounding of the result
    assert torch.equal(reference.round_activations(torch.zeros(1, 32), 16), torch.zeros(1, 32))


def test_rounded_activations_near_exact(native):
    """16 bits: within ~1e-4 (relative) of the fp32 product; 8 bits: within ~1e-2."""
    qs, s, m = random_int4(64, 576, 32, torch.float16)
    x = torch.randn(1, 576, generator=torch.Generator().manual_seed(5))
    exact = reference.int4_linear(x, qs, s, m)
    scale = exact.abs().max().item()
    assert (kernels.int4_linear(x, qs, s, m, 16) - exact).abs().max().item() < 1e-4 * scale
    assert (kernels.int4_linear(x, qs, s, m, 8) - exact).abs().max().item() < 2e-2 * scale


def test_rejects_bad_activation_bits(native):
    qs, s, m = random_int4(8, 64, 32, torch.float16)
    with pytest.raises(RuntimeError, match="act_bits"):
        kernels.int4_linear(torch.randn(1, 64), qs, s, m, 4)
    with pytest.raises(ValueError, match="act_bits"):
        reference.int4_linear(torch.randn(1, 64), qs, s, m, act_bits=4)


def test_silu_mul_matches_reference(native):
    h = torch.randn(3, 5, 2 * 45, generator=torch.Generator().manual_seed(8)) * 6  # n not a multiple of 8
    h[0, 0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0])  # the clamped ends and zero
    torch.testing.assert_close(kernels.silu_mul(h), reference.silu_mul(h), rtol=2e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="even"):
        kernels.silu_mul(torch.randn(2, 7))


# -------------------------------------------------------------------------- decode attention

@pytest.mark.parametrize("B,S,H,KV,hd,rd,L,interleaved", [
    (1, 1, 9, 3, 64, 64, 37, False),   # GQA, full rotary (SmolLM2)
    (2, 3, 4, 4, 16, 8, 10, True),     # partial, interleaved rotary (GPT-J), several new tokens
    (3, 2, 8, 2, 20, 0, 7, False),     # no rope (ALiBi-free learned positions), hd not a multiple of 8
    (2, 1, 9, 3, 64, 64, 150, False),  # several parts of 32 slots, merged
    (1, 2, 4, 2, 24, 8, 70, True),     # parts with hd not a multiple of 8
    (1, 1, 4, 2, 80, 80, 45, False),   # hd 80: 64 + 16 channels in 512-bit vectors
    (2, 1, 4, 1, 128, 64, 40, False),  # hd 128: two passes of 64 channels
])
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
def test_attention_decode_matches_reference(native, B, S, H, KV, hd, rd, L, interleaved, cache_dtype):
    g = torch.Generator().manual_seed(6)
    qkv = torch.randn(B, S, H + 2 * KV, hd, generator=g)
    if rd:
        f = torch.randn(B, S, 1, rd // 2, generator=g)
        cos, sin = torch.cat((f.cos(), f.cos()), -1), torch.cat((-f.sin(), f.sin()), -1)
    else:
        cos = sin = torch.empty(0)
    k = torch.randn(B, KV, L + 4, hd, generator=g).to(cache_dtype)
    v = torch.randn(B, KV, L + 4, hd, generator=g).to(cache_dtype)
    k2, v2 = k.clone(), v.clone()
    slots = torch.arange(L - S, L)
    mask = torch.rand(B, 1, S, L, generator=g) > 0.3
    mask[..., -1] = True
    y = kernels.attention_decode(qkv, cos, sin, k, v, slots, mask, H, KV, 0.125, interleaved)
    ref = reference.attention_decode(qkv, cos, sin, k2, v2, slots, mask, H, KV, 0.125, interleaved)
    assert y.shape == (B, S, H * hd)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(k, k2) and torch.equal(v, v2)  # the caches were written the same way (fp16: rounded alike)


def test_attention_decode_parts_without_visible_slots(native):
    """Whole parts of 32 slots masked (left padding, holes) and a row with nothing visible (zeros)."""
    g = torch.Generator().manual_seed(7)
    B, H, KV, hd, L = 3, 4, 2, 32, 130
    qkv = torch.randn(B, 1, H + 2 * KV, hd, generator=g)
    k, v = torch.randn(B, KV, L, hd, generator=g), torch.randn(B, KV, L, hd, generator=g)
    k2, v2 = k.clone(), v.clone()
    mask = torch.ones(B, 1, 1, L, dtype=torch.bool)
    mask[0, ..., :70] = False       # left padding over two whole parts and a piece of the third
    mask[1, ..., 32:96] = False     # a hole of two parts in the middle
    mask[2] = False                 # nothing visible, not even the new slot
    slots = torch.tensor([L - 1])
    y = kernels.attention_decode(qkv, torch.empty(0), torch.empty(0), k, v, slots, mask, H, KV, 0.2, False)
    ref = reference.attention_decode(qkv, torch.empty(0), torch.empty(0), k2, v2, slots, mask, H, KV, 0.2, False)
    torch.testing.assert_close(y[:2], ref[:2], rtol=1e-5, atol=1e-5)
    assert torch.equal(y[2], torch.zeros_like(y[2]))


def test_attention_decode_rejects_bad_input(native):
    qkv = torch.randn(1, 1, 5, 16)
    k = v = torch.zeros(1, 1, 8, 16)
    mask = torch.ones(1, 1, 1, 4, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="heads"):
        kernels.attention_decode(qkv, torch.empty(0), torch.empty(0), k, v, torch.tensor([3]), mask, 4, 2, 1.0, False)
    with pytest.raises(RuntimeError, match="outside the cache"):
        kernels.attention_decode(qkv, torch.empty(0), torch.empty(0), k, v, torch.tensor([8]), mask, 3, 1, 1.0, False)


# ------------------------------------------------------------------------------------- repack

@pytest.mark.parametrize("K", [32, 96, 256, 320, 576, 2048])
def test_int4_block_pack_round_trip(K):
    q = torch.randint(0, 16, (5, K), dtype=torch.uint8)
    assert torch.equal(reference.unpack_int4_blocks(reference.pack_int4_blocks(q)), q)


@pytest.mark.parametrize("K", [32, 256, 320, 576])
def test_int8_group_pack_round_trip(K):
    q = torch.randint(-128, 128, (5, K), dtype=torch.int8)
    u = reference.pack_int8_groups(q)
    assert u.dtype == torch.uint8 and torch.equal(reference.unpack_int8_groups(u), q)
    K8 = K // 256 * 256
    assert torch.equal(u[:, K8:].to(torch.int16) - 128, q[:, K8:].to(torch.int16))  # left over: codes + 128
    if K8:  # in a group, byte 32 i + 4 j + e is column 4 i + e of block j
        i, j, e = 5, 3, 2
        assert int(u[0, 32 * i + 4 * j + e]) - 128 == int(q[0, 32 * j + 4 * i + e])


def test_int4_layout_interleaves_groups_of_eight_blocks():
    """The documented byte order: in a group, byte 32 t + 4 j + e holds columns 8 t + e (low nibble) and
    8 t + 4 + e (high) of block j; the blocks after the last whole group are GGUF's order."""
    K = 320  # one group of 8 blocks, then 2 plain blocks
    q = torch.randint(0, 16, (1, K), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    qs = reference.pack_int4_blocks(q)[0]
    for j in range(8):
        for t in range(4):
            for e in range(4):
                byte = int(qs[32 * t + 4 * j + e])
                assert (byte & 15, byte >> 4) == (int(q[0, 32 * j + 8 * t + e]), int(q[0, 32 * j + 8 * t + 4 + e]))
    for b in (8, 9):
        for i in range(16):
            byte = int(qs[128 + 16 * (b - 8) + i])
            assert (byte & 15, byte >> 4) == (int(q[0, 32 * b + i]), int(q[0, 32 * b + 16 + i]))


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("sym", [True, False])
def test_repack_lmforge_int4(group, sym):
    w = torch.randn(10, 256)
    packed, scales, zeros = formats.quantize_int4(w, group, sym)
    qs, s, m = kernels.repack_int4(packed, scales, zeros)
    assert s.dtype == m.dtype == torch.float32 and s.shape == (10, 256 // group)
    assert m.shape == ((10, 0) if sym else s.shape)  # symmetric: min = -8 s, not stored
    torch.testing.assert_close(reference.dequantize_int4_blocks(qs, s, m),
                               formats.dequantize_int4(packed, scales, zeros), rtol=0, atol=1e-6)


def test_repack_lmforge_int4_rejects_small_groups():
    packed, scales, zeros = formats.quantize_int4(torch.randn(4, 64), 16, sym=True)
    with pytest.raises(ValueError, match="multiple of 32"):
        kernels.repack_int4(packed, scales, zeros)


def test_repack_lmforge_int8():
    w = torch.randn(12, 96)
    q, scales = formats.quantize_int8(w)
    kq, ks = kernels.repack_int8(q, scales)
    assert ks.shape == (12, 1)
    torch.testing.assert_close(reference.dequantize_int8_blocks(kq, ks), formats.dequantize_int8(q, scales))


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q5_0", "Q8_0"])
def test_repack_gguf_blocks_match_gguf_dequantize(kind):
    """Bytes quantized by the gguf package come back, through our repack, as gguf's own dequantization."""
    from gguf import GGMLQuantizationType, quants

    qtype = GGMLQuantizationType[kind]
    w = np.random.default_rng(0).standard_normal((7, 320)).astype(np.float32)  # a group of 8 blocks and 2
    raw = torch.from_numpy(quants.quantize(w, qtype))  # uint8 [7, 10 * block bytes], as GGUFReader gives
    expected = torch.from_numpy(quants.dequantize(raw.numpy(), qtype)).reshape(7, 320)
    if kind in ("Q5_0", "Q8_0"):  # Q5_0: its codes - 16 as int8 codes
        repack = kernels.repack_gguf_q5_0 if kind == "Q5_0" else kernels.repack_gguf_q8_0
        for grouped, dtype in ((True, torch.uint8), (False, torch.int8)):
            q, s = repack(raw, grouped=grouped)
            assert q.dtype == dtype
            torch.testing.assert_close(reference.dequantize_int8_blocks(q, s), expected, rtol=0, atol=1e-6)
        q, s = repack(raw)  # the default: grouped where the native kernels have VNNI
        assert q.dtype == (torch.uint8 if kernels.backend() == "native" and build.builds_vnni() else torch.int8)
        got = reference.dequantize_int8_blocks(q, s)
    else:
        qs, s, m = (kernels.repack_gguf_q4_0 if kind == "Q4_0" else kernels.repack_gguf_q4_1)(raw)
        assert s.dtype == m.dtype == torch.float16
        got = reference.dequantize_int4_blocks(qs, s, m)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_repack_gguf_q4_k_is_exact():
    """Q4_K super-blocks (random bytes: every 6-bit scale and min pattern) repacked into int4 blocks with
    K-quant scales and mins give gguf's dequantization to the bit, and the native products agree with it."""
    from gguf import GGMLQuantizationType, quants

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (9, 3, 144), dtype=np.uint8)  # K = 768: 3 groups of 8 blocks
    for offset, value in ((0, 1e-3), (2, 7.5e-3)):  # d and dmin: finite, like a real file's
        blocks[..., offset:offset + 2] = np.frombuffer(np.float16(value).tobytes(), np.uint8)
    blocks[0, 1, 0:4] = 0  # d = dmin = 0: a block of zeros
    raw = torch.from_numpy(blocks.reshape(9, -1))
    expected = torch.from_numpy(quants.dequantize(raw.numpy(), GGMLQuantizationType.Q4_K)).reshape(9, 768)
    qs, s, m = kernels.repack_gguf_q4_k(raw, rows=4)  # in pieces of 4 rows: the last one short
    assert s.dtype == m.dtype == torch.uint8 and s.shape == m.shape == (9, 30)  # K-quant scales
    assert torch.equal(reference.dequantize_int4_blocks(qs, s, m), expected)
    x = torch.randn(3, 768)
    assert_matches_reference(kernels.int4_linear(x, qs, s, m, 32), x @ expected.T)
    with pytest.raises(ValueError, match="Q4_K"):
        kernels.repack_gguf_q4_k(torch.zeros(4, 143, dtype=torch.uint8))


def test_repack_gguf_q6_k_is_exact():
    """Q6_K super-blocks (random bytes: every code, high-bit pattern and signed sub-block scale, steps d of
    both signs) repacked into plain int8 codes with K-quant half-block scales give gguf's dequantization
    to the bit: the sign of d * sc moves onto the codes."""
    from gguf import GGMLQuantizationType, quants

    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 256, (9, 3, 210), dtype=np.uint8)
    d = np.where(rng.random((9, 3)) < 0.5, -3e-4, 3e-4).astype(np.float16)  # finite, like a file's
    blocks[..., 208:210] = d[..., None].view(np.uint8)
    raw = torch.from_numpy(blocks.reshape(9, -1))
    expected = torch.from_numpy(quants.dequantize(raw.numpy(), GGMLQuantizationType.Q6_K)).reshape(9, 768)
    q, s = kernels.repack_gguf_q6_k(raw, rows=4, grouped=False)  # in pieces of 4 rows: the last one short
    assert q.dtype == torch.int8 and s.dtype == torch.uint8 and s.shape == (9, 60)
    assert int(q.min()) == -32 and int(q.max()) == 32
    assert torch.equal(reference.dequantize_int8_blocks(q, s), expected)
    x = torch.randn(3, 768)
    assert_matches_reference(kernels.int8_linear(x, q, s, 32), x @ expected.T)
    with pytest.raises(ValueError, match="Q6_K"):
        kernels.repack_gguf_q6_k(torch.zeros(4, 209, dtype=torch.uint8))


def test_repack_gguf_q5_k_is_exact():
    """Q5_K super-blocks (random bytes: every code, high bit, 6-bit scale and min) repacked into plain
    int8 codes 0..31 with K-quant scales and mins give gguf's dequantization to the bit."""
    from gguf import GGMLQuantizationType, quants

    rng = np.random.default_rng(2)
    blocks = rng.integers(0, 256, (9, 3, 176), dtype=np.uint8)
    blocks[..., 0:2] = np.frombuffer(np.float16(3e-4).tobytes(), np.uint8)  # d
    blocks[..., 2:4] = np.frombuffer(np.float16(1e-3).tobytes(), np.uint8)  # dmin
    raw = torch.from_numpy(blocks.reshape(9, -1))
    expected = torch.from_numpy(quants.dequantize(raw.numpy(), GGMLQuantizationType.Q5_K)).reshape(9, 768)
    q, s, m = kernels.repack_gguf_q5_k(raw, rows=4, grouped=False)
    assert q.dtype == torch.int8 and s.dtype == m.dtype == torch.uint8 and s.shape == m.shape == (9, 30)
    assert torch.equal(kernels.repack_gguf_q5_k(raw, grouped=True)[0], reference.pack_int8_groups(q))
    assert int(q.min()) == 0 and int(q.max()) == 31
    assert torch.equal(reference.dequantize_int8_blocks(q, s, m), expected)
    x = torch.randn(3, 768)
    assert_matches_reference(kernels.int8_linear(x, q, s, 32, m), x @ expected.T)
    with pytest.raises(ValueError, match="Q5_K"):
        kernels.repack_gguf_q5_k(torch.zeros(4, 175, dtype=torch.uint8))


def test_repack_gguf_rejects_wrong_width():
    with pytest.raises(ValueError, match="Q4_0"):
        kernels.repack_gguf_q4_0(torch.zeros(4, 19, dtype=torch.uint8))


# ----------------------------------------------------------------------------- fallback, compile

def test_fallback_when_native_is_disabled():
    """LMFORGE_NO_NATIVE=1: one line on stderr, and the ops still work (through the reference)."""
    code = ("import torch; from lmforge import kernels; from lmforge.kernels import reference as r\n"
            "x = torch.randn(3, 64); q = torch.randint(-127, 128, (5, 64), dtype=torch.int8); s = torch.rand(5, 2)\n"
            "assert kernels.backend() == 'reference'\n"
            "assert torch.equal(kernels.int8_linear(x, q, s), r.int8_linear(x, q, s))\n"
            "f = torch.compile(lambda x: kernels.int8_linear(x, q, s), backend='eager', fullgraph=True)\n"
            "assert torch.equal(f(x), r.int8_linear(x, q, s))\n")
    env = {**os.environ, "LMFORGE_NO_NATIVE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    notices = [line for line in out.stderr.splitlines() if "lmforge:" in line]
    assert len(notices) == 1 and "LMFORGE_NO_NATIVE" in notices[0]


def test_fake_tensor_shapes():
    """Every op's fake (what torch.compile traces with) gives the real op's shape and dtype."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    kernels.backend()
    B, S, H, KV, hd, L = 2, 1, 4, 2, 16, 24
    calls = {
        "int4_linear": lambda: (torch.randn(2, 5, 64), torch.randint(0, 255, (9, 32), dtype=torch.uint8),
                                torch.rand(9, 2), torch.rand(9, 2)),
        "int8_linear": lambda: (torch.randn(3, 64), torch.randint(-9, 9, (7, 64), dtype=torch.int8), torch.rand(7, 2)),
        "dense_linear": lambda: (torch.randn(1, 3, 32), torch.randn(5, 32)),
        "rms_norm": lambda: (torch.randn(2, 3, 32), torch.rand(32), 1e-5),
        "silu_mul": lambda: (torch.randn(2, 1, 64),),
        "int4_rows": lambda: (torch.tensor([[1, 0]]), torch.randint(0, 255, (3, 16), dtype=torch.uint8),
                              torch.rand(3, 1), torch.rand(3, 1)),
        "int8_rows": lambda: (torch.tensor([2, 0]), torch.randint(-9, 9, (3, 32), dtype=torch.int8), torch.rand(3, 1)),
        "attention_decode": lambda: (torch.randn(B, S, H + 2 * KV, hd), torch.rand(B, S, 1, hd), torch.rand(B, S, 1, hd),
                                     torch.zeros(B, KV, L, hd), torch.zeros(B, KV, L, hd), torch.tensor([5]),
                                     torch.ones(B, 1, S, L, dtype=torch.bool), H, KV, 0.25, False),
    }
    assert set(calls) == set(kernels.SCHEMAS)
    for name, make in calls.items():
        op = getattr(torch.ops.lmforge, name)
        real = op(*make())
        with FakeTensorMode(allow_non_fake_inputs=True):
            fake = op(*make())
        assert (fake.shape, fake.dtype) == (real.shape, real.dtype), name


@pytest.mark.slow
def test_int4_linear_under_torch_compile(native):
    qs, s, m = random_int4(40, 128, 32, torch.float16)
    model = torch.nn.Sequential(torch.nn.Linear(16, 128))
    def f(x):
        return torch.relu(kernels.int4_linear(model(x), qs, s, m)) * 2

    compiled = torch.compile(f, fullgraph=True)
    x = torch.randn(3, 16)
    start = time.perf_counter()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), f(x), rtol=1e-5, atol=1e-5)
    print(f"compile + first call: {time.perf_counter() - start:.1f} s")


CPU_HAS_VNNI = bool({"avx512_vnni", "avx_vnni"} & build.cpu_flags())  # the plain AVX2 code is then another build


def _run_kernel_tests(env_change: dict[str, str]):
    """This file's and the native step's tests (but these) in a subprocess with another build, which
    must build: its tests would skip, not fail, on the reference fallback."""
    env = {**os.environ, **env_change}
    probe = subprocess.run([sys.executable, "-c", "from lmforge import kernels; print(kernels.backend())"],
                           env=env, capture_output=True, text=True, timeout=1200)
    assert probe.stdout.strip() == "native", probe.stdout[-2000:] + probe.stderr[-4000:]
    tests = [__file__, os.path.join(os.path.dirname(__file__), "test_native_step.py")]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow",
                        "-k", "not other_build", *tests], env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


@pytest.mark.skipif(not CPU_HAS_VNNI, reason="without VNNI the native build already is the plain AVX2 code")
def test_other_build_plain_avx2_matches_reference():
    """On a CPU with VNNI the integer products use it; the plain AVX2 code (maddubs + madd), which
    CPUs without it run, is built with -march=x86-64-v3 and put through the same tests, with the 256-bit
    prompt kernel."""
    _run_kernel_tests({build.ARCH_ENV: "x86-64-v3", build.PROMPT_ENV: "1"})


@pytest.mark.skipif(build.prompt256() or CPU_HAS_VNNI,
                    reason="the default build has the 256-bit prompt kernel, or the plain AVX2 build above does")
def test_other_build_prompt_kernel_matches_reference():
    """The 256-bit prompt kernel (dense.h, built for AMD CPUs) where the default build lacks it."""
    _run_kernel_tests({build.PROMPT_ENV: "1", build.ARCH_ENV: "x86-64-v3"})


@pytest.mark.skipif(not kernels.amx_products(), reason="the prompts' products do not run on AMX tiles here")
def test_other_build_without_amx_matches_reference():
    """Where prompts' products run on the AMX tiles, the vector tiles they replace (CPUs without AMX, or
    LMFORGE_KERNEL_AMX=0) are put through the same tests."""
    _run_kernel_tests({"LMFORGE_KERNEL_AMX": "0"})


@pytest.mark.parametrize("vendor,family,zmm,env,expected", [
    ("AuthenticAMD", "23", "", "", True),     # Zen 2: MKL's AMD path (benchmarks/RESULTS.md)
    ("AuthenticAMD", "26", "1", "", False),   # Zen 5 has the 512-bit one
    ("AuthenticAMD", "25", "2", "", True),
    ("GenuineIntel", "6", "", "", False),
    ("GenuineIntel", "6", "", "1", True),      # LMFORGE_KERNEL_PROMPT decides
    ("AuthenticAMD", "23", "", "0", False),
])
def test_prompt_kernel_chosen_by_cpu(monkeypatch, vendor, family, zmm, env, expected):
    flags = " ".join(sorted(build.ZMM_FLAGS | {"avx2", "fma", "f16c"})) if zmm else "avx2 fma f16c"
    monkeypatch.setattr(build, "_cpuinfo", lambda: {"vendor_id": vendor, "cpu family": family, "flags": flags})
    monkeypatch.setenv(build.PROMPT_ENV, env)
    monkeypatch.setenv(build.ZMM_ENV, zmm)
    monkeypatch.delenv(build.ARCH_ENV, raising=False)
    assert build.prompt256() == expected
    assert ("-DLMFORGE_PROMPT256=1" in build.cflags()) == expected


@pytest.mark.skipif(not build.ZMM_FLAGS <= build.cpu_flags(), reason="the CPU lacks AVX-512 VNNI")
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_other_build_vector_width_matches_reference(mode):
    """On a CPU with AVX-512 VNNI the grouped products run in 512-bit vectors, in 256-bit ones, or in
    512-bit ones only at several activation rows (build.zmm_mode); the modes the default build does not
    use are put through the same tests."""
    if mode == build.zmm_mode():
        pytest.skip("the default build, tested above")
    _run_kernel_tests({build.ZMM_ENV: str(mode)})


@pytest.mark.parametrize("vendor,family,extra,env,expected", [
    ("AuthenticAMD", "26", "", "", 1),    # Zen 5: full-width 512-bit units
    ("AuthenticAMD", "25", "", "", 2),    # Zen 4 splits 512-bit instructions in two: only the wide products
    ("GenuineIntel", "6", "", "", 0),
    ("GenuineIntel", "6", "", "1", 1),    # LMFORGE_KERNEL_ZMM decides
    ("GenuineIntel", "6", "amx_int8", "", 1),  # Sapphire Rapids on
    ("GenuineIntel", "6", "amx_int8", "0", 0),
    ("AuthenticAMD", "25", "", "0", 0),
    ("AuthenticAMD", "26", "", "2", 2),
])
def test_512_bit_products_chosen_by_cpu(monkeypatch, vendor, family, extra, env, expected):
    flags = " ".join(sorted(build.ZMM_FLAGS | {"avx2", "fma", "f16c", *extra.split()}))
    monkeypatch.setattr(build, "_cpuinfo", lambda: {"vendor_id": vendor, "cpu family": family, "flags": flags})
    monkeypatch.setenv(build.ZMM_ENV, env)
    monkeypatch.delenv(build.ARCH_ENV, raising=False)
    assert build.zmm_mode() == expected
    assert [f for f in build.cflags() if f.startswith("-DLMFORGE_ZMM")] == ([f"-DLMFORGE_ZMM={expected}"] if expected else [])
    monkeypatch.setattr(build, "_cpuinfo", lambda: {"vendor_id": vendor, "cpu family": family, "flags": "avx2 fma f16c"})
    assert build.zmm_mode() == 0  # never without AVX-512 VNNI
