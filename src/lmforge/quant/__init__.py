"""Quantization: formats and QuantLinear modules, RTN / GPTQ / AWQ / SmoothQuant / FP8, calibration,
lmforge's quantized folders and imports of GPTQ / AWQ checkpoints made by other tools."""
from __future__ import annotations

from pathlib import Path

from .linear import FORMATS, QuantLinear, decoder_linears
from .quantize import quantize_model
from .spec import QuantSpec, make_spec, parse_quantize

__all__ = ["FORMATS", "QuantLinear", "QuantSpec", "decoder_linears", "make_spec", "parse_quantize",
           "quantize_model", "quantize_on_load", "quantize_to_folder"]


def quantize_on_load(model, spec: str | QuantSpec, source=None) -> None:
    """RTN-quantize a freshly loaded model in place (``LLM(..., quantize="int4-g128")``)."""
    from ..errors import LmforgeError

    spec = parse_quantize(spec) if isinstance(spec, str) else spec
    if spec.needs_calibration:
        raise LmforgeError(f"--method {spec.method} needs calibration; run `lmforge quantize` and load its output")
    if getattr(source, "quantization", None) or any(isinstance(m, QuantLinear) for _, m in decoder_linears(model)):
        raise LmforgeError("this model is already quantized; load it without --quantize")
    quantize_model(model, spec, progress=False)


def quantize_to_folder(model_source, spec: QuantSpec, output: str | Path, calib_data=None,
                       calib_column: str = "text", calib_samples: int = 128, calib_seq_len: int = 512,
                       dtype="float32", device="cpu", force: bool = False, progress: bool = True) -> Path:
    """Load a model, quantize it with `spec` and write an lmforge folder to `output` (atomically)."""
    from .. import loader
    from ..errors import LmforgeError
    from ..io.native import check_output, save_native
    from .calibration import calibration_samples, read_calibration_text

    output = Path(output)
    check_output(output, force)  # before any work: a refused run should not cost minutes
    text = read_calibration_text(calib_data, calib_column) if spec.needs_calibration else None
    model, tokenizer, src = loader.load(model_source, dtype, device, dequantize=True)
    if getattr(src, "quantization", None) or any(isinstance(m, QuantLinear) for _, m in decoder_linears(model)):
        raise LmforgeError(f"{src.path} is already quantized; quantize the full-precision model instead")
    calib = None
    if text is not None:
        if isinstance(tokenizer, Exception):
            raise LmforgeError(f"calibration needs the model's tokenizer: {tokenizer}")
        calib = calibration_samples(tokenizer.encode(text), calib_samples, calib_seq_len)
    quantize_model(model, spec, calib, progress=progress)
    block = {**spec.to_json(), "format": spec.format,
             "group_size": spec.group_size if spec.format == "int4" else -1,
             "calibration": None if calib is None else {
                 "data": str(calib_data) if calib_data else "lmforge default (data/calibration.txt)",
                 "column": calib_column if calib_data and str(calib_data).endswith((".jsonl", ".json")) else None,
                 "samples": int(calib.shape[0]), "seq_len": int(calib.shape[1])}}
    return save_native(model, tokenizer, output, block, source=str(src.path), force=force)
