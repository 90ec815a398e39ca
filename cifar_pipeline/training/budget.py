"""A training time budget that holds on any machine: measure real steps, then plan the run to the minute.

The same configuration runs 52 s per epoch on one AVX-512 BF16 CPU and 3.4 min on an AVX2 one, so a
fixed epoch count cannot promise a wall time. Before training, `plan_training` times real steps of the
model, optimizer and batch on the real device (`measure_steps`), in both phases a run goes through:
while airnet's whitening bias trains (the first `whiten_bias_epochs`, slower) and after. The plan then
takes the most epochs whose predicted training time stays within TARGET_SHARE of the budget, in steps
of EPOCH_STEP (finer where epochs are long), up to `max_epochs` (or the configured epochs: a budget
alone only shrinks a run).

Given `budget_widths`, each width is measured and planned so; with a `budget_frontier` (measured
accuracy per width and epochs, cifar_pipeline/training/frontier.py) the width whose planned epochs are
predicted most accurate trains, for fewer epochs than fit where the frontier measured fewer to be more
accurate by more than seed noise; otherwise the widest keeping MIN_EPOCH_SHARE of the configured epochs.
A frontier's points may carry recipe changes (cutout on, say): the plan then chooses width and recipe
together, each candidate at its own measured speed (recipes that change only the augmentation share
one). A preset's frontier holds for the preset's recipe: a run that changes some of its fields takes
only the points measured with the same changes, and without any is planned without a frontier
(`frontier_recipes`); the report says which fields did it.

A width that one timed step shows far too slow to be chosen (GIVE_UP_FACTOR) is not measured further:
on a slow machine the wide widths' warm-up was most of its cost (width 64 took 4 of 7.5 minutes on an
AVX2 EPYC, where it could not fit two epochs). Such a probe is stored like a measurement and reused
while a run would give the width up again; a run that could choose it measures it in full.

A run that falls behind its plan in training (the machine slowed down) is shortened to end within the
budget: cifar_pipeline/training/deadline.py.

Measurements are a stage keyed by machine and configuration, so an unchanged nightly run measures
once, then plans the same epochs every night (and its training stays a cache hit).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, NamedTuple

from pydantic import BaseModel

from ..config import PipelineConfig, RecipeValue, recipe_fields
from ..errors import ConfigError
from ..stage import Stage, StageRecord
from . import frontier

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Planned training ends by this share of the budget: the middle of the 90-100 % a run should end in.
# A 2-core cloud machine's epochs run up to a tenth faster or slower than its warm-up minutes said, in
# either direction (at 97 %, runs ended at 91 % on a Zen 4 EPYC, at 96 % and 109 % on a Zen 5;
# benchmarks/RESULTS.md), so a plan at the edge would overrun about as often as it lands.
TARGET_SHARE = 0.95
# Planned epochs are a multiple of EPOCH_STEP (half an epoch of 16 is 3 % of the budget), or of
# FINE_EPOCH_STEP where half an epoch is more than STEP_SHARE of it: on an AVX2 EPYC (Zen 1) an epoch at
# width 32 takes 162 s, and halves would leave up to 9 % of 15 minutes unplanned.
EPOCH_STEP = 0.5
FINE_EPOCH_STEP = 0.1
STEP_SHARE = 0.03
# Without a frontier, the widest width that keeps at least this share of the configured epochs trains.
MIN_EPOCH_SHARE = 0.5
WARMUP_STEPS = 2  # untimed, in each phase: first-call allocations and kernel selection
MIN_TIMED_STEPS = 3
MIN_TIMED_SECONDS = 6.0  # per phase: a few steps of a fresh process run slower than an epoch's average
MAX_TIMED_STEPS = 50
# A width whose first timed step runs more than GIVE_UP_FACTOR times slower than the slowest step with
# which it could still be chosen is given up after that step. Early steps ran up to 27 % slower than
# later epochs' (emulated AVX2: 260.8 against 190.7 s per epoch) and a 2-core machine's minutes differ by a
# tenth, so a factor 2 gives up only on widths far out of reach (an AVX2 EPYC Zen 1: width 64 at about
# 22 s per step, where 8.6 s could still be chosen).
GIVE_UP_FACTOR = 2.0


class Speed(NamedTuple):
    """What the warm-up measures: seconds per step in each phase, the steps of an epoch, steps timed."""

    seconds_per_step: float  # after the whitening bias stops training: most of a run
    seconds_per_step_early: float  # while it trains (the first whiten_bias_epochs); = the above without it
    steps_per_epoch: int
    timed_steps: int
    threads: int = 0  # intra-op threads the steps ran with (CPU); 0 on a GPU
    complete: bool = True  # False: given up after one timed step, too slow to be chosen (a probe)


class Measurement(StageRecord):
    machine: str
    seconds_per_step: float
    seconds_per_step_early: float
    early_epochs: int  # whiten_bias_epochs of the measured config
    steps_per_epoch: int
    timed_steps: int
    measured_at: str
    threads: int = 0  # 0: a GPU, or a record from before threads were recorded
    complete: bool = True  # False: a probe, one step timed (seconds_per_step is that step's)

    @classmethod
    def taken(cls, speed: Speed, machine: str, cfg: PipelineConfig) -> Measurement:
        """The record of `speed`, measured now on `machine` for `cfg` (whose early phase it timed)."""
        return cls(machine=machine, seconds_per_step=speed.seconds_per_step,
                   seconds_per_step_early=speed.seconds_per_step_early, early_epochs=cfg.whiten_bias_epochs,
                   steps_per_epoch=speed.steps_per_epoch, timed_steps=speed.timed_steps, threads=speed.threads,
                   complete=speed.complete, measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def training_seconds(measured: Measurement, epochs: float, steps_per_epoch: int) -> float:
    """Predicted training time of `epochs` epochs of `steps_per_epoch` steps on the measured machine."""
    steps = math.ceil(steps_per_epoch * epochs)
    early = min(steps, measured.early_epochs * steps_per_epoch)
    return early * measured.seconds_per_step_early + (steps - early) * measured.seconds_per_step


class WidthOption(BaseModel):
    width: int
    recipe: dict[str, RecipeValue] = {}  # the frontier recipe's changed fields
    seconds_per_epoch: float
    epochs: float  # 0: not even one epoch fits
    predicted_accuracy: float | None = None  # % from the frontier; None: nothing measured covers it
    probed: bool = False  # given up after one timed step: seconds_per_epoch is that step's


class BudgetPlan(BaseModel):
    budget_min: float
    configured_epochs: float
    planned_epochs: float
    seconds_per_epoch: float  # measured, after the whitening bias stops training
    images_per_second: float
    machine: str
    cached: bool  # the measurement came from an earlier run on this machine
    measured_at: str
    predicted_seconds: float = 0.0  # training time the plan expects for the planned epochs
    max_epochs: float = 0.0  # the cap the plan could grow to
    fitting_epochs: float = 0.0  # the most that fit; more than planned_epochs when fewer are predicted better
    width: int | None = None  # chosen from budget_widths; None: the width as configured
    predicted_accuracy: float | None = None  # % from the frontier, when it covers the choice
    recipe: dict[str, RecipeValue] = {}  # fields the chosen frontier recipe changes (cutout on, say)
    options: list[WidthOption] = []  # the widths measured, widest first
    frontier_ignored: list[str] = []  # recipe fields changed from the preset's, whose frontier was not used
    threads: int = 0  # intra-op threads the measured steps ran with; 0: a GPU or not recorded
    probed: bool = False  # the width was given up after one timed step (never the plan chosen)
    seconds_per_epoch_early: float = 0.0  # measured while the whitening bias trains; 0: not recorded
    early_epochs: int = 0  # the epochs it trains

    def chosen(self) -> str:
        """' at width 64 with cutout=8': what the plan chose besides the epochs ('' when nothing)."""
        return f"{f' at width {self.width}' if self.width is not None else ''}{with_recipe(self.recipe)}"

    def summary(self) -> str:
        width = self.chosen()
        predicted = f", predicted {self.predicted_accuracy:.2f} %" if self.predicted_accuracy is not None else ""
        ignored = f"; frontier not used, the recipe changes {', '.join(self.frontier_ignored)}"
        return (f"time budget {self.budget_min:g} min: measured {self.seconds_per_epoch:.1f} s/epoch "
                f"({self.images_per_second:.0f} img/s{', cached' if self.cached else ''}) on {self.machine}; "
                f"trains {self.planned_epochs:g} epochs{width} ({self.epochs_note()}) in a predicted "
                f"{self.predicted_seconds / 60:.1f} min{predicted}{ignored if self.frontier_ignored else ''}")

    def epochs_note(self) -> str:
        if self.fitting_epochs > self.planned_epochs:
            return (f"fewer than the {self.fitting_epochs:g} that fit: the measured frontier predicts "
                    f"{self.planned_epochs:g} more accurate")
        if self.planned_epochs > self.configured_epochs:
            return f"grown from the configured {self.configured_epochs:g}, at most {self.max_epochs:g}"
        if self.planned_epochs == self.configured_epochs:
            return "the configured epochs"
        return f"of the configured {self.configured_epochs:g}"

    def width_note(self) -> str:
        """Why this width, for the report: what each width measured would have trained."""
        ignored = (f"The preset's measured frontier was not used: it was measured for the preset's recipe, "
                   f"and this run changes {', '.join(self.frontier_ignored)}. " if self.frontier_ignored else "")
        if self.width is None or len(self.options) < 2:
            return ignored.rstrip()
        # Recipes sharing a width's measurement share its probe too: a width given up is named once.
        shown, given_up = [], set()
        for o in self.options:
            if not (o.probed and o.width in given_up):
                shown.append(_option(o))
            if o.probed:
                given_up.add(o.width)
        tried = ", ".join(shown)
        if self.predicted_accuracy is not None:
            rule = "the most accurate for the time by the measured frontier"
        elif self.planned_epochs >= MIN_EPOCH_SHARE * self.configured_epochs:
            rule = f"the widest keeping at least {MIN_EPOCH_SHARE:.0%} of the configured epochs"
        else:
            rule = f"none keeps {MIN_EPOCH_SHARE:.0%} of the configured epochs: the one training the most"
        return f"{ignored}Width {self.width}{with_recipe(self.recipe)} chosen from {tried} ({rule})."


def _option(o: WidthOption) -> str:
    if o.probed:
        return (f"width {o.width}: about {o.seconds_per_epoch:.0f} s/epoch by its first timed step, far too slow "
                f"to be chosen (not measured further)")
    predicted = f" (predicted {o.predicted_accuracy:.2f} %)" if o.predicted_accuracy is not None else ""
    return f"width {o.width}{with_recipe(o.recipe)}: {o.seconds_per_epoch:.0f} s/epoch, {_epochs(o.epochs)}{predicted}"


def _epochs(epochs: float) -> str:
    return "not one epoch" if not epochs else f"{epochs:g} epoch{'' if epochs == 1 else 's'}"


def with_recipe(recipe: dict[str, RecipeValue]) -> str:
    """' with cutout=8' for a recipe's changed fields; '' for none."""
    return " with " + ", ".join(f"{k}={v}" for k, v in recipe.items()) if recipe else ""


def epoch_cap(cfg: PipelineConfig) -> float:
    return max(cfg.epochs, cfg.max_epochs or 0.0)


def plan_epochs(budget_min: float, max_epochs: float, seconds: Callable[[float], float],
                step: float | None = None) -> float:
    """The most epochs, a multiple of `step` (by default `epoch_step`'s) or `max_epochs` itself, whose
    `seconds(epochs)` stays within TARGET_SHARE of the budget.

    Less than one epoch is an error: a run that cannot finish one epoch would report nothing useful.
    """
    target = budget_min * 60 * TARGET_SHARE
    if seconds(max_epochs) <= target:
        return max_epochs
    one = seconds(1.0)
    if one <= 0:
        raise ValueError("the predicted seconds must be positive")
    if one > target:
        raise ConfigError(
            f"time_budget_min {budget_min:g} is too short: one epoch takes about {one / 60:.1f} min "
            f"on this machine (measured); allow at least {math.ceil(one / 60 / TARGET_SHARE * 10) / 10:g} min, "
            "or set time_budget_min 0 to train the configured epochs")
    step = step or epoch_step(budget_min, one)
    # seconds() grows with the epochs: bisect on the grid of `step`s between 1 epoch and the cap.
    low, high = math.ceil(1.0 / step - 1e-9), math.floor(max_epochs / step + 1e-9)
    while low < high:
        mid = (low + high + 1) // 2
        if seconds(mid * step) <= target:
            low = mid
        else:
            high = mid - 1
    return max(1.0, round(low * step, 6))


def epoch_step(budget_min: float, seconds_per_epoch: float) -> float:
    """The grid planned epochs lie on: halves, unless half an epoch is more than STEP_SHARE of the budget."""
    return EPOCH_STEP if seconds_per_epoch * EPOCH_STEP <= STEP_SHARE * budget_min * 60 else FINE_EPOCH_STEP


MEASURE = Stage("measure-speed", "budget", Measurement, "training.budget")
# Fields that change only which pixels a step sees or its loss's targets, not the work of a step: the
# augmentations cost about 1 % of an epoch ("data" in the epoch log: 1.1-1.5 s of 95-137 s at width 64
# with 8-pixel cutout, Zen 4), well inside the tenth epochs drift, so recipes differing only in these
# share one measurement.
# The seed changes which random numbers a step draws, not how many.
SPEED_NEUTRAL = ("flip", "translate", "cutout", "brightness", "contrast", "label_smoothing", "seed")


def measurement_inputs(machine: str, cfg: PipelineConfig, data_digest: str) -> dict:
    # The training inputs minus the epochs (the budget's fields are in no training key) and SPEED_NEUTRAL:
    # none changes the speed of a step.
    train = cfg.model_copy(update={"epochs": 1.0}).group("train")
    return {"machine": machine, "dataset": data_digest,
            "train": {k: v for k, v in train.items() if k not in SPEED_NEUTRAL}}


# measure(config, give_up_above): the speed of config's steps; given seconds, a first timed step slower than
# that ends it (an incomplete Speed).
Measure = Callable[[PipelineConfig, float | None], Speed]


def plan_training(
    cfg: PipelineConfig,
    data_digest: str,
    cache_dir: str | os.PathLike,
    machine: str,
    measure: Measure,
    *,
    train_images: int,
) -> BudgetPlan:
    """Plan the epochs of `cfg` (and its width, given `budget_widths`) over `train_images` images within
    its time budget. `measure(config)` runs only when this machine and configuration have no stored
    measurement."""
    recipes, ignored = frontier_recipes(cfg) if cfg.budget_widths else ({}, [])
    if not cfg.budget_widths:
        plan = _plan_one(cfg, data_digest, cache_dir, machine, measure, train_images)
    elif any(frontier.best_possible(points, w, epoch_cap(cfg)) is not None
             for points in recipes.values() for w in cfg.budget_widths):
        plan = _plan_by_frontier(cfg, recipes, data_digest, cache_dir, machine, measure, train_images)
    else:
        plan = _plan_widest(cfg, data_digest, cache_dir, machine, measure, train_images)
    plan = plan.model_copy(update={"frontier_ignored": ignored})
    log.info("%s", plan.summary())
    return plan


def frontier_recipes(cfg: PipelineConfig) -> tuple[dict[frontier.Recipe, list[frontier.Point]], list[str]]:
    """The recipes of `cfg`'s frontier that hold for it, with their points; and, when the preset's frontier
    holds for none, the changed fields (as field=value) that ruled it out.

    A frontier given with the run is the run's own: all of it holds. The preset's was measured on the
    preset's recipe: a run that changes none of its fields may take any of its recipes, one that changes
    some only those that make the same changes.
    """
    if not cfg.budget_frontier:
        return {}, []
    recipes = frontier.by_recipe(cfg.budget_frontier)
    preset = _preset(cfg)
    changes = recipe_changes(cfg, preset)
    if cfg.budget_frontier != preset.budget_frontier or not changes:
        return recipes, []
    same = {recipe: points for recipe, points in recipes.items()
            if all(dict(recipe).get(k, getattr(preset, k)) == getattr(cfg, k) for k in recipe_fields())}
    return same, [] if same else changes


def recipe_changes(cfg: PipelineConfig, preset: PipelineConfig | None = None) -> list[str]:
    """The fields (as field=value) in which the recipe `cfg` trains and evaluates differs from its preset's
    (`preset`, resolved, when the caller has it)."""
    preset = preset or _preset(cfg)
    return [f"{k}={getattr(cfg, k)}" for k in recipe_fields() if getattr(cfg, k) != getattr(preset, k)]


def _preset(cfg: PipelineConfig) -> PipelineConfig:
    return PipelineConfig(preset=cfg.preset).resolved({})


def _plan_by_frontier(cfg: PipelineConfig, recipes: dict[frontier.Recipe, list[frontier.Point]],
                      data_digest: str, cache_dir: str | os.PathLike, machine: str, measure: Measure,
                      train_images: int) -> BudgetPlan:
    """The width and recipe whose planned epochs the frontier predicts most accurate (ties: the shorter run).

    Candidates are measured in the order of the most they could reach and only while one could still beat
    the best so far, so a machine measures what can change the answer, and widths the frontier does not
    cover are left out.
    """
    cap = epoch_cap(cfg)
    reach = {(w, recipe): frontier.best_possible(points, w, cap)
             for recipe, points in recipes.items() for w in set(cfg.budget_widths)}
    candidates = {c: cfg.model_copy(update={"width": c[0], **dict(c[1])}) for c, r in reach.items() if r is not None}
    best: BudgetPlan | None = None
    plans: list[BudgetPlan] = []

    def give_up_above(candidate: PipelineConfig) -> float | None:
        # The most lenient limit of the candidates sharing this one's measurement, so that it is timed once.
        key = measurement_inputs(machine, candidate, data_digest)
        needed = [frontier.fewest_epochs(recipes[r], w, cap, best.predicted_accuracy if best else None)
                  for (w, r), other in candidates.items() if measurement_inputs(machine, other, data_digest) == key]
        return _give_up_above(candidate, min((e for e in needed if e is not None), default=None), train_images)

    for width, recipe in sorted(candidates, key=lambda c: (-reach[c], c[0], len(c[1]), str(c[1]))):
        if best is not None and reach[width, recipe] <= best.predicted_accuracy:
            break
        points = recipes[recipe]

        def choose(fit: float, width: int = width, points: list[frontier.Point] = points) -> float:
            return frontier.best_epochs(points, width, fit, frontier.SEED_SPREAD) or fit

        candidate = candidates[width, recipe]
        plan = _plan_one(candidate, data_digest, cache_dir, machine, measure, train_images, none_fit_ok=True,
                         choose=choose, give_up_above=give_up_above(candidate))
        accuracy = frontier.predict(points, width, plan.planned_epochs) if plan.planned_epochs else None
        plan = plan.model_copy(update={"width": width, "recipe": dict(recipe), "predicted_accuracy": accuracy})
        plans.append(plan)
        if accuracy is not None and (best is None or (accuracy, -plan.predicted_seconds)
                                     > (best.predicted_accuracy, -best.predicted_seconds)):
            best = plan
    if best is None:  # the frontier covers no epochs that fit: fall back to the widths' own rule
        widest = _plan_widest(cfg, data_digest, cache_dir, machine, measure, train_images)
        # Its measurements were taken above, in this plan: reused only if they were reused there.
        return widest.model_copy(update={"cached": widest.cached and all(p.cached for p in plans)})
    return best.model_copy(update={"options": _options(sorted(plans, key=lambda p: -p.width))})


def _options(plans: list[BudgetPlan]) -> list[WidthOption]:
    return [WidthOption(width=p.width, recipe=p.recipe, seconds_per_epoch=p.seconds_per_epoch,
                        epochs=p.planned_epochs, predicted_accuracy=p.predicted_accuracy, probed=p.probed)
            for p in plans]


def _give_up_above(cfg: PipelineConfig, epochs: float | None, train_images: int) -> float | None:
    """Seconds per step past which cfg's width is given up: GIVE_UP_FACTOR times the slowest step with which
    `epochs` epochs (the fewest it could be chosen with) still end by TARGET_SHARE of the budget."""
    if epochs is None:
        return None
    steps = max(1, train_images // cfg.batch_size)
    return GIVE_UP_FACTOR * cfg.time_budget_min * 60 * TARGET_SHARE / math.ceil(steps * epochs - 1e-9)


def _plan_widest(cfg: PipelineConfig, data_digest: str, cache_dir: str | os.PathLike, machine: str,
                 measure: Measure, train_images: int) -> BudgetPlan:
    """The widest of `budget_widths` keeping MIN_EPOCH_SHARE of the epochs, else the one training most epochs.

    Widths are measured widest first and only until one qualifies, so a fast machine measures once.
    """
    plans: list[BudgetPlan] = []
    widths = sorted(set(cfg.budget_widths), reverse=True)
    for width in widths:
        candidate = cfg.model_copy(update={"width": width})
        # The narrowest is measured in full: when no width keeps the share, it is the one training the most.
        give_up = None if width == widths[-1] else _give_up_above(candidate, MIN_EPOCH_SHARE * cfg.epochs,
                                                                   train_images)
        plan = _plan_one(candidate, data_digest, cache_dir, machine, measure, train_images, none_fit_ok=True,
                         give_up_above=give_up)
        plans.append(plan.model_copy(update={"width": width}))
        if plan.planned_epochs >= MIN_EPOCH_SHARE * cfg.epochs:
            break
    chosen = plans[-1]
    if chosen.planned_epochs < MIN_EPOCH_SHARE * cfg.epochs:
        chosen = max((p for p in plans if not p.probed), key=lambda p: (p.planned_epochs, p.width))
    if not chosen.planned_epochs:  # not one epoch even at the narrowest width: say how long one takes
        _plan_one(cfg.model_copy(update={"width": plans[-1].width}), data_digest, cache_dir, machine, measure,
                  train_images)
    return chosen.model_copy(update={"options": _options(plans)})


def _plan_one(cfg: PipelineConfig, data_digest: str, cache_dir: str | os.PathLike, machine: str,
              measure: Measure, train_images: int, none_fit_ok: bool = False,
              choose: Callable[[float], float] | None = None, give_up_above: float | None = None) -> BudgetPlan:
    """The plan of `cfg` at its width; `choose(epochs that fit)` picks the epochs to train, when given. Given
    `give_up_above`, a width whose first timed step is slower is given up (a `probed` plan of no epochs)."""
    measured = []

    def build(_entry) -> Measurement:
        speed = measure(cfg, give_up_above)
        measured.append(True)
        return Measurement.taken(speed, machine, cfg)

    def answers(found: Measurement) -> bool:  # a probe stands while this run would give the width up too
        return found.complete or (give_up_above is not None and found.seconds_per_step > give_up_above)

    found = MEASURE.run(cache_dir, measurement_inputs(machine, cfg, data_digest), build, reuse=answers)
    # Steps of this run's epoch, not the measured one: extra images added since make epochs longer.
    steps = max(1, train_images // cfg.batch_size)
    seconds_per_epoch = found.seconds_per_step * steps
    common = dict(budget_min=cfg.time_budget_min, configured_epochs=cfg.epochs, seconds_per_epoch=seconds_per_epoch,
                  seconds_per_epoch_early=found.seconds_per_step_early * steps, early_epochs=found.early_epochs,
                  images_per_second=train_images / seconds_per_epoch if seconds_per_epoch else 0.0,
                  machine=machine, cached=not measured, measured_at=found.measured_at, threads=found.threads)
    if not found.complete:
        return BudgetPlan(planned_epochs=0.0, probed=True, **common)
    cap = epoch_cap(cfg)
    try:
        epochs = plan_epochs(cfg.time_budget_min, cap, lambda e: training_seconds(found, e, steps))
    except ConfigError:
        if not none_fit_ok:
            raise
        epochs = 0.0
    fitting = epochs
    if choose is not None and epochs:
        epochs = choose(epochs)
    return BudgetPlan(planned_epochs=epochs, max_epochs=cap, fitting_epochs=fitting,
                      predicted_seconds=training_seconds(found, epochs, steps), **common)


def planned_config(cfg: PipelineConfig, plan: BudgetPlan | None) -> PipelineConfig:
    """The config training runs: its epochs (width, recipe) are the planned ones, so the training key (and
    the lr schedule) follow what is actually trained."""
    if plan is None:
        return cfg
    update = {"epochs": plan.planned_epochs, **plan.recipe}
    if plan.width is not None:
        update["width"] = plan.width
    return cfg.model_copy(update=update)


def measure_steps(cfg: PipelineConfig, dataset, device: torch.device | None = None,
                  give_up_above: float | None = None) -> Speed:
    """The real training step's speed on the real device, in both phases of a run; given `give_up_above`
    seconds, only one step is timed when it takes longer (an incomplete Speed: the width is out of reach)."""
    import torch

    from .cpu_tuning import current_cpu_settings
    from .runtime import resolve_device, tune_cpu_allocator

    device = device or resolve_device(cfg.device)
    threads = torch.get_num_threads()
    used = 0
    if device.type == "cpu":
        tune_cpu_allocator()
        settings = current_cpu_settings(cfg.precision, cfg.channels_last, cfg.model)
        used = settings.threads
        log.info("warm-up at width %d: %d thread(s), other work kept %.2f cores busy", cfg.width, used,
                 settings.busy_cores)
        torch.set_num_threads(used)
    try:
        return _measure(cfg, dataset, device, give_up_above)._replace(threads=used)
    finally:
        torch.set_num_threads(threads)


def _measure(cfg: PipelineConfig, dataset, device: torch.device, give_up_above: float | None) -> Speed:
    from .step import new_model, new_step, start_epoch, train_batches, training_data

    data = training_data(cfg, dataset)
    batches = train_batches(cfg, data.x_train, data.y_train, device)
    model = new_model(cfg, data.x_train, device)
    step = new_step(cfg, model, device)
    stream = _batch_stream(batches)
    start_epoch(model, cfg, 0)
    early, early_steps = _time_phase(stream, step, device, give_up_above)
    if give_up_above is not None and early_steps == 1 and early > give_up_above:
        log.info("width %d: its first timed step took %.1f s, over %g times the %.1f s per step with which it "
                 "could still be chosen: not measured further", cfg.width, early, GIVE_UP_FACTOR,
                 give_up_above / GIVE_UP_FACTOR)
        return Speed(early, early, len(batches), 1, complete=False)
    late, late_steps = early, 0
    if cfg.whiten_bias_epochs and getattr(getattr(model, "whiten", None), "bias", None) is not None:
        start_epoch(model, cfg, cfg.whiten_bias_epochs)  # the bias frozen, as from that epoch on
        late, late_steps = _time_phase(stream, step, device)
    return Speed(late, early, len(batches), early_steps + late_steps)


def _batch_stream(batches):
    epoch = 0
    while True:  # a small training set runs out of steps within the warm-up: go on into the next epoch
        yield from batches.epoch(epoch)
        epoch += 1


def _time_phase(stream, step, device: torch.device, give_up_above: float | None = None) -> tuple[float, int]:
    """(seconds per step, steps timed): WARMUP_STEPS untimed, then at least MIN_TIMED_STEPS and
    MIN_TIMED_SECONDS; only one when it takes more than `give_up_above` seconds."""
    from .step import sync

    for _ in range(WARMUP_STEPS):
        step(*next(stream))[0].item()
    sync(device)
    start, timed = time.perf_counter(), 0
    while True:
        step(*next(stream))[0].item()
        timed += 1
        elapsed = time.perf_counter() - start
        if timed == 1 and give_up_above is not None and elapsed > give_up_above:
            break
        if timed >= MAX_TIMED_STEPS or (timed >= MIN_TIMED_STEPS and elapsed >= MIN_TIMED_SECONDS):
            break
    sync(device)
    return (time.perf_counter() - start) / timed, timed


def machine_key(device: torch.device) -> str:
    if device.type == "cuda":
        import torch

        return f"{torch.cuda.get_device_name(device)} | CUDA {torch.version.cuda}"
    from .cpu_tuning import detect_cpu

    return detect_cpu().key()
