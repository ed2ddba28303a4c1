"""Falcon in its three layouts, all with LayerNorms with bias, a GELU MLP and a tied head:

- 7B style: multi-query attention, a parallel block fed by one input_layernorm, rotary positions;
- new decoder architecture (40B/180B/11B): grouped KV heads, a parallel block with ln_attn and ln_mlp
  (or one shared norm when num_ln_in_parallel_attn == 1), rotary positions;
- RW style (falcon-rw-1b): ALiBi scaled together with the scores and computed in bfloat16, sequential
  blocks, full multi-head attention, biases on every linear layer.

The fused query_key_value is stored per KV group, [n_kv_heads, q_per_kv + 2, head_dim]: the group's
queries, then its key, then its value. Multi-query (one group) and full multi-head attention (one query
per group, i.e. per-head [q, k, v]) are the two ends of the same layout.
"""
from __future__ import annotations

import torch

from ..config import ModelConfig
from .base import Family, Rule, hf_activation, hf_rope, hf_tokens


def _kv_heads(c: dict, n_heads: int) -> int:
    if c.get("new_decoder_architecture"):
        return c.get("num_kv_heads") or n_heads
    return 1 if c.get("multi_query", True) else n_heads


def _shared_block_norm(c: dict) -> bool:
    """Whether a parallel block feeds attention and MLP from one LayerNorm (see FalconDecoderLayer)."""
    nda = c.get("new_decoder_architecture", False)
    n_ln = c.get("num_ln_in_parallel_attn") or (2 if nda else 1)
    if n_ln not in (1, 2) or (n_ln == 2 and not nda):
        raise NotImplementedError(f"Falcon with num_ln_in_parallel_attn={n_ln} is not supported "
                                  "(supported: 1, or 2 with new_decoder_architecture=true)")
    return n_ln == 1


def config_from_hf(c: dict) -> ModelConfig:
    nda = c.get("new_decoder_architecture", False)
    parallel = c.get("parallel_attn", True)
    if nda and not parallel:
        raise NotImplementedError("Falcon with new_decoder_architecture=true and parallel_attn=false "
                                  "is not supported")
    dim = c.get("hidden_size") or c["n_embed"]
    n_heads = c["num_attention_heads"]
    alibi = bool(c.get("alibi", False))
    theta, scaling = hf_rope(c)
    return ModelConfig(
        architecture=c["architectures"][0],
        vocab_size=c["vocab_size"],
        dim=dim,
        n_layers=c["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=_kv_heads(c, n_heads),
        hidden_dim=c.get("ffn_hidden_size") or 4 * dim,
        max_seq_len=c.get("max_position_embeddings", 2048),
        norm="layer",
        norm_eps=c.get("layer_norm_epsilon") or 1e-5,
        pos="alibi" if alibi else "rope",
        rope_theta=theta,
        rope_scaling=scaling,
        alibi="bloom",
        alibi_scaled=alibi,
        alibi_bf16=alibi,
        parallel_block=parallel,
        shared_block_norm=parallel and _shared_block_norm(c),
        mlp="plain",
        act=hf_activation(c.get("activation") or "gelu"),
        qkv_bias=c.get("bias", False),
        o_bias=c.get("bias", False),
        mlp_bias=c.get("bias", False),
        tie_embeddings=c.get("tie_word_embeddings", True),
        **hf_tokens(c),
    )


def grouped_qkv(t: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """[KV, q_per_kv + 2, hd, ...] fused QKV, grouped by KV head -> [q; k; v]."""
    rest = t.shape[1:]
    q_per_kv = cfg.n_heads // cfg.n_kv_heads
    t = t.reshape(cfg.n_kv_heads, q_per_kv + 2, cfg.head_dim, *rest)
    q = t[:, :q_per_kv].reshape(cfg.q_size, *rest)
    k = t[:, q_per_kv].reshape(cfg.kv_size, *rest)
    v = t[:, q_per_kv + 1].reshape(cfg.kv_size, *rest)
    return torch.cat([q, k, v], dim=0)


L = r"transformer\.h\.(\d+)\."
RULES = (
    Rule(r"transformer\.word_embeddings\.weight", "embed.weight"),
    Rule(L + r"(?:input_layernorm|ln_attn)\.(weight|bias)", "layers.{0}.attn_norm.{1}"),
    Rule(L + r"(?:post_attention_layernorm|ln_mlp)\.(weight|bias)", "layers.{0}.mlp_norm.{1}"),
    Rule(L + r"self_attention\.query_key_value\.(weight|bias)", "layers.{0}.attn.wqkv.{1}",
         transform=grouped_qkv),
    Rule(L + r"self_attention\.dense\.(weight|bias)", "layers.{0}.attn.wo.{1}"),
    Rule(L + r"mlp\.dense_h_to_4h\.(weight|bias)", "layers.{0}.mlp.w_in.{1}"),
    Rule(L + r"mlp\.dense_4h_to_h\.(weight|bias)", "layers.{0}.mlp.w_out.{1}"),
    Rule(r"transformer\.ln_f\.(weight|bias)", "norm.{0}"),
    Rule(r"lm_head\.weight", "lm_head.weight"),
)

FAMILY = Family(
    name="falcon",
    architectures=("FalconForCausalLM",),
    config_from_hf=config_from_hf,
    rules=RULES,
    ignore=(r".*rotary_emb\.inv_freq",),
)
