"""RTN / GPTQ / AWQ / SmoothQuant: cheap accuracy checks on stories260K and on single layers."""
import math

import pytest
import torch

from lmforge import LLM
from lmforge.quant import make_spec, quantize_model
from lmforge.quant.calibration import calibration_samples
from lmforge.quant.gptq import HessianAccumulator, gptq_linear
from lmforge.quant.linear import QuantLinear, decoder_linears
from lmforge.quant.rtn import rtn_linear

STORY = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
         "One day, she saw a big red ball under a tree. She ran to get it, but a dog took it first. "
         "Lily was sad, but then the dog came back and dropped the ball at her feet. They played all day. ")


@pytest.fixture(scope="module")
def setup(stories):
    base = LLM(stories)
    ids = torch.tensor(base.tokenizer.encode(STORY * 4)[:384])
    # calibrated on the text it is scored on: the cheap, deterministic form of the accuracy checks
    calib = calibration_samples(base.tokenizer.encode(STORY * 6), 8, 64)
    return stories, ids, calib, perplexity(base, ids)


def perplexity(llm, ids):
    logits = llm.score(ids[None])[0, :-1]
    return math.exp(torch.nn.functional.cross_entropy(logits, ids[1:]).item())


def quantized_ppl(setup, **kw):
    path, ids, calib, _ = setup
    llm = LLM(path)
    quantize_model(llm.model, make_spec(**kw), calib, progress=False)
    assert all(isinstance(m, QuantLinear) for _, m in decoder_linears(llm.model))
    assert isinstance(llm.model.lm_head, torch.nn.Linear) and isinstance(llm.model.embed, torch.nn.Embedding)
    return perplexity(llm, ids)


def test_int8_rtn_within_half_a_percent(setup):
    assert quantized_ppl(setup, method="rtn", bits=8) <= setup[3] * 1.005


def test_fp8_within_three_percent(setup):
    assert quantized_ppl(setup, method="fp8") <= setup[3] * 1.03


def test_gptq_int4_beats_rtn_int4(setup):
    rtn = quantized_ppl(setup, method="rtn", bits=4, group_size=-1)
    assert quantized_ppl(setup, method="gptq", bits=4, group_size=-1) < rtn
    assert rtn > setup[3]


def test_awq_int4_beats_rtn_int4(setup):
    rtn = quantized_ppl(setup, method="rtn", bits=4, group_size=-1)
    assert quantized_ppl(setup, method="awq", bits=4, group_size=-1) < rtn


@pytest.mark.parametrize("kw", [{}, {"act_quant": "static"}, {"alpha": "auto"}])
def test_smoothquant_w8a8_within_three_percent(setup, kw):
    assert quantized_ppl(setup, method="smoothquant", **kw) <= setup[3] * 1.03


def _layer_problem(seed=0, n=64, k=128, tokens=512):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, k, generator=g) * (torch.rand(k, generator=g) * 3 + 0.1)  # uneven channel scales
    X = X + 0.5 * X[:, torch.randperm(k, generator=g)]  # correlated inputs: where GPTQ helps
    W = torch.randn(n, k, generator=g) * 0.05
    return W, X


@pytest.mark.parametrize("kw", [dict(bits=4, group_size=32), dict(bits=4, group_size=32, act_order=True),
                                dict(bits=4, group_size=-1, scheme="asym", act_order=True), dict(bits=8)])
def test_gptq_layer_error_below_rtn(kw):
    W, X = _layer_problem()
    acc = HessianAccumulator(W.shape[1])
    for chunk in X.split(100):
        acc.add(chunk)
    torch.testing.assert_close(acc.H, 2 * X.t() @ X / X.shape[0], rtol=1e-4, atol=1e-4)
    spec = make_spec("gptq", **kw)
    g = gptq_linear(W, None, acc.H, spec)
    r = rtn_linear(W, None, make_spec("rtn", **{k: v for k, v in kw.items() if k != "act_order"}))
    err = lambda m: (m(X) - X @ W.t()).pow(2).mean()
    assert err(g) < 0.9 * err(r)
    assert (g.perm is not None) == (kw.get("act_order", False) and kw.get("group_size") == 32)
