"""GPT-J: interleaved (rotate-every-two) rotary on the first rotary_dim channels of each head, one LayerNorm
feeding a parallel attention + MLP block, q/k/v/out without bias, an output head with a bias."""
from __future__ import annotations

from ..config import ModelConfig
from .base import Family, Rule, hf_activation, hf_tokens


def config_from_hf(c: dict) -> ModelConfig:
    """Also used by CodeGen, whose config.json has the same keys."""
    dim, n_heads = c["n_embd"], c["n_head"]
    return ModelConfig(
        architecture=c["architectures"][0],
        vocab_size=c["vocab_size"],
        dim=dim,
        n_layers=c["n_layer"],
        n_heads=n_heads,
        hidden_dim=c.get("n_inner") or 4 * dim,
        max_seq_len=c.get("n_positions", 2048),
        norm="layer",
        norm_eps=c.get("layer_norm_epsilon", 1e-5),
        rope_theta=10000.0,  # fixed in GPT-J and CodeGen
        rotary_dim=c.get("rotary_dim") or dim // n_heads,
        rope_interleaved=True,
        parallel_block=True,
        shared_block_norm=True,
        mlp="plain",
        act=hf_activation(c.get("activation_function", "gelu_new")),
        mlp_bias=True,
        lm_head_bias=True,
        tie_embeddings=c.get("tie_word_embeddings", False),
        **hf_tokens(c),
    )


L = r"transformer\.h\.(\d+)\."
RULES = (
    Rule(r"transformer\.wte\.weight", "embed.weight"),
    Rule(L + r"ln_1\.(weight|bias)", "layers.{0}.attn_norm.{1}"),
    Rule(L + r"attn\.q_proj\.weight", "layers.{0}.attn.wqkv.weight", "q"),
    Rule(L + r"attn\.k_proj\.weight", "layers.{0}.attn.wqkv.weight", "k"),
    Rule(L + r"attn\.v_proj\.weight", "layers.{0}.attn.wqkv.weight", "v"),
    Rule(L + r"attn\.out_proj\.weight", "layers.{0}.attn.wo.weight"),
    Rule(L + r"mlp\.fc_in\.(weight|bias)", "layers.{0}.mlp.w_in.{1}"),
    Rule(L + r"mlp\.fc_out\.(weight|bias)", "layers.{0}.mlp.w_out.{1}"),
    Rule(r"transformer\.ln_f\.(weight|bias)", "norm.{0}"),
    Rule(r"lm_head\.(weight|bias)", "lm_head.{0}"),
)

FAMILY = Family(
    name="gptj",
    architectures=("GPTJForCausalLM",),
    config_from_hf=config_from_hf,
    rules=RULES,
    ignore=(L + r"attn\.(bias|masked_bias)",),  # causal-mask buffers in older checkpoints
)
