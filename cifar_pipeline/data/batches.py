"""The data path for every preset: the whole split held as uint8 on the training device.

Each epoch draws its order and augmentation from a generator seeded by (seed, epoch), so an
epoch's batches are the same whether the run was interrupted and resumed or not, and on any
device. Batches are produced with a handful of tensor ops; there is no per-image Python.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import torch

from .augment import cutout_mask, gather_views, generator, jitter_colour, normalizer, to_float


def to_device_images(images: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 array -> (N, 3, 32, 32) uint8 tensor (channels-last strides)."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)


class TrainBatches:
    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
        normalize: str = "unit",
        flip: str = "none",
        translate: int = 0,
        cutout: int = 0,
        channels_last: bool = False,
        brightness: float = 0.0,
        contrast: float = 0.0,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError("images and labels differ in length")
        self.device = torch.device(device)
        self.images = to_device_images(images, self.device)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        self.batch_size = batch_size
        self.seed = seed
        self.flip, self.translate, self.cutout = flip, translate, cutout
        self.channels_last = channels_last
        self.brightness, self.contrast = brightness, contrast
        self.scale, self.shift = normalizer(normalize, self.device)
        self.data_seconds = 0.0
        # "alternate" flips half the images in even epochs and the other half in odd ones.
        n = len(labels)
        self._base_flips = torch.rand(n, generator=generator(seed, "flip")) < 0.5

    def __len__(self) -> int:
        # The last partial batch is dropped; each epoch's order differs, so every image is seen.
        return len(self.labels) // self.batch_size

    def plan(self, epoch: int) -> dict[str, torch.Tensor | None]:
        """The epoch's random choices, drawn on the CPU: identical on every device."""
        g = generator(self.seed, "epoch", epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=g)
        shifts = None
        if self.translate:
            shifts = torch.randint(-self.translate, self.translate + 1, (n, 2), generator=g)
        flips = None
        if self.flip == "random":
            flips = torch.rand(n, generator=g) < 0.5
        elif self.flip == "alternate":
            flips = self._base_flips ^ bool(epoch % 2)
        corners = None
        if self.cutout:
            corners = torch.randint(0, 32 - self.cutout + 1, (n, 2), generator=g)
        # Drawn after the others, so switching jitter on leaves the other choices as they were.
        offsets = factors = None
        if self.brightness or self.contrast:
            offsets = (torch.rand(n, generator=g) * 2 - 1) * self.brightness
            factors = 1 + (torch.rand(n, generator=g) * 2 - 1) * self.contrast
        to = self.device
        return {k: (v.to(to) if v is not None else None)
                for k, v in dict(order=order, shifts=shifts, flips=flips, corners=corners,
                                 offsets=offsets, factors=factors).items()}

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = self.plan(epoch)
        order = plan["order"]
        for step in range(start_step, len(self)):
            t0 = time.perf_counter()
            pos = order[step * self.batch_size:(step + 1) * self.batch_size]
            shifts = plan["shifts"][pos] if plan["shifts"] is not None else None
            # Flip and cutout choices belong to the image, not to its position in the epoch.
            flips = plan["flips"][pos] if plan["flips"] is not None else None
            views = gather_views(self.images, pos, shifts, flips)
            if plan["offsets"] is not None:
                x = jitter_colour(views.float().div_(255), plan["offsets"][pos], plan["factors"][pos])
                x = to_float(x, self.scale * 255, self.shift, self.channels_last)
            else:
                x = to_float(views, self.scale, self.shift, self.channels_last)
            if plan["corners"] is not None:
                x.masked_fill_(cutout_mask(plan["corners"][pos], self.cutout), 0.0)
            y = self.labels[pos]
            self.data_seconds += time.perf_counter() - t0
            yield x, y


def eval_batches(
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    normalize: str = "unit",
    channels_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches in order, normalised, without augmentation."""
    device = torch.device(device)
    x_all = images if isinstance(images, torch.Tensor) else to_device_images(images, device)
    y_all = torch.as_tensor(np.asarray(labels, dtype=np.int64)).to(device)
    scale, shift = normalizer(normalize, device)
    for i in range(0, len(y_all), batch_size):
        yield to_float(x_all[i:i + batch_size], scale, shift, channels_last), y_all[i:i + batch_size]
