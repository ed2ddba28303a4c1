"""Build (once, cached) and load the native kernels; report why not when they cannot be had.

The C++ sources are compiled with ``torch.utils.cpp_extension.load`` into a per-user cache directory
keyed by a hash of the sources, the torch version, the flags and the CPU's features (the code is built
with ``-march=native`` unless ``LMFORGE_KERNEL_ARCH`` names another), so a second process only loads
the shared library. Loading registers the ``lmforge::*`` ops (int4_linear, int8_linear, dense_linear,
rms_norm, silu_mul, attention_decode) with the dispatcher, and the ``lmforge.DecodePlan`` class.
"""
from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

import torch

CSRC = Path(__file__).parent / "csrc"
SOURCES = ("quant_linear.cpp", "quant_act_linear.cpp", "dense_linear.cpp", "attention.cpp", "decode_step.cpp")
HEADERS = ("amx.h", "simd.h", "qact.h", "dense.h", "attention.h", "layouts.h")
CFLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off",  # FMA only where written
          "-fopenmp")  # at::parallel_for is inline OpenMP code: without it, the ops run on one thread
REQUIRED_ISA = ("avx2", "fma", "f16c")
DISABLE_ENV = "LMFORGE_NO_NATIVE"
# -march for the build: "native" (default) uses all the CPU has (AVX-512 VNNI / AVX-VNNI integer dot
# products where present); "x86-64-v3" builds the plain AVX2 + FMA code, e.g. to test it on a newer CPU.
ARCH_ENV = "LMFORGE_KERNEL_ARCH"
# 512-bit integer products for the grouped layouts ("1" all, "2" those of several activation rows, "0"
# none; default: where measured to pay, see zmm_mode).
ZMM_ENV = "LMFORGE_KERNEL_ZMM"
ZMM_FLAGS = {"avx512bw", "avx512vl", "avx512_vnni"}
# dense_linear's own kernel for a prompt's fp32 products in 256-bit vectors ("1" on, "0" off; default:
# on AMD CPUs without the 512-bit one, see prompt256)
PROMPT_ENV = "LMFORGE_KERNEL_PROMPT"


def arch() -> str:
    """The -march the kernels are built for."""
    return os.environ.get(ARCH_ENV) or "native"


def cflags() -> tuple[str, ...]:
    zmm = zmm_mode()
    return (f"-march={arch()}", *CFLAGS, *((f"-DLMFORGE_ZMM={zmm}",) if zmm else ()),
            *(("-DLMFORGE_PROMPT256=1",) if prompt256() else ()))


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo; empty where unknown."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports in /proc/cpuinfo; empty where unknown."""
    return frozenset(_cpuinfo().get("flags", "").split())


def zmm_mode() -> int:
    """Which grouped integer products use 512-bit vectors (LMFORGE_ZMM in simd.h), on the native build
    for a CPU with AVX-512 VNNI: 1 every grouped tile, on AMD Zen 5 (family 26 on), whose 512-bit units
    run at full width (benchmarks/RESULTS.md: 0.7-0.8x the time of the 256-bit tiles); 2 only the int16
    products of two activation planes at several rows, on Zen 4 (family 25), which splits 512-bit
    instructions in two: there they take 0.88-0.95x the time of the 256-bit tiles at 4 rows and the
    other 512-bit tiles lose at one row; 1 also on Intel CPUs with AMX (Sapphire Rapids on, full-width
    512-bit units: on an Emerald Rapids VM prefill ran 1.4-2.1x and batch-4 decode 1.0-1.3x as fast as
    with the 256-bit tiles, batch-1 decode 1.04-1.2x); 0 elsewhere (an earlier Intel CPU, without AMX,
    was no faster with them). LMFORGE_KERNEL_ZMM=0 / 1 / 2 decides."""
    if arch() != "native" or not ZMM_FLAGS <= cpu_flags():
        return 0
    choice = os.environ.get(ZMM_ENV, "")
    if choice in ("0", "1", "2"):
        return int(choice)
    info = _cpuinfo()
    try:
        family = int(info.get("cpu family", "0"))
    except ValueError:
        return 0
    if info.get("vendor_id") == "GenuineIntel":
        return 1 if "amx_int8" in cpu_flags() else 0
    if info.get("vendor_id") != "AuthenticAMD" or family < 25:
        return 0
    return 1 if family >= 26 else 2


def prompt256() -> bool:
    """Whether dense_linear multiplies a prompt's fp32 rows with its own 256-bit kernel (LMFORGE_PROMPT256
    in dense.h) rather than ATen's GEMM: on AMD CPUs, where MKL's sgemm takes a slow generic path (Zen 2:
    the kernel ran 0.97-4.7x its speed at 8 to 384 rows, benchmarks/RESULTS.md), unless the 512-bit build
    has its own (zmm_mode 1, Zen 5). Intel CPUs keep MKL's. LMFORGE_KERNEL_PROMPT=1 / 0 decides."""
    choice = os.environ.get(PROMPT_ENV, "")
    if choice in ("0", "1"):
        return choice == "1"
    return _cpuinfo().get("vendor_id") == "AuthenticAMD" and zmm_mode() != 1


def builds_vnni() -> bool:
    """Whether the native build has VNNI integer dot products (the CPU has them and the build is for it)."""
    flags = cpu_flags()
    return arch() == "native" and ({"avx512_vnni", "avx512vl"} <= flags or "avx_vnni" in flags)


def describe_build() -> str:
    """The native build in words: its -march and the integer dot products it uses."""
    products = "AVX2 integer products (no VNNI)"
    if builds_vnni():
        products = "VNNI integer dot products" + {0: "", 1: ", 512-bit", 2: ", 512-bit at several rows"}[zmm_mode()]
    if zmm_mode() == 1:
        prompt = "own 512-bit kernel for fp32 prompts"
    elif prompt256():
        prompt = "own 256-bit kernel for fp32 prompts"
    else:
        prompt = "ATen's GEMM for fp32 prompts"
    return f"-march={arch()}, {products}, {prompt}"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lmforge" / "kernels"


def build_key(flags: frozenset[str]) -> str:
    """Hash of everything the built library depends on."""
    h = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        h.update((CSRC / name).read_bytes())
    h.update(torch.__version__.encode())
    h.update(" ".join((*cflags(), *sorted(flags))).encode())
    return h.hexdigest()[:16]


def unavailable_reason() -> str | None:
    """Why the native kernels cannot be built here, or None when they can be tried."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return f"{DISABLE_ENV} is set"
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"the kernels are for x86-64 CPUs, not {platform.machine()}"
    missing = [f for f in REQUIRED_ISA if f not in cpu_flags()]
    if missing:
        return f"the CPU lacks {', '.join(missing)}"
    return None


def load_native() -> str | None:
    """Build or load the library; None on success, else the reason it failed (one line)."""
    reason = unavailable_reason()
    if reason is not None:
        return reason
    from torch.utils.cpp_extension import load

    key = build_key(cpu_flags())
    build_dir = cache_root() / key
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        load(name=f"lmforge_kernels_{key}", sources=[str(CSRC / s) for s in SOURCES],
             extra_cflags=list(cflags()), extra_ldflags=["-fopenmp"], build_directory=str(build_dir), is_python_module=False,
             verbose=False)
    except Exception as e:  # no compiler, no ninja, a compile error: all mean "use the fallback"
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        return f"the build failed ({first[:200]}); see {build_dir}"
    return None
