"""OPT: learned positions offset by 2, ReLU, biases everywhere, tied head.

125m-style models are pre-LN with a final norm; 350m-style ones are post-LN (do_layer_norm_before=false,
no final norm) and keep the embeddings in a smaller word_embed_proj_dim, projected in and out."""
from __future__ import annotations

from ..config import ModelConfig
from .base import Family, Rule, hf_activation, hf_tokens


def config_from_hf(c: dict) -> ModelConfig:
    if not c.get("layer_norm_elementwise_affine", True):
        raise NotImplementedError("OPT with layer_norm_elementwise_affine=false (LayerNorms without weights) "
                                  "is not supported")
    dim = c["hidden_size"]
    proj_dim = c.get("word_embed_proj_dim") or dim
    pre_norm = c.get("do_layer_norm_before", True)
    bias = c.get("enable_bias", True)
    return ModelConfig(
        architecture=c["architectures"][0],
        vocab_size=c["vocab_size"],
        dim=dim,
        n_layers=c["num_hidden_layers"],
        n_heads=c["num_attention_heads"],
        hidden_dim=c["ffn_dim"],
        max_seq_len=c.get("max_position_embeddings", 2048),
        norm="layer",
        norm_eps=1e-5,  # OPT builds nn.LayerNorm with its default eps
        post_norm=not pre_norm,
        final_norm=pre_norm and not c.get("_remove_final_layer_norm", False),
        pos="learned",
        pos_offset=2,
        mlp="plain",
        act=hf_activation(c.get("activation_function", "relu")),
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bias,
        tie_embeddings=c.get("tie_word_embeddings", True),
        embed_proj_dim=proj_dim if proj_dim != dim else None,
        **hf_tokens(c),
    )


P = r"(?:model\.)?decoder\."  # OPTForCausalLM saves "model.decoder...", a bare OPTModel "decoder..."
L = P + r"layers\.(\d+)\."
RULES = (
    Rule(P + r"embed_tokens\.weight", "embed.weight"),
    Rule(P + r"embed_positions\.weight", "pos_embed.weight"),
    Rule(P + r"project_in\.weight", "proj_in.weight"),
    Rule(P + r"project_out\.weight", "proj_out.weight"),
    Rule(L + r"self_attn_layer_norm\.(weight|bias)", "layers.{0}.attn_norm.{1}"),
    Rule(L + r"final_layer_norm\.(weight|bias)", "layers.{0}.mlp_norm.{1}"),
    Rule(L + r"self_attn\.q_proj\.(weight|bias)", "layers.{0}.attn.wqkv.{1}", "q"),
    Rule(L + r"self_attn\.k_proj\.(weight|bias)", "layers.{0}.attn.wqkv.{1}", "k"),
    Rule(L + r"self_attn\.v_proj\.(weight|bias)", "layers.{0}.attn.wqkv.{1}", "v"),
    Rule(L + r"self_attn\.out_proj\.(weight|bias)", "layers.{0}.attn.wo.{1}"),
    Rule(L + r"fc1\.(weight|bias)", "layers.{0}.mlp.w_in.{1}"),
    Rule(L + r"fc2\.(weight|bias)", "layers.{0}.mlp.w_out.{1}"),
    Rule(P + r"final_layer_norm\.(weight|bias)", "norm.{0}"),
    Rule(r"lm_head\.weight", "lm_head.weight"),
)

FAMILY = Family(
    name="opt",
    architectures=("OPTForCausalLM",),
    config_from_hf=config_from_hf,
    rules=RULES,
)
