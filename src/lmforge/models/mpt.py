"""MPT: ALiBi with MPT's slope recipe, LayerNorms without bias, bias-free linear layers, fused Wqkv
already laid out [q; k; v], exact-GELU MLP, optional clip_qkv and softmax_scale, tied head.

transformers' MptForCausalLM builds every linear layer and LayerNorm without bias whatever ``no_bias``
says, and reads neither ``qk_ln``, ``attn_type``, ``logit_scale`` nor ``attn_config.alibi``. We follow it
where the checkpoint cannot disagree (no_bias=false in an HF checkpoint means no bias tensors; bias
tensors from another exporter are rejected by the loader) and refuse the options whose weights or maths
it would silently drop. ``expansion_ratio`` and ``alibi_bias_max`` are honoured as MosaicML defined
them (transformers fixes them at 4 and 8, the values every published MPT uses).
"""
from __future__ import annotations

from ..config import ModelConfig
from .base import Family, Rule, hf_tokens

_NORMS = ("low_precision_layernorm", "layernorm")


def _check_supported(c: dict, attn: dict) -> None:
    """Raise NotImplementedError for MPT options the generic decoder does not implement."""
    if not attn.get("alibi", True):
        raise NotImplementedError("MPT with attn_config.alibi=false (learned positions) is not supported")
    if attn.get("attn_type", "multihead_attention") != "multihead_attention":
        raise NotImplementedError(f"MPT attention type {attn['attn_type']!r} is not supported "
                                  "(supported: multihead_attention)")
    if attn.get("qk_ln"):
        raise NotImplementedError("MPT with attn_config.qk_ln=true (LayerNorm on queries and keys) "
                                  "is not supported")
    if attn.get("rope"):
        raise NotImplementedError("MPT with attn_config.rope=true (rotary positions) is not supported")
    if attn.get("prefix_lm"):
        raise NotImplementedError("MPT prefix-LM models (attn_config.prefix_lm=true) are not supported")
    if c.get("logit_scale") is not None:
        raise NotImplementedError(f"MPT with logit_scale={c['logit_scale']!r} is not supported")
    if c.get("norm_type", _NORMS[0]) not in _NORMS:
        raise NotImplementedError(f"MPT norm_type {c['norm_type']!r} is not supported "
                                  f"(supported: {', '.join(_NORMS)})")
    ffn = (c.get("ffn_config") or {}).get("ffn_type", "mptmlp")
    if ffn != "mptmlp":
        raise NotImplementedError(f"MPT ffn_type {ffn!r} is not supported (supported: mptmlp)")


def config_from_hf(c: dict) -> ModelConfig:
    attn = c.get("attn_config") or {}
    _check_supported(c, attn)
    dim = c["d_model"]
    return ModelConfig(
        architecture=c["architectures"][0],
        vocab_size=c["vocab_size"],
        dim=dim,
        n_layers=c["n_layers"],
        n_heads=c["n_heads"],
        hidden_dim=int(dim * c.get("expansion_ratio", 4)),
        max_seq_len=c.get("max_seq_len", 2048),
        norm="layer",
        norm_eps=c.get("layer_norm_epsilon", 1e-5),
        norm_bias=False,
        pos="alibi",
        alibi="mpt",
        alibi_max_bias=float(attn.get("alibi_bias_max", 8)),
        mlp="plain",
        act="gelu",
        attn_scale=attn.get("softmax_scale"),
        clip_qkv=attn.get("clip_qkv") or None,  # transformers treats 0 as "no clipping"
        tie_embeddings=c.get("tie_word_embeddings", True),
        **hf_tokens(c),
    )


L = r"transformer\.blocks\.(\d+)\."
RULES = (
    Rule(r"transformer\.wte\.weight", "embed.weight"),
    Rule(L + r"norm_1\.weight", "layers.{0}.attn_norm.weight"),
    Rule(L + r"norm_2\.weight", "layers.{0}.mlp_norm.weight"),
    Rule(L + r"attn\.Wqkv\.weight", "layers.{0}.attn.wqkv.weight"),
    Rule(L + r"attn\.out_proj\.weight", "layers.{0}.attn.wo.weight"),
    Rule(L + r"ffn\.up_proj\.weight", "layers.{0}.mlp.w_in.weight"),
    Rule(L + r"ffn\.down_proj\.weight", "layers.{0}.mlp.w_out.weight"),
    Rule(r"transformer\.norm_f\.weight", "norm.weight"),
    Rule(r"lm_head\.weight", "lm_head.weight"),
)

FAMILY = Family(
    name="mpt",
    architectures=("MptForCausalLM", "MPTForCausalLM"),
    config_from_hf=config_from_hf,
    rules=RULES,
)
