"""Prompt sources for `generate` and `bench`: a prompt file (txt, one prompt per line, or jsonl) or a
dataset column (jsonl, csv, parquet); batches planned by length buckets; results as JSON lines."""
from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import LmforgeError

PROMPT_FIELDS = ("prompt", "text")


# -------------------------------------------------------------------------------------- reading

def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LmforgeError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LmforgeError(f"{path}: cannot read it as UTF-8 text ({e}); give a readable text file") from None


def jsonl_rows(path: Path) -> list[dict]:
    """The JSON objects of a .jsonl file, one a line (blank lines skipped); a bad line is an LmforgeError."""
    rows = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LmforgeError(f"{path}, line {n}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise LmforgeError(f"{path}, line {n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _csv_rows(path: Path) -> list[dict]:
    try:
        return list(csv.DictReader(_read_text(path).splitlines()))
    except csv.Error as e:
        raise LmforgeError(f"{path}: not a readable CSV file ({e})") from None


def _parquet_rows(path: Path, column: str) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LmforgeError(f"{path}: reading parquet needs pyarrow; install it with `pip install pyarrow` "
                           "or convert the file to jsonl or csv") from None
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise LmforgeError(f"no such file: {path}") from None
    except Exception as e:  # pyarrow raises its own error types for damaged files
        raise LmforgeError(f"{path}: not a readable parquet file ({e})") from None
    if column not in table.column_names:
        _missing(path, column, table.column_names)
    return [{column: v} for v in table.column(column).to_pylist()]


def _missing(path: Path, column: str, columns) -> None:
    raise LmforgeError(f"{path}: no column {column!r} (columns: {', '.join(map(str, columns)) or 'none'}); "
                       "choose one with --column")


def read_dataset(path: str | Path, column: str) -> list[str]:
    """The values of one column of a jsonl, csv or parquet file, as prompts."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = jsonl_rows(path)
    elif suffix == ".csv":
        rows = _csv_rows(path)
    elif suffix == ".parquet":
        rows = _parquet_rows(path, column)
    else:
        raise LmforgeError(f"{path}: unknown dataset format {suffix or '(no extension)'}; "
                           "use a .jsonl, .csv or .parquet file")
    if not rows:
        raise LmforgeError(f"{path}: the dataset is empty; give a file with at least one row")
    prompts = []
    for n, row in enumerate(rows, 1):
        if column not in row:
            _missing(path, column, list(row))
        value = row[column]
        if not isinstance(value, str) or not value:
            raise LmforgeError(f"{path}: row {n} has no text in column {column!r} (got {value!r})")
        prompts.append(value)
    return prompts


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts from a .jsonl file (a "prompt" or "text" field per line) or a text file (one per
    non-empty line; write a newline inside a prompt as \\n)."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        prompts = []
        for n, row in enumerate(jsonl_rows(path), 1):
            field = next((f for f in PROMPT_FIELDS if isinstance(row.get(f), str)), None)
            if field is None:
                raise LmforgeError(f"{path}: object {n} has no \"prompt\" or \"text\" string field")
            prompts.append(row[field])
    else:
        prompts = [line.replace("\\n", "\n") for line in _read_text(path).splitlines() if line.strip()]
    if not prompts:
        raise LmforgeError(f"{path}: no prompts in the file; give at least one")
    return prompts


# ------------------------------------------------------------------------------------- batching

@dataclass(frozen=True)
class PlannedBatch:
    indices: tuple[int, ...]  # prompts of the batch, as positions in the input order
    padded_len: int           # every row is left-padded to this many tokens


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def plan_batches(lengths: list[int], batch_size: int, bucket_size: int | None = None) -> list[PlannedBatch]:
    """Without bucket_size: batches in input order, each padded to its longest prompt. With it:
    prompts sorted by length, cut into batches, each padded to its longest rounded up to a multiple of
    bucket_size (few distinct shapes, little padding)."""
    if batch_size < 1:
        raise LmforgeError(f"--batch-size must be at least 1 (got {batch_size})")
    if bucket_size is not None and bucket_size < 1:
        raise LmforgeError(f"--bucket-size must be at least 1 (got {bucket_size})")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i]) if bucket_size else list(range(len(lengths)))
    batches = []
    for start in range(0, len(order), batch_size):
        idx = tuple(order[start:start + batch_size])
        batches.append(PlannedBatch(idx, round_up(max(lengths[i] for i in idx), bucket_size or 1)))
    return batches


def padding_waste(lengths: list[int], batches: list[PlannedBatch]) -> float:
    """Padding tokens / all prompt tokens processed (padding included)."""
    total = sum(b.padded_len * len(b.indices) for b in batches)
    return (total - sum(lengths)) / total if total else 0.0


def padding_report(lengths: list[int], batch_size: int, bucket_size: int | None) -> dict:
    """Padding waste and distinct padded shapes, in input order and with length buckets."""
    plain = plan_batches(lengths, batch_size)
    report = {"batch_size": batch_size, "padding_waste": padding_waste(lengths, plain),
              "distinct_lengths": len({b.padded_len for b in plain})}
    if bucket_size:
        bucketed = plan_batches(lengths, batch_size, bucket_size)
        report.update(bucket_size=bucket_size, bucketed_padding_waste=padding_waste(lengths, bucketed),
                      bucketed_distinct_lengths=len({b.padded_len for b in bucketed}))
    return report


# ---------------------------------------------------------------------------------------- running

class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, label: str, stream=None, width: int = 30):
        self.total, self.label, self.done, self.width = total, label, 0, width
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        filled = self.width * self.done // max(self.total, 1)
        elapsed = time.perf_counter() - self.start
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                          f"{self.done}/{self.total} prompts, {elapsed:.1f} s")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def run_prompts(llm, prompts: list[str], gen, batch_size: int = 1, bucket_size: int | None = None,
                speculator=None, progress: bool = True) -> list[dict]:
    """Generate for every prompt in batches; one record per prompt, in input order: prompt,
    completion, token counts, and the timing of the batch it ran in."""
    if speculator is not None and batch_size != 1:
        raise LmforgeError(f"speculative decoding runs one prompt at a time; use --batch-size 1 "
                           f"(got {batch_size}) or drop --draft/--draft-model")
    ids = [llm.tokenizer.encode(p) for p in prompts]
    batches = plan_batches([len(i) for i in ids], batch_size, bucket_size)
    bar = Progress(len(prompts), "generate") if progress else None
    records: list[dict] = [{} for _ in prompts]
    for b in batches:
        start = time.perf_counter()
        outs = llm.generate_ids([ids[i] for i in b.indices], gen, speculator=speculator,
                                pad_multiple=bucket_size or 1)
        elapsed = time.perf_counter() - start
        new_tokens = sum(len(o) for o in outs)
        for i, out in zip(b.indices, outs):
            records[i] = {"index": i, "prompt": prompts[i], "completion": llm.finish(out, gen),
                          "prompt_tokens": len(ids[i]), "completion_tokens": len(out),
                          "batch_size": len(b.indices), "padded_prompt_tokens": b.padded_len,
                          "batch_latency_s": elapsed, "batch_tokens_per_s": new_tokens / elapsed}
        if bar:
            bar.update(len(b.indices))
    return records


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    """One JSON object per line, written atomically."""
    from .bench.report import write_atomic
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
