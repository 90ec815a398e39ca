"""Training health checks: a loss that is not finite, or one stuck at chance level."""

from __future__ import annotations

import math

CHANCE_LOSS = math.log(10)  # cross-entropy of a uniform guess over 10 classes
CHANCE_TOLERANCE = 0.01

# From the seed blog's "loss does not decrease" checklist, in the order it suggests trying them.
CHECKLIST = (
    "1) the loop calls optimizer.zero_grad(), loss.backward(), optimizer.step() in that order; "
    "2) the optimizer is built after the model; "
    "3) it was given model.parameters(); "
    "4) inputs are scaled sensibly (e.g. to [0, 1]); "
    "5) the learning rate lies between 0.1 and 0.001"
)


def is_at_chance(mean_loss: float) -> bool:
    return abs(mean_loss - CHANCE_LOSS) < CHANCE_TOLERANCE


def divergence_message(loss: float, epoch: int, step: int, lr: float) -> str:
    return (
        f"loss became {loss} at epoch {epoch}, step {step} (lr {lr:g}); training stopped. "
        f"Most often the learning rate is too high for this model and batch size. Check: {CHECKLIST}."
    )


def chance_message(epoch: int, mean_loss: float) -> str:
    return (
        f"epoch {epoch}: mean loss {mean_loss:.4f} is at chance level (ln 10 = {CHANCE_LOSS:.4f}); "
        f"the model is not learning yet. Check: {CHECKLIST}."
    )
