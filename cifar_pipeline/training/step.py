"""One training step and what it needs: the images, the batches, a fresh model, the step itself.

Training, the time budget's warm-up and the doctor's probes all build these through the functions
here, so a probe trains as a run does, apart from what it changes on purpose (its batch size,
learning-rate factor and step count).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import PipelineConfig
from ..data.augment import normalizer, to_float
from ..data.batches import TrainBatches, to_device_images
from ..data.dataset import CifarArrays, DatasetRecord, load_arrays
from ..data.extra import ExtraDataRecord, load_extra
from ..errors import ConfigError
from ..models import build_model
from .optim import build_optimizer
from .runtime import autocast, autocast_dtype

WHITENING_IMAGES = 5000  # airbench estimates the patch covariance from this many images

# (scale, shift) of the input normalisation; None: the configured one. The doctor's tests inject
# a wrong one (0-255 inputs) through it.
Normalization = tuple[torch.Tensor, torch.Tensor] | None


class TrainingData(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray  # empty unless cfg.validation_images > 0
    y_val: np.ndarray


def subset(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    return (x[:n], y[:n]) if n else (x, y)


def split_training(cfg: PipelineConfig, arrays: CifarArrays,
                   extra: tuple[np.ndarray, np.ndarray] | None = None) -> TrainingData:
    """The images training sees: the training split (or its first `train_subset`), less a held-out
    validation split of `validation_images` chosen by the seed, so every trial of a sweep holds out
    the same images; then the extra images, if any (never in the validation split)."""
    x, y = subset(arrays.x_train, arrays.y_train, cfg.train_subset)
    y = np.asarray(y)
    n_val = cfg.validation_images
    if n_val >= len(y):
        raise ConfigError(f"validation_images {n_val} leaves no training images out of {len(y)}")
    order = np.random.default_rng(cfg.seed).permutation(len(y)) if n_val else np.arange(len(y))
    val, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    x_train, y_train = x[train_idx], y[train_idx]
    if extra is not None and len(extra[1]):
        x_train, y_train = np.concatenate([x_train, extra[0]]), np.concatenate([y_train, extra[1]])
    return TrainingData(x_train, y_train, x[val], y[val])


def training_data(cfg: PipelineConfig, dataset: DatasetRecord, extra: ExtraDataRecord | None = None) -> TrainingData:
    return split_training(cfg, load_arrays(dataset), load_extra(extra) if extra is not None and extra.n_images
                          else None)


def train_batches(cfg: PipelineConfig, images: np.ndarray, labels: np.ndarray, device: torch.device, *,
                  batch_size: int | None = None, normalization: Normalization = None) -> TrainBatches:
    """The images as the configured batches and augmentation, on `device`."""
    batches = TrainBatches(
        images, labels, batch_size=batch_size or cfg.batch_size, device=device, seed=cfg.seed,
        normalize=cfg.normalize, flip=cfg.flip, translate=cfg.translate, cutout=cfg.cutout,
        channels_last=cfg.channels_last, brightness=cfg.brightness, contrast=cfg.contrast,
    )
    if normalization is not None:
        batches.scale, batches.shift = (t.to(device) for t in normalization)
    if len(batches) == 0:
        raise ConfigError(f"batch_size {batches.batch_size} is larger than the {len(labels)} training images")
    return batches


def new_model(cfg: PipelineConfig, x_train: np.ndarray, device: torch.device, *,
              normalization: Normalization = None, alter: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """A fresh model for `cfg.seed`; airnet's whitening layer is estimated from the first training images
    as the data path presents them."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.width)
    if hasattr(model, "init_from_data"):
        scale, shift = normalization if normalization is not None else normalizer(cfg.normalize)
        sample = to_float(to_device_images(x_train[:WHITENING_IMAGES], "cpu"), scale.cpu(), shift.cpu(), False)
        model.init_from_data(sample)
    if alter is not None:
        alter(model)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    return model.to(device=device, memory_format=memory_format)


def start_epoch(model: nn.Module, cfg: PipelineConfig, epoch: int) -> None:
    """Per-epoch switches: airnet's whitening bias trains only in the first `whiten_bias_epochs`."""
    bias = getattr(getattr(model, "whiten", None), "bias", None)
    if bias is not None:
        bias.requires_grad_(epoch < cfg.whiten_bias_epochs)
    model.train()


@dataclass
class Step:
    """One optimizer step, in the order the seed blog's checklist asks: zero_grad, backward, step."""

    forward: nn.Module  # the model, or its torch.compile'd version
    optimizer: torch.optim.Optimizer
    cfg: PipelineConfig
    device: torch.device
    amp_dtype: torch.dtype | None = field(init=False)
    scaler: torch.amp.GradScaler = field(init=False)

    def __post_init__(self) -> None:
        self.amp_dtype = autocast_dtype(self.device, self.cfg.precision)
        # fp16 needs loss scaling against underflow; bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def __call__(self, x: torch.Tensor, y: torch.Tensor,
                 on_backward: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits); `on_backward` sees the true (unscaled) gradients before the update."""
        with autocast(self.device, self.amp_dtype):
            out = self.forward(x)
            loss = F.cross_entropy(out, y, label_smoothing=self.cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if on_backward is not None:
            self.scaler.unscale_(self.optimizer)
            on_backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, out


def new_step(cfg: PipelineConfig, model: nn.Module, device: torch.device, forward: nn.Module | None = None) -> Step:
    """The configured optimizer over `model`, built after it (the blog's checklist), as a Step."""
    return Step(forward or model, build_optimizer(model, cfg), cfg, device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
