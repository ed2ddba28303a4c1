"""Phi-1/1.5/2: partial rotary (halves layout), one LayerNorm feeding parallel attention + MLP, biases
everywhere including the output head, optional per-head LayerNorm on q and k (qk_layernorm), GQA."""
from __future__ import annotations

from ..config import ModelConfig
from .base import Family, Rule, hf_activation, hf_rope, hf_rotary_dim, hf_tokens


def config_from_hf(c: dict) -> ModelConfig:
    if "n_embd" in c:
        raise NotImplementedError("this is the original Microsoft 'phi-msft' checkpoint layout; convert it to "
                                  "the transformers Phi layout (hidden_size, model.layers.*) first")
    dim, n_heads = c["hidden_size"], c["num_attention_heads"]
    head_dim = c.get("head_dim") or dim // n_heads
    theta, scaling = hf_rope(c)
    return ModelConfig(
        architecture=c["architectures"][0],
        vocab_size=c["vocab_size"],
        dim=dim,
        n_layers=c["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=c.get("num_key_value_heads") or n_heads,
        head_dim=head_dim,
        hidden_dim=c["intermediate_size"],
        max_seq_len=c.get("max_position_embeddings", 2048),
        norm="layer",
        norm_eps=c.get("layer_norm_eps", 1e-5),
        rope_theta=theta,
        rope_scaling=scaling,
        rotary_dim=hf_rotary_dim(c, head_dim, default_factor=0.5, legacy_key="partial_rotary_factor"),
        parallel_block=True,
        shared_block_norm=True,
        mlp="plain",
        act=hf_activation(c.get("hidden_act", "gelu_new")),
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        lm_head_bias=True,
        qk_norm=c.get("qk_layernorm", False),
        tie_embeddings=c.get("tie_word_embeddings", False),
        **hf_tokens(c),
    )


L = r"model\.layers\.(\d+)\."
RULES = (
    Rule(r"model\.embed_tokens\.weight", "embed.weight"),
    Rule(L + r"input_layernorm\.(weight|bias)", "layers.{0}.attn_norm.{1}"),
    Rule(L + r"self_attn\.q_proj\.(weight|bias)", "layers.{0}.attn.wqkv.{1}", "q"),
    Rule(L + r"self_attn\.k_proj\.(weight|bias)", "layers.{0}.attn.wqkv.{1}", "k"),
    Rule(L + r"self_attn\.v_proj\.(weight|bias)", "layers.{0}.attn.wqkv.{1}", "v"),
    Rule(L + r"self_attn\.q_layernorm\.(weight|bias)", "layers.{0}.attn.q_norm.{1}"),
    Rule(L + r"self_attn\.k_layernorm\.(weight|bias)", "layers.{0}.attn.k_norm.{1}"),
    Rule(L + r"self_attn\.dense\.(weight|bias)", "layers.{0}.attn.wo.{1}"),
    Rule(L + r"mlp\.fc1\.(weight|bias)", "layers.{0}.mlp.w_in.{1}"),
    Rule(L + r"mlp\.fc2\.(weight|bias)", "layers.{0}.mlp.w_out.{1}"),
    Rule(r"model\.final_layernorm\.(weight|bias)", "norm.{0}"),
    Rule(r"lm_head\.(weight|bias)", "lm_head.{0}"),
)

FAMILY = Family(
    name="phi",
    architectures=("PhiForCausalLM",),
    config_from_hf=config_from_hf,
    rules=RULES,
    ignore=(L + r"self_attn\.rotary_emb\.inv_freq",),
)
