"""GPT-2: learned positions, Conv1D weights stored [in, out], fused c_attn, gelu_new, tied head."""
from __future__ import annotations

from ..config import ModelConfig
from .base import Family, Rule, hf_activation, hf_tokens, transpose


def _key(c: dict, *names: str):
    """The first of several spellings: GPT-2 configs say n_embd/n_layer/..., transformers also hidden_size/..."""
    for name in names:
        if c.get(name) is not None:
            return c[name]
    raise KeyError(names[0])


def config_from_hf(c: dict) -> ModelConfig:
    if c.get("add_cross_attention"):
        raise NotImplementedError("GPT-2 with add_cross_attention=true (the decoder of an encoder-decoder "
                                  "model) is not supported; only decoder-only GPT-2 models are")
    dim = _key(c, "n_embd", "hidden_size")
    n_heads = _key(c, "n_head", "num_attention_heads")
    # reorder_and_upcast_attn only changes the precision of transformers' eager attention (its default sdpa
    # path ignores it); the result is the same attention, so it needs no switch here.
    return ModelConfig(
        architecture=c["architectures"][0],
        vocab_size=c["vocab_size"],
        dim=dim,
        n_layers=_key(c, "n_layer", "num_hidden_layers"),
        n_heads=n_heads,
        hidden_dim=c.get("n_inner") or 4 * dim,
        max_seq_len=_key(c, "n_positions", "max_position_embeddings"),
        norm="layer",
        norm_eps=c.get("layer_norm_epsilon", 1e-5),
        pos="learned",
        mlp="plain",
        act=hf_activation(c.get("activation_function", "gelu_new")),
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        tie_embeddings=c.get("tie_word_embeddings", True),
        attn_scale=None if c.get("scale_attn_weights", True) else 1.0,
        attn_scale_by_layer=c.get("scale_attn_by_inverse_layer_idx", False),
        **hf_tokens(c),
    )


P = r"(?:transformer\.)?"  # GPT2LMHeadModel saves "transformer.h.0...", a bare GPT2Model "h.0..."
L = P + r"h\.(\d+)\."
RULES = (
    Rule(P + r"wte\.weight", "embed.weight"),
    Rule(P + r"wpe\.weight", "pos_embed.weight"),
    Rule(L + r"ln_1\.(weight|bias)", "layers.{0}.attn_norm.{1}"),
    Rule(L + r"ln_2\.(weight|bias)", "layers.{0}.mlp_norm.{1}"),
    Rule(L + r"attn\.c_attn\.(weight|bias)", "layers.{0}.attn.wqkv.{1}", transform=transpose),
    Rule(L + r"attn\.c_proj\.(weight|bias)", "layers.{0}.attn.wo.{1}", transform=transpose),
    Rule(L + r"mlp\.c_fc\.(weight|bias)", "layers.{0}.mlp.w_in.{1}", transform=transpose),
    Rule(L + r"mlp\.c_proj\.(weight|bias)", "layers.{0}.mlp.w_out.{1}", transform=transpose),
    Rule(P + r"ln_f\.(weight|bias)", "norm.{0}"),
    Rule(r"lm_head\.weight", "lm_head.weight"),
)

FAMILY = Family(
    name="gpt2",
    architectures=("GPT2LMHeadModel",),
    config_from_hf=config_from_hf,
    rules=RULES,
    ignore=(L + r"attn\.(bias|masked_bias)",),  # causal-mask buffers in older checkpoints
)
