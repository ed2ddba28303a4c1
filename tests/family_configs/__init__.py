"""Tiny random configs, one module per family adapter: each defines CASES = {case_id: factory}.

A factory returns an untrained transformers model (fp32, eval mode) built from a tiny config; all_cases()
adds noise to its parameters (see perturbed); the parity tests save it with save_pretrained and load the
folder with lmforge."""
import importlib
import pkgutil

import torch


def all_cases():
    cases = {}
    for mod in pkgutil.iter_modules(__path__):
        for name, factory in importlib.import_module(f"{__name__}.{mod.name}").CASES.items():
            cases[name] = lambda factory=factory: perturbed(factory())
    return dict(sorted(cases.items()))


def perturbed(model, std: float = 0.02):
    """Add noise to every parameter: transformers initialises biases to 0 and norm weights to 1, so without it
    a bias or norm weight loaded into the wrong place (or not at all) would still pass parity."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model
