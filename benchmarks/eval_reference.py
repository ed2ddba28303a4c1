"""Agreement of `lmforge eval` with reference implementations on the same weights.

    python benchmarks/eval_reference.py [--model smollm2-135m-instruct] [--work DIR]

1. Dequantizes the GGUF with transformers (`from_pretrained(dir, gguf_file=...)`) and saves it as an
   fp32 Hugging Face folder, so both sides run the very same weights.
2. WikiText-2 raw perplexity (first 8192 tokens, context 1024, stride 512): lmforge vs transformers
   computed with the same windows (the strided method of the transformers perplexity guide).
3. LAMBADA (OpenAI) accuracy on the first 500 examples: lmforge's `--task lambada` vs lm-eval's own
   `hf` backend on the saved folder, with a local copy of lambada_openai's task definition.
Prints one JSON object with every number. CPU-heavy: minutes, not seconds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
WIKITEXT = SHARED / "data" / "wikitext-2-raw" / "wikitext-2-raw-v1.test.joined.txt"
LAMBADA = SHARED / "data" / "lambada" / "lambada_test.jsonl"
TOKENS, CONTEXT, STRIDE, EXAMPLES = 8192, 1024, 512, 500

LAMBADA_YAML = """task: lambada_openai_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def dequantized_folder(gguf: Path, out: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (out / "config.json").exists():
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # a plain copy transformers can save
        model.load_state_dict(loaded.state_dict())
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
        model.save_pretrained(out)
    return out


def transformers_perplexity(folder: Path, text: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.evaluate.perplexity import strided_windows

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :TOKENS]
    nll, scored = 0.0, 0
    with torch.inference_mode():
        for w in strided_windows(ids.shape[1], CONTEXT, STRIDE):
            inputs = ids[:, w.begin:w.end]
            labels = inputs.clone()
            labels[:, :w.first_target - w.begin] = -100          # as the guide: score only the new tokens
            n = w.end - w.first_target
            nll += model(inputs, labels=labels).loss.item() * n  # the loss is the mean over those n tokens
            scored += n
    return {"perplexity": math.exp(nll / scored), "tokens": scored, "first_ids": ids[0, :8].tolist()}


def lm_eval_lambada(folder: Path, work: Path) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = work / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "lambada_openai_local.yaml").write_text(LAMBADA_YAML.format(data=LAMBADA))
    results = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={folder},dtype=float32", device="cpu",
                                      tasks=["lambada_openai_local"], task_manager=TaskManager(include_path=str(tasks)),
                                      limit=EXAMPLES, batch_size=8, bootstrap_iters=0, log_samples=False)
    r = results["results"]["lambada_openai_local"]
    return {"accuracy": r["acc,none"], "perplexity": r["perplexity,none"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--work", default=None, help="folder for the dequantized model (default: a temp folder)")
    args = parser.parse_args()

    from lmforge import LLM
    from lmforge.evaluate import lambada, perplexity, read_lambada, read_text
    from lmforge.loader import resolve

    work = Path(args.work or tempfile.mkdtemp(prefix="lmforge-eval-ref-"))
    work.mkdir(parents=True, exist_ok=True)
    folder = dequantized_folder(resolve(args.model), work / "hf")
    text = read_text(WIKITEXT)
    out = {"model": args.model, "date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "torch": torch.__version__}

    llm = LLM(args.model)
    t = time.time()
    ours = perplexity(llm, text, CONTEXT, STRIDE, TOKENS)
    out["wikitext_lmforge"] = {**ours.scores(), **ours.counts(), "first_ids": llm.tokenizer.encode(text)[:8],
                               "seconds": round(time.time() - t)}
    t = time.time()
    out["wikitext_transformers"] = {**transformers_perplexity(folder, text), "seconds": round(time.time() - t)}
    t = time.time()
    lam = lambada(llm, read_lambada(LAMBADA, EXAMPLES))
    out["lambada_lmforge"] = {**lam.scores(), **lam.counts(), "seconds": round(time.time() - t)}
    del llm
    t = time.time()
    out["lambada_lm_eval_hf"] = {**lm_eval_lambada(folder, work), "seconds": round(time.time() - t)}
    ref = out["wikitext_transformers"]["perplexity"]
    out["wikitext_rel_diff"] = out["wikitext_lmforge"]["perplexity"] / ref - 1
    out["lambada_points_diff"] = 100 * (out["lambada_lmforge"]["accuracy"] - out["lambada_lm_eval_hf"]["accuracy"])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
