"""Accuracy of a model: strided perplexity, LAMBADA last-word accuracy, and lm-eval-harness tasks.

`perplexity` and `lambada` need only lmforge; `harness` needs lm-eval (``pip install lmforge[eval]``).
"""
from .lambada import LambadaResult, lambada, read_lambada, split_last_word
from .perplexity import PerplexityResult, perplexity, read_text, strided_windows

__all__ = ["LambadaResult", "PerplexityResult", "lambada", "perplexity", "read_lambada", "read_text",
           "split_last_word", "strided_windows"]
