"""The doctor: the seed blog's "the loss does not go down" checklist, as checks the pipeline runs.

`diagnose()` measures the configured data, model and optimizer (doctor.data, doctor.probes) and
turns the numbers into verdicts: each check passes, warns or fails with its evidence and its fix.
The full doctor runs every check; the quick one (for a run found at chance or diverged) runs the
data, start, gradient and lr-position checks only. Steps and batch size are scaled to a time budget.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from ..config import PipelineConfig
from ..data.dataset import CifarArrays
from ..training.health import CHANCE_LOSS
from ..stage import StageRecord
from ..training.runtime import resolve_device, tune_cpu_allocator
from ..training.step import split_training
from . import probes
from .checks import Check, Result, worst
from .data import check_data, check_input_scale, pixel_stats

log = logging.getLogger(__name__)

FULL_BUDGET_S = 75.0  # seconds of probe training the full doctor aims for (2-core CPU)
QUICK_BUDGET_S = 25.0
BUDGET_ENV = "CIFAR_PIPELINE_DOCTOR_BUDGET_S"  # overrides both: a slower machine, or a quick test
MIN_BATCH = 32
ONE_BATCH_IMAGES = 32
LR_SWEEP = (1e-4, 10.0)  # the range test covers at least this, and the configured lr x/ 10


class DoctorPlan(BaseModel):
    """What the doctor used; the report states it, since it differs from the training run."""

    quick: bool
    batch_size: int
    one_batch_size: int
    one_batch_steps: int
    range_steps: int
    learn_steps: int
    grad_steps: int
    train_images: int
    val_images: int
    seconds_per_step: float
    device: str


class DoctorResult(StageRecord):
    status: Result
    checks: list[Check]
    lr_range: list[float] | None  # where the loss fell fastest
    diverged_at: float | None
    configured_lr: float
    plan: DoctorPlan
    curves: dict  # what the report plots
    seconds: float

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)


def make_plan(cfg: PipelineConfig, bench: probes.Bench, quick: bool, budget_s: float) -> DoctorPlan:
    n_train = len(bench.y_train)
    batch = max(1, min(cfg.batch_size, 128, n_train // 4))
    steps = {"one_batch_steps": 0 if quick else 300, "range_steps": 120 if quick else 240,
             "learn_steps": 10 if quick else 150}
    probe_batch = batch
    per_step = probes.seconds_per_step(bench, batch)
    one_batch = min(ONE_BATCH_IMAGES, batch)

    def estimate(b: int, s: dict) -> float:
        # Step time grows about linearly with the batch; the one-batch fit may run twice.
        per_image = per_step / probe_batch
        return per_image * (b * (s["range_steps"] + s["learn_steps"]) + min(ONE_BATCH_IMAGES, b) * 2
                            * s["one_batch_steps"])

    while estimate(batch, steps) > budget_s and batch >= 2 * MIN_BATCH:
        batch //= 2
        one_batch = min(ONE_BATCH_IMAGES, batch)
    over = estimate(batch, steps) / budget_s
    if over > 1:
        floors = {"one_batch_steps": 0 if quick else 80, "range_steps": 80, "learn_steps": 10 if quick else 40}
        steps = {k: max(floors[k], int(v / over)) for k, v in steps.items()}
    return DoctorPlan(quick=quick, batch_size=batch, one_batch_size=one_batch, grad_steps=min(10, steps["learn_steps"]),
                      train_images=n_train, val_images=min(1000, len(bench.y_val)),
                      seconds_per_step=per_step * batch / probe_batch, device=str(bench.device), **steps)


def make_bench(cfg: PipelineConfig, arrays: CifarArrays, device: torch.device,
               normalization: tuple[torch.Tensor, torch.Tensor] | None = None,
               alter_model: Callable[[nn.Module], None] | None = None) -> probes.Bench:
    """The probes' bench: the images training sees (its subset and validation split, so the probes'
    batches are training's), held out against the test split."""
    data = split_training(cfg, arrays)
    n_test = cfg.test_subset or len(arrays.y_test)
    scale, shift = normalization if normalization is not None else (None, None)
    return probes.Bench(cfg, data.x_train, np.asarray(data.y_train), arrays.x_test[:n_test],
                        np.asarray(arrays.y_test[:n_test]), device, scale, shift, alter_model)


def diagnose(
    cfg: PipelineConfig,
    arrays: CifarArrays,
    *,
    quick: bool = False,
    budget_s: float | None = None,
    normalization: tuple[torch.Tensor, torch.Tensor] | None = None,
    alter_model: Callable[[nn.Module], None] | None = None,
) -> DoctorResult:
    """Run the checks for a resolved config on decoded arrays (subset as the config says).

    `normalization` and `alter_model` replace the data path's (scale, shift) and change the built
    model: tests use them to inject the faults the doctor must find.
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        tune_cpu_allocator()
    bench = make_bench(cfg, arrays, device, normalization, alter_model)
    x_train, y_train, x_test, y_test = bench.x_train, bench.y_train, bench.x_val, bench.y_val

    checks = [check_data(x_train, y_train, x_test, y_test)]
    stats = pixel_stats(x_train, bench.scale, bench.shift)
    checks.append(check_input_scale(stats))
    log.info("doctor: data %s, input scale %s", checks[0].result, checks[1].result)
    if ((y_train < 0) | (y_train >= 10)).any() or ((y_test < 0) | (y_test >= 10)).any():
        # Labels out of range would crash cross-entropy; the data check already says why.
        return _result(checks, None, cfg, _empty_plan(cfg, quick, bench), {}, t0)

    if budget_s is None:
        budget_s = float(os.environ.get(BUDGET_ENV) or (QUICK_BUDGET_S if quick else FULL_BUDGET_S))
    plan = make_plan(cfg, bench, quick, budget_s)
    log.info("doctor: batch %d, %d range steps, %d one-batch steps, %d learning steps (%.3f s/step)",
             plan.batch_size, plan.range_steps, plan.one_batch_steps, plan.learn_steps, plan.seconds_per_step)

    start = probes.initial_output(bench, min(256, len(y_train)))
    checks.append(check_start(start))
    log.info("doctor: start %s (initial loss %.3f)", checks[-1].result, start["loss"])

    lr_min, lr_max = min(LR_SWEEP[0], cfg.lr / 10), min(max(LR_SWEEP[1], cfg.lr * 10), 1e4)
    sweep = probes.lr_range_test(bench, plan.batch_size, plan.range_steps, lr_min, lr_max)
    checks.append(check_learning_rate(cfg.lr, sweep))
    log.info("doctor: learning rate %s (fastest fall %s, diverged at %s)", checks[-1].result, sweep["fastest"],
             sweep["diverged_at"])
    # Probes that should not suffer from a bad lr run at one inside the good range.
    good_lr = _suggested_lr(sweep) or cfg.lr
    learn_lr = cfg.lr if checks[-1].result == "pass" else good_lr

    fits: list[dict] = []
    if not quick:
        fits.append(probes.fit_one_batch(bench, plan.one_batch_size, plan.one_batch_steps))
        other_lr = _other_lr(cfg.lr, good_lr, sweep)
        if not fits[0]["memorised"] and other_lr is not None:
            fits.append(probes.fit_one_batch(bench, plan.one_batch_size, plan.one_batch_steps, other_lr / cfg.lr))
        checks.append(check_one_batch(cfg.lr, fits, plan))
        log.info("doctor: one batch %s", checks[-1].result)

    learned = probes.learn(bench, plan.batch_size, plan.learn_steps, learn_lr / cfg.lr, plan.grad_steps)
    checks.append(check_gradients(learned))
    log.info("doctor: gradients %s", checks[-1].result)
    if not quick:
        checks.append(check_labels(learned, fits, learn_lr))
        log.info("doctor: labels %s", checks[-1].result)

    curves = {"range": sweep, "one_batch": fits, "learn": learned, "start": start, "pixels": stats}
    return _result(checks, sweep, cfg, plan, curves, t0)


def _empty_plan(cfg: PipelineConfig, quick: bool, bench: probes.Bench) -> DoctorPlan:
    return DoctorPlan(quick=quick, batch_size=0, one_batch_size=0, one_batch_steps=0, range_steps=0, learn_steps=0,
                      grad_steps=0, train_images=len(bench.y_train), val_images=0, seconds_per_step=0.0,
                      device=str(bench.device))


def _result(checks, sweep, cfg, plan, curves, t0) -> DoctorResult:
    return DoctorResult(status=worst(checks), checks=checks, lr_range=sweep["fastest"] if sweep else None,
                        diverged_at=sweep["diverged_at"] if sweep else None, configured_lr=cfg.lr, plan=plan,
                        curves=curves, seconds=time.perf_counter() - t0)


def _suggested_lr(sweep: dict) -> float | None:
    """The middle of the fastest-fall range, kept a factor 3 below where the loss diverged."""
    if not sweep["fastest"]:
        return None
    low, high = sweep["fastest"]
    lr = math.sqrt(low * high)
    return min(lr, sweep["diverged_at"] / 3) if sweep["diverged_at"] else lr


def _other_lr(lr: float, good_lr: float, sweep: dict) -> float | None:
    """A second lr for the one-batch fit, so that a bad lr is not mistaken for bad wiring."""
    if not math.isclose(good_lr, lr, rel_tol=0.2):
        return good_lr
    higher = lr * 10  # the range test found no fall: a plateau that a larger step may escape
    return higher if not sweep["diverged_at"] or higher < sweep["diverged_at"] / 2 else None


def _range_text(sweep: dict) -> str:
    low, high = sweep["fastest"]
    return f"[{low:.2g}, {high:.2g}]"


# ----------------------------------------------------------------------------- verdicts


def check_start(start: dict) -> Check:
    loss, std = start["loss"], start["logit_std"]
    text = (f"initial loss {loss:.3f} (chance: ln 10 = {CHANCE_LOSS:.3f}); logits at init: std {std:.3g}, "
            f"max |logit| {start['logit_max']:.3g}")
    if not math.isfinite(loss):
        return Check(name="start", result="fail", message=text, blog_items=[4], evidence=start,
                     fix="The first forward pass is not finite: check the input scaling and the model's init.")
    if loss > CHANCE_LOSS + 1.0 or std > 5:
        return Check(name="start", result="fail", message=text + ": the untrained network is confidently wrong",
                     blog_items=[4], evidence=start,
                     fix="Scale the inputs (to [0, 1] or standardised) or shrink the last layer's init, so that "
                         "the first loss is near ln 10.")
    if abs(loss - CHANCE_LOSS) > 0.3:
        return Check(name="start", result="warn", message=text + ": further from ln 10 than a fresh net should be",
                     blog_items=[4], evidence=start,
                     fix="A fresh classifier should predict about uniformly; check input scaling and init.")
    return Check(name="start", result="pass", message=text, blog_items=[4], evidence=start)


def check_learning_rate(lr: float, sweep: dict) -> Check:
    evidence = {k: sweep[k] for k in ("fastest", "diverged_at", "steepest_slope", "best_loss", "lr_min", "lr_max",
                                      "steps")}
    diverged = f"; the loss diverged at lr {sweep['diverged_at']:.2g}" if sweep["diverged_at"] else \
        f"; no divergence up to lr {sweep['lrs'][-1]:.2g}" if sweep["lrs"] else ""
    if sweep["diverged_at"] and lr >= sweep["diverged_at"] / 2:
        where = f"; the loss fell fastest for lr in {_range_text(sweep)}" if sweep["fastest"] else ""
        return Check(name="learning_rate", result="fail", blog_items=[5], evidence=evidence,
                     message=f"configured lr {lr:g} is at or above where the loss diverges in the range test "
                             f"(lr {sweep['diverged_at']:.2g}){where}",
                     fix=f"Lower the learning rate to about {_suggested_lr(sweep) or sweep['diverged_at'] / 10:.2g}.")
    if not sweep["fastest"]:
        return Check(name="learning_rate", result="warn", blog_items=[5], evidence=evidence,
                     message=f"the loss did not fall at any lr from {sweep['lr_min']:.2g} to "
                             f"{sweep['lrs'][-1] if sweep['lrs'] else sweep['lr_max']:.2g}{diverged}: the learning "
                             "rate is not what stops learning",
                     fix="Look at the one-batch, gradient and label checks: the wiring or the data is at fault.")
    low, high = sweep["fastest"]
    suggested = _suggested_lr(sweep)
    text = (f"configured lr {lr:g}; the loss fell fastest for lr in {_range_text(sweep)}{diverged}")
    if lr < low / 10:
        return Check(name="learning_rate", result="fail", blog_items=[5], evidence=evidence,
                     message=text + f": lr {lr:g} is far too small (over 10x below that range)",
                     fix=f"Raise the learning rate into {_range_text(sweep)}, e.g. --lr {suggested:.2g}.")
    if lr < low / 3:
        return Check(name="learning_rate", result="warn", blog_items=[5], evidence=evidence,
                     message=text + f": lr {lr:g} is below that range; learning will be slow",
                     fix=f"Try a learning rate in {_range_text(sweep)}, e.g. --lr {suggested:.2g}.")
    if sweep["diverged_at"] and lr > sweep["diverged_at"] / 5:
        return Check(name="learning_rate", result="warn", blog_items=[5], evidence=evidence,
                     message=text + f": lr {lr:g} is within 5x of divergence",
                     fix=f"If training is unstable, lower the learning rate towards {suggested:.2g}.")
    return Check(name="learning_rate", result="pass", message=text, blog_items=[5], evidence=evidence)


def check_one_batch(lr: float, fits: list[dict], plan: DoctorPlan) -> Check:
    at_cfg = fits[0]
    first, last = at_cfg["losses"][0], at_cfg["losses"][-1]
    evidence = {"runs": [{k: f[k] for k in ("memorised", "steps", "lr_factor")} | {"final_loss": f["losses"][-1]}
                         for f in fits], "batch": plan.one_batch_size}
    if at_cfg["memorised"]:
        return Check(name="one_batch", result="pass", blog_items=[1, 2, 3], evidence=evidence,
                     message=f"one fixed batch of {plan.one_batch_size} images memorised in {at_cfg['steps']} steps "
                             f"at lr {lr:g} (loss {first:.3f} -> {last:.3f})")
    if len(fits) > 1 and fits[1]["memorised"]:
        other = lr * fits[1]["lr_factor"]
        return Check(name="one_batch", result="warn", blog_items=[5], evidence=evidence,
                     message=f"one batch of {plan.one_batch_size} images was not memorised in {at_cfg['steps']} steps "
                             f"at lr {lr:g} (loss {first:.3f} -> {last:.3f}), but was in {fits[1]['steps']} steps at "
                             f"lr {other:.2g}: the wiring works, the configured learning rate holds it back",
                     fix=f"Move the learning rate towards {other:.2g}.")
    fell = max((f["losses"][0] - min(f["losses"])) / f["losses"][0] for f in fits)
    if fell >= 0.05:
        # Broken wiring leaves the loss flat; a loss that moves but slowly is a plateau or a small step.
        return Check(name="one_batch", result="warn", blog_items=[5], evidence=evidence,
                     message=f"one batch of {plan.one_batch_size} images was not memorised in {plan.one_batch_steps} "
                             f"steps, but its loss fell by {fell:.0%} (loss {first:.3f} -> {last:.3f} at lr {lr:g}): "
                             "the wiring works, learning is slow",
                     fix="Expect a slow start (a plateau near ln 10); a larger lr or momentum shortens it.")
    tried = " and ".join(f"lr {lr * f['lr_factor']:.2g} (loss {f['losses'][0]:.3f} -> {f['losses'][-1]:.3f})"
                         for f in fits)
    return Check(name="one_batch", result="fail", blog_items=[1, 2, 3], evidence=evidence,
                 message=f"the model could not memorise one fixed batch of {plan.one_batch_size} images in "
                         f"{plan.one_batch_steps} steps at {tried}: the model, optimizer or loss wiring is wrong, "
                         "not the data",
                 fix="Check that each step calls zero_grad(), backward(), step() in that order, that the optimizer "
                     "was built after the model from model.parameters(), and that no layer is frozen by mistake "
                     "(see the gradient check).")


def check_gradients(learned: dict) -> Check:
    layers = learned["layers"]
    head = learned["head"]
    frozen = [l["name"] for l in layers if not l["trainable"]]
    zero = [l["name"] for l in layers if l["trainable"] and l["grad_norm"] == 0.0]
    norms = [l["grad_norm"] for l in layers if l["trainable"] and l["grad_norm"] > 0]
    median = float(np.median(norms)) if norms else 0.0
    vanishing = [l["name"] for l in layers if l["trainable"] and 0 < l["grad_norm"] < 1e-4 * median]
    head_params = [l for l in layers if l["name"].rpartition(".")[0] == head]
    head_frozen = bool(head_params) and all(not l["trainable"] for l in head_params)
    dead = learned["dead_end"] or learned["dead_start"]
    worst_dead = max(dead, key=lambda s: s["share"], default=None)
    dead_text = (", ".join(f"{s['site']} {s['share']:.0%}" for s in dead) or "none measured")
    evidence = {"layers": layers, "head": head, "frozen": frozen, "zero": zero, "vanishing": vanishing,
                "dead_units": dead, "grad_steps": learned["grad_steps"]}
    span = f"over the first {learned['grad_steps']} steps"
    facts = f"dead units per activation: {dead_text}"
    fails, warns = [], []
    if not learned["grads_finite"]:
        fails.append(f"gradients became NaN/inf {span}")
    if head_frozen:
        fails.append(f"the output layer {head} gets no gradient: it is frozen (requires_grad=False)")
    if zero:
        fails.append(f"zero gradient {span} for {_names(zero)}")
    if worst_dead and worst_dead["share"] >= 0.99:
        fails.append(f"{worst_dead['site']} has {worst_dead['share']:.0%} dead units (input never above "
                     f"{'0' if worst_dead['site'].startswith('relu') else '-3'})")
    if vanishing:
        warns.append(f"vanishing gradients (under 1e-4 x the median layer's) for {_names(vanishing)}")
    if worst_dead and 0.5 <= worst_dead["share"] < 0.99:
        warns.append(f"{worst_dead['site']} has {worst_dead['share']:.0%} dead units")
    frozen_note = f"; frozen parameters (by design or not): {_names(frozen)}" if frozen else ""
    if fails:
        return Check(name="gradients", result="fail", blog_items=[1, 3], evidence=evidence,
                     message="; ".join(fails + warns) + f". {facts}{frozen_note}",
                     fix="Unfreeze the layer (requires_grad_(True)) and make sure the optimizer holds "
                         "model.parameters(); for dead units lower the lr or check the input scale.")
    if warns:
        return Check(name="gradients", result="warn", blog_items=[4, 5], evidence=evidence,
                     message="; ".join(warns) + f". {facts}{frozen_note}",
                     fix="Check the input scale and the learning rate; consider normalisation layers.")
    return Check(name="gradients", result="pass", blog_items=[1, 3], evidence=evidence,
                 message=f"every trainable layer gets a gradient {span} (median norm {median:.3g}); {facts}"
                         f"{frozen_note}")


def check_labels(learned: dict, fits: list[dict], lr: float) -> Check:
    """Fresh batches at a good lr: the held-out loss must fall if labels match the images."""
    start, end = learned["val_start"], learned["val_end"]
    losses = learned["losses"]
    evidence = {"val_start": start, "val_end": end, "lr": lr, "steps": learned["steps"]}
    if end is None:
        return Check(name="labels", result="warn", blog_items=[5], evidence=evidence,
                     message=f"training at lr {lr:.2g} diverged within {learned['steps']} steps; labels not judged",
                     fix="Fix the learning rate first.")
    window = max(1, len(losses) // 5)
    train_start, train_end = float(np.mean(losses[:window])), float(np.mean(losses[-window:]))
    text = (f"{learned['steps']} steps on fresh batches at lr {lr:.2g}: train loss {train_start:.3f} -> "
            f"{train_end:.3f}, held-out loss {start['loss']:.3f} -> {end['loss']:.3f}, held-out accuracy "
            f"{start['accuracy']:.1%} -> {end['accuracy']:.1%} ({learned['val_images']} images)")
    evidence.update(train_start=train_start, train_end=train_end)
    if end["loss"] < start["loss"] - 0.05 or end["accuracy"] >= 0.2:
        return Check(name="labels", result="pass", message=text, blog_items=[0], evidence=evidence)
    memorised = any(f["memorised"] for f in fits)
    if train_end < train_start - 0.1 or memorised:
        why = "the model fits training batches" if train_end < train_start - 0.1 else "one batch can be memorised"
        return Check(name="labels", result="fail", blog_items=[0], evidence=evidence,
                     message=text + f": {why} but the held-out loss does not move, so what it learns does not "
                                    "transfer: a data/label problem",
                     fix="Check that labels belong to their images (shuffling, misaligned files) and that train "
                         "and test come from the same distribution and normalisation.")
    return Check(name="labels", result="warn", blog_items=[0, 5], evidence=evidence,
                 message=text + ": neither the training nor the held-out loss moved",
                 fix="Learning is too slow to judge the labels in this many steps; see the lr check.")


def _names(names: list[str], shown: int = 6) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
