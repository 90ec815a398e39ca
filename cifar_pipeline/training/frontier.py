"""What a (width, epochs) point of a recipe is expected to reach, from the points measured for it.

A frontier point is a measured run: the recipe trained at a fixed width for a fixed number of epochs
(`--time-budget-min 0 --width W --epochs E`) and its test accuracy, listed in the preset's
`budget_frontier` (measured in benchmarks/RESULTS.md). A point's accuracy does not depend on the
machine's speed, only its seconds do, so one table serves every CPU class and the budget's own
measurement supplies the seconds.

Between two measured epoch counts of a width, accuracy is interpolated linearly in log(epochs): over
the range measured it grows about evenly per doubling of training. Past the longest measured run of
a width it stays at that run's figure (more epochs are not credited before they are measured), and
below the shortest one the width has no prediction: nothing measured says how fast it falls.

A point may name recipe fields it changed from the configured recipe (`(64, 27, 92.04, {"cutout": 8})`):
each recipe's points form a frontier of their own (`by_recipe`), and the budget chooses between them as
between widths, so a change that pays only on long runs (cutout) is made only where they fit.

Accuracy need not grow with the epochs (a width can overfit past some length): given the epochs that
fit, the run trains a shorter measured length only where it is predicted more accurate by more than
the spread between seeds of one point (`best_epochs`), so seed noise in the table does not cut a run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

Point = Sequence[float]  # (width, epochs, accuracy in %), of one recipe
Recipe = tuple[tuple[str, object], ...]  # the fields a recipe changes, sorted: () is the configured recipe

# Points: the largest spread between two seeds of one point measured so far is 0.23 (benchmarks/RESULTS.md).
SEED_SPREAD = 0.25


def by_recipe(frontier: Iterable[Sequence]) -> dict[Recipe, list[Point]]:
    """{recipe: its (width, epochs, accuracy) points} of points that may carry a recipe's changed fields."""
    recipes: dict[Recipe, list[Point]] = {}
    for point in frontier:
        recipe = tuple(sorted(point[3].items())) if len(point) > 3 else ()
        recipes.setdefault(recipe, []).append(tuple(point[:3]))
    return recipes


def points_by_width(frontier: Iterable[Point]) -> dict[int, list[tuple[float, float]]]:
    """{width: [(epochs, accuracy), ...] by epochs}; repeated points (seeds) are averaged."""
    runs: dict[tuple[int, float], list[float]] = {}
    for width, epochs, accuracy in frontier:
        runs.setdefault((int(width), float(epochs)), []).append(float(accuracy))
    table: dict[int, list[tuple[float, float]]] = {}
    for (width, epochs), accuracies in sorted(runs.items()):
        table.setdefault(width, []).append((epochs, sum(accuracies) / len(accuracies)))
    return table


def predict(frontier: Iterable[Point], width: int, epochs: float) -> float | None:
    """Expected accuracy (%) of `width` trained `epochs`, or None when nothing measured covers it."""
    measured = points_by_width(frontier).get(width)
    if not measured or epochs < measured[0][0]:
        return None
    for (e0, a0), (e1, a1) in zip(measured, measured[1:]):
        if e0 <= epochs <= e1:
            t = math.log(epochs / e0) / math.log(e1 / e0)
            return a0 + t * (a1 - a0)
    return measured[-1][1]


def best_epochs(frontier: Iterable[Point], width: int, max_epochs: float, margin: float = 0.0) -> float | None:
    """The epochs up to `max_epochs` to train `width` for: a shorter measured length where it is predicted
    more than `margin` points more accurate (the most accurate such), else `max_epochs`; None when nothing
    measured covers them.

    The prediction is piecewise linear in log(epochs), so its best within a range lies at `max_epochs`
    or at a measured epoch count below it.
    """
    measured = points_by_width(frontier).get(width)
    if not measured or max_epochs < measured[0][0]:
        return None
    at_most = predict(frontier, width, max_epochs)
    best = max(((accuracy, e) for e, accuracy in measured if e < max_epochs), default=None)
    return best[1] if best is not None and best[0] > at_most + margin else max_epochs


def best_possible(frontier: Iterable[Point], width: int, max_epochs: float) -> float | None:
    """The most `width` can be predicted to reach within `max_epochs`: what measuring it could gain."""
    epochs = best_epochs(frontier, width, max_epochs)
    return None if epochs is None else predict(frontier, width, epochs)


def fewest_epochs(frontier: Iterable[Point], width: int, max_epochs: float,
                  beating: float | None = None) -> float | None:
    """The fewest epochs, up to `max_epochs`, with which `width` is predicted more accurate than `beating`
    (without it: covered at all), or None when no number of them is: a width whose steps are too slow
    for that many epochs cannot be chosen."""
    measured = points_by_width(frontier).get(width)
    if not measured or max_epochs < measured[0][0]:
        return None
    if beating is None:
        return measured[0][0]
    if best_possible(frontier, width, max_epochs) <= beating:
        return None
    # best_possible never falls as the epochs grow: bisect for where it first passes `beating`.
    low, high = measured[0][0], max_epochs
    if best_possible(frontier, width, low) > beating:
        return low
    for _ in range(40):
        mid = math.sqrt(low * high)
        low, high = (low, mid) if best_possible(frontier, width, mid) > beating else (mid, high)
    return high
