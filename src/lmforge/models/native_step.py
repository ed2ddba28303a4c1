"""The decode step in one native call (``kernels/csrc/decode_step.cpp``), for the models it fits.

A decode step of a small model is a couple of hundred tiny ops; run one by one from Python, their fixed
costs (dispatch, the Python around them, a thread fork/join each) are about a third of the step. A
``DecodePlan`` holds references to a model's tensors and runs the layers, the final norm and the head of
a one-token step as one parallel region. It fits pre-norm decoders with RMSNorm or LayerNorm, rope
(or learned / no positions, applied before the layers), sequential or parallel blocks, a gated SiLU or
plain (GELU, ReLU, SiLU) MLP, optional norms over each head of q and k, and Linears that are dense (fp32)
or in lmforge's int4/int8 block layouts with rounded activations (act_bits 16 or 8): Llama, Mistral,
Qwen2, Qwen3, SmolLM, TinyLlama, GPT-2, GPT-NeoX, GPT-J, CodeGen, Phi (qk_layernorm too), Falcon (rope)
and OPT-125m, and their GGUF and lmforge-quantized forms. ALiBi (Bloom, MPT, Falcon-RW), post-norm blocks
and projected embeddings (OPT-350m), qkv clipping,
fp32 activations for quantized weights (act_bits 32), adapters left unmerged and the CUDA path run op
by op, as before.

Set ``LMFORGE_DECODE_STEP=0`` to run every step op by op (for comparisons and debugging).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .. import kernels
from ..quant.linear import (BlockEmbedding, BlockInt4Linear, BlockInt8Linear, Int4Linear, Int8Linear,
                            PartsLinear, QuantLinear, TiedHead)
from .layers import Linear, RMSNorm

DISABLE_ENV = "LMFORGE_DECODE_STEP"


class Unfit(Exception):
    """The model (or one of its modules) is not something the native step runs."""


def _linear(module: nn.Module, bits: set[int]) -> tuple[str, list, torch.Tensor | None]:
    """(format, tensors, bias) of a Linear in the plan's terms (a PartsLinear: ("parts", its parts'
    (format, tensors, None)), bias); records quantized act_bits in `bits`."""
    if isinstance(module, TiedHead):
        module = module.table
    if isinstance(module, PartsLinear):
        bias = module.bias
        if bias is not None and bias.dtype != torch.float32:
            raise Unfit("non-fp32 biases")
        return "parts", [_linear(p, bits) for p in module.parts], bias
    if isinstance(module, QuantLinear):
        if module.input_scale is not None or module.perm is not None:
            raise Unfit(f"{type(module).__name__} with an input scale or permutation")
        bits.add(module.act_bits)
        b = module._buffers
        if isinstance(module, BlockInt4Linear):
            parts = ["int4", [b["qs"], b["scales"], b["mins"]]]
        elif isinstance(module, BlockInt8Linear):
            parts = ["int8", [b["q"], b["scales"], b["mins"]]]  # mins empty [N, 0] but for K-quant ones
        elif isinstance(module, Int8Linear) and module.in_features % kernels.reference.QK == 0:
            parts = ["int8", [b["qweight"], b["scales"][:, None].contiguous()]]
        elif isinstance(module, Int4Linear) and module.group_size % kernels.reference.QK == 0:
            if module._blocks is None:
                module._blocks = kernels.repack_int4(module.qweight, module.scales, module.zeros)
            parts = ["int4", list(module._blocks)]
        else:
            raise Unfit(f"{type(module).__name__} layers of {module.in_features} inputs (the kernels take "
                        f"multiples of 32) or groups that are not")
        bias = b["bias"]
    elif isinstance(module, nn.Linear) and module.weight.dtype == torch.float32:
        parts, bias = ["dense", [module.weight]], module.bias
    else:
        raise Unfit(f"{type(module).__name__} layers")
    if bias is not None and bias.dtype != torch.float32:
        raise Unfit("non-fp32 biases")
    fmt, tensors = parts
    if any(t.device.type != "cpu" or not t.is_contiguous() for t in tensors):
        raise Unfit("weights that are not contiguous CPU tensors")
    return fmt, tensors, bias


def _norm(module: nn.Module | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(weight, bias) of an fp32 RMSNorm or LayerNorm; (None, None) for no norm."""
    if module is None:
        return None, None
    if isinstance(module, RMSNorm):
        bias = None
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:
        bias = module.bias
    else:
        raise Unfit(f"{type(module).__name__} norms")
    if module.weight.dtype != torch.float32 or (bias is not None and bias.dtype != torch.float32):
        raise Unfit("non-fp32 norms")
    return module.weight.detach(), None if bias is None else bias.detach()


def _add(plan, spec) -> int:
    """Add a _linear spec to the plan; its index."""
    fmt, tensors, bias = spec
    if fmt == "parts":
        return plan.add_parts([_add(plan, part) for part in tensors], bias)
    return plan.add_linear(fmt, tensors, bias)


def disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "1") == "0"


def build(model: nn.Module):
    """A DecodePlan for the model, or raise Unfit with the reason."""
    cfg = model.cfg
    if kernels.backend() != "native":
        raise Unfit("no native kernels")
    if cfg.post_norm or cfg.pos == "alibi" or cfg.clip_qkv is not None or cfg.embed_proj_dim:
        raise Unfit("the architecture (post-norm blocks, ALiBi, qkv clipping and projected embeddings run op "
                    "by op)")
    if cfg.norm not in ("rms", "layer") or (cfg.mlp == "gated" and cfg.act != "silu") or \
            cfg.act not in ("silu", "gelu", "gelu_tanh", "relu"):
        raise Unfit(f"the architecture ({cfg.norm} norms, {cfg.mlp} {cfg.act} MLP)")
    bits: set[int] = set()
    specs = []
    for block in model.layers:
        attn, mlp = block.attn, block.mlp
        qk_norm = (*_norm(attn.q_norm), *_norm(attn.k_norm)) if attn.q_norm is not None else None
        specs.append((_norm(block.attn_norm), _linear(attn.wqkv, bits), _linear(attn.wo, bits),
                      _norm(block.mlp_norm), _linear(mlp.w_in, bits), _linear(mlp.w_out, bits), attn.scale, qk_norm))
    head = _linear(model.lm_head, bits)
    final = _norm(model.norm)
    if len(bits) > 1:
        raise Unfit("layers with different act_bits")
    act_bits = bits.pop() if bits else 16
    if act_bits not in (8, 16):
        raise Unfit(f"act_bits {act_bits} (the exact fp32-activation path runs op by op)")
    attn0 = model.layers[0].attn
    plan = torch.classes.lmforge.DecodePlan(cfg.dim, attn0.n_heads, attn0.n_kv, attn0.hd, float(cfg.norm_eps),
                                            bool(cfg.rope_interleaved), act_bits, cfg.norm, bool(cfg.parallel_block),
                                            cfg.mlp, cfg.act)
    for attn_norm, qkv, o, mlp_norm, w_in, w_out, scale, qk_norm in specs:
        ids = [_add(plan, spec) for spec in (qkv, o, w_in, w_out)]
        plan.add_layer(*attn_norm, ids[0], ids[1], *mlp_norm, ids[2], ids[3], float(scale))
        if qk_norm is not None:
            plan.set_qk_norm(*qk_norm)
    plan.set_head(*final, plan.add_linear(*head))
    _token_inputs(plan, model)
    return plan


def _token_inputs(plan, model: nn.Module) -> None:
    """Give the plan the embedding table and the rope frequencies, so that its step_tokens makes a step's
    input from token ids itself (Engine.generate); models whose input needs more (an embedding norm or
    an fp16 table) keep making it op by op."""
    cfg = model.cfg
    if model.embed_norm is not None or model.proj_in is not None:
        return
    embed = model.embed
    if isinstance(embed, BlockEmbedding) and embed.dtype == torch.float32:
        fmt, tensors, _ = _linear(embed.table, set())
    elif type(embed) is nn.Embedding and embed.weight.dtype == torch.float32 and embed.weight.is_contiguous():
        fmt, tensors = "dense", [embed.weight.detach()]
    else:
        return
    if cfg.pos == "rope":
        plan.set_rope(model.inv_freq.float().contiguous())
    positions = None
    if model.pos_embed is not None:
        positions = model.pos_embed.weight.detach()
        if positions.dtype != torch.float32 or not positions.is_contiguous():
            return
    plan.set_embedding(plan.add_linear(fmt, tensors, None), positions, cfg.pos_offset)
