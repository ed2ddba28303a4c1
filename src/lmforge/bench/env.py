"""The environment every benchmark result records: software versions, CPU, GPU, threads, date."""
from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import torch

# /proc/cpuinfo flags that decide which matmul kernels a CPU can run
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "avx_vnni",
             "amx_tile", "amx_bf16", "amx_int8")


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """CPU model name, logical CPU count and the ISA flags of ISA_FLAGS it has."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return {"model": model, "logical_cpus": os.cpu_count(), "isa": [f for f in ISA_FLAGS if f in flags]}


def gpu_name(device: torch.device) -> str | None:
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_name(device)


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the lmforge checkout this code runs from (with "-dirty" for local changes);
    None for an installed wheel."""
    package = Path(__file__).resolve().parents[1]
    root = package.parents[1]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def environment(device: torch.device, dtype: torch.dtype, quantization, decode_step: str | None = None,
                kernels: str | None = None, kv_dtype: torch.dtype | None = None) -> dict:
    """What a reader needs to reproduce (or distrust) a number."""
    from .. import __version__

    return {
        "lmforge_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "os": platform.platform(),
        "cpu": cpu_info()["model"],
        "logical_cpus": cpu_info()["logical_cpus"],
        "cpu_isa": cpu_info()["isa"],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": gpu_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "kv_cache_dtype": str(kv_dtype or dtype).removeprefix("torch."),
        "quantization": quantization,
        "decode_step": decode_step,
        "kernels": kernels,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
