"""Optimizer, learning-rate schedule and lookahead averaging.

Learning rates here are for a mean-reduced loss. airbench states its rate per example of a summed
loss ("11.5 per 1024 examples" with Nesterov momentum 0.85); the same step is lr = 11.5 / (1 +
1 / (1 - 0.85)) = 1.5 with a mean loss, and its decoupled weight decay 0.0153 becomes an SGD
weight decay of 0.0153 / 11.5 = 0.00133 (see presets.toml).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import PipelineConfig


def build_optimizer(model: nn.Module, cfg: PipelineConfig) -> torch.optim.Optimizer:
    norm_biases = {id(p) for p in getattr(model, "norm_biases", lambda: [])()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    filters = [p for p in trainable if p.ndim == 4] if cfg.optimizer == "muon" else []
    taken = norm_biases | {id(p) for p in filters}
    biases = [p for p in trainable if id(p) in norm_biases]
    others = [p for p in trainable if id(p) not in taken]
    groups = [{"params": others, "lr": cfg.lr, "base_lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    if biases:
        # Biases move faster but decay by the same absolute amount per step.
        scale = cfg.bias_lr_scale
        groups.append({"params": biases, "lr": cfg.lr * scale, "base_lr": cfg.lr * scale,
                       "weight_decay": cfg.weight_decay / scale})
    if cfg.optimizer == "muon":
        if filters:
            groups.append({"params": filters, "lr": cfg.muon_lr, "base_lr": cfg.muon_lr,
                           "momentum": cfg.muon_momentum, "nesterov": True, "weight_decay": 0.0, "muon": True})
        return Muon(groups, momentum=cfg.momentum, nesterov=cfg.nesterov)
    # foreach=False: the per-tensor loop is the one the blog's code ran; on CPU it is as fast.
    return SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, foreach=False)


def _unguarded(method):
    """torch's own method without the wrapper that keeps torch.compile from tracing into it."""
    return getattr(method, "__wrapped__", method)


class _Unguarded:
    """torch.optim.Optimizer's bookkeeping as torch writes it, less the torch.compile guards around it.

    Each guard imports torch._dynamo on its first call, and the optimizer is built just before the first
    step: 1.3-1.6 s on a 2-core Zen 5, 1.5-2.2 s on a Zen 3, at the start of every run that trains and of
    every warm-up (benchmarks/RESULTS.md). The guards matter only where an optimizer call is traced by
    torch.compile, which this project never does (it compiles the model's forward, on a GPU)."""

    add_param_group = _unguarded(torch.optim.Optimizer.add_param_group)
    zero_grad = _unguarded(torch.optim.Optimizer.zero_grad)
    state_dict = _unguarded(torch.optim.Optimizer.state_dict)
    load_state_dict = _unguarded(torch.optim.Optimizer.load_state_dict)


class SGD(_Unguarded, torch.optim.SGD):
    """torch.optim.SGD, its step run under no_grad as torch's own wrapper does for a non-differentiable one."""

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        return _unguarded(torch.optim.SGD.step)(self, closure)


def lr_factor(step: int, total_steps: int, cfg: PipelineConfig) -> float:
    """Multiplier of the peak lr at `step` (0-based) of `total_steps`."""
    if cfg.schedule == "constant":
        return 1.0
    peak = int(cfg.lr_peak_at * total_steps)
    if step < peak:
        return cfg.lr_start + (1.0 - cfg.lr_start) * step / peak
    span = max(total_steps - peak, 1)
    return 1.0 + (cfg.lr_end - 1.0) * min(step - peak, span) / span


class Schedule:
    """The lr multiplier over a run's steps: `lr_factor` over the planned steps until a deadline shortens the
    run (cifar_pipeline/training/deadline.py); from then on it decays linearly from where it is to lr_end at
    the new end, so the shortened run still ends annealed instead of stopping at a high rate."""

    def __init__(self, cfg: PipelineConfig, total_steps: int, cut_step: int | None = None,
                 cut_factor: float = 1.0) -> None:
        self.cfg, self.total_steps, self.cut_step, self.cut_factor = cfg, total_steps, cut_step, cut_factor

    def factor(self, step: int) -> float:
        if self.cut_step is None:
            return lr_factor(step, self.total_steps, self.cfg)
        if self.cfg.schedule == "constant":
            return 1.0
        # Steps before the cut were taken: a run only asks for the steps from it on.
        span = max(self.total_steps - self.cut_step, 1)
        return self.cut_factor + (self.cfg.lr_end - self.cut_factor) * min(step - self.cut_step, span) / span

    def shorten(self, step: int, total_steps: int) -> None:
        """End the run after `total_steps` steps, decaying from `step` (the next one) on."""
        self.cut_factor, self.cut_step, self.total_steps = self.factor(step), step, total_steps

    def state_dict(self) -> dict:
        return {"total_steps": self.total_steps, "cut_step": self.cut_step, "cut_factor": self.cut_factor}

    def load_state_dict(self, state: dict) -> None:
        self.total_steps, self.cut_step, self.cut_factor = state["total_steps"], state["cut_step"], state["cut_factor"]


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def orthogonalize(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """Push a matrix's singular values toward 1 (Newton-Schulz quintic, Jordan et al. 2024, "Muon")."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.float()
    x = x / (x.norm() + eps)  # the iteration needs the top singular value <= 1
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


class Muon(_Unguarded, torch.optim.Optimizer):
    """Muon for the conv filters (groups marked "muon"), Nesterov SGD for every other group.

    As in airbench94_muon: each filter tensor is renormalised to norm sqrt(out_channels) before its
    step, so the step size is relative and weight decay is not needed; the step is the momentum
    of the gradient with its singular values flattened. One optimizer object keeps checkpointing,
    GradScaler and the lr schedule the same as with plain SGD.
    """

    def __init__(self, groups: list[dict], momentum: float, nesterov: bool) -> None:
        super().__init__(groups, {"lr": 0.0, "momentum": momentum, "nesterov": nesterov,
                                  "weight_decay": 0.0, "muon": False})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        for group in self.param_groups:
            momentum, nesterov = group["momentum"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if momentum:
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = g.clone()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(g)
                    buf = state["momentum_buffer"]
                    g = g.add(buf, alpha=momentum) if nesterov else buf
                if group["muon"]:
                    p.mul_(len(p) ** 0.5 / p.norm())
                    g = orthogonalize(g.reshape(len(g), -1)).reshape(g.shape).to(p.dtype)
                p.add_(g, alpha=-group["lr"])


class Lookahead:
    """airbench's lookahead: every few steps pull an average toward the weights, then copy it back.

    The average's decay grows as training ends (decay = base ** every * progress ** 3), so early
    steps move freely and the final weights are a strong average.
    """

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
