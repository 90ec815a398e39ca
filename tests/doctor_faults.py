"""A learnable tiny dataset and the faults the doctor must tell apart (shared by the doctor tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.cifar_archive import make_cifar_archive

# A narrow airnet that learns the generated data within a few dozen steps: the healthy baseline.
HEALTHY = dict(preset="smoke", train_subset=0, test_subset=0, batch_size=64, width=8, lr=0.3)


def learnable_archive(folder: Path) -> tuple[Path, str]:
    """500 train / 200 test class-dependent images (class = grey level and colour, plus noise)."""
    path = folder / "cifar-10-python.tar.gz"
    return path, make_cifar_archive(path, per_batch=100, n_test=200, seed=1)


def raw_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    """A data path that forgets to scale: the network sees 0-255 values."""
    return torch.ones(1, 3, 1, 1), torch.zeros(1, 3, 1, 1)


def freeze_head(model: torch.nn.Module) -> None:
    """The last layer zeroed and frozen, as when a checkpoint's head failed to load and was frozen."""
    head = model.head
    with torch.no_grad():
        head.weight.zero_()
    head.requires_grad_(False)


def shuffled(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(labels)
