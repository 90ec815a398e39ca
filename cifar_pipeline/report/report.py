"""The per-run Markdown report, with its figures, written into the run folder."""

from __future__ import annotations

import base64
import os
import re
from importlib import resources
from pathlib import Path
from string import Template

import numpy as np
import pandas as pd
from pydantic import BaseModel

from ..config import PipelineConfig
from ..data.dataset import DatasetRecord
from ..data.download import ArchiveRecord
from ..data.extra import ExtraDataRecord
from ..evaluation import EvalRecord
from ..files import atomic_write_text
from ..provenance import versions
from ..registry.champion import PromotionDecision, read_history
from ..registry.model_card import confused_pairs
from ..training.budget import BudgetPlan
from ..training.records import TrainRecord
from .figures import CONFUSED_PAIRS, FiguresRecord, draw

HISTORY_RUNS = 20  # runs shown in the trend plot


class ReportRecord(BaseModel):
    path: str
    run_dir: str
    accuracy: float
    markdown: str


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _table(frame: pd.DataFrame, **kwargs) -> str:
    return frame.to_markdown(index=False, **kwargs)


def epoch_frame(trained: TrainRecord) -> pd.DataFrame:
    rows = [
        {"epoch": e.epoch, "loss": e.loss, "train acc": e.train_accuracy, "lr (end)": e.lr,
         "seconds": e.seconds, "data s": e.data_seconds, "img/s": e.images_per_second,
         "at chance": "yes" if e.at_chance else ""}
        for e in trained.epochs
    ]
    return pd.DataFrame(rows)


def load_template() -> str:
    return resources.files(__package__).joinpath("template.md").read_text(encoding="utf-8")


def write_report(
    run_dir: str | os.PathLike,
    run_id: str,
    cfg: PipelineConfig,
    requested: PipelineConfig,
    archive: ArchiveRecord,
    dataset: DatasetRecord,
    trained: TrainRecord,
    evaluated: EvalRecord,
    timings: dict[str, float],
    states: dict[str, str] | None = None,
    decision: PromotionDecision | None = None,
    *,
    extra: ExtraDataRecord | None = None,
    note: str = "",
    diagnosis: str = "",  # Markdown of the doctor's quick checks, for a run that sat at chance
    budget: BudgetPlan | None = None,
    figures: FiguresRecord | None = None,  # drawn earlier (the `figures` stage); None: drawn here
) -> ReportRecord:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if figures is None:
        figures = draw(run_dir, cfg, trained, evaluated, dataset)
    else:
        figures.copy_to(run_dir)

    per_class = evaluated.per_class_frame()
    config_rows = pd.DataFrame(
        [{"field": k, "value": v, "group": (PipelineConfig.model_fields[k].json_schema_extra or {}).get("group", "")}
         for k, v in cfg.model_dump(mode="json").items()]
    )
    warnings = "".join(f"> **Warning:** {w}\n>\n" for w in trained.warnings)
    overrides = requested.overrides()
    values = {
        "champion_section": champion_section(decision, run_dir),
        "note": f"_{note}._\n" if note else "",
        "extra_section": extra_section(cfg, dataset, extra),
        "predictions_section": predictions_section(evaluated, figures),
        "run_id": run_id,
        "accuracy": f"{evaluated.accuracy:.2%}",
        "test_loss": f"{evaluated.loss:.4f}",
        "n_test": evaluated.n_images,
        "preset": cfg.preset,
        "model": cfg.model,
        "parameters": f"{trained.parameters:,}",
        "epochs": f"{cfg.epochs:g}",
        "train_time": _seconds(trained.train_seconds),
        "device_name": trained.device_name,
        "precision": trained.precision,
        "machine_section": machine_section(trained, budget),
        "warnings": warnings + (f"\n## Diagnosis (the doctor's quick checks)\n\n{diagnosis}\n" if diagnosis else ""),
        "epoch_table": _table(epoch_frame(trained), floatfmt=".4g"),
        "class_table": _table(per_class, floatfmt=".2%"),
        "timings_table": _table(pd.DataFrame(
            [{"task": k, "state": (states or {}).get(k, ""), "seconds": round(v, 2)} for k, v in timings.items()])),
        "archive_md5": archive.md5,
        "archive_source": archive.source,
        "dataset_sha256": dataset.sha256,
        "n_train": trained.train_images,
        "train_key": trained.key,
        "checkpoint": trained.checkpoint,
        "overrides": ", ".join(f"`{k}`" for k in overrides) if overrides else "none",
        "config_table": _table(config_rows),
        "versions_table": _table(pd.DataFrame([{"package": k, "version": v} for k, v in versions().items()])),
    }
    markdown = Template(load_template()).substitute(values)
    path = atomic_write_text(run_dir / "report.md", markdown)
    atomic_write_text(run_dir / "per_class.csv", per_class.to_csv(index=False))
    atomic_write_text(run_dir / "confusion.csv", evaluated.confusion_frame().to_csv())
    return ReportRecord(path=str(path), run_dir=str(run_dir), accuracy=evaluated.accuracy, markdown=markdown)


def predictions_section(evaluated: EvalRecord, figures: FiguresRecord) -> str:
    """Test images with true and predicted labels, and the most-confused pairs with examples."""
    if "samples.png" not in figures.files:  # an evaluation cached before predictions were recorded
        return ""
    lines = ["## Predictions on test images", "", "![Test images with true and predicted labels](samples.png)", ""]
    if "confused.png" in figures.files:
        pairs = confused_pairs(evaluated.confusion, evaluated.classes, CONFUSED_PAIRS)
        lines += ["The class pairs the model confuses most (true → predicted), with test images it got wrong:", "",
                  "| true | predicted | images |", "|---|---|---|",
                  *[f"| {t} | {p} | {n} |" for t, p, n in pairs], "", "![Most-confused pairs](confused.png)", ""]
    return "\n".join(lines)


def machine_section(trained: TrainRecord, budget: BudgetPlan | None) -> str:
    """The time budget's plan and the settings chosen for this CPU (empty when neither applies)."""
    lines = []
    cpu = trained.cpu_settings
    if budget is not None:
        lines.append(f"**Time budget:** {budget.budget_min:g} min. A warm-up measured {budget.seconds_per_epoch:.1f} s "
                     f"per epoch ({budget.images_per_second:.0f} images/s"
                     f"{', measured ' + budget.measured_at + ' and reused' if budget.cached else ''}), so training "
                     f"ran {budget.planned_epochs:g} epochs ({budget.epochs_note()})"
                     f"{budget.chosen()}, planned to take "
                     f"{budget.predicted_seconds / 60:.1f} min; it took {trained.wall_seconds / 60:.1f} min "
                     f"({trained.wall_seconds / (budget.budget_min * 60):.0%} of the budget).")
        if trained.shortened:
            lines[-1] += (f" It fell behind its plan and was shortened to {trained.trained_epochs():.2f} epochs "
                          "(the warning above says by how much).")
        if note := budget.width_note():
            lines[-1] += " " + note
        if budget.threads and cpu is not None and cpu.threads != budget.threads:
            lines[-1] += (f" The warm-up's steps ran with {budget.threads} thread(s) and training's with "
                          f"{cpu.threads}, so the plan's time held for another speed.")
    if cpu is not None:
        why = "; ".join(cpu.reasons) or "as configured"
        lines.append(f"**CPU:** {cpu.cpu} (class {cpu.cpu_class}{', emulated' if cpu.emulated else ''}): "
                     f"{cpu.precision}, {cpu.threads} thread(s), channels_last {cpu.channels_last}, oneDNN {cpu.mkldnn} "
                     f"({why}).")
    return "\n\n".join(lines) + ("\n" if lines else "")


def champion_section(decision: PromotionDecision | None, run_dir: Path) -> str:
    """The champion decision and the trend of recent runs (empty without a registry)."""
    if decision is None:
        return ""
    verdict = "**promoted to champion**" if decision.promoted else "**not promoted**"
    lines = ["## Champion", "", f"This model was {verdict}: {decision.reason}.", ""]
    if decision.champion_accuracy is not None:
        diff = decision.challenger_accuracy - decision.champion_accuracy
        lines += ["| | test accuracy |", "|---|---|",
                  f"| this run | {decision.challenger_accuracy:.2%} |",
                  f"| champion before this run (same test set) | {decision.champion_accuracy:.2%} |",
                  f"| difference | {diff:+.2%} |", ""]
    if decision.champion is not None:
        lines += [f"Current champion: run `{decision.champion.run_id}` ({decision.champion.accuracy:.2%}), "
                  f"`{decision.champion.model_file}`.", ""]
    history = read_history(Path(decision.history_file).parent).tail(HISTORY_RUNS)
    if len(history) > 1:
        from .plots import plot_history  # matplotlib: the one figure that changes with every run

        plot_history([f"{t[5:16]} {r[-8:]}" for t, r in zip(history["finished_at"], history["run_id"])],
                     history["test_accuracy"], history["promoted"].astype(bool), run_dir / "history.png")
        lines += ["![Recent runs](history.png)", ""]
    return "\n".join(lines)


def extra_section(cfg: PipelineConfig, dataset: DatasetRecord, extra: ExtraDataRecord | None) -> str:
    """Images per class from the archive and from each extra folder, and the files left out."""
    if extra is None:
        return ""
    from ..training.step import training_data

    archive = np.bincount(training_data(cfg, dataset).y_train, minlength=len(extra.classes))
    frame = pd.DataFrame({"class": extra.classes, "archive": archive})
    for i, (folder, counts) in enumerate(zip(extra.folders, extra.counts)):
        frame[f"{i + 1}: {Path(folder).name}"] = counts
    frame["total"] = frame.drop(columns="class").sum(axis=1)
    frame.loc[len(frame)] = ["all", *frame.drop(columns="class").sum()]
    folders = "".join(f"{i + 1}. `{folder}`\n" for i, folder in enumerate(extra.folders))
    lines = ["## Extra training images", "",
             f"{extra.n_images} images from {len(extra.folders)} folder(s) were added to the training split; the "
             "validation split and the test set are the archive's. "
             f"{extra.resized} were resized to 32x32 and {extra.converted} converted to RGB; building this data "
             f"decoded {extra.decoded} file(s) and reused {extra.reused} decoded for an earlier run. "
             f"Digest `{extra.digest}`.", "", folders, _table(frame), ""]
    if extra.skipped:
        lines += [f"**{len(extra.skipped)} file(s) skipped** (`bad_images = {extra.policy}`):", ""]
        lines += [f"- `{b.path}`: {b.reason}" for b in extra.skipped] + [""]
    return "\n".join(lines)


def inline_images(markdown: str, folder: str | os.PathLike) -> str:
    """Replace local PNG links by data URIs, for viewers that cannot reach the run folder."""
    folder = Path(folder)

    def embed(match: re.Match[str]) -> str:
        file = folder / match.group(2)
        if not file.is_file():
            return match.group(0)
        data = base64.b64encode(file.read_bytes()).decode()
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    return re.sub(r"!\[([^\]]*)\]\(([^):/]+\.png)\)", embed, markdown)
