"""Report figures, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
import numpy as np  # noqa: E402

from ..files import atomic_write  # noqa: E402


def _save(fig, path: str | os.PathLike) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_curves(epochs: Sequence[int], loss: Sequence[float], train_acc: Sequence[float],
                test_acc: float, path: str | os.PathLike,
                step_losses: Sequence[tuple[int, float]] = (), steps_per_epoch: float = 0) -> None:
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    if step_losses and steps_per_epoch:
        # Per-step losses on the same epoch axis: an epoch's mean is the average of its steps.
        steps, values = (np.asarray(v, dtype=float) for v in zip(*step_losses))
        ax_loss.plot(steps / steps_per_epoch, values, color="C0", alpha=0.2, linewidth=0.8, label="per step")
        ax_loss.plot(steps / steps_per_epoch, smooth(values), color="C1", label="per step, smoothed")
    ax_loss.plot(epochs, loss, marker="o", color="C0", label="epoch mean")
    ax_loss.axhline(np.log(10), color="grey", linestyle=":", label="chance (ln 10)")
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="Loss")
    ax_loss.legend(loc="upper right", fontsize=8)
    ax_acc.plot(epochs, train_acc, marker="o", label="train")
    ax_acc.scatter([epochs[-1]], [test_acc], color="C3", zorder=3, label=f"test {test_acc:.2%}")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
    ax_acc.legend(loc="lower right", fontsize=8)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    _save(fig, path)


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike) -> None:
    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(6, 5.2))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (test set)")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                color="white" if value > threshold else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    _save(fig, path)



def smooth(values: np.ndarray, weight: float | None = None) -> np.ndarray:
    """Exponential moving average, bias-corrected (no dip at the start), window ~1/20 of the series."""
    weight = weight if weight is not None else 1 - 1 / max(1.0, len(values) / 20)
    out, avg = np.empty(len(values)), 0.0
    for i, v in enumerate(values):
        avg = weight * avg + (1 - weight) * v
        out[i] = avg / (1 - weight ** (i + 1)) if weight < 1 else v
    return out


def plot_image_grid(images: np.ndarray, true: Sequence[int], predicted: Sequence[int], classes: Sequence[str],
                    path: str | os.PathLike, columns: int = 8) -> None:
    """Test images with their true and predicted labels (green: right, red: wrong), as in the seed blog."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.25, rows * 1.45))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, image, t, p in zip(np.atleast_1d(axes).ravel(), images, true, predicted):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"{classes[t]}\n→ {classes[p]}", fontsize=7, color="C2" if t == p else "C3")
    fig.suptitle("Test images: true label → prediction", fontsize=9)
    _save(fig, path)


def plot_confused_examples(examples: Sequence[tuple[str, str, int, np.ndarray]], path: str | os.PathLike,
                           per_pair: int = 6) -> None:
    """One row per confused pair (true, predicted, count, example images)."""
    fig, axes = plt.subplots(len(examples), per_pair, figsize=(per_pair * 1.1, len(examples) * 1.25), squeeze=False)
    for row, (true, pred, count, images) in zip(axes, examples):
        for ax in row:
            ax.axis("off")
        for ax, image in zip(row, images[:per_pair]):
            ax.imshow(image, interpolation="nearest")
        row[0].set_title(f"{true} → {pred} ({count}x)", fontsize=8, loc="left", color="C3")
    _save(fig, path)


def plot_history(labels: Sequence[str], accuracy: Sequence[float], promoted: Sequence[bool],
                 path: str | os.PathLike) -> None:
    """Test accuracy of the last runs, promoted ones highlighted."""
    fig, ax = plt.subplots(figsize=(7, 3))
    x = np.arange(len(accuracy))
    acc = np.asarray(accuracy, dtype=float)
    mask = np.asarray(promoted, dtype=bool)
    ax.plot(x, acc, marker="o", color="C0", label="test accuracy")
    ax.scatter(x[mask], acc[mask], s=80, facecolors="none", edgecolors="C2", zorder=3, label="promoted")
    ax.set_xticks(x, list(labels), rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="test accuracy", title="Recent runs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def plot_lr_range(lrs: Sequence[float], smoothed: Sequence[float], fastest: Sequence[float] | None,
                  diverged_at: float | None, configured_lr: float, path: str | os.PathLike) -> None:
    """The doctor's learning-rate range test: smoothed loss against lr, the configured lr marked."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(lrs, smoothed, color="C0", label="smoothed train loss")
    if fastest:
        ax.axvspan(fastest[0], fastest[1], color="C2", alpha=0.2, label="fastest fall")
    if diverged_at:
        ax.axvline(diverged_at, color="C3", linestyle="--", label=f"diverged ({diverged_at:.2g})")
    ax.axvline(configured_lr, color="black", linewidth=2, label=f"configured lr ({configured_lr:g})")
    ax.axhline(np.log(10), color="grey", linestyle=":", label="chance (ln 10)")
    ax.set_xscale("log")
    top = max(list(smoothed)[:5] + [np.log(10)]) * 1.6 if len(smoothed) else 5
    ax.set(xlabel="learning rate", ylabel="loss", title="Learning-rate range test", ylim=(0, top))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower left")
    _save(fig, path)


def plot_layer_gradients(names: Sequence[str], grad_norms: Sequence[float], weight_norms: Sequence[float],
                         path: str | os.PathLike) -> None:
    """Per-parameter gradient and weight norms (log scale).

    A zero gradient is drawn at the floor in red; a NaN or infinite norm (a diverged run) is drawn
    above every finite bar in orange, so a blown-up layer is not mistaken for a dead one.
    """
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 3.8))
    x = np.arange(len(names))
    grads, weights = np.asarray(grad_norms, dtype=float), np.asarray(weight_norms, dtype=float)
    both = np.concatenate([grads, weights])
    shown = both[np.isfinite(both) & (both > 0)]
    floor = max(shown.min() / 10, 1e-12) if shown.size else 1e-12
    ceiling = shown.max() * 10 if shown.size else 1.0

    def heights(values: np.ndarray) -> np.ndarray:
        return np.where(~np.isfinite(values), ceiling, np.where(values > 0, values, floor))

    def colours(values: np.ndarray, normal: str) -> list[str]:
        return ["C1" if not np.isfinite(v) else normal if v > 0 else "C3" for v in values]

    ax.bar(x - 0.2, heights(grads), width=0.4, color=colours(grads, "C0"))
    ax.bar(x + 0.2, heights(weights), width=0.4, color=colours(weights, "C7"))
    ax.set_yscale("log")
    ax.set_xticks(x, list(names), rotation=60, ha="right", fontsize=7)
    ax.set(title="Per-layer norms over the first steps")
    ax.grid(alpha=0.3, axis="y")
    # Bar colours carry the state, so the legend is built from the meanings, outside the bars.
    legend = [("gradient norm", "C0"), ("weight norm", "C7")]
    if (grads == 0).any():
        legend.append(("no gradient", "C3"))
    if not np.isfinite(both).all():
        legend.append(("NaN or infinite", "C1"))
    ax.legend(handles=[Patch(color=c, label=label) for label, c in legend], fontsize=8,
              loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(fig, path)


def plot_one_batch(curves: Sequence[tuple[str, Sequence[float]]], path: str | os.PathLike) -> None:
    """Loss while fitting one fixed batch, one line per learning rate tried."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for label, losses in curves:
        ax.plot(np.arange(1, len(losses) + 1), losses, label=label)
    ax.axhline(np.log(10), color="grey", linestyle=":", label="chance (ln 10)")
    ax.set(xlabel="step", ylabel="loss", title="Fitting one fixed batch", ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
