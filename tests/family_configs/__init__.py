"""Tiny random configs, one module per family adapter: each defines CASES = {case_id: factory}.

A factory returns an untrained transformers model (fp32, eval mode) built from a tiny config; the
parity tests save it with save_pretrained and load the folder with lmforge."""
import importlib
import pkgutil


def all_cases():
    cases = {}
    for mod in pkgutil.iter_modules(__path__):
        cases.update(importlib.import_module(f"{__name__}.{mod.name}").CASES)
    return dict(sorted(cases.items()))
