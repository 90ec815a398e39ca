"""Whole-batch augmentation by index arithmetic: one gather per batch does translate and flip.

Images stay uint8 (N, 3, 32, 32) on the training device. A translated, flipped batch is read
straight from them with per-image row and column indices; translation reflects at the border
(like reflect padding), so no padded copy of the dataset is ever made.
"""

from __future__ import annotations

import hashlib

import torch

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts, the same in every process (unlike hash())."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices outside [0, size) back inside by mirroring at the border (no edge repeat)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def gather_views(
    images: torch.Tensor,
    idx: torch.Tensor,
    shifts: torch.Tensor | None = None,
    flips: torch.Tensor | None = None,
) -> torch.Tensor:
    """images[idx], each translated by shifts[i] = (dy, dx) and mirrored where flips[i].

    Output pixel (y, x) of image i comes from source pixel (y + dy, x' + dx) with x' = 31 - x
    when flipped; out-of-range coordinates reflect at the border.
    """
    if shifts is None and flips is None:
        return images[idx]
    n, (h, w) = len(idx), images.shape[-2:]
    device = images.device
    ys = torch.arange(h, device=device).expand(n, h)
    xs = torch.arange(w, device=device).expand(n, w)
    if flips is not None:
        xs = torch.where(flips[:, None], (w - 1) - xs, xs)
    if shifts is not None:
        ys = reflect(ys + shifts[:, :1], h)
        xs = reflect(xs + shifts[:, 1:], w)
    channels = torch.arange(images.shape[1], device=device)
    return images[idx[:, None, None, None], channels[None, :, None, None], ys[:, None, :, None], xs[:, None, None, :]]


def cutout_mask(corners: torch.Tensor, size: int, h: int = 32, w: int = 32) -> torch.Tensor:
    """(N, 1, h, w) boolean mask of a size x size square at each (top, left) corner."""
    ys = torch.arange(h, device=corners.device)[None, :] - corners[:, :1]
    xs = torch.arange(w, device=corners.device)[None, :] - corners[:, 1:]
    inside_y = (ys >= 0) & (ys < size)
    inside_x = (xs >= 0) & (xs < size)
    return (inside_y[:, :, None] & inside_x[:, None, :])[:, None]


def jitter_colour(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """Per-image contrast (scaled about the image's mean) then brightness, on pixels in [0, 1], clipped.

    `brightness` and `contrast` hold one offset and one factor per image, shape (N,).
    """
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean).mul_(contrast.view(-1, 1, 1, 1)).add_(mean + brightness.view(-1, 1, 1, 1))
    return x.clamp_(0.0, 1.0)


def normalizer(kind: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel so that float_batch = uint8_batch * scale + shift."""
    if kind == "unit":  # the blog: ToTensor() then Normalize([0], [1]), i.e. x / 255
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    elif kind == "standardize":
        mean, std = CIFAR_MEAN, CIFAR_STD
    else:
        raise ValueError(f"unknown normalization {kind!r}")
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    return 1 / (255 * std_t), -mean_t / std_t


def to_float(batch: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, channels_last: bool) -> torch.Tensor:
    x = batch.float().mul_(scale).add_(shift) if shift.any() else batch.float().mul_(scale)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
