"""GGUF files (llama.cpp): metadata -> ModelConfig, tensors (native blocks or dequantized), embedded tokenizer.

The file is memory-mapped by ``gguf.GGUFReader``. Linear weights in Q4_0, Q4_1, Q4_K, Q5_0, Q5_K, Q6_K and Q8_0
run natively: ``tensors()`` repacks their blocks into the layouts of lmforge's kernels (``BlockInt4Linear`` /
``BlockInt8Linear``; the token embedding becomes a ``BlockEmbedding``, which is also the head when the
model ties them) and they are never expanded to floats. Every other type (F16, BF16, Q3_K, ...) is
dequantized one tensor per step, so only the mapped bytes and one float copy of the tensor at hand
exist at a time. ``GGUFSource(path, native=False)`` dequantizes everything (to quantize or merge an
adapter into the weights, or to compare with a reference on the same float weights).

A GGUF architecture is a ``models.base.Family`` whose ``config_from_hf`` reads GGUF metadata instead of
a config.json, and whose rules rename llama.cpp's tensor names (``blk.N.attn_q.weight``). Facts that the
metadata leaves out (vocabulary size, tied head, biases) are read from the tensor table.
"""
from __future__ import annotations

import collections
import math
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..config import ModelConfig
from ..errors import LmforgeError
from ..models.base import FUSED_PARTS, Family, Rule

# metadata arrays read only when the tokenizer is built (large: one entry per token or merge)
VOCAB_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges")

# the types ``tensors()`` is tested on; any other type ``gguf.quants`` can dequantize also loads
TESTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q5_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K")

# GGUF types executed natively -> the kernel format they are repacked into
# (q4s: int4 with min = -8 scale, no mins read; q4k: int4 with K-quant scales and mins, each Q4_K
# sub-block of 32 weights one block; Q5_0's 5-bit codes - 16 are int8 codes; q5k: int8 codes 0..31 with
# K-quant scales and mins, each Q5_K sub-block one block; q6k: int8 with K-quant half-block
# scales, one per 16 columns, Q6_K's codes - 32 and sub-block scales)
NATIVE_TYPES = {"Q4_0": "q4s", "Q4_1": "q4", "Q4_K": "q4k", "Q5_0": "q8", "Q5_K": "q5k", "Q6_K": "q6k",
                "Q8_0": "q8"}
NATIVE_TENSORS = {kind: ("qs", "scales", "mins") for kind in ("q4", "q4s", "q4k")}  # q4s: mins [N, 0]
NATIVE_TENSORS.update({kind: ("q", "scales", "mins") for kind in ("q8", "q5k", "q6k")})  # q8, q6k: mins [N, 0]
# GGUFSource.tensors() names the joined parts of a PartsLinear with this prefix (no GGUF name has it)
PARTS_PREFIX = "lmforge-parts:"


# ------------------------------------------------------------------------------------ reading

def open_reader(path: Path):
    """A memory-mapped ``GGUFReader``; a bad or truncated file is an LmforgeError."""
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError, IndexError, struct/numpy errors
        raise LmforgeError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e}); "
                           "the file may be truncated or corrupt, re-download it") from None


def read_metadata(reader, arrays: tuple[str, ...] = ()) -> dict[str, Any]:
    """GGUF key -> value (scalars, strings, small arrays); the big vocabulary arrays only when named."""
    meta = {}
    for key, field in reader.fields.items():
        if key in VOCAB_ARRAYS and key not in arrays:
            continue
        meta[key] = field.contents()
    return meta


# ------------------------------------------------------------------------ q/k row permutation

def rope_rows(n_heads: int, head_dim: int) -> torch.Tensor:
    """Row order that undoes llama.cpp's q/k permutation.

    llama.cpp's converter reorders each head's rows from halves (x0..x_{d/2-1} | x_{d/2}..) to
    interleaved pairs for its rope; ``w_hf = w_gguf[rope_rows(...)]``. Only whole rows move, so this
    applies as well to rows of quantized blocks."""
    rows = torch.arange(n_heads * head_dim)
    return rows.reshape(n_heads, head_dim // 2, 2).transpose(1, 2).reshape(-1)  # [H * hd]


def unpermute_q(t: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    return t[rope_rows(cfg.n_heads, cfg.head_dim)]


def unpermute_k(t: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    return t[rope_rows(cfg.n_kv_heads, cfg.head_dim)]


# ------------------------------------------------------------------------------ architectures

def llama_config(meta: dict[str, Any], arch: str, hf_architecture: str) -> ModelConfig:
    """ModelConfig from ``{arch}.*`` keys; shared by llama (Llama, Mistral), qwen2 and qwen3."""
    def key(name, default=None):
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise KeyError(f"{arch}.{name}")
        return value

    n_heads = key("attention.head_count")
    n_kv_heads = key("attention.head_count_kv", n_heads)
    if not isinstance(n_kv_heads, int):
        raise NotImplementedError("a per-layer attention.head_count_kv is not supported")
    dim = key("embedding_length")
    head_dim = meta.get(f"{arch}.attention.key_length") or dim // n_heads
    return ModelConfig(
        architecture=hf_architecture,
        vocab_size=meta.get(f"{arch}.vocab_size", 0),  # GGUFSource takes it from token_embd's shape
        dim=dim,
        n_layers=key("block_count"),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        hidden_dim=key("feed_forward_length"),
        max_seq_len=key("context_length", 2048),
        norm="rms",
        norm_eps=key("attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=float(key("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(meta, arch),
        act="silu",
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=tuple(meta[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                              "tokenizer.ggml.eom_token_id") if meta.get(k) is not None),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
        extra={"gguf_architecture": arch},
    )


def _rope_scaling(meta: dict[str, Any], arch: str) -> dict | None:
    kind = meta.get(f"{arch}.rope.scaling.type", "none")
    if kind == "none":
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(meta[f"{arch}.rope.scaling.factor"])}
    raise NotImplementedError(f"rope scaling {kind!r} is not supported (supported: linear, llama3)")


def gguf_rules(permuted_qk: bool) -> tuple[Rule, ...]:
    """llama.cpp tensor names -> lmforge names, for the llama-style block layout."""
    b = r"blk\.(\d+)\."
    part = r"\.(weight|bias|qs|q|scales|mins)"  # a float weight, a bias, or a part of a native weight
    q, k = (unpermute_q, unpermute_k) if permuted_qk else (None, None)
    return (
        Rule(r"token_embd\.weight", "embed.weight"),
        Rule(r"token_embd\.(qs|q|scales|mins)", "embed.table.{0}"),  # a BlockEmbedding
        Rule(b + r"attn_norm\.weight", "layers.{0}.attn_norm.weight"),
        Rule(b + r"ffn_norm\.weight", "layers.{0}.mlp_norm.weight"),
        Rule(b + r"attn_q" + part, "layers.{0}.attn.wqkv.{1}", "q", q),
        Rule(b + r"attn_k" + part, "layers.{0}.attn.wqkv.{1}", "k", k),
        Rule(b + r"attn_v" + part, "layers.{0}.attn.wqkv.{1}", "v"),
        Rule(b + r"attn_output" + part, "layers.{0}.attn.wo.{1}"),
        Rule(b + r"attn_q_norm\.weight", "layers.{0}.attn.q_norm.weight"),  # qwen3
        Rule(b + r"attn_k_norm\.weight", "layers.{0}.attn.k_norm.weight"),
        Rule(b + r"ffn_gate" + part, "layers.{0}.mlp.w_in.{1}", "gate"),
        Rule(b + r"ffn_up" + part, "layers.{0}.mlp.w_in.{1}", "up"),
        Rule(b + r"ffn_down" + part, "layers.{0}.mlp.w_out.{1}"),
        Rule(r"output_norm\.weight", "norm.weight"),
        Rule(r"output" + part, "lm_head.{0}"),
    )


def _family(arch: str, hf_architecture: str, permuted_qk: bool) -> Family:
    return Family(name=arch, architectures=(arch,),
                  config_from_hf=partial(llama_config, arch=arch, hf_architecture=hf_architecture),
                  rules=gguf_rules(permuted_qk),
                  ignore=(r"rope_freqs\.weight",))  # read into the config by GGUFSource


# GGUF ``general.architecture`` -> family. llama.cpp permutes q/k rows for llama, not for qwen2 / qwen3
# (NeoX rope).
GGUF_ARCHITECTURES: dict[str, Family] = {
    "llama": _family("llama", "LlamaForCausalLM", permuted_qk=True),
    "qwen2": _family("qwen2", "Qwen2ForCausalLM", permuted_qk=False),
    "qwen3": _family("qwen3", "Qwen3ForCausalLM", permuted_qk=False),
}


def family_for_gguf(arch: str, path: Path) -> Family:
    family = GGUF_ARCHITECTURES.get(arch)
    if family is None:
        raise LmforgeError(f"{path}: unsupported GGUF architecture {arch!r}; supported: "
                           f"{', '.join(sorted(GGUF_ARCHITECTURES))}")
    return family


# ------------------------------------------------------------------------- config from tensors

def tensor_facts(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """Config fields the tensor table decides: vocabulary size, tied head, biases.

    ``shapes`` are in PyTorch order ([out, in])."""
    if "token_embd.weight" not in shapes:
        raise LmforgeError("the file has no token_embd.weight; it holds no model weights "
                           "(a vocabulary-only GGUF cannot be run)")
    return {
        "vocab_size": shapes["token_embd.weight"][0],
        "tie_embeddings": "output.weight" not in shapes,
        "qkv_bias": "blk.0.attn_q.bias" in shapes,
        "o_bias": "blk.0.attn_output.bias" in shapes,
        "mlp_bias": "blk.0.ffn_up.bias" in shapes,
        "qk_norm": "blk.0.attn_q_norm.weight" in shapes,
    }


def llama3_scaling_from_freqs(freqs: np.ndarray, cfg: ModelConfig) -> dict:
    """The llama3 rope scaling whose per-frequency divisors are ``freqs`` (llama.cpp's rope_freqs.weight).

    llama.cpp stores the divisors, not the recipe; Llama 3.1/3.2 all use low/high factors 1 and 4 over
    an 8192-token original context, with the divisor's maximum as the factor. The recipe is accepted
    only if it reproduces the stored divisors."""
    from ..models.layers import rope_inv_freq

    scaling = {"rope_type": "llama3", "factor": float(freqs.max()), "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    plain = rope_inv_freq(cfg.replace(rope_scaling=None))
    scaled = rope_inv_freq(cfg.replace(rope_scaling=scaling))
    if plain.shape[0] != freqs.shape[0] or not torch.allclose(plain / scaled, torch.from_numpy(freqs).float(),
                                                               rtol=1e-3):
        raise NotImplementedError("rope_freqs.weight does not match llama3 rope scaling")
    return scaling


# ------------------------------------------------------------------------------------- source

class GGUFSource:
    format = "gguf"

    def __init__(self, path: Path, native: bool = True):
        self.path = Path(path)
        self.files = [self.path]
        self.reader = open_reader(self.path)
        self.meta = read_metadata(self.reader)
        arch = self.meta.get("general.architecture")
        if arch is None:
            raise LmforgeError(f"{self.path}: no general.architecture in the GGUF metadata; not a model file")
        self.family = family_for_gguf(arch, self.path)
        shapes = {t.name: tuple(int(n) for n in reversed(t.shape.tolist())) for t in self.reader.tensors}
        try:
            config = self.family.config_from_hf(self.meta).replace(**tensor_facts(shapes))
            if "rope_freqs.weight" in shapes:
                freqs = self._tensor("rope_freqs.weight").numpy()
                config = config.replace(rope_scaling=llama3_scaling_from_freqs(freqs, config))
        except KeyError as e:
            raise LmforgeError(f"{self.path}: GGUF metadata key {e} is missing for architecture {arch!r}") from None
        except NotImplementedError as e:
            raise LmforgeError(f"{self.path}: {e}") from None
        except LmforgeError as e:
            raise LmforgeError(f"{self.path}: {e}") from None
        self.config: ModelConfig = config
        self.native = native_plan(self.reader.tensors, self.family) if native else {}
        self.tensor_types = collections.Counter(t.tensor_type.name for t in self.reader.tensors)
        # the types of the quantized tensors that run natively / are dequantized at load
        self.native_types, self.dequantized_types = collections.Counter(), collections.Counter()
        for t in self.reader.tensors:
            if t.tensor_type.name not in ("F32", "F16", "BF16"):
                ran = module_of(self.family, t.name) in self.native
                (self.native_types if ran else self.dequantized_types)[t.tensor_type.name] += 1

    def release(self) -> None:
        """Drop the reader once the model and tokenizer are built: its parsed metadata (a Python object per
        vocabulary entry and array element, ~800k for a 49k vocabulary) would otherwise stay in memory
        and in every garbage-collector pass of the decode loop. The weights keep their own references."""
        self.reader = None

    def _tensor(self, name: str) -> torch.Tensor:
        for t in self.reader.tensors:
            if t.name == name:
                return dequantize(t, self.path)
        raise KeyError(name)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        pending: dict[str, dict[tuple[str, str], torch.Tensor]] = {}  # the parts read of PartsLinears
        for t in self.reader.tensors:
            module = module_of(self.family, t.name)
            plan = self.native.get(module) if module is not None else None
            if plan is None:
                yield t.name, dequantize(t, self.path)
                continue
            base = t.name.removesuffix(".weight")
            named = zip(NATIVE_TENSORS[NATIVE_TYPES[t.tensor_type.name]], repack(t, self.path))
            if isinstance(plan, str):
                for name, tensor in named:
                    yield f"{base}.{name}", tensor
                continue
            # a part of a PartsLinear: transformed as the family's rules say, joined into its run once the
            # module's parts are all read (they are adjacent in a file), named for match()
            got = pending.setdefault(module, {})
            for name, tensor in named:
                _, part, transform = self.family.match(f"{base}.{name}")
                got[part, name] = tensor if transform is None else transform(tensor, self.config)
            if {part for part, _ in got} == {part for _, parts, _ in plan for part in parts}:
                for i, (kind, parts, _) in enumerate(plan):
                    for name in NATIVE_TENSORS[kind]:
                        yield f"{PARTS_PREFIX}{module}.parts.{i}.{name}", torch.cat([got[p, name] for p in parts])
                del pending[module]

    def prepare(self, model, dtype: torch.dtype) -> None:
        """Put empty block-format modules (meta device) where the plan runs weights natively."""
        from ..quant.linear import BlockEmbedding, BlockInt4Linear, BlockInt8Linear, PartsLinear, TiedHead, set_module

        classes = {"q4": BlockInt4Linear, "q4s": partial(BlockInt4Linear, symmetric=True),
                   "q4k": partial(BlockInt4Linear, scale_dtype=torch.uint8), "q8": BlockInt8Linear,
                   "q5k": partial(BlockInt8Linear, scale_dtype=torch.uint8, with_mins=True),
                   "q6k": partial(BlockInt8Linear, group_size=16, scale_dtype=torch.uint8)}
        with torch.device("meta"):
            for name, kind in self.native.items():
                if name == "embed":
                    table = classes[kind](self.config.dim, self.config.vocab_size)
                    model.embed = BlockEmbedding(table, dtype)
                    if self.config.tie_embeddings:
                        model.lm_head = TiedHead(model.embed)
                    continue
                old = model.get_submodule(name)
                if isinstance(kind, tuple):  # runs of parts in different formats
                    parts = [classes[k](old.in_features, rows) for k, _, rows in kind]
                    set_module(model, name, PartsLinear(parts, bias=old.bias is not None))
                else:
                    set_module(model, name, classes[kind](old.in_features, old.out_features, bias=old.bias is not None))

    def match(self, name: str):
        if name.startswith(PARTS_PREFIX):  # a PartsLinear's run, already joined (tensors())
            return name[len(PARTS_PREFIX):], None, None
        return self.family.match(name)

    def tokenizer(self):
        from .gguf_vocab import tokenizer_from_metadata

        return tokenizer_from_metadata(read_metadata(self.reader, VOCAB_ARRAYS), self.path)

    def describe(self) -> dict[str, Any]:
        import gguf

        types = self.tensor_types
        file_type = self.meta.get("general.file_type")
        try:
            file_dtype = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None \
                else None
        except ValueError:
            file_dtype = f"file type {file_type}"
        quantized = {k: v for k, v in types.items() if k not in ("F32", "F16", "BF16")}
        return {"format": f"GGUF v{self.meta.get('GGUF.version', '?')}",
                "file_dtype": file_dtype,
                "quantization": ", ".join(f"{k} x{v}" for k, v in types.most_common()) if quantized else None}


def module_of(family: Family, tensor_name: str) -> str | None:
    """The lmforge module a GGUF weight belongs to (``blk.0.attn_q.weight`` -> ``layers.0.attn.wqkv``)."""
    try:
        m = family.match(tensor_name)
    except KeyError:
        return None
    if m is None or not m[0].endswith(".weight"):
        return None
    return m[0].removesuffix(".weight")


def native_plan(tensors, family: Family) -> dict[str, str | tuple]:
    """lmforge module -> kernel format ("q4" / "q4s" / "q4k" / "q8" / "q5k" / "q6k") for every module whose GGUF
    weights (all the parts of a fused one: q, k, v) have types the kernels run; the embedding too
    ("embed"). A fused module whose parts have different formats (GGUF Q4_K_M: Q4_K q and k, Q6_K v)
    gets its runs instead, ((format, parts, rows), ...): the consecutive parts of one format in the
    module's order, each run one block-format module of a PartsLinear."""
    kinds: dict[str, dict[str | None, str | None]] = collections.defaultdict(dict)
    rows: dict[tuple[str, str | None], int] = {}
    for t in tensors:
        module = module_of(family, t.name)
        if module is not None:
            part = family.match(t.name)[1]
            kinds[module][part] = NATIVE_TYPES.get(t.tensor_type.name) if len(t.shape) == 2 else None
            rows[module, part] = int(t.shape[-1])  # GGUF shapes are [K, N]
    plan: dict[str, str | tuple] = {}
    for module, parts in kinds.items():
        found = set(parts.values())
        if None in found:
            continue
        if len(found) == 1:
            plan[module] = found.pop()
            continue
        runs: list[tuple[str, tuple[str, ...], int]] = []
        for part in FUSED_PARTS[module.rsplit(".", 1)[-1]]:
            kind, n = parts[part], rows[module, part]
            if runs and runs[-1][0] == kind:
                runs[-1] = (kind, runs[-1][1] + (part,), runs[-1][2] + n)
            else:
                runs.append((kind, (part,), n))
        plan[module] = tuple(runs)
    return plan


def repack(t, path: Path) -> tuple[torch.Tensor, ...]:
    """A ReaderTensor of a NATIVE_TYPES type as the kernel layout's tensors (see NATIVE_TENSORS)."""
    from .. import kernels

    N, K = (int(n) for n in reversed(t.shape.tolist()))
    kind = t.tensor_type.name
    fn = {"Q4_0": kernels.repack_gguf_q4_0, "Q4_1": kernels.repack_gguf_q4_1, "Q4_K": kernels.repack_gguf_q4_k,
          "Q5_0": kernels.repack_gguf_q5_0, "Q5_K": kernels.repack_gguf_q5_k, "Q6_K": kernels.repack_gguf_q6_k,
          "Q8_0": kernels.repack_gguf_q8_0}[kind]
    try:
        with warnings.catch_warnings():  # the map is read-only; the repacked tensors are fresh copies
            warnings.simplefilter("ignore", UserWarning)
            out = fn(torch.from_numpy(np.asarray(t.data)).reshape(N, -1))
    except (ValueError, RuntimeError):
        raise LmforgeError(f"{path}: tensor {t.name!r} ({kind}, shape {(N, K)}) has {t.data.nbytes} bytes of "
                           "blocks, not what its shape needs; the file is truncated or corrupt") from None
    return out if len(out) == 3 else (*out, out[1].new_empty((N, 0)))  # int8 without mins: empty ones


def dequantize(t, path: Path) -> torch.Tensor:
    """One ReaderTensor as a float32 torch tensor in PyTorch order ([out, in])."""
    from gguf.quants import dequantize as gguf_dequantize

    shape = tuple(int(n) for n in reversed(t.shape.tolist()))
    try:
        values = gguf_dequantize(t.data, t.tensor_type)
    except NotImplementedError:
        raise LmforgeError(f"{path}: tensor {t.name!r} has GGUF type {t.tensor_type.name}, which lmforge "
                           f"cannot dequantize; tested types: {', '.join(TESTED_TYPES)}") from None
    if values.size != math.prod(shape):
        raise LmforgeError(f"{path}: tensor {t.name!r} holds {values.size} values, its shape {shape} needs "
                           f"{math.prod(shape)}; the file is truncated or corrupt")
    values = np.asarray(values, dtype=np.float32).reshape(shape)
    if not values.flags.writeable:  # F32 comes back as a view of the read-only map
        values = values.copy()
    return torch.from_numpy(values)
