"""A training time budget that holds on any machine: measure a few real steps, then plan the epochs.

The same configuration runs 55 s per epoch on an AVX-512 BF16 CPU and 3.4 min on an AVX2 one, so a
fixed epoch count cannot promise a wall time. Before training, `plan_training` times a few steps of
the real model, optimizer and batch on the real device, and `plan_epochs` turns the measured speed
into epochs: rounded down to a multiple of EPOCH_STEP so that the noise of one machine does not
change the answer from night to night, and capped at the configured epochs. The measurement is
kept per machine and configuration, so an unchanged nightly run measures once and then reuses it
(and its training stays a cache hit).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch
from pydantic import BaseModel

from ..config import PipelineConfig
from ..errors import ConfigError
from ..stage import Stage, StageRecord

log = logging.getLogger(__name__)

EPOCH_STEP = 2  # planned epochs are a multiple of this (or 1, when fewer than EPOCH_STEP fit)
# With budget_widths, the widest width that keeps at least this share of the configured epochs trains:
# at a fixed budget a narrower net for more epochs beat a wider one cut short (benchmarks/RESULTS.md).
MIN_EPOCH_SHARE = 0.5
WARMUP_STEPS = 2  # untimed: first-call allocations and kernel selection
MIN_TIMED_STEPS = 3
MIN_TIMED_SECONDS = 3.0
MAX_TIMED_STEPS = 50


class Measurement(StageRecord):
    machine: str
    seconds_per_step: float
    steps_per_epoch: int
    timed_steps: int
    measured_at: str

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds_per_step * self.steps_per_epoch


class WidthOption(BaseModel):
    width: int
    seconds_per_epoch: float
    epochs: float  # 0: not even one epoch fits


class BudgetPlan(BaseModel):
    budget_min: float
    configured_epochs: float
    planned_epochs: float
    seconds_per_epoch: float  # measured
    images_per_second: float
    machine: str
    cached: bool  # the measurement came from an earlier run on this machine
    measured_at: str
    width: int | None = None  # chosen from budget_widths; None: the width as configured
    options: list[WidthOption] = []  # the widths measured, widest first

    def summary(self) -> str:
        capped = " (the configured epochs)" if self.planned_epochs == self.configured_epochs else ""
        width = f" at width {self.width}" if self.width is not None else ""
        return (f"time budget {self.budget_min:g} min: measured {self.seconds_per_epoch:.1f} s/epoch "
                f"({self.images_per_second:.0f} img/s{', cached' if self.cached else ''}) on {self.machine}; "
                f"trains {self.planned_epochs:g} epochs{width}{capped}")

    def width_note(self) -> str:
        """Why this width, for the report: what each width measured would have trained."""
        if self.width is None or len(self.options) < 2:
            return ""
        tried = ", ".join(f"width {o.width}: {o.seconds_per_epoch:.0f} s/epoch, "
                          f"{f'{o.epochs:g} epochs' if o.epochs else 'not one epoch'}" for o in self.options)
        return (f"Width {self.width} chosen from {tried} (the widest keeping at least "
                f"{MIN_EPOCH_SHARE:.0%} of the configured epochs).")


def plan_epochs(budget_min: float, configured_epochs: float, seconds_per_epoch: float,
                step: int = EPOCH_STEP) -> float:
    """Epochs that fit the budget: down to a multiple of `step`, at most `configured_epochs`.

    Less than one epoch is an error: a run that cannot finish one epoch would report nothing useful.
    """
    if seconds_per_epoch <= 0:
        raise ValueError("seconds_per_epoch must be positive")
    fit = budget_min * 60 / seconds_per_epoch
    if fit >= configured_epochs:
        return configured_epochs
    if fit < 1:
        raise ConfigError(
            f"time_budget_min {budget_min:g} is too short: one epoch takes about {seconds_per_epoch / 60:.1f} min "
            f"on this machine (measured); allow at least {math.ceil(seconds_per_epoch / 60 * 10) / 10:g} min, "
            "or set time_budget_min 0 to train the configured epochs")
    return float(max(1, math.floor(fit / step) * step) if fit >= step else 1)


MEASURE = Stage("measure-speed", "budget", Measurement, "training.budget")


def measurement_inputs(machine: str, cfg: PipelineConfig, data_digest: str) -> dict:
    # The training inputs minus the epochs and the budget: neither changes the speed of a step.
    timed = cfg.model_copy(update={"epochs": 1.0, "time_budget_min": 0.0, "budget_widths": []})
    return {"machine": machine, "dataset": data_digest, "train": timed.group("train")}


def plan_training(
    cfg: PipelineConfig,
    data_digest: str,
    cache_dir: str | os.PathLike,
    machine: str,
    measure: Callable[[PipelineConfig], tuple[float, int, int]],
    *,
    train_images: int,
) -> BudgetPlan:
    """Plan the epochs of `cfg` (and its width, given `budget_widths`) over `train_images` images within
    its time budget. `measure(config)` -> (seconds per step, steps per epoch, timed steps) runs only
    when this machine and configuration have no stored measurement."""
    if not cfg.budget_widths:
        plan = _plan_one(cfg, data_digest, cache_dir, machine, measure, train_images)
    else:
        plan = _plan_width(cfg, data_digest, cache_dir, machine, measure, train_images)
    log.info("%s", plan.summary())
    return plan


def _plan_width(cfg: PipelineConfig, data_digest: str, cache_dir: str | os.PathLike, machine: str,
                measure: Callable[[PipelineConfig], tuple[float, int, int]], train_images: int) -> BudgetPlan:
    """The widest of `budget_widths` keeping MIN_EPOCH_SHARE of the epochs, else the one training most epochs.

    Widths are measured widest first and only until one qualifies, so a fast machine measures once.
    """
    plans: list[BudgetPlan] = []
    for width in sorted(set(cfg.budget_widths), reverse=True):
        plan = _plan_one(cfg.model_copy(update={"width": width}), data_digest, cache_dir, machine, measure,
                         train_images, none_fit_ok=True)
        plans.append(plan.model_copy(update={"width": width}))
        if plan.planned_epochs >= MIN_EPOCH_SHARE * cfg.epochs:
            break
    options = [WidthOption(width=p.width, seconds_per_epoch=p.seconds_per_epoch, epochs=p.planned_epochs)
               for p in plans]
    chosen = plans[-1]
    if chosen.planned_epochs < MIN_EPOCH_SHARE * cfg.epochs:
        chosen = max(plans, key=lambda p: (p.planned_epochs, p.width))
    if not chosen.planned_epochs:  # not one epoch even at the narrowest width: say how long one takes
        plan_epochs(cfg.time_budget_min, cfg.epochs, plans[-1].seconds_per_epoch)
    return chosen.model_copy(update={"options": options})


def _plan_one(cfg: PipelineConfig, data_digest: str, cache_dir: str | os.PathLike, machine: str,
              measure: Callable[[PipelineConfig], tuple[float, int, int]], train_images: int,
              none_fit_ok: bool = False) -> BudgetPlan:
    measured = []

    def build(_entry) -> Measurement:
        seconds_per_step, steps_per_epoch, timed = measure(cfg)
        measured.append(True)
        return Measurement(machine=machine, seconds_per_step=seconds_per_step, steps_per_epoch=steps_per_epoch,
                           timed_steps=timed, measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))

    found = MEASURE.run(cache_dir, measurement_inputs(machine, cfg, data_digest), build)
    cached = not measured
    # Steps of this run's epoch, not the measured one: extra images added since make epochs longer.
    seconds_per_epoch = found.seconds_per_step * max(1, train_images // cfg.batch_size)
    try:
        epochs = plan_epochs(cfg.time_budget_min, cfg.epochs, seconds_per_epoch)
    except ConfigError:
        if not none_fit_ok:
            raise
        epochs = 0.0
    return BudgetPlan(
        budget_min=cfg.time_budget_min, configured_epochs=cfg.epochs, planned_epochs=epochs,
        seconds_per_epoch=seconds_per_epoch,
        images_per_second=train_images / seconds_per_epoch if seconds_per_epoch else 0.0,
        machine=machine, cached=cached, measured_at=found.measured_at,
    )


def planned_config(cfg: PipelineConfig, plan: BudgetPlan | None) -> PipelineConfig:
    """The config training runs: its epochs are the planned ones, so the training key (and the lr
    schedule) follow the epochs actually trained."""
    if plan is None:
        return cfg
    update = {"epochs": plan.planned_epochs}
    if plan.width is not None:
        update["width"] = plan.width
    return cfg.model_copy(update=update)


def measure_steps(cfg: PipelineConfig, dataset, device: torch.device | None = None) -> tuple[float, int, int]:
    """(seconds per step, steps per epoch, timed steps) of the real training step on the real device."""
    from .cpu_tuning import current_cpu_settings
    from .runtime import resolve_device, tune_cpu_allocator

    device = device or resolve_device(cfg.device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        tune_cpu_allocator()
        torch.set_num_threads(current_cpu_settings(cfg.precision, cfg.channels_last, cfg.model).threads)
    try:
        return _measure(cfg, dataset, device)
    finally:
        torch.set_num_threads(threads)


def _measure(cfg: PipelineConfig, dataset, device: torch.device) -> tuple[float, int, int]:
    from .step import new_model, new_step, start_epoch, sync, train_batches, training_data

    data = training_data(cfg, dataset)
    batches = train_batches(cfg, data.x_train, data.y_train, device)
    steps_per_epoch = len(batches)
    model = new_model(cfg, data.x_train, device)
    start_epoch(model, cfg, 0)
    step = new_step(cfg, model, device)
    timed, start = 0, 0.0
    for i, (x, y) in enumerate(batches.epoch(0)):
        if i == WARMUP_STEPS:
            sync(device)
            start = time.perf_counter()
        loss, _ = step(x, y)
        loss.item()
        if i >= WARMUP_STEPS:
            timed += 1
            elapsed = time.perf_counter() - start
            if timed >= MAX_TIMED_STEPS or (timed >= MIN_TIMED_STEPS and elapsed >= MIN_TIMED_SECONDS):
                break
    sync(device)
    if timed == 0:  # an epoch shorter than the warm-up: time what there is
        return _time_all(batches, step, device), steps_per_epoch, steps_per_epoch
    return (time.perf_counter() - start) / timed, steps_per_epoch, timed


def _time_all(batches, step, device: torch.device) -> float:
    from .step import sync

    start, n = time.perf_counter(), 0
    for x, y in batches.epoch(1):
        step(x, y)[0].item()
        n += 1
    sync(device)
    return (time.perf_counter() - start) / max(n, 1)


def machine_key(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} | CUDA {torch.version.cuda}"
    from .cpu_tuning import detect_cpu

    return detect_cpu().key()
