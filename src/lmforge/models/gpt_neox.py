"""GPT-NeoX (Pythia, GPT-NeoX-20B, StableLM-alpha): partial rotary on the first channels of each head, fused
query_key_value stored per head as [H, 3, hd], parallel or sequential residual, LayerNorms with biases,
an untied output head (``embed_out``)."""
from __future__ import annotations

from ..config import ModelConfig
from .base import Family, Rule, hf_activation, hf_rope, hf_rotary_dim, hf_tokens, split_heads_qkv


def config_from_hf(c: dict) -> ModelConfig:
    dim, n_heads = c["hidden_size"], c["num_attention_heads"]
    head_dim = dim // n_heads  # transformers ignores any head_dim key for GPT-NeoX
    # older configs (Pythia) say rotary_emb_base / rotary_pct instead of v5 rope_parameters
    theta, scaling = hf_rope(c, default_theta=c.get("rotary_emb_base", 10000.0))
    attn_bias = c.get("attention_bias", True)
    return ModelConfig(
        architecture=c["architectures"][0],
        vocab_size=c["vocab_size"],
        dim=dim,
        n_layers=c["num_hidden_layers"],
        n_heads=n_heads,
        head_dim=head_dim,
        hidden_dim=c["intermediate_size"],
        max_seq_len=c.get("max_position_embeddings", 2048),
        norm="layer",
        norm_eps=c.get("layer_norm_eps", 1e-5),
        rope_theta=theta,
        rope_scaling=scaling,
        rotary_dim=hf_rotary_dim(c, head_dim, default_factor=0.25, legacy_key="rotary_pct"),
        parallel_block=c.get("use_parallel_residual", True),
        mlp="plain",
        act=hf_activation(c.get("hidden_act", "gelu")),
        qkv_bias=attn_bias,
        o_bias=attn_bias,
        mlp_bias=True,
        tie_embeddings=c.get("tie_word_embeddings", False),
        **hf_tokens(c),
    )


L = r"gpt_neox\.layers\.(\d+)\."
RULES = (
    Rule(r"gpt_neox\.embed_in\.weight", "embed.weight"),
    Rule(L + r"input_layernorm\.(weight|bias)", "layers.{0}.attn_norm.{1}"),
    Rule(L + r"post_attention_layernorm\.(weight|bias)", "layers.{0}.mlp_norm.{1}"),
    Rule(L + r"attention\.query_key_value\.(weight|bias)", "layers.{0}.attn.wqkv.{1}", transform=split_heads_qkv),
    Rule(L + r"attention\.dense\.(weight|bias)", "layers.{0}.attn.wo.{1}"),
    Rule(L + r"mlp\.dense_h_to_4h\.(weight|bias)", "layers.{0}.mlp.w_in.{1}"),
    Rule(L + r"mlp\.dense_4h_to_h\.(weight|bias)", "layers.{0}.mlp.w_out.{1}"),
    Rule(r"gpt_neox\.final_layer_norm\.(weight|bias)", "norm.{0}"),
    Rule(r"(?:embed_out|lm_head)\.weight", "lm_head.weight"),  # checkpoints say embed_out
)

FAMILY = Family(
    name="gpt_neox",
    architectures=("GPTNeoXForCausalLM",),
    config_from_hf=config_from_hf,
    rules=RULES,
    # older checkpoints also store the causal mask and the rotary table as buffers
    ignore=(L + r"attention\.(bias|masked_bias|rotary_emb\.inv_freq)",),
)
