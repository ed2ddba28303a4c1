"""Throughput of the integer-activation tiles on one random weight (not a test): ns per 32-weight block
and activation row, the number RESULTS.md quotes for the int4 and int8 tiles. Run with --threads 1 and
a weight that fits the L2 cache to see the arithmetic alone.

    python benchmarks/int_tiles.py [--n 4096] [--k 576] [--threads 1] [--grouped-int8]
"""
from __future__ import annotations

import argparse
import time

import torch

from lmforge import kernels
from lmforge.kernels import reference


def seconds(fn, n: int = 200) -> float:
    """The 20th percentile of n timed calls (the machine may be shared)."""
    for _ in range(10):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[n // 5]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--k", type=int, default=576)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--grouped-int8", action="store_true", help="the int8 weight in the grouped layout (uint8)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    N, K, g = args.n, args.k, torch.Generator().manual_seed(0)
    qs = reference.pack_int4_blocks(torch.randint(0, 16, (N, K), dtype=torch.uint8, generator=g))
    scales = (torch.rand(N, K // 32, generator=g) * 0.1).half()
    mins = (-torch.rand(N, K // 32, generator=g)).half()
    q8 = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
    if args.grouped_int8:
        q8 = reference.pack_int8_groups(q8)
    print(f"[{N}, {K}] weight, {args.threads} thread(s), {kernels.describe()}")
    for M in (1, 4):
        x = torch.randn(M, K, generator=g)
        for bits in (16, 8):
            t4 = seconds(lambda: kernels.int4_linear(x, qs, scales, mins, bits))
            t8 = seconds(lambda: kernels.int8_linear(x, q8, scales, bits))
            per = args.threads * 1e9 / (N * K / 32 * M)  # ns per block and row, on one thread
            print(f"  {M} row(s), act-bits {bits}: int4 {t4 * 1e6:7.1f} us ({t4 * per:.2f} ns/block/row)  "
                  f"int8 {t8 * 1e6:7.1f} us ({t8 * per:.2f} ns/block/row)")


if __name__ == "__main__":
    main()
