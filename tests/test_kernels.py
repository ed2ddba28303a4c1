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
from lmforge.kernels import reference
from lmforge.quant import formats

# (M, N, K): odd M, N not a multiple of 4 or 8, M = 1 decode, M >= 32 (the dequantized-GEMM path)
SHAPES = [(1, 64, 32), (1, 13, 96), (3, 37, 128), (5, 1, 64), (7, 96, 256), (33, 21, 128), (40, 72, 192)]


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


@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_int8_linear_matches_reference(native, M, N, K, dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(M, K, generator=g)
    q = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g)  # -128 too: the sign trick
    for group in (32, K):
        scales = (torch.rand(N, K // group, generator=g) * 0.01).to(dtype)
        assert_matches_reference(kernels.int8_linear(x, q, scales), reference.int8_linear(x, q, scales))


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


# ------------------------------------------------------------------------------------- repack

def test_int4_block_pack_round_trip():
    q = torch.randint(0, 16, (5, 96), dtype=torch.uint8)
    assert torch.equal(reference.unpack_int4_blocks(reference.pack_int4_blocks(q)), q)


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("sym", [True, False])
def test_repack_lmforge_int4(group, sym):
    w = torch.randn(10, 256)
    packed, scales, zeros = formats.quantize_int4(w, group, sym)
    qs, s, m = kernels.repack_int4(packed, scales, zeros)
    assert s.dtype == m.dtype == torch.float32 and s.shape == (10, 256 // group)
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


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0"])
def test_repack_gguf_blocks_match_gguf_dequantize(kind):
    """Bytes quantized by the gguf package come back, through our repack, as gguf's own dequantization."""
    from gguf import GGMLQuantizationType, quants

    qtype = GGMLQuantizationType[kind]
    w = np.random.default_rng(0).standard_normal((7, 128)).astype(np.float32)
    raw = torch.from_numpy(quants.quantize(w, qtype))  # uint8 [7, 4 * block bytes], as GGUFReader gives
    expected = torch.from_numpy(quants.dequantize(raw.numpy(), qtype)).reshape(7, 128)
    if kind == "Q8_0":
        q, s = kernels.repack_gguf_q8_0(raw)
        got = reference.dequantize_int8_blocks(q, s)
    else:
        qs, s, m = (kernels.repack_gguf_q4_0 if kind == "Q4_0" else kernels.repack_gguf_q4_1)(raw)
        assert s.dtype == m.dtype == torch.float16
        got = reference.dequantize_int4_blocks(qs, s, m)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


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
    from torch._subclasses.fake_tensor import FakeTensorMode

    kernels.backend()
    with FakeTensorMode():
        x = torch.empty(2, 5, 64)
        y = torch.ops.lmforge.int4_linear(x, torch.empty(9, 32, dtype=torch.uint8), torch.empty(9, 2),
                                          torch.empty(9, 2))
        assert y.shape == (2, 5, 9)


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
