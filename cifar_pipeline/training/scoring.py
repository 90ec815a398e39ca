"""Scoring a model on a labelled split: test-time augmentation, summed loss and the confusion matrix.

Shared by the test evaluation and the per-epoch validation inside training.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.batches import eval_batches
from .runtime import autocast


def tta_logits(model: nn.Module, x: torch.Tensor, level: int) -> torch.Tensor:
    """Average logits over views: 0 none, 1 + mirror, 2 + one-pixel translations (airbench)."""
    def mirror(inputs: torch.Tensor) -> torch.Tensor:
        return 0.5 * model(inputs) + 0.5 * model(inputs.flip(-1)) if level >= 1 else model(inputs)

    logits = mirror(x)
    if level < 2:
        return logits
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[:, :, 0:32, 0:32], padded[:, :, 2:34, 2:34]]
    return 0.5 * logits + 0.5 * torch.stack([mirror(s) for s in shifted]).mean(0)


class Scores(NamedTuple):
    loss_sum: float  # summed cross-entropy
    confusion: torch.Tensor  # 10x10 on the CPU; rows true, columns predicted
    predictions: torch.Tensor  # predicted class per image, in order, on the CPU


def score(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    device: torch.device,
    normalize: str,
    channels_last: bool,
    tta: int,
    amp_dtype: torch.dtype | None,
) -> Scores:
    loss_sum, confusion = 0.0, torch.zeros(10, 10, dtype=torch.long, device=device)
    predictions = []
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast(device, amp_dtype):
        for x, y in eval_batches(images, labels, batch_size=batch_size, device=device, normalize=normalize,
                                 channels_last=channels_last):
            logits = tta_logits(model, x, tta).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            predicted = logits.argmax(1)
            confusion += torch.bincount(y * 10 + predicted, minlength=100).view(10, 10)
            predictions.append(predicted)
    model.train(was_training)
    return Scores(loss_sum, confusion.cpu(), torch.cat(predictions).cpu() if predictions else torch.zeros(0))
