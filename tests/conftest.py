import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
# No test may reach the network: `datasets` (loaded by lm-eval for local task files) reads this on import.
os.environ["HF_DATASETS_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
STORIES = SHARED / "models" / "stories260K"


def need(path: Path):
    """Skip (cleanly) when a ../shared asset is absent."""
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


@pytest.fixture(scope="session")
def stories():
    return need(STORIES)


@pytest.fixture(scope="session")
def smollm2_path():
    from lmforge.errors import LmforgeError
    from lmforge.loader import resolve
    try:
        return resolve("smollm2-135m-instruct")
    except LmforgeError as e:
        pytest.skip(str(e))
