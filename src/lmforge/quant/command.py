"""`lmforge quantize`: load a model, quantize it, write an lmforge folder."""
from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    q = sub.add_parser("quantize", help="quantize a model (RTN, GPTQ, AWQ, SmoothQuant, FP8) into an lmforge folder",
                       description="Quantize every Linear of the decoder layers; embeddings and lm_head stay "
                                   "in the model dtype. The output folder loads by path in every command.")
    q.add_argument("--model", "-m", default=None, help="HF folder, .gguf file or alias (default: smollm2-135m-instruct)")
    q.add_argument("--method", required=True, help="rtn, gptq, awq, smoothquant (W8A8) or fp8")
    q.add_argument("--bits", type=int, default=None, help="8 or 4 (default: 4 for gptq/awq, else 8)")
    q.add_argument("--group-size", type=int, default=None,
                   help="int4 group of input columns: 32, 64, 128 (default) or -1 (per channel)")
    q.add_argument("--scheme", default="sym", help="sym (default) or asym (int4 zero points)")
    q.add_argument("--alpha", default=None, help="SmoothQuant migration strength 0..1 (default 0.5) or auto")
    q.add_argument("--act-quant", default="token",
                   help="SmoothQuant activations: token (dynamic per-token scales, default) or static")
    q.add_argument("--act-order", action="store_true", help="GPTQ: columns in order of decreasing Hessian diagonal")
    q.add_argument("--damp", type=float, default=0.01, help="GPTQ dampening (fraction of mean Hessian diagonal)")
    q.add_argument("--calib-data", default=None, help="calibration text: .txt or .jsonl (default: shipped text)")
    q.add_argument("--calib-column", default="text", help="the text field of a .jsonl file (default: text)")
    q.add_argument("--calib-samples", type=int, default=128, help="calibration samples (default 128)")
    q.add_argument("--calib-seq-len", type=int, default=512, help="tokens per calibration sample (default 512)")
    q.add_argument("--dtype", default="float32", help="dtype of the unquantized tensors (default float32)")
    q.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    q.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    q.add_argument("--output", "-o", required=True, help="the folder to write (must not exist, unless --force)")
    q.add_argument("--force", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> int:
    import torch

    from . import quantize_to_folder
    from .spec import make_spec

    spec = make_spec(args.method, args.bits, args.group_size, args.scheme, args.alpha, args.act_quant,
                     args.act_order, args.damp)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = quantize_to_folder(args.model, spec, args.output, args.calib_data, args.calib_column,
                             args.calib_samples, args.calib_seq_len, args.dtype, args.device, args.force)
    print(f"wrote {out}", file=sys.stderr)
    return 0
