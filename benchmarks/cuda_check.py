"""The CUDA path's checks, before its numbers are trusted (benchmarks/run_cuda.sh runs this first).

1. A tiny Llama-shaped model with random weights, fp32: logits of a full sequence on CUDA within 1e-4
   of the CPU's (TF32 stays off).
2. --compile (CUDA graphs): the compiled step's logits against the same step uncompiled
   (Engine.compiled_step_error) over 4 steps, in fp32, and in bf16 with int8 and int4 weights (RTN).
3. The quantized products on CUDA against their definition (dequantize, then multiply): int8 and int4
   (bf16 activations: tinygemm where the shape fits) at one row and at a prompt's rows.
Prints one line per check, runs them all, and exits non-zero if any failed. `--device cpu` (with
LMFORGE_DECODE_STEP=0) runs the same checks on the CPU, to try the script without a GPU."""
import copy
import sys

import torch

from lmforge.config import ModelConfig
from lmforge.generation.engine import Engine
from lmforge.io.weights import random_model
from lmforge.quant import quantize_on_load
from lmforge.quant.linear import Int4Linear, Int8Linear


FAILED: list[str] = []


def check(name: str, ok: bool, detail: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def main() -> None:
    dev = torch.device(sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cuda")
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "the CPU"
    print(f"torch {torch.__version__}, {name}", flush=True)
    cfg = ModelConfig(architecture="LlamaForCausalLM", vocab_size=512, dim=256, n_layers=4, n_heads=8, n_kv_heads=4,
                      hidden_dim=512, max_seq_len=512)
    cpu_model = random_model(cfg, torch.float32, "cpu", seed=1)
    gpu_model = copy.deepcopy(cpu_model).to(dev)
    tokens = torch.randint(0, cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    ref = Engine(cpu_model, torch.device("cpu"), torch.float32).score(tokens)
    ours = Engine(gpu_model, dev, torch.float32).score(tokens).cpu()
    err = (ours - ref).abs().max().item()
    check("fp32 logits, CUDA against the CPU", err <= 1e-4, f"max abs difference {err:.2e}")

    prompts = [tokens[0, :7].tolist(), tokens[1, :19].tolist()]
    for dtype, quantize, bound in ((torch.float32, None, 1e-4), (torch.bfloat16, "int8", 2e-2),
                                   (torch.bfloat16, "int4", 2e-2)):
        model = gpu_model if dtype == torch.float32 else random_model(cfg, dtype, dev, seed=1)
        if quantize:
            quantize_on_load(model, quantize)
        err = Engine(model, dev, dtype, compile=True).compiled_step_error(prompts, steps=4)
        label = f"{str(dtype).removeprefix('torch.')}{' ' + quantize if quantize else ''}"
        check(f"compiled step, {label}, against the step uncompiled", err <= bound,
              f"largest difference {err:.2e} of the largest logit")

    torch.manual_seed(0)
    w = torch.randn(1024, 4096, device=dev) * 0.02
    for cls, kw in ((Int8Linear, {}), (Int4Linear, {"group_size": 128})):
        m = cls.from_float(w, **kw)
        for rows in (1, 33):
            x = torch.randn(rows, 4096, device=dev, dtype=torch.bfloat16)
            y, r = m(x).float(), m.reference(x).float()
            rel = ((y - r).norm() / r.norm()).item()
            kernel = " (tinygemm)" if getattr(m, "_kernel", None) and dev.type == "cuda" else ""
            check(f"{cls.format}{kernel}, bf16, {rows} rows, against dequantize-then-multiply", rel < 1e-2,
                  f"relative error {rel:.2e}")


if __name__ == "__main__":
    main()
    sys.exit(1 if FAILED else 0)
