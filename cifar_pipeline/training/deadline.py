"""Keeping a budgeted run inside its budget when the machine runs slower than its warm-up measured.

The plan (cifar_pipeline/training/budget.py) fixes the epochs from minutes of measured steps, but a
2-core cloud machine can slow down for a stretch of its run: on an AVX2 EPYC (Zen 1) a run planned to
end at 95 % of 15 minutes ran three epochs 40 % slower and ended at 122 % (benchmarks/RESULTS.md). So
before each epoch, training compares the last epoch's wall time (with its validation and checkpoint)
with what the measured speeds predicted for it; if the rest of the run, at that pace, would end past
the budget, the run is shortened so it ends by TARGET_SHARE of the budget, its learning rate decaying
from where it is to its end value over the steps left (cifar_pipeline/training/optim.py, Schedule).

A run that keeps its pace is never touched, so an unchanged nightly run plans and trains the same epochs.
The shortened run is stored under its plan's training key like any other: it is what that plan trained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from .budget import TARGET_SHARE

if TYPE_CHECKING:
    from .budget import BudgetPlan


class Deadline(BaseModel):
    budget_seconds: float  # training (the epochs with validation, lookahead and checkpoints) ends by this
    seconds_per_epoch: float  # measured, after the whitening bias stops training
    seconds_per_epoch_early: float  # measured, while it trains
    early_epochs: int  # the epochs the whitening bias trains

    @classmethod
    def of(cls, plan: BudgetPlan) -> Deadline:
        return cls(budget_seconds=plan.budget_min * 60, seconds_per_epoch=plan.seconds_per_epoch,
                   seconds_per_epoch_early=plan.seconds_per_epoch_early or plan.seconds_per_epoch,
                   early_epochs=plan.early_epochs)

    def predicted(self, start: int, end: int, steps_per_epoch: int) -> float:
        """Seconds the measured speeds predict for steps [start, end) of epochs of `steps_per_epoch` steps."""
        boundary = self.early_epochs * steps_per_epoch
        early = max(0, min(end, boundary) - start)
        late = max(0, end - max(start, boundary))
        return (early * self.seconds_per_epoch_early + late * self.seconds_per_epoch) / steps_per_epoch

    def pace(self, seconds: float, start: int, end: int, steps_per_epoch: int) -> float:
        """How much slower than predicted steps [start, end) ran in `seconds` (1.0: as measured)."""
        predicted = self.predicted(start, end, steps_per_epoch)
        return seconds / predicted if predicted > 0 else 1.0

    def shortened(self, elapsed: float, step: int, total: int, steps_per_epoch: int, pace: float) -> int | None:
        """The run's new total steps when `total` steps, the rest at `pace`, would end past the budget
        (`elapsed` seconds in, `step` steps done): the most ending by TARGET_SHARE of it, and at least one
        more step, so the run ends on a step that finishes its averaging. None: the plan holds."""
        def end(steps: int) -> float:
            return elapsed + pace * self.predicted(step, steps, steps_per_epoch)

        if step >= total or end(total) <= self.budget_seconds:
            return None
        low, high = step + 1, total - 1  # total itself overruns
        target = TARGET_SHARE * self.budget_seconds
        while low < high:
            mid = (low + high + 1) // 2
            if end(mid) <= target:
                low = mid
            else:
                high = mid - 1
        return low if low < total else None


def shortened_message(planned_epochs: float, epochs: float, pace: float, budget_seconds: float) -> str:
    return (f"the machine ran {pace:.2f}x slower than the warm-up measured, so training was shortened from "
            f"{planned_epochs:g} to {epochs:.2f} epochs to end within the {budget_seconds / 60:g}-minute budget; "
            "its learning rate decayed to its end value over the steps left")
