"""lmforge: run, quantize, benchmark and evaluate decoder-only LLMs."""
from .errors import LmforgeError

__version__ = "0.1.0"

__all__ = ["LLM", "LmforgeError", "__version__"]


def __getattr__(name):
    if name == "LLM":  # keep `import lmforge` light: torch loads only when the API is used
        from .api import LLM
        return LLM
    raise AttributeError(name)
