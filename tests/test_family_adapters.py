"""Config mapping details the tiny parity models cannot reach: legacy config.json keys written by older
transformers (Pythia, phi-2) and options the generic decoder does not implement."""
import pytest

from lmforge.models import codegen, gpt_neox, phi

NEOX = {"architectures": ["GPTNeoXForCausalLM"], "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 112}
PHI = {"architectures": ["PhiForCausalLM"], "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2,
       "num_attention_heads": 4, "intermediate_size": 112}
CODEGEN = {"architectures": ["CodeGenForCausalLM"], "vocab_size": 256, "n_embd": 96, "n_layer": 2, "n_head": 6,
           "rotary_dim": 8}


def test_pythia_legacy_rope_keys():
    cfg = gpt_neox.FAMILY.config_from_hf({**NEOX, "rotary_pct": 0.5, "rotary_emb_base": 5000})
    assert (cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling) == (8, 5000.0, None)


def test_neox_default_rotary_pct_is_a_quarter():
    assert gpt_neox.FAMILY.config_from_hf(NEOX).rotary_dim == 4


def test_phi2_legacy_top_level_rope_keys():
    cfg = phi.FAMILY.config_from_hf({**PHI, "partial_rotary_factor": 0.4, "rope_theta": 20000.0})
    assert (cfg.rotary_dim, cfg.rope_theta) == (6, 20000.0)


@pytest.mark.parametrize("family, config, needle", [
    (gpt_neox, {**NEOX, "rotary_pct": 0.1}, "rotary channels"),
    (phi, {"architectures": ["PhiForCausalLM"], "n_embd": 64, "n_head": 4}, "phi-msft"),
    (codegen, CODEGEN, "multiple of 4 heads"),
])
def test_unsupported_options_raise(family, config, needle):
    with pytest.raises(NotImplementedError, match=needle):
        family.FAMILY.config_from_hf(config)
