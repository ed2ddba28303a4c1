"""Micro-benchmark of the quantized linear kernels against PyTorch's own CPU kernels (not a test).

For each weight shape [N, K] and batch M it prints the best time of one call (the machine may be shared), the weight bytes it
reads per second (GB/s; the number that matters for M = 1 decode, where reading the weights is the
whole cost) and GFLOP/s (2 M N K / t, the number for prefill). PyTorch's int8/int4 kernels take bf16
activations; ours and F.linear take fp32.

    python benchmarks/kernels.py [--threads 2] [--shapes 1536x576,576x1536,5632x2048] [--m 1,16,128]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lmforge import kernels
from lmforge.quant import formats


def best_seconds(fn, min_time: float = 0.3, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def cases(N: int, K: int, M: int):
    """(name, bytes of weight data read, callable) for every kernel on one random [N, K] weight."""
    w = torch.randn(N, K) * 0.02
    x = torch.randn(M, K)
    xb = x.bfloat16()
    gs = 32

    packed, scales, zeros = formats.quantize_int4(w, gs, sym=False)
    qs, s4, m4 = kernels.repack_int4(packed, scales, zeros)
    s4, m4 = s4.half(), m4.half()  # the GGUF Q4_1 layout: fp16 scale and min per 32 weights
    q8, s8 = formats.quantize_int8(w)
    s8_blocks = s8.half()[:, None].expand(N, K // 32).contiguous()  # Q8_0-sized scales
    yield "F.linear fp32", N * K * 4, lambda: F.linear(x, w)
    yield "lmforge dense fp32", N * K * 4, lambda: kernels.dense_linear(x, w)
    for bits in (32, 16, 8):  # the activation modes (--act-bits); 16 and 8 apply below 32 rows
        yield f"lmforge int8 (Q8_0) a{bits}", N * K + N * K // 32 * 2, \
            lambda bits=bits: kernels.int8_linear(x, q8, s8_blocks, bits)
        yield f"lmforge int4 (Q4_1) a{bits}", N * K // 2 + N * K // 32 * 4, \
            lambda bits=bits: kernels.int4_linear(x, qs, s4, m4, bits)
    if K % 16 == 0:
        sb = s8.bfloat16()
        yield "torch int8pack bf16", N * K + N * 2, lambda: torch._weight_int8pack_mm(xb, q8, sb)
    tw = formats.int4_kernel_pack(packed, scales, zeros)
    if tw is not None:
        tq, sz = tw[0], tw[1].bfloat16()
        yield "torch int4pack bf16", N * K // 2 + N * K // gs * 4, \
            lambda: torch._weight_int4pack_mm_for_cpu(xb, tq, gs, sz)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--shapes", default="1536x576,576x1536,5632x2048", help="NxK weight shapes")
    ap.add_argument("--m", default="1,16,128", help="batch sizes (rows of x)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"kernels backend: {kernels.backend()}, threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"{'shape NxK':>11} {'M':>4}  {'kernel':<24} {'us':>9} {'GB/s':>7} {'GFLOP/s':>8}")
    for shape in args.shapes.split(","):
        N, K = (int(v) for v in shape.split("x"))
        for M in (int(v) for v in args.m.split(",")):
            for name, nbytes, fn in cases(N, K, M):
                with torch.inference_mode():
                    t = best_seconds(fn)
                print(f"{shape:>11} {M:>4}  {name:<24} {t * 1e6:9.1f} {nbytes / t / 1e9:7.1f} "
                      f"{2 * M * N * K / t / 1e9:8.1f}")


if __name__ == "__main__":
    main()
