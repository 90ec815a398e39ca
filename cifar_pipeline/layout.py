"""Where things live under the output folder.

    <output_dir>/cache/<stage folder>/<key>/        one cached stage's entry (cifar_pipeline/stage.py):
        archives/    the downloaded archive, by md5
        datasets/    decoded arrays (joblib)
        extra_data/  decoded extra images (joblib)
        budget/      the time budget's measured speed, per machine and config
        training/    checkpoint + record of one training config
        evaluations/ test metrics of one checkpoint
        diagnoses/   the doctor's quick checks of a run at chance or diverged
    <output_dir>/cache/results/                     Prefect's task-result records (the task cache)
    <output_dir>/runs/<run_id>/                     one run's report and figures
    <output_dir>/doctor/<run_id>/                   one doctor run's report and figures
    <output_dir>/registry/                          the champion, its predecessors, the history
    <output_dir>/sweeps/                            Optuna's journal; sweeps/<study>/<run_id>/ a sweep's report
    <output_dir>/predictions/                       the score-folder flow's CSV files
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path

from .config import PipelineConfig


def output_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir).expanduser().resolve()


def cache_dir(cfg: PipelineConfig) -> Path:
    return output_root(cfg.output_dir) / "cache"


def stage_dir(cache: str | os.PathLike, folder: str) -> Path:
    return Path(cache) / folder


def results_dir(cfg: PipelineConfig) -> Path:
    return cache_dir(cfg) / "results"


def new_run_id(label: str, now: datetime | None = None) -> str:
    """Sortable and unique: UTC time plus a label (the Prefect flow-run id, say)."""
    now = now or datetime.now(timezone.utc)
    safe = re.sub(r"[^A-Za-z0-9-]+", "-", label)[:8].strip("-")
    return f"{now:%Y%m%dT%H%M%SZ}-{safe}"


def run_dir(cfg: PipelineConfig, run_id: str) -> Path:
    return output_root(cfg.output_dir) / "runs" / run_id


def doctor_dir(cfg: PipelineConfig, run_id: str) -> Path:
    """One `doctor` run's report and figures: <output_dir>/doctor/<run_id>/."""
    return output_root(cfg.output_dir) / "doctor" / run_id


def registry_dir(output_dir: str | os.PathLike) -> Path:
    return output_root(output_dir) / "registry"


def sweeps_dir(output_dir: str | os.PathLike) -> Path:
    return output_root(output_dir) / "sweeps"


def predictions_dir(output_dir: str | os.PathLike) -> Path:
    return output_root(output_dir) / "predictions"
