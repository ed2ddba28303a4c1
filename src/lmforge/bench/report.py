"""Benchmark outputs: markdown table (stdout), JSON, CSV and a PNG plot; files are written atomically."""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

from ..errors import LmforgeError

MiB = 1 << 20


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`: never a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: str | Path, flag: str) -> None:
    """Fail before the (long) benchmark rather than after it."""
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise LmforgeError(f"{flag} {path}: the folder {parent} does not exist; create it first")


# ------------------------------------------------------------------------------------ helpers

def _stat(r: dict, key: str, which: str = "mean", scale: float = 1.0) -> float | None:
    value = r["metrics"].get(key)
    return value[which] * scale if value else None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _speedup_text(r: dict) -> str:
    s = r.get("speedup_of_lmforge")
    if not s:
        return ""
    if s["decode"] is not None:
        return f"{s['decode']:.2f}× decode, {s['ttft']:.2f}× TTFT"
    return f"{s['e2e']:.2f}× end-to-end" if s["e2e"] is not None else ""


# ----------------------------------------------------------------------------------- markdown

def header_lines(results: list[dict]) -> list[str]:
    """The environment block printed above the table (from the first result)."""
    r = results[0]
    env, model, roof = r["env"], r["model"], r["roofline"]
    commit = f", commit {env['git_commit'][:12]}{'-dirty' if env['git_commit'].endswith('-dirty') else ''}" \
        if env["git_commit"] else ""
    lines = [
        f"model: {model['source']}{' with random weights' if model.get('random_weights') else ''} "
        f"({model['architecture']}, {model['parameters']:,} parameters, "
        f"{model['bytes'] / MiB:,.1f} MiB of weights as loaded, {env['dtype']} activations, "
        f"{env.get('kv_cache_dtype', env['dtype'])} KV cache; "
        f"quantization: {env['quantization'] or 'none'})",
        f"decode step: {env.get('decode_step') or 'not recorded'}"
        + (f"; kernels: {env['kernels']}" if env.get("kernels") else ""),
        f"lmforge {env['lmforge_version']}{commit} · torch {env['torch_version']} · device {env['device']}"
        + (f" ({env['gpu']})" if env["gpu"] else "") + f" · {env['threads']} threads · {env['date']}",
        f"CPU: {env['cpu']} ({env['logical_cpus']} logical CPUs; {' '.join(env['cpu_isa']) or 'no AVX2'})",
    ]
    if roof:
        lines.append(f"roofline: read {roof['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, "
                     f"fp32 matmul {roof['fp32_matmul_flops_per_s'] / 1e9:.1f} GFLOP/s (measured {roof['date']})")
    case = r["case"]
    lines.append(f"{case['decoding']} decoding, {case['prompt']} prompts, {case['num_warmup']} warm-up + "
                 f"{case['num_iter']} timed iterations per case; times exclude tokenization")
    return lines


COLUMNS = ("backend", "test", "TTFT ms", "TTFT p90", "TPOT ms", "TPOT p90", "TPOT p99", "prefill t/s",
           "decode t/s/seq", "decode t/s", "e2e s", "GB/s", "% peak BW", "RSS MiB", "lmforge speedup")


def table_row(r: dict) -> list[str]:
    m = r["metrics"]
    bw = m["bandwidth_bytes_per_s"]
    return [r["backend"], r["case"]["label"],
            _fmt(_stat(r, "ttft_s", scale=1e3)), _fmt(_stat(r, "ttft_s", "p90", 1e3)),
            _fmt(_stat(r, "tpot_s", scale=1e3)), _fmt(_stat(r, "tpot_s", "p90", 1e3)),
            _fmt(_stat(r, "tpot_s", "p99", 1e3)),
            _fmt(m["prefill_tokens_per_s"], 1), _fmt(m["decode_tokens_per_s_per_sequence"], 1),
            _fmt(m["decode_tokens_per_s_aggregate"], 1), _fmt(_stat(r, "e2e_latency_s"), 3),
            _fmt(bw / 1e9 if bw else None), _fmt(m["bandwidth_percent_of_peak"], 1),
            _fmt(r["memory"]["peak_rss_bytes"] / MiB, 0), _speedup_text(r)]


def markdown(results: list[dict]) -> str:
    """The environment block and one table row per result (llama-bench style)."""
    if not results:
        return "no results\n"
    rows = [list(COLUMNS), ["---"] * len(COLUMNS)] + [table_row(r) for r in results]
    lines = header_lines(results) + [""] + ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines + speculative_lines(results)) + "\n"


def speculative_lines(results: list[dict]) -> list[str]:
    """One line per speculative result: acceptance, tokens per step, speedup over plain decoding."""
    lines = []
    for r in results:
        s = r.get("speculative")
        if s:
            up = s["speedup_over_plain"]
            lines.append(f"speculative {r['case']['label']} (draft {s['draft']}, k={s['k']}): acceptance "
                         f"{s['acceptance_rate']:.1%} ({s['accepted']}/{s['drafted']} drafts), "
                         f"{s['tokens_per_step']:.2f} tokens/step, speedup over plain decoding "
                         f"{_fmt(up['decode'])}× decode, {_fmt(up['e2e'])}× end-to-end (this run)")
    return [""] + lines if lines else []


# ------------------------------------------------------------------------------------ JSON/CSV

def to_json(results: list[dict]) -> str:
    return json.dumps(results, indent=1) + "\n"


def flat_row(r: dict) -> dict:
    """One CSV row: case, summary metrics, memory, model size and the key environment fields."""
    m = r["metrics"]
    row = {"backend": r["backend"]}
    row.update({k: r["case"][k] for k in ("label", "batch_size", "input_tokens", "depth", "context_tokens",
                                           "new_tokens", "num_iter", "num_warmup", "decoding", "num_beams",
                                           "seed", "prompt")})
    for key in ("ttft_s", "tpot_s", "e2e_latency_s"):
        for which in ("mean", "p50", "p90", "p99"):
            row[f"{key[:-2]}_{which}_s"] = m[key][which] if m[key] else None
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s_per_sequence", "decode_tokens_per_s_aggregate",
                "decode_step_bytes", "bandwidth_bytes_per_s", "bandwidth_percent_of_peak"):
        row[key] = m[key]
    row.update(r["memory"])
    row.update({f"model_{k}": r["model"][k] for k in ("parameters", "bytes", "decode_weight_bytes")})
    s = r.get("speedup_of_lmforge") or {}
    row.update({f"lmforge_speedup_{k}": s.get(k) for k in ("decode", "ttft", "e2e")})
    row.update({k: r["env"][k] for k in ("lmforge_version", "git_commit", "torch_version", "cpu", "threads",
                                         "device", "gpu", "dtype", "date")})
    return row


def to_csv(results: list[dict]) -> str:
    buf = io.StringIO()
    rows = [flat_row(r) for r in results]
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


# ------------------------------------------------------------------------------------- plot

def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise LmforgeError("--plot needs matplotlib; install it with `pip install matplotlib`") from None


def plot_png(results: list[dict]) -> bytes:
    """Left: next-token latency distribution per case; right: decode tok/s (all sequences) against
    input length, one line per backend and batch size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    streamed = [r for r in results if any(len(t) > 1 for t in r["samples"]["token_times_s"])]
    gaps = [[(b - a) * 1e3 for t in r["samples"]["token_times_s"] for a, b in zip(t, t[1:])] for r in streamed]
    if gaps:
        left.boxplot(gaps, showfliers=True)
        left.set_xticks(range(1, len(streamed) + 1),
                        [f"{r['backend']}\n{r['case']['label']}" for r in streamed], fontsize=7, rotation=45)
    left.set_ylabel("next-token latency (ms)")
    left.set_title("next-token latency per case (first token excluded)")

    lines: dict[tuple, list[tuple[int, float]]] = {}
    for r in results:
        tps = r["metrics"]["decode_tokens_per_s_aggregate"]
        if tps is not None:
            key = (r["backend"], r["case"]["batch_size"], r["case"]["depth"], r["case"]["new_tokens"])
            lines.setdefault(key, []).append((r["case"]["input_tokens"], tps))
    for (backend, batch, depth, new), points in sorted(lines.items()):
        xs, ys = zip(*sorted(points))
        label = f"{backend} batch {batch}" + (f" depth {depth}" if depth else "") + f" tg{new}"
        right.plot(xs, ys, marker="o", label=label)
    right.set_xlabel("input tokens")
    right.set_ylabel("decode tokens/s (all sequences)")
    right.set_title("decode throughput")
    if lines:
        right.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
