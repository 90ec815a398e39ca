"""What every flow does first, and the runner of its steps.

`begin(config)` resolves the configuration, refuses bad input before any work
(cifar_pipeline/preflight.py), names the run and sets up the step runner. `Steps.run(task, ...)` runs
one task, records its state and wall time, and runs a cached stage again when its cached result no
longer holds (tasks/cache_policies.py); the cache entries a run uses are written to its folder as it
goes (`stages.json`), which is how retention knows what a kept or running run needs. `fetch_dataset`
is the download and decode every flow starts with, with the configured download retries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Task, get_run_logger
from prefect.runtime import flow_run
from prefect.utilities.annotations import BaseAnnotation

from cifar_pipeline import layout
from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.dataset import DatasetRecord
from cifar_pipeline.data.download import ArchiveRecord
from cifar_pipeline.files import atomic_write_json
from cifar_pipeline.preflight import check_run
from tasks import build_dataset_task, download_task
from tasks.cache_policies import entry_of, is_stage, still_holds

STAGES_FILE = "stages.json"  # in a run's folder: {stage name: "<stage folder>/<key>"}


class Steps:
    """Runs tasks, recording each one's final state name and wall time."""

    def __init__(self, storage: Path, run_dir: Path | None = None) -> None:
        self.storage = storage
        self.run_dir = run_dir
        self.states: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self.entries: dict[str, str] = {}

    def run(self, task: Task, **params: Any) -> Any:
        t0 = time.perf_counter()
        plain = {k: v.unwrap() if isinstance(v, BaseAnnotation) else v for k, v in params.items()}
        if is_stage(task.name):
            self._used(entry_of(task.name, plain), task.name)
        bound = task.with_options(result_storage=self.storage) if task.cache_key_fn else task
        state = bound(**params, return_state=True)
        result = state.result()
        if state.name == "Cached" and is_stage(task.name) and not still_holds(task.name, plain, result):
            get_run_logger().warning("%s: cached result no longer holds (its cache entry or files were removed, "
                                     "or an older version of the code wrote it); running it again", task.name)
            state = bound.with_options(refresh_cache=True)(**params, return_state=True)
            result = state.result()
        self.states[task.name] = state.name
        self.seconds[task.name] = time.perf_counter() - t0
        return result

    def _used(self, entry: str, name: str) -> None:
        # Written before the task runs, so that retention sees what a running flow is about to use.
        self.entries[name] = entry
        if self.run_dir is not None:
            atomic_write_json(self.run_dir / STAGES_FILE, self.entries)

    def change_note(self) -> tuple[bool, str]:
        """One line saying whether this run did any work a cache hit would have saved."""
        ran = [name for name, state in self.states.items() if is_stage(name) and state != "Cached"]
        if not ran:
            return True, ("nothing changed (same data, config and code as an earlier run): every expensive task "
                          "was Cached, nothing was trained")
        return False, f"new work: {', '.join(ran)} ran" + ("" if "train" in ran else "; the model was not retrained")


@dataclass
class RunStart:
    cfg: PipelineConfig  # resolved
    cache: Path
    run_id: str
    folder: Path  # the run's own folder: report, summary, stages.json
    steps: Steps


def begin(config: PipelineConfig, folder: Callable[[PipelineConfig, str], Path] = layout.run_dir) -> RunStart:
    """Resolve, check (exit 2 from the CLI, a failed run with the reason from a deployment), name the run."""
    cfg = config.resolved()
    check_run(cfg)
    run_id = layout.new_run_id(flow_run.get_id() or "local")
    run_folder = folder(cfg, run_id)
    return RunStart(cfg=cfg, cache=layout.cache_dir(cfg), run_id=run_id, folder=run_folder,
                    steps=Steps(layout.results_dir(cfg), run_folder))


def fetch_dataset(start: RunStart) -> tuple[ArchiveRecord, DatasetRecord]:
    cfg, cache = start.cfg, str(start.cache)
    retries = cfg.download_retries
    download = download_task.with_options(
        retries=retries, retry_delay_seconds=[cfg.retry_delay_s * 2**i for i in range(retries)] or 0
    )
    archive = start.steps.run(download, sources=cfg.sources(), md5=cfg.md5, cache_dir=cache,
                              timeout=cfg.download_timeout_s)
    return archive, start.steps.run(build_dataset_task, archive=archive, cache_dir=cache)
