"""What produced a result: the code version and the package versions."""

from __future__ import annotations

import hashlib
import platform
from functools import cache
from importlib import metadata
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

# Source files whose change must invalidate a cached result. Prefect's TASK_SOURCE only sees the
# task function's own text, so the cache keys include these digests instead.
CODE_PARTS = {
    "data": ["data/dataset.py"],
    "extra": ["data/extra.py", "data/images.py"],
    "train": ["training/loop.py", "training/scoring.py", "training/optim.py", "data/batches.py", "data/augment.py",
              "training/checkpoint.py", "training/health.py", "training/runtime.py", "training/cpu_tuning.py",
              "models"],
    "eval": ["evaluation.py", "training/scoring.py", "data/batches.py", "data/augment.py",
             "training/checkpoint.py", "training/runtime.py", "training/cpu_tuning.py", "models"],
    "doctor": ["doctor", "training/optim.py", "data/batches.py", "data/augment.py", "training/runtime.py",
               "training/cpu_tuning.py", "models"],
}


@cache
def code_version(part: str) -> str:
    h = hashlib.sha256()
    for name in CODE_PARTS[part]:
        path = PACKAGE_DIR / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            h.update(file.relative_to(PACKAGE_DIR).as_posix().encode())
            h.update(file.read_bytes())
    return h.hexdigest()[:16]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("cifar-pipeline", "torch", "torchvision", "prefect", "numpy", "pandas", "pydantic"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
