"""Calibration data: text from a local file (or the default text shipped with lmforge) cut into
token samples [N, L]."""
from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import torch

from ..errors import LmforgeError

DEFAULT_TEXT = "calibration.txt"  # in lmforge/data: our own prose, a few thousand words


def default_text() -> str:
    return resources.files("lmforge.data").joinpath(DEFAULT_TEXT).read_text(encoding="utf-8")


def read_calibration_text(path: str | Path | None, column: str = "text") -> str:
    """The calibration text: a .txt file whole, or the `column` field of every line of a .jsonl file
    joined by blank lines; None gives the default text."""
    if path is None:
        return default_text()
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"calibration file not found: {path}; give a .txt or .jsonl file with --calib-data")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LmforgeError(f"{path} is not UTF-8 text; convert it to UTF-8") from None
    if path.suffix.lower() in (".jsonl", ".json"):
        from ..prompts import jsonl_rows

        texts = []
        for n, row in enumerate(jsonl_rows(path), 1):
            if column not in row:
                raise LmforgeError(f"{path}, object {n}: no {column!r} field; name the text field with --calib-column")
            texts.append(str(row[column]))
        raw = "\n\n".join(texts)
    if not raw.strip():
        raise LmforgeError(f"{path} holds no text; calibration needs some text")
    return raw


def calibration_samples(ids: list[int], samples: int, seq_len: int) -> torch.Tensor:
    """Consecutive windows of seq_len tokens [N, L]; fewer than asked when the text is short
    (a notice says so), one shorter window when the text is shorter than seq_len."""
    if samples < 1 or seq_len < 2:
        raise LmforgeError(f"--calib-samples must be >= 1 and --calib-seq-len >= 2 (got {samples}, {seq_len})")
    if len(ids) < 2:
        raise LmforgeError("the calibration text is shorter than two tokens; give more text")
    seq_len = min(seq_len, len(ids))
    available = len(ids) // seq_len
    if available < samples:
        print(f"lmforge: the calibration text has {len(ids)} tokens: {available} samples of {seq_len} tokens "
              f"instead of {samples}", file=sys.stderr)
    n = min(samples, available)
    return torch.tensor(ids[:n * seq_len], dtype=torch.long).reshape(n, seq_len)
