"""The sweep report: leaderboard, optimisation history, parameter importances and the winner."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from ..config import PipelineConfig  # noqa: E402
from ..files import atomic_write, atomic_write_text  # noqa: E402


class Winner(BaseModel):
    number: int
    params: dict
    val_accuracy: float
    test_accuracy: float | None = None
    promoted: bool = False
    reason: str = ""
    report: str = ""


class SweepReport(BaseModel):
    path: str
    folder: str
    markdown: str


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)


def plot_history(study: optuna.Study, path: Path) -> bool:
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        ax = optuna.visualization.matplotlib.plot_optimization_history(study, target_name="validation accuracy")
    _save(ax.figure, path)
    return True


def plot_importances(study: optuna.Study, path: Path) -> bool:
    """Parameter importances (PED-ANOVA: needs no scikit-learn); needs a few finished trials."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            ax = optuna.visualization.matplotlib.plot_param_importances(study, evaluator=evaluator,
                                                                        target_name="validation accuracy")
    except (ValueError, RuntimeError, ZeroDivisionError):
        return False  # too few finished trials, or parameters that never varied
    _save(ax.figure, path)
    return True


def write_sweep_report(folder: str | os.PathLike, study: optuna.Study, storage: str, cfg: PipelineConfig,
                       space_text: str, board: pd.DataFrame, winner: Winner | None, seconds: float) -> SweepReport:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = []
    if plot_history(study, folder / "history.png"):
        figures.append("![optimisation history](history.png)")
    if plot_importances(study, folder / "importance.png"):
        figures.append("![parameter importances](importance.png)")
    atomic_write_text(folder / "leaderboard.csv", board.to_csv(index=False))
    counts = board["state"].value_counts().to_dict()
    lines = [
        f"# Sweep `{study.study_name}`",
        "",
        f"{len(board)} trials ({', '.join(f'{n} {s.lower()}' for s, n in counts.items())}) in {seconds:.1f} s; "
        f"preset `{cfg.preset}`; study stored in `{storage}`.",
        "",
        f"**Which split each number comes from.** Trials are ranked on the **validation split**: "
        f"{cfg.validation_images} training images held out (chosen by seed {cfg.seed}, the same for every "
        f"trial) and never trained on. Only the winner is measured on the **test set**"
        f"{f' (first {cfg.test_subset} images)' if cfg.test_subset else ''}, once, and goes through the "
        "champion gate on that number.",
        "",
        "## Winner",
        "",
    ]
    if winner is None:
        lines.append("No trial completed, so nothing was evaluated or promoted.")
    else:
        params = ", ".join(f"`{k}` = {v}" for k, v in winner.params.items())
        test = f"{winner.test_accuracy:.2%}" if winner.test_accuracy is not None else "not measured"
        lines += [
            f"Trial {winner.number}: {params}.",
            "",
            f"- validation accuracy (validation split): **{winner.val_accuracy:.2%}**",
            f"- test accuracy (test set): **{test}**",
            f"- champion gate: **{'promoted' if winner.promoted else 'not promoted'}** ({winner.reason})",
            f"- full run report: [{winner.report}]({Path(winner.report).as_uri() if winner.report else ''})",
        ]
    failed = board[board["state"].isin(["FAIL", "PRUNED"])]
    lines += ["", "## Leaderboard (validation split)", "", board.drop(columns=["reason"]).to_markdown(index=False,
                                                                                                    floatfmt=".4g")]
    if len(failed):
        lines += ["", "## Failed and pruned trials", "", failed[["trial", "state", "reason"]].to_markdown(index=False)]
    if figures:
        lines += ["", "## Search", "", *figures]
    lines += ["", "## Search space", "", "```toml", space_text.strip(), "```", ""]
    markdown = "\n".join(lines)
    path = atomic_write_text(folder / "report.md", markdown)
    return SweepReport(path=str(path), folder=str(folder), markdown=markdown)
