"""CodeGen: GPT-J's block (interleaved partial rotary, one LayerNorm feeding parallel attention + MLP, head
with a bias) with q/k/v fused into qkv_proj in the layout of the 4-way model-parallel TPU training run."""
from __future__ import annotations

import torch

from ..config import ModelConfig
from . import gptj
from .base import Family, Rule

MP_NUM = 4  # model-parallel shards baked into the qkv_proj layout (hard-coded in transformers too)


def config_from_hf(c: dict) -> ModelConfig:
    if c["n_head"] % MP_NUM:
        raise NotImplementedError(f"CodeGen with n_head={c['n_head']} is not supported; its fused qkv_proj "
                                  f"layout needs a multiple of {MP_NUM} heads")
    return gptj.config_from_hf(c)


def unshard_qkv(t: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """qkv_proj rows are MP_NUM shards, each [q; v; k] for n_heads / MP_NUM heads -> [q; k; v] over all heads."""
    rest = t.shape[1:]
    t = t.reshape(MP_NUM, 3, cfg.q_size // MP_NUM, *rest)   # [shard, (q, v, k), heads_in_shard * hd, ...]
    t = t[:, [0, 2, 1]].transpose(0, 1)                     # [(q, k, v), shard, heads_in_shard * hd, ...]
    return t.reshape(3 * cfg.q_size, *rest)


L = r"transformer\.h\.(\d+)\."
RULES = (
    Rule(r"transformer\.wte\.weight", "embed.weight"),
    Rule(L + r"ln_1\.(weight|bias)", "layers.{0}.attn_norm.{1}"),
    Rule(L + r"attn\.qkv_proj\.weight", "layers.{0}.attn.wqkv.weight", transform=unshard_qkv),
    Rule(L + r"attn\.out_proj\.weight", "layers.{0}.attn.wo.weight"),
    Rule(L + r"mlp\.fc_in\.(weight|bias)", "layers.{0}.mlp.w_in.{1}"),
    Rule(L + r"mlp\.fc_out\.(weight|bias)", "layers.{0}.mlp.w_out.{1}"),
    Rule(r"transformer\.ln_f\.(weight|bias)", "norm.{0}"),
    Rule(r"lm_head\.(weight|bias)", "lm_head.{0}"),
)

FAMILY = Family(
    name="codegen",
    architectures=("CodeGenForCausalLM",),
    config_from_hf=config_from_hf,
    rules=RULES,
    ignore=(L + r"attn\.(causal_mask|bias|masked_bias)",),  # causal-mask buffers in older checkpoints
)
