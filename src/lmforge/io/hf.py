"""Hugging Face folders: config.json, (sharded) safetensors or .bin pickles, tokenizer files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import ModelConfig
from ..errors import LmforgeError
from ..models.layers import rope_inv_freq
from ..models.registry import family_for


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise LmforgeError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint files of a folder, in a stable order; safetensors preferred over pickles."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.exists():
            shards = sorted(set(read_json(index).get("weight_map", {}).values()))
            missing = [s for s in shards if not (folder / s).exists()]
            if missing:
                raise LmforgeError(f"{folder}: shard(s) listed in {index_name} are missing: {', '.join(missing)}")
            return [folder / s for s in shards]
    for pattern in ("model.safetensors", "*.safetensors", "pytorch_model.bin", "*.bin"):
        files = sorted(folder.glob(pattern))
        if files:
            return files
    raise LmforgeError(f"{folder}: no weights found (expected model.safetensors, sharded safetensors "
                       "with model.safetensors.index.json, or pytorch_model.bin)")


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from each file; safetensors are memory-mapped, not read whole."""
    from safetensors import safe_open

    for path in files:
        if path.suffix == ".safetensors":
            try:
                f = safe_open(str(path), framework="pt")
                names = list(f.keys())
            except Exception as e:  # safetensors raises its own error types
                raise LmforgeError(f"{path}: not a readable safetensors file ({e}); "
                                   "the file may be truncated or corrupt, re-download or re-save it") from None
            for name in names:
                try:
                    yield name, f.get_tensor(name)
                except Exception as e:
                    raise LmforgeError(f"{path}: cannot read tensor {name!r} ({e}); "
                                       "the file may be truncated or corrupt") from None
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:
                raise LmforgeError(f"{path}: cannot load as a PyTorch checkpoint ({e}); "
                                   "only plain tensors are accepted (weights_only=True)") from None
            yield from state.items()


class HFSource:
    format = "hf"

    def __init__(self, folder: Path, weights: bool = True):
        """weights=False: the config (and tokenizer) alone, for a model with random weights."""
        self.path = folder
        cfg_path = folder / "config.json"
        if not cfg_path.exists():
            raise LmforgeError(f"{folder}: no config.json; a Hugging Face model folder needs config.json, "
                               "weights (safetensors) and tokenizer.json")
        self.hf_config = read_json(cfg_path)
        archs = self.hf_config.get("architectures") or []
        if not archs:
            raise LmforgeError(f"{cfg_path}: no 'architectures' entry; cannot tell which model family this is")
        self.family = family_for(archs[0])
        try:
            config = self.family.config_from_hf(self.hf_config)
            if config.pos == "rope":
                rope_inv_freq(config)  # an unsupported rope scaling is reported now, not at build time
        except KeyError as e:
            raise LmforgeError(f"{cfg_path}: missing key {e} for {archs[0]}") from None
        except NotImplementedError as e:
            raise LmforgeError(f"{cfg_path}: {e}") from None
        self.generation_config = read_json(folder / "generation_config.json") \
            if (folder / "generation_config.json").exists() else {}
        gen_eos = self.generation_config.get("eos_token_id")
        if gen_eos is not None:
            gen_eos = tuple(gen_eos) if isinstance(gen_eos, list) else (gen_eos,)
            config = config.replace(eos_token_ids=tuple(dict.fromkeys(config.eos_token_ids + gen_eos)))
        self.config: ModelConfig = config
        self.files = weight_files(folder) if weights else []

    def tensors(self):
        return iter_tensors(self.files)

    def match(self, name: str):
        return self.family.match(name)

    def tokenizer(self):
        from ..tokenizer import Tokenizer
        return Tokenizer.from_hf_folder(self.path, self.config)

    def describe(self) -> dict[str, Any]:
        return {"format": "Hugging Face folder" if self.files else "Hugging Face config.json, random weights",
                "file_dtype": self.hf_config.get("torch_dtype") or self.hf_config.get("dtype"),
                "quantization": self.hf_config.get("quantization_config")}
