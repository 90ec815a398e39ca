"""Optimizer, learning-rate schedule and lookahead averaging.

Learning rates here are for a mean-reduced loss. airbench states its rate per example of a summed
loss ("11.5 per 1024 examples" with Nesterov momentum 0.85); the same step is lr = 11.5 / (1 +
1 / (1 - 0.85)) = 1.5 with a mean loss, and its decoupled weight decay 0.0153 becomes an SGD
weight decay of 0.0153 / 11.5 = 0.00133 (see presets.toml).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import PipelineConfig


def build_optimizer(model: nn.Module, cfg: PipelineConfig) -> torch.optim.SGD:
    norm_biases = {id(p) for p in getattr(model, "norm_biases", lambda: [])()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    biases = [p for p in trainable if id(p) in norm_biases]
    others = [p for p in trainable if id(p) not in norm_biases]
    groups = [{"params": others, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "lr_scale": 1.0}]
    if biases:
        # Biases move faster but decay by the same absolute amount per step.
        scale = cfg.bias_lr_scale
        groups.append({"params": biases, "lr": cfg.lr * scale,
                       "weight_decay": cfg.weight_decay / scale, "lr_scale": scale})
    # foreach=False: the per-tensor loop is the one the blog's code ran; on CPU it is as fast.
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, foreach=False)


def lr_factor(step: int, total_steps: int, cfg: PipelineConfig) -> float:
    """Multiplier of the peak lr at `step` (0-based) of `total_steps`."""
    if cfg.schedule == "constant":
        return 1.0
    peak = int(cfg.lr_peak_at * total_steps)
    if step < peak:
        return cfg.lr_start + (1.0 - cfg.lr_start) * step / peak
    span = max(total_steps - peak, 1)
    return 1.0 + (cfg.lr_end - 1.0) * min(step - peak, span) / span


def set_lr(optimizer: torch.optim.Optimizer, cfg: PipelineConfig, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * group["lr_scale"] * factor


class Lookahead:
    """airbench's lookahead: every few steps pull an average toward the weights, then copy it back.

    The average's decay grows as training ends (decay = base ** every * progress ** 3), so early
    steps move freely and the final weights are a strong average.
    """

    START_EPOCH = 3
    EVERY = 5
    BASE = 0.95
    POWER = 3.0

    def __init__(self, model: nn.Module) -> None:
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        state = model.state_dict()
        for key, avg in self.average.items():
            avg.lerp_(state[key], 1 - decay)
            state[key].copy_(avg)

    def decay(self, step: int, total_steps: int) -> float:
        return (self.BASE ** self.EVERY) * (step / total_steps) ** self.POWER

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.average

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            self.average[key].copy_(value)
