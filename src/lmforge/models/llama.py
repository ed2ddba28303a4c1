"""Llama 2/3 (incl. GQA and llama3/linear rope scaling), Mistral, Qwen2 and Qwen3: one layout, four
configs (Qwen3 adds an RMSNorm over each head of q and k, before rope)."""
from __future__ import annotations

from ..config import ModelConfig
from .base import Family, Rule, hf_activation, hf_rope, hf_tokens


def config_from_hf(c: dict) -> ModelConfig:
    theta, scaling = hf_rope(c)
    arch = c["architectures"][0]
    qwen2, qwen3 = arch == "Qwen2ForCausalLM", arch == "Qwen3ForCausalLM"
    sliding = c.get("sliding_window") if (not (qwen2 or qwen3) or c.get("use_sliding_window")) else None
    attn_bias = c.get("attention_bias", False)
    return ModelConfig(
        architecture=arch,
        vocab_size=c["vocab_size"],
        dim=c["hidden_size"],
        n_layers=c["num_hidden_layers"],
        n_heads=c["num_attention_heads"],
        n_kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
        head_dim=c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"],
        hidden_dim=c["intermediate_size"],
        max_seq_len=c.get("max_position_embeddings", 2048),
        norm="rms",
        norm_eps=c.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=sliding,
        act=hf_activation(c.get("hidden_act", "silu")),
        qkv_bias=True if qwen2 else attn_bias,
        o_bias=False if qwen2 else attn_bias,
        mlp_bias=c.get("mlp_bias", False),
        qk_norm=qwen3,
        tie_embeddings=c.get("tie_word_embeddings", False),
        **hf_tokens(c),
    )


L = r"model\.layers\.(\d+)\."
RULES = (
    Rule(r"model\.embed_tokens\.weight", "embed.weight"),
    Rule(L + r"input_layernorm\.weight", "layers.{0}.attn_norm.weight"),
    Rule(L + r"post_attention_layernorm\.weight", "layers.{0}.mlp_norm.weight"),
    Rule(L + r"self_attn\.q_proj\.(weight|bias)", "layers.{0}.attn.wqkv.{1}", "q"),
    Rule(L + r"self_attn\.k_proj\.(weight|bias)", "layers.{0}.attn.wqkv.{1}", "k"),
    Rule(L + r"self_attn\.v_proj\.(weight|bias)", "layers.{0}.attn.wqkv.{1}", "v"),
    Rule(L + r"self_attn\.o_proj\.(weight|bias)", "layers.{0}.attn.wo.{1}"),
    Rule(L + r"self_attn\.q_norm\.weight", "layers.{0}.attn.q_norm.weight"),  # Qwen3
    Rule(L + r"self_attn\.k_norm\.weight", "layers.{0}.attn.k_norm.weight"),
    Rule(L + r"mlp\.gate_proj\.(weight|bias)", "layers.{0}.mlp.w_in.{1}", "gate"),
    Rule(L + r"mlp\.up_proj\.(weight|bias)", "layers.{0}.mlp.w_in.{1}", "up"),
    Rule(L + r"mlp\.down_proj\.(weight|bias)", "layers.{0}.mlp.w_out.{1}"),
    Rule(r"model\.norm\.weight", "norm.weight"),
    Rule(r"lm_head\.weight", "lm_head.weight"),
)

FAMILY = Family(
    name="llama",
    architectures=("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"),
    config_from_hf=config_from_hf,
    rules=RULES,
    ignore=(r".*rotary_emb\.inv_freq",),
)
