"""ModelConfig: everything the generic decoder needs to know about a model, in one frozen dataclass.

Family adapters (``lmforge.models.<family>``) translate a Hugging Face ``config.json`` or GGUF metadata
into this one shape; the decoder in ``lmforge.models.transformer`` never looks at a family name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    architecture: str          # the HF architecture name, e.g. "LlamaForCausalLM"
    vocab_size: int
    dim: int                   # hidden size
    n_layers: int
    n_heads: int
    hidden_dim: int            # MLP intermediate size
    n_kv_heads: int | None = None   # None: same as n_heads (MHA); 1: MQA; else GQA
    head_dim: int | None = None     # None: dim // n_heads
    max_seq_len: int = 2048

    # normalisation
    norm: str = "rms"          # "rms" | "layer"
    norm_eps: float = 1e-5
    norm_bias: bool = True     # LayerNorm has a bias (ignored for RMSNorm)
    final_norm: bool = True
    embed_norm: bool = False   # a norm right after the token embedding (Bloom)
    post_norm: bool = False    # norm after the residual add instead of before the sublayer (OPT-350m)

    # positions
    pos: str = "rope"          # "rope" | "learned" | "alibi" | "none"
    rope_theta: float = 10000.0
    rotary_dim: int | None = None   # None: the whole head; smaller: partial rotary (NeoX, GPT-J, Phi)
    rope_interleaved: bool = False  # rotate pairs (x0,x1),(x2,x3).. (GPT-J) instead of halves (NeoX/Llama)
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "linear"|"llama3", "factor": ..., ...}
    pos_offset: int = 0        # learned positions are looked up at position + offset (OPT: 2)
    alibi: str = "bloom"       # slope recipe when pos == "alibi": "bloom" | "mpt"
    alibi_max_bias: float = 8.0
    alibi_scaled: bool = False # the bias is multiplied by the softmax scale too (Falcon-RW)
    alibi_bf16: bool = False   # slope * position is computed in bfloat16, as Falcon-RW was trained
    sliding_window: int | None = None

    # blocks
    parallel_block: bool = False    # x + attn(n(x)) + mlp(n'(x)) instead of sequential sublayers
    shared_block_norm: bool = False # parallel blocks with one norm feeding both (GPT-J, Phi, Falcon-7B)
    mlp: str = "gated"         # "gated" (act(gate) * up) | "plain" (act(fc1))
    act: str = "silu"          # "silu" | "gelu" | "gelu_tanh" | "relu"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    lm_head_bias: bool = False
    tie_embeddings: bool = False
    attn_scale: float | None = None  # None: 1/sqrt(head_dim)
    attn_scale_by_layer: bool = False  # divide the scale by layer index + 1 (GPT-2 scale_attn_by_inverse_layer_idx)
    clip_qkv: float | None = None
    qk_norm: bool = False      # a norm over each head of q and k, before rope (Phi qk_layernorm)
    embed_proj_dim: int | None = None  # embeddings live in a smaller space, projected in and out (OPT-350m)

    # tokens
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.rotary_dim is None:
            object.__setattr__(self, "rotary_dim", self.head_dim)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")

    @property
    def q_size(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.n_kv_heads * self.head_dim

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)
