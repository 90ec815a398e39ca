"""What the doctor measures by training: the probes behind the start, one-batch, gradient, lr and label checks.

A `Bench` builds fresh models, optimizers, batches and steps through training's own functions
(cifar_pipeline/training/step.py), so a probe differs from training only where it means to: its
batch size, learning-rate factor and step count. Each probe is a short loop over it and returns
plain numbers. No file I/O.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..config import PipelineConfig
from ..data.augment import normalizer
from ..data.batches import TrainBatches, eval_batches
from ..training.optim import build_optimizer, lr_factor, set_lr
from ..training.runtime import autocast, autocast_dtype
from ..training.step import Step, new_model, start_epoch, train_batches

EMA = 0.9  # smoothing of the range test's loss


@dataclass
class Bench:
    """Fresh models, optimizers and batches for one configuration."""

    cfg: PipelineConfig
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    device: torch.device
    scale: torch.Tensor | None = None  # the data path's (scale, shift); None: the configured normalisation
    shift: torch.Tensor | None = None
    alter_model: Callable[[nn.Module], None] | None = None  # tests inject model faults here
    amp_dtype: torch.dtype | None = field(init=False)

    def __post_init__(self) -> None:
        if self.scale is None or self.shift is None:
            self.scale, self.shift = normalizer(self.cfg.normalize, self.device)
        self.scale, self.shift = self.scale.to(self.device), self.shift.to(self.device)
        self.amp_dtype = autocast_dtype(self.device, self.cfg.precision)

    def model(self) -> nn.Module:
        model = new_model(self.cfg, self.x_train, self.device, normalization=(self.scale, self.shift),
                          alter=self.alter_model)
        start_epoch(model, self.cfg, 0)  # as in training's first epoch
        return model

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(model, self.cfg)

    def batches(self, batch_size: int) -> TrainBatches:
        return train_batches(self.cfg, self.x_train, self.y_train, self.device, batch_size=batch_size,
                             normalization=(self.scale, self.shift))

    def stream(self, batch_size: int):
        """Training batches without end, epoch after epoch."""
        batches = self.batches(batch_size)
        epoch = 0
        while True:
            yield from batches.epoch(epoch)
            epoch += 1

    def val(self, limit: int = 1000) -> list[tuple[torch.Tensor, torch.Tensor]]:
        n = min(limit, len(self.y_val))
        out = []
        for x, y in eval_batches(self.x_val[:n], self.y_val[:n], batch_size=250, device=self.device,
                                 normalize="unit", channels_last=self.cfg.channels_last):
            # eval_batches scales to [0, 1]; undo that and apply this bench's own (scale, shift).
            out.append((x * (255 * self.scale) + self.shift, y))
        return out

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
             on_backward: Callable[[], None] | None = None) -> tuple[float, torch.Tensor]:
        """One training step as training takes it; returns the plain cross-entropy and the logits."""
        _, out = Step(model, optimizer, self.cfg, self.device)(x, y, on_backward)
        plain = F.cross_entropy(out.detach().float(), y).item()
        return plain, out.detach()


@torch.no_grad()
def evaluate(bench: Bench, model: nn.Module, val: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """(loss, accuracy) on held-out images, in eval mode."""
    was_training = model.training
    model.eval()
    loss, correct, n = 0.0, 0, 0
    with autocast(bench.device, bench.amp_dtype):
        for x, y in val:
            out = model(x).float()
            loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            n += len(y)
    model.train(was_training)
    return loss / max(n, 1), correct / max(n, 1)


def seconds_per_step(bench: Bench, batch_size: int, steps: int = 3) -> float:
    model = bench.model()
    optimizer = bench.optimizer(model)
    set_lr(optimizer, 0.0)
    stream = bench.stream(batch_size)
    bench.step(model, optimizer, *next(stream))  # warm-up: first-call allocations
    t0 = time.perf_counter()
    for _ in range(steps):
        bench.step(model, optimizer, *next(stream))
    return (time.perf_counter() - t0) / steps


# ----------------------------------------------------------------------------- start


@torch.no_grad()
def initial_output(bench: Bench, batch_size: int) -> dict[str, float]:
    model = bench.model()
    x, y = next(bench.stream(batch_size))
    with autocast(bench.device, bench.amp_dtype):
        out = model(x).float()
    return {"loss": F.cross_entropy(out, y).item(), "logit_std": out.std().item(),
            "logit_max": out.abs().max().item(), "images": len(y)}


# ----------------------------------------------------------------------------- one batch


def fit_one_batch(bench: Bench, batch_size: int, steps: int, factor: float = 1.0, target: float = 0.35) -> dict:
    """Train on one fixed batch with the configured schedule compressed to `steps`, the lr scaled by
    `factor`; stop once the batch is memorised (all right, plain loss under `target`)."""
    model = bench.model()
    optimizer = bench.optimizer(model)
    x, y = next(bench.stream(batch_size))
    losses: list[float] = []
    for i in range(steps):
        set_lr(optimizer, lr_factor(i, steps, bench.cfg) * factor)
        loss, out = bench.step(model, optimizer, x, y)
        losses.append(loss)
        if not math.isfinite(loss):
            break
        if loss < target and bool((out.argmax(1) == y).all()):
            return {"memorised": True, "steps": i + 1, "losses": losses, "lr_factor": factor}
    return {"memorised": False, "steps": len(losses), "losses": losses, "lr_factor": factor}


# ----------------------------------------------------------------------------- lr range test


def lr_range_test(bench: Bench, batch_size: int, steps: int, lr_min: float, lr_max: float) -> dict:
    """Grow the lr exponentially from lr_min to lr_max (every group by the same factor) on a fresh model.

    Stops when the smoothed loss rises 50 % above where it started, or is not finite.
    """
    model = bench.model()
    optimizer = bench.optimizer(model)
    base = bench.cfg.lr
    lrs = np.geomspace(lr_min, lr_max, steps)
    stream = bench.stream(batch_size)
    raw, smooth, avg = [], [], 0.0
    diverged_at = None
    for i, lr in enumerate(lrs):
        set_lr(optimizer, lr / base)
        loss, _ = bench.step(model, optimizer, *next(stream))
        if not math.isfinite(loss):
            diverged_at = float(lr)
            break
        raw.append(loss)
        avg = EMA * avg + (1 - EMA) * loss
        smooth.append(avg / (1 - EMA ** (i + 1)))
        if i > 10 and _diverging(smooth):
            diverged_at = float(lr)
            break
    tested = lrs[:len(smooth)]
    result = {"lrs": tested.tolist(), "loss": raw, "smoothed": smooth, "diverged_at": diverged_at,
              "lr_min": lr_min, "lr_max": lr_max, "steps": len(smooth)}
    result.update(steepest_range(tested, np.asarray(smooth)))
    return result


def _diverging(smooth: list[float]) -> bool:
    """The smoothed loss rose 50 % above its start, or climbed back most of the way it had fallen
    (normalised nets at too large an lr return to chance rather than blow up)."""
    start, best, now = smooth[10], min(smooth), smooth[-1]
    if now > 1.5 * start:
        return True
    return best < start - 0.1 and now > best + 0.75 * (start - best)


def steepest_range(lrs: np.ndarray, smooth: np.ndarray) -> dict:
    """The span of lr where the smoothed loss falls fastest per decade (at least half the steepest rate)."""
    none = {"fastest": None, "steepest_slope": 0.0, "best_loss": float(smooth.min()) if len(smooth) else None}
    if len(smooth) < 12:
        return none
    x = np.log10(lrs)
    w = max(2, len(smooth) // 25)
    slope = np.full(len(smooth), np.inf)
    slope[w:-w] = (smooth[2 * w:] - smooth[:-2 * w]) / (x[2 * w:] - x[:-2 * w])
    i = int(np.argmin(slope))
    # A fall of less than 0.05 nats per decade is noise, not learning.
    if not np.isfinite(slope[i]) or slope[i] > -0.05:
        return {**none, "steepest_slope": float(slope[i]) if np.isfinite(slope[i]) else 0.0}
    lo = hi = i
    while lo > 0 and slope[lo - 1] <= 0.5 * slope[i]:
        lo -= 1
    while hi < len(slope) - 1 and slope[hi + 1] <= 0.5 * slope[i]:
        hi += 1
    return {"fastest": [float(lrs[lo]), float(lrs[hi])], "steepest_slope": float(slope[i]),
            "best_loss": float(smooth.min())}


# ----------------------------------------------------------------------------- learning on fresh batches


class _ActivationProbe(TorchFunctionMode):
    """Counts units (channels or features) whose ReLU/GELU input is never positive over a batch."""

    DEAD_BELOW = {"relu": 0.0, "gelu": -3.0}  # GELU passes almost no gradient below -3

    def __init__(self) -> None:
        super().__init__()
        self.sites: list[dict] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kind = {F.relu: "relu", torch.relu: "relu", F.gelu: "gelu"}.get(func)
        if kind is not None and args and isinstance(args[0], torch.Tensor) and args[0].ndim >= 2:
            x = args[0].detach()
            dims = [d for d in range(x.ndim) if d != 1]
            peak = x.float().amax(dim=dims)
            self.sites.append({"site": f"{kind} {len(self.sites) + 1}", "units": int(peak.numel()),
                               "dead": int((peak <= self.DEAD_BELOW[kind]).sum())})
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def dead_units(bench: Bench, model: nn.Module, x: torch.Tensor) -> list[dict]:
    probe = _ActivationProbe()
    with probe, autocast(bench.device, bench.amp_dtype):
        model(x)
    return [{**s, "share": s["dead"] / max(s["units"], 1)} for s in probe.sites]


def output_layer(model: nn.Module, x: torch.Tensor) -> str | None:
    """Name of the last module with parameters of its own to run in a forward pass (the head)."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: order.append(name))
             for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    try:
        with torch.no_grad():
            model(x[:2])
    finally:
        for h in hooks:
            h.remove()
    return order[-1] if order else None


def learn(bench: Bench, batch_size: int, steps: int, factor: float, grad_steps: int) -> dict:
    """Train a fresh model on fresh batches (the configured schedule compressed to `steps`, lr scaled
    by `factor`): gradient/weight norms of the first steps, dead units, held-out loss before and after."""
    model = bench.model()
    optimizer = bench.optimizer(model)
    val = bench.val()
    stream = bench.stream(batch_size)
    first = next(stream)
    head = output_layer(model, first[0])
    dead_start = dead_units(bench, model, val[0][0])
    val_start = evaluate(bench, model, val)
    params = dict(model.named_parameters())
    grad_sum = {name: 0.0 for name in params}
    finite = [True]

    def record() -> None:
        for name, p in params.items():
            if p.grad is not None:
                norm = p.grad.detach().float().norm().item()
                finite[0] = finite[0] and math.isfinite(norm)
                grad_sum[name] += norm

    losses = []
    x, y = first
    for i in range(steps):
        set_lr(optimizer, lr_factor(i, steps, bench.cfg) * factor)
        loss, _ = bench.step(model, optimizer, x, y, on_backward=record if i < grad_steps else None)
        losses.append(loss)
        if not math.isfinite(loss):
            break
        x, y = next(stream)
    measured = min(grad_steps, len(losses))
    layers = [{"name": name, "shape": list(p.shape), "trainable": p.requires_grad,
               "grad_norm": grad_sum[name] / max(measured, 1), "weight_norm": p.detach().float().norm().item()}
              for name, p in params.items()]
    finished = all(math.isfinite(v) for v in losses)
    return {
        "losses": losses, "steps": len(losses), "lr_factor": factor, "grad_steps": measured,
        "layers": layers, "head": head, "grads_finite": finite[0],
        "dead_start": dead_start, "dead_end": dead_units(bench, model, val[0][0]) if finished else [],
        "val_start": {"loss": val_start[0], "accuracy": val_start[1]},
        "val_end": dict(zip(("loss", "accuracy"), evaluate(bench, model, val))) if finished else None,
        "val_images": sum(len(v[1]) for v in val),
    }
