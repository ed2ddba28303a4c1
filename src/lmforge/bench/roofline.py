"""The machine's limits: sustained memory read bandwidth and fp32 matmul throughput.

Measured once per machine (CPU model, CPU count, memory, GPU, thread count) and cached as JSON in
``$LMFORGE_CACHE_DIR`` (default ``~/.cache/lmforge``), so each benchmark result can say how close it
comes to what the hardware allows. ``lmforge bench --roofline`` measures again.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from .env import cpu_info, gpu_name

MiB = 1 << 20


def cache_dir() -> Path:
    env = os.environ.get("LMFORGE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "lmforge"


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def _llc_bytes() -> int:
    """Size of the largest CPU cache level (0 when the OS does not say)."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return max(sizes, default=0)


def machine_key(device: torch.device) -> str:
    """A short hash naming this machine and thread count (the measured limits depend on both)."""
    cpu = cpu_info()
    ident = [cpu["model"], cpu["logical_cpus"], _memory_bytes(), gpu_name(device), torch.get_num_threads()]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:12]


def cache_path(device: torch.device) -> Path:
    return cache_dir() / f"roofline-{machine_key(device)}.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Shortest wall time of `repeats` calls after one untimed warm-up call."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def buffer_bytes(device: torch.device) -> int:
    """Working-set size: 2x the last-level cache, at least 256 MiB, at most 1 GiB or 1/8 of memory."""
    if device.type == "cuda":
        return 1024 * MiB
    want = max(2 * _llc_bytes(), 256 * MiB)
    return min(want, 1024 * MiB, _memory_bytes() // 8 or want)


def read_bandwidth(buffer: torch.Tensor, repeats: int = 5) -> float:
    """Bytes per second read by a sum over `buffer` (best of `repeats`)."""
    return buffer.numel() * buffer.element_size() / _best_time(buffer.sum, buffer.device, repeats)


def copy_bandwidth(buffer: torch.Tensor, repeats: int = 5) -> float:
    """Bytes per second moved (read + written) by copying the first half of `buffer` onto the second."""
    half = buffer.numel() // 2
    src, dst = buffer[:half], buffer[half:2 * half]
    return 2 * half * buffer.element_size() / _best_time(lambda: dst.copy_(src), buffer.device, repeats)


def matmul_flops(device: torch.device, n: int = 1024, repeats: int = 5) -> float:
    """fp32 floating-point operations per second of an n x n x n matmul (best of `repeats`)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return 2 * n ** 3 / _best_time(lambda: a @ b, device, repeats)


def measure(device: torch.device) -> dict:
    """Measure the limits now (a few seconds)."""
    nbytes = buffer_bytes(device)
    buffer = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    n = 4096 if device.type == "cuda" else 1024
    return {
        "read_bandwidth_bytes_per_s": read_bandwidth(buffer),
        "copy_bandwidth_bytes_per_s": copy_bandwidth(buffer),
        "fp32_matmul_flops_per_s": matmul_flops(device, n),
        "buffer_bytes": nbytes,
        "matmul_n": n,
        "device": str(device),
        "gpu": gpu_name(device),
        "cpu": cpu_info()["model"],
        "threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def load_or_measure(device: torch.device, refresh: bool = False,
                    measure_fn: Callable[[torch.device], dict] = measure,
                    on_measure: Callable[[], None] | None = None) -> dict:
    """The cached limits of this machine, measured (and cached) first when missing or `refresh`."""
    from .report import write_atomic

    path = cache_path(device)
    if not refresh and path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            pass  # a damaged cache is measured again
    if on_measure is not None:
        on_measure()
    result = measure_fn(device)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(result, indent=2) + "\n")
    except OSError:
        pass  # an unwritable cache only costs a re-measurement next time
    return result
