"""A possible regression: a refused model clearly below the champion on the same test set.

The champion gate only decides what is deployed; a model that falls well below the champion is
also worth a look (a data change, a broken augmentation, a dependency upgrade). The task layer
turns a `Regression` into an event that the alerts report.
"""

from __future__ import annotations

from pydantic import BaseModel

from .champion import PromotionDecision


class Regression(BaseModel):
    accuracy: float  # the refused model's test accuracy (0-1)
    champion_accuracy: float  # the champion's, measured on the same test set
    champion_run_id: str
    drop_points: float  # percentage points below the champion
    threshold_points: float

    def summary(self) -> str:
        return (f"test accuracy {self.accuracy:.2%}, {self.drop_points:.2f} points below the champion "
                f"{self.champion_run_id} ({self.champion_accuracy:.2%}) on the same test set "
                f"(alert threshold: {self.threshold_points:g} points)")


def find_regression(decision: PromotionDecision, threshold_points: float) -> Regression | None:
    """The refused model's drop, when it is more than `threshold_points` below the champion."""
    if decision.promoted or decision.champion_accuracy is None or decision.champion is None:
        return None
    # Rounded: 0.50 - 0.49 is 1.0000000000000009 points in floating point, not more than 1.
    drop = round(100 * (decision.champion_accuracy - decision.challenger_accuracy), 6)
    if drop <= threshold_points:
        return None
    return Regression(accuracy=decision.challenger_accuracy, champion_accuracy=decision.champion_accuracy,
                      champion_run_id=decision.champion.run_id, drop_points=drop,
                      threshold_points=threshold_points)
