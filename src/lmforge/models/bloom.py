"""BLOOM: ALiBi (added unscaled to the scaled scores), a LayerNorm on the embeddings, per-head fused
query_key_value, tanh-GELU MLP of width 4 * hidden, biases everywhere, tied head."""
from __future__ import annotations

from ..config import ModelConfig
from .base import Family, Rule, hf_tokens, split_heads_qkv


def _key(c: dict, *names: str):
    """The first of several spellings a BLOOM config may use (n_embed is the legacy hidden size)."""
    for name in names:
        if c.get(name) is not None:
            return c[name]
    raise KeyError(names[0])


def config_from_hf(c: dict) -> ModelConfig:
    if c.get("apply_residual_connection_post_layernorm"):
        raise NotImplementedError("BLOOM with apply_residual_connection_post_layernorm=true (the residual "
                                  "taken after the LayerNorm) is not supported")
    # pretraining_tp/slow_but_exact only split the output projections into slices summed one by one:
    # the same result, so they need no switch here.
    dim = _key(c, "n_embed", "hidden_size")
    return ModelConfig(
        architecture=c["architectures"][0],
        vocab_size=c["vocab_size"],
        dim=dim,
        n_layers=_key(c, "n_layer", "num_hidden_layers"),
        n_heads=_key(c, "n_head", "num_attention_heads"),
        hidden_dim=4 * dim,
        max_seq_len=c.get("seq_length") or 2048,  # ALiBi has no table; BLOOM was trained on 2048 tokens
        norm="layer",
        norm_eps=c.get("layer_norm_epsilon", 1e-5),
        embed_norm=True,
        pos="alibi",
        alibi="bloom",
        mlp="plain",
        act="gelu_tanh",
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        tie_embeddings=c.get("tie_word_embeddings", True),
        **hf_tokens(c),
    )


P = r"(?:transformer\.)?"  # BloomForCausalLM saves "transformer.h.0...", a bare BloomModel "h.0..."
L = P + r"h\.(\d+)\."
RULES = (
    Rule(P + r"word_embeddings\.weight", "embed.weight"),
    Rule(P + r"word_embeddings_layernorm\.(weight|bias)", "embed_norm.{0}"),
    Rule(L + r"input_layernorm\.(weight|bias)", "layers.{0}.attn_norm.{1}"),
    Rule(L + r"post_attention_layernorm\.(weight|bias)", "layers.{0}.mlp_norm.{1}"),
    Rule(L + r"self_attention\.query_key_value\.(weight|bias)", "layers.{0}.attn.wqkv.{1}",
         transform=split_heads_qkv),
    Rule(L + r"self_attention\.dense\.(weight|bias)", "layers.{0}.attn.wo.{1}"),
    Rule(L + r"mlp\.dense_h_to_4h\.(weight|bias)", "layers.{0}.mlp.w_in.{1}"),
    Rule(L + r"mlp\.dense_4h_to_h\.(weight|bias)", "layers.{0}.mlp.w_out.{1}"),
    Rule(P + r"ln_f\.(weight|bias)", "norm.{0}"),
    Rule(r"lm_head\.weight", "lm_head.weight"),
)

FAMILY = Family(
    name="bloom",
    architectures=("BloomForCausalLM",),
    config_from_hf=config_from_hf,
    rules=RULES,
)
