"""Where things live under the output folder.

    <output_dir>/cache/archives/<md5>.tar.gz        downloads, content-addressed
    <output_dir>/cache/datasets/<md5>/              decoded arrays (joblib) + record
    <output_dir>/cache/training/<key>/              checkpoint + record of one training config
    <output_dir>/cache/evaluations/<key>.json       one evaluation of one checkpoint
    <output_dir>/cache/results/                     Prefect's task-result records (the task cache)
    <output_dir>/runs/<run_id>/                     one run's report and figures
    <output_dir>/doctor/<run_id>/                   one doctor run's report and figures
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

from .config import PipelineConfig


def cache_dir(cfg: PipelineConfig) -> Path:
    return Path(cfg.output_dir).expanduser().resolve() / "cache"


def results_dir(cfg: PipelineConfig) -> Path:
    return cache_dir(cfg) / "results"


def new_run_id(label: str, now: datetime | None = None) -> str:
    """Sortable and unique: UTC time plus a label (the Prefect flow-run id, say)."""
    now = now or datetime.now(timezone.utc)
    safe = re.sub(r"[^A-Za-z0-9-]+", "-", label)[:8].strip("-")
    return f"{now:%Y%m%dT%H%M%SZ}-{safe}"


def run_dir(cfg: PipelineConfig, run_id: str) -> Path:
    return Path(cfg.output_dir).expanduser().resolve() / "runs" / run_id


def doctor_dir(cfg: PipelineConfig, run_id: str) -> Path:
    """One `doctor` run's report and figures: <output_dir>/doctor/<run_id>/."""
    return Path(cfg.output_dir).expanduser().resolve() / "doctor" / run_id
