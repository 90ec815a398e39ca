"""The doctor's verdict on disk: Markdown with figures, and the full result as JSON.

The same writer serves the `doctor` command (its own run folder) and a training run found at
chance or diverged (files prefixed `diagnosis` in that run's folder, linked from its report).
A training run's quick checks are kept by config, data and code, so that rerunning an unchanged run
(its training a cache hit) writes the same diagnosis again without the probes' 20-70 s.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
from pydantic import BaseModel

from ..config import PipelineConfig
from ..data.dataset import DatasetRecord, load_arrays
from ..files import atomic_write_json, atomic_write_text
from ..stage import Stage
from ..report.plots import plot_layer_gradients, plot_lr_range, plot_one_batch
from .checks import BLOG_ITEMS, SEVERITY
from .run import DoctorResult, diagnose

log = logging.getLogger(__name__)

MARK = {"pass": "pass", "warn": "**warn**", "fail": "**FAIL**"}


class DoctorReport(BaseModel):
    path: str
    folder: str
    status: str
    checks: dict[str, dict[str, str]]  # name -> {"result", "message"}: the CLI's JSON
    lr_range: list[float] | None
    configured_lr: float
    markdown: str
    section: str  # the verdict and figures, for embedding in a run's report


def checks_summary(result: DoctorResult) -> dict[str, dict[str, str]]:
    return {c.name: {"result": c.result, "message": c.message + (f" Fix: {c.fix}" if c.fix else "")}
            for c in result.checks}


def verdict_table(result: DoctorResult) -> str:
    rows = [{"check": c.name, "result": MARK[c.result], "evidence": c.message, "fix": c.fix or "",
             "blog checklist": ", ".join(str(i) if i else "data" for i in c.blog_items)} for c in result.checks]
    return pd.DataFrame(rows).to_markdown(index=False)


def checklist_table(result: DoctorResult) -> str:
    """The blog's items, each with the worst verdict of the checks that test it."""
    rows = []
    for item, text in BLOG_ITEMS.items():
        covering = [c for c in result.checks if item in c.blog_items]
        if not covering:
            continue
        worst = max(covering, key=lambda c: SEVERITY[c.result])
        rows.append({"checklist item": text, "verdict": MARK[worst.result],
                     "checked by": ", ".join(c.name for c in covering)})
    return pd.DataFrame(rows).to_markdown(index=False)


def write_figures(result: DoctorResult, folder: Path, prefix: str) -> dict[str, str]:
    """Draw what was measured; returns {figure: file name} for the figures drawn."""
    curves, drawn = result.curves, {}
    sweep = curves.get("range")
    if sweep and sweep["lrs"]:
        name = f"{prefix}-lr-range.png"
        plot_lr_range(sweep["lrs"], sweep["smoothed"], sweep["fastest"], sweep["diverged_at"], result.configured_lr,
                      folder / name)
        drawn["lr"] = name
    learned = curves.get("learn")
    if learned and learned["layers"]:
        name = f"{prefix}-gradients.png"
        layers = learned["layers"]
        plot_layer_gradients([l["name"] for l in layers], [l["grad_norm"] for l in layers],
                             [l["weight_norm"] for l in layers], folder / name)
        drawn["gradients"] = name
    fits = curves.get("one_batch")
    if fits:
        name = f"{prefix}-one-batch.png"
        plot_one_batch([(f"lr {result.configured_lr * f['lr_factor']:.2g}", f["losses"]) for f in fits], folder / name)
        drawn["one_batch"] = name
    return drawn


def section(result: DoctorResult, figures: dict[str, str], heading: str = "##") -> str:
    """Verdict, checklist and figures: what a run's report embeds."""
    failed = [c.name for c in result.checks if c.result == "fail"]
    warned = [c.name for c in result.checks if c.result == "warn"]
    lead = (f"**Verdict: {MARK[result.status]}**"
            + (f"; failed: {', '.join(failed)}" if failed else "")
            + (f"; warnings: {', '.join(warned)}" if warned else "")
            + (" (quick checks only)" if result.plan.quick else "") + ".")
    lr = (f"Loss fell fastest for lr in [{result.lr_range[0]:.2g}, {result.lr_range[1]:.2g}]"
          if result.lr_range else "No lr made the loss fall")
    lr += f"; configured lr {result.configured_lr:g}" + (
        f"; diverged at {result.diverged_at:.2g}." if result.diverged_at else ".")
    parts = [lead, "", verdict_table(result), "", f"{heading}# The seed blog's checklist", "",
             checklist_table(result), "", lr, ""]
    titles = {"lr": "Learning-rate range test", "gradients": "Per-layer gradient norms",
              "one_batch": "One-batch loss"}
    parts += [f"![{titles[k]}]({v})" for k, v in figures.items()]
    return "\n".join(parts) + "\n"


def plan_table(result: DoctorResult) -> str:
    plan = result.plan.model_dump()
    return pd.DataFrame([{"setting": k, "value": v} for k, v in plan.items()]).to_markdown(index=False)


def write_doctor_report(result: DoctorResult, folder: str | os.PathLike, cfg: PipelineConfig, title: str,
                        prefix: str = "doctor") -> DoctorReport:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = write_figures(result, folder, prefix)
    body = section(result, figures)
    learned = result.curves.get("learn") or {}
    layers = pd.DataFrame(learned.get("layers") or [])
    markdown = "\n".join([
        f"# {title}", "",
        f"Preset `{cfg.preset}`, model `{cfg.model}`, optimizer `{cfg.optimizer}`, lr {cfg.lr:g}, "
        f"batch {cfg.batch_size}; {result.seconds:.0f} s.", "",
        body,
        "## Per-layer norms (mean over the first steps)", "",
        layers.to_markdown(index=False, floatfmt=".3g") if len(layers) else "not measured", "",
        "## What the doctor used", "",
        "The probes train fresh models for a few hundred steps; the batch size and step counts are scaled "
        "to a time budget and may differ from the configured run.", "",
        plan_table(result), "",
    ])
    path = atomic_write_text(folder / f"{prefix}.md", markdown)
    atomic_write_json(folder / f"{prefix}.json", result.model_dump(mode="json"))
    return DoctorReport(path=str(path), folder=str(folder), status=result.status, checks=checks_summary(result),
                        lr_range=result.lr_range, configured_lr=result.configured_lr, markdown=markdown,
                        section=body)


DIAGNOSE = Stage("diagnose", "diagnoses", DoctorResult, "doctor.run")


def diagnosis_inputs(cfg: PipelineConfig, dataset: DatasetRecord, quick: bool) -> dict:
    return {"config": cfg.model_dump(mode="json", exclude={"output_dir"}), "dataset": dataset.content_digest(),
            "quick": quick}


def doctor_dataset(cfg: PipelineConfig, dataset: DatasetRecord, folder: str | os.PathLike, title: str, *,
                   quick: bool = False, prefix: str = "doctor", cache_dir: str | os.PathLike | None = None,
                   ) -> DoctorReport:
    """Diagnose a resolved config on a decoded dataset and write the report into `folder`.

    With `cache_dir`, a result stored for the same config, data and code is reused instead of probing again.
    """
    def probe(_entry=None) -> DoctorResult:
        return diagnose(cfg, load_arrays(dataset), quick=quick)

    result = probe() if cache_dir is None else DIAGNOSE.run(cache_dir, diagnosis_inputs(cfg, dataset, quick), probe)
    return write_doctor_report(result, folder, cfg, title, prefix)
