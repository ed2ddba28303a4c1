"""HF ``architectures[0]`` -> family adapter. An explicit table: a family is never guessed from a path."""
from __future__ import annotations

import importlib

from ..errors import LmforgeError
from .base import Family

# architecture name -> module in lmforge.models that defines FAMILY
ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "llama",
    "Qwen3ForCausalLM": "llama",
    "GPTNeoXForCausalLM": "gpt_neox",
    "GPTJForCausalLM": "gptj",
    "GPT2LMHeadModel": "gpt2",
    "OPTForCausalLM": "opt",
    "FalconForCausalLM": "falcon",
    "CodeGenForCausalLM": "codegen",
    "BloomForCausalLM": "bloom",
    "MptForCausalLM": "mpt",
    "MPTForCausalLM": "mpt",  # MosaicML's own configs spell it this way
    "PhiForCausalLM": "phi",
}


def supported() -> list[str]:
    return sorted(ARCHITECTURES)


def family_for(architecture: str) -> Family:
    module = ARCHITECTURES.get(architecture)
    if module is None:
        raise LmforgeError(
            f"unsupported architecture {architecture!r}; supported: {', '.join(supported())}")
    return importlib.import_module(f"{__package__}.{module}").FAMILY
