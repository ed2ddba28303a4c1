"""lmforge's own model folder: what ``lmforge quantize`` writes and every command loads by path.

    DIR/lmforge.json           {"format": "lmforge", "format_version": 1, "lmforge_version": ...,
                                "config": <ModelConfig fields>, "quantization": {...} | null,
                                "source": <where the weights came from>}
    DIR/model.safetensors      tensors under lmforge parameter names (layers.0.attn.wqkv.qweight, ...)
    DIR/tokenizer.json         the source's tokenizer (also for GGUF sources: saved from `tokenizers`)
    DIR/tokenizer_config.json  chat template and special tokens

The quantization block names the runtime format of the decoder Linears ("int8", "int4", "w8a8",
"fp8"), the int4 group size, and how the weights were made (method, bits, scheme, alpha,
calibration file, samples, sequence length). Optional per-layer tensors (bias, input_scale, perm,
act_scale) are recognised by their presence in model.safetensors.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


from ..config import ModelConfig
from ..errors import LmforgeError
from .hf import read_json

MANIFEST = "lmforge.json"
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1


def is_native(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).exists()


def config_to_json(cfg: ModelConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_json(data: dict[str, Any], where: Path) -> ModelConfig:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise LmforgeError(f"{where}: unknown config fields {', '.join(unknown)}; the folder was written by a "
                           "newer lmforge, upgrade lmforge")
    data = dict(data)
    data["eos_token_ids"] = tuple(data.get("eos_token_ids") or ())
    try:
        return ModelConfig(**data)
    except (TypeError, ValueError) as e:
        raise LmforgeError(f"{where}: invalid config ({e})") from None


# ------------------------------------------------------------------------------------ writing

def save_tokenizer(tokenizer, folder: Path) -> None:
    """tokenizer.json + tokenizer_config.json from an lmforge Tokenizer, whatever it was read from.
    A tokenizer that adds BOS in code (GGUF add_bos_token) gets it as a post-processor instead, so
    the saved tokenizer.json encodes exactly the same ids on its own."""
    from tokenizers import processors

    tk = tokenizer.tk
    if tokenizer.add_bos and tokenizer.bos_token and tokenizer.bos_id is not None:
        tk = type(tk).from_str(tk.to_str())  # a copy: the loaded model's tokenizer stays as it is
        bos = processors.TemplateProcessing(single=f"{tokenizer.bos_token} $A",
                                            pair=f"{tokenizer.bos_token} $A $B",
                                            special_tokens=[(tokenizer.bos_token, tokenizer.bos_id)])
        tk.post_processor = bos if tk.post_processor is None else processors.Sequence([tk.post_processor, bos])
    tk.save(str(folder / "tokenizer.json"))
    config = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
              "chat_template": tokenizer.chat_template}
    (folder / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None},
                                                             indent=2, ensure_ascii=False), encoding="utf-8")


def save_native(model, tokenizer, output: Path, quantization: dict | None, source: str,
                force: bool = False) -> Path:
    """Write the folder atomically: everything goes to a temporary folder beside `output`, renamed
    at the end; an error or Ctrl-C on the way leaves no output folder behind."""
    from safetensors.torch import save_file

    from .. import __version__

    output = Path(output)
    check_output(output, force)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        if model.cfg.tie_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "producer": f"lmforge {__version__}"})
        dtype = str(model.embed.weight.dtype).removeprefix("torch.")
        manifest = {"format": "lmforge", "format_version": FORMAT_VERSION, "lmforge_version": __version__,
                    "config": config_to_json(model.cfg), "dtype": dtype, "quantization": quantization,
                    "source": source}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        if not isinstance(tokenizer, Exception):
            save_tokenizer(tokenizer, tmp)
        _default_permissions(tmp)
        if output.exists():  # --force: replace the old folder only now that the new one is complete
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def _default_permissions(folder: Path) -> None:
    """mkdtemp makes a private folder; give it (and its files) the modes the user's umask asks for."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def check_output(output: Path, force: bool) -> None:
    if output.exists() and not force:
        raise LmforgeError(f"output folder {output} already exists; choose another --output or pass --force "
                           "to replace it")
    if output.exists() and not output.is_dir():
        raise LmforgeError(f"{output} exists and is not a folder; choose another --output")


# ------------------------------------------------------------------------------------ reading

class LmforgeSource:
    format = "lmforge"

    def __init__(self, folder: Path):
        self.path = Path(folder)
        manifest = read_json(self.path / MANIFEST)
        if manifest.get("format") != "lmforge" or manifest.get("format_version", 0) > FORMAT_VERSION:
            raise LmforgeError(f"{self.path / MANIFEST}: not an lmforge folder of a version this lmforge reads "
                               f"(format_version {manifest.get('format_version')}); upgrade lmforge")
        self.manifest = manifest
        self.config: ModelConfig = config_from_json(manifest.get("config") or {}, self.path / MANIFEST)
        self.quantization: dict | None = manifest.get("quantization")
        weights = self.path / WEIGHTS
        if not weights.exists():
            raise LmforgeError(f"{self.path}: no {WEIGHTS}; the folder is incomplete, quantize or convert again")
        self.files = [weights]

    def tensors(self):
        from .hf import iter_tensors
        return iter_tensors(self.files)

    def match(self, name: str):
        return name, None, None  # stored under lmforge names already

    def prepare(self, model, dtype=None) -> None:
        """Swap the decoder Linears of the meta-device model for the stored quantized modules."""
        if self.quantization:
            from ..quant.linear import empty_quantized
            from safetensors import safe_open
            with safe_open(str(self.files[0]), framework="pt") as f:
                names = set(f.keys())
            empty_quantized(model, self.quantization, names, str(self.path))

    def tokenizer(self):
        from ..tokenizer import Tokenizer
        return Tokenizer.from_hf_folder(self.path, self.config)

    def describe(self) -> dict[str, Any]:
        q = self.quantization
        summary = None
        if q:
            summary = f"{q.get('method')} -> {q.get('format')}" + (
                f", group {q.get('group_size')}" if q.get("format") == "int4" else "") + (
                f", {q.get('scheme')}" if q.get("format") == "int4" else "")
        return {"format": f"lmforge folder v{self.manifest.get('format_version')}",
                "file_dtype": self.manifest.get("dtype"), "quantization": summary}
