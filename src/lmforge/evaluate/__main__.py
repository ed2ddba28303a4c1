"""`python -m lmforge.evaluate ARGS`: lm-eval's own command line with the `lmforge` model registered.

    HF_DATASETS_OFFLINE=1 python -m lmforge.evaluate --model lmforge \
        --model_args pretrained=smollm2-135m-instruct,dtype=float32 --tasks lambada_openai
"""
import sys

from ..errors import LmforgeError

try:
    from . import harness  # noqa: F401  (registers the model with lm-eval)
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
except LmforgeError as e:  # a bad model arg (pretrained, quantize, batch_size...): one line, not a traceback
    sys.exit(f"lmforge: error: {e}")
