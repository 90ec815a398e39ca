"""The doctor's data checks: class balance, labels in range, train/test duplicates, input scale.

Pure functions over the uint8 arrays and the (scale, shift) the data path applies to them.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..data.augment import to_float
from ..data.batches import to_device_images
from .checks import Check

N_CLASSES = 10
STATS_IMAGES = 5000  # pixel statistics from this many training images
SHOWN = 5  # example indexes quoted in a message


def image_hashes(images: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in images.reshape(len(images), -1)]


def check_data(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> Check:
    """Labels in 0..9, every class present and roughly balanced, no test image also in train."""
    problems_fail, problems_warn, evidence = [], [], {}
    for split, y in (("train", y_train), ("test", y_test)):
        y = np.asarray(y)
        bad = np.flatnonzero((y < 0) | (y >= N_CLASSES))
        if len(bad):
            problems_fail.append(f"{len(bad)} {split} labels outside 0..9 (e.g. index {bad[0]}: {y[bad[0]]})")
        counts = np.bincount(y[(y >= 0) & (y < N_CLASSES)], minlength=N_CLASSES)
        evidence[f"{split}_class_counts"] = counts.tolist()
        if counts.min() == 0:
            missing = [int(k) for k in np.flatnonzero(counts == 0)]
            problems_fail.append(f"{split} split has no image of class(es) {missing}")
        elif counts.max() > 2 * counts.min():
            problems_warn.append(f"{split} classes are unbalanced: {counts.min()} to {counts.max()} images per class")

    train_index = {h: i for i, h in enumerate(image_hashes(x_train))}
    test_hashes = image_hashes(x_test)
    shared = [(j, train_index[h]) for j, h in enumerate(test_hashes) if h in train_index]
    evidence["test_images_in_train"] = len(shared)
    evidence["duplicate_examples"] = [{"test": j, "train": i} for j, i in shared[:SHOWN]]
    evidence["duplicates_within_train"] = len(x_train) - len(train_index)
    if shared:
        share = len(shared) / max(len(x_test), 1)
        text = (f"{len(shared)} test images ({share:.1%}) are exact copies of training images "
                f"(test/train index: {', '.join(f'{j}/{i}' for j, i in shared[:SHOWN])})")
        (problems_fail if share > 0.1 else problems_warn).append(text)

    balance = ", ".join(f"{s} {min(evidence[f'{s}_class_counts'])}-{max(evidence[f'{s}_class_counts'])} per class"
                        for s in ("train", "test"))
    summary = (f"{len(y_train)} train / {len(y_test)} test images; {balance}; "
               f"{evidence['test_images_in_train']} test images also in train, "
               f"{evidence['duplicates_within_train']} duplicates within train")
    if problems_fail:
        return Check(name="data", result="fail", message="; ".join(problems_fail) + f". ({summary})",
                     fix="Rebuild the dataset from a correct archive; test images must not be training images "
                         "and every class needs examples.", blog_items=[0], evidence=evidence)
    if problems_warn:
        return Check(name="data", result="warn", message="; ".join(problems_warn) + f". ({summary})",
                     fix="Expect biased accuracy figures; deduplicate or rebalance if this is not intended.",
                     blog_items=[0], evidence=evidence)
    return Check(name="data", result="pass", message=summary, blog_items=[0], evidence=evidence)


def pixel_stats(x_train: np.ndarray, scale: torch.Tensor, shift: torch.Tensor) -> dict[str, list[float] | float]:
    """Per-channel mean/std and the range of the network's input, as the data path makes it."""
    sample = to_float(to_device_images(x_train[:STATS_IMAGES], "cpu"), scale.cpu(), shift.cpu(), False)
    return {
        "mean": [round(v, 4) for v in sample.mean(dim=(0, 2, 3)).tolist()],
        "std": [round(v, 4) for v in sample.std(dim=(0, 2, 3)).tolist()],
        "min": round(sample.min().item(), 4),
        "max": round(sample.max().item(), 4),
    }


def check_input_scale(stats: dict) -> Check:
    """Inputs of order 1: the blog's [0, 1], or standardised; 0-255 values make steps 255x too big."""
    text = (f"network inputs after normalisation: mean {stats['mean']}, std {stats['std']}, "
            f"range [{stats['min']:g}, {stats['max']:g}]")
    largest = max(abs(stats["min"]), abs(stats["max"]))
    if largest > 20:
        return Check(name="input_scale", result="fail", blog_items=[4], evidence=stats,
                     message=text + f": values up to {largest:g} look like raw 0-255 pixels",
                     fix="Scale inputs to [0, 1] (ToTensor, or normalize=unit) or standardise them "
                         "(normalize=standardize); then re-check the learning rate.")
    if any(s < 0.05 or s > 5 for s in stats["std"]) or any(abs(m) > 5 for m in stats["mean"]):
        return Check(name="input_scale", result="warn", blog_items=[4], evidence=stats,
                     message=text + ": a channel's spread or centre is far from order 1",
                     fix="Check the normalisation constants (mean/std per channel).")
    return Check(name="input_scale", result="pass", message=text, blog_items=[4], evidence=stats)
