"""The flow: download -> build dataset -> train -> evaluate -> report."""

from __future__ import annotations

import time
import typing
from pathlib import Path
from typing import Any

from prefect import Task, flow, get_run_logger
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote
from pydantic import BaseModel

from cifar_pipeline import layout
from cifar_pipeline.access import check_access
from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.download import check_sources
from cifar_pipeline.data.extra import check_folders
from cifar_pipeline.errors import TrainingDiverged
from cifar_pipeline.files import atomic_write_json
from cifar_pipeline.training.budget import planned_config
from tasks import (
    budget_task,
    build_dataset_task,
    doctor_task,
    download_task,
    evaluate_task,
    extra_data_task,
    promote_task,
    report_task,
    scan_extra_data_task,
    train_task,
)

# Tasks whose work a cache hit saves; when all of them are Cached, the run changed nothing.
EXPENSIVE = ("download", "build-dataset", "extra-data", "train", "evaluate")


class RunSummary(BaseModel):
    run_id: str
    flow_run_id: str | None
    preset: str
    test_accuracy: float
    promoted: bool
    champion_accuracy: float | None
    report: str
    checkpoint: str
    run_dir: str
    tasks: dict[str, str]
    seconds: float
    unchanged: bool = False  # same data, config and code as an earlier run: nothing was trained
    note: str = ""


class _Steps:
    """Runs tasks, recording each one's final state name and wall time."""

    def __init__(self, storage: Path) -> None:
        self.storage = storage
        self.states: dict[str, str] = {}
        self.seconds: dict[str, float] = {}

    def run(self, task: Task, **params: Any) -> Any:
        t0 = time.perf_counter()
        bound = task.with_options(result_storage=self.storage) if task.cache_key_fn else task
        state = bound(**params, return_state=True)
        result = state.result()
        if state.is_completed() and state.name == "Cached" and _stale(task, result):
            get_run_logger().warning("%s: cached result is stale (its files were deleted, or an older version of "
                                     "the code wrote it); running it again", task.name)
            state = bound.with_options(refresh_cache=True)(**params, return_state=True)
            result = state.result()
        self.states[task.name] = state.name
        self.seconds[task.name] = time.perf_counter() - t0
        return result


def change_note(states: dict[str, str]) -> tuple[bool, str]:
    """One line saying whether this run did any work a cache hit would have saved."""
    ran = [name for name in EXPENSIVE if name in states and states[name] != "Cached"]
    if not ran:
        return True, ("nothing changed (same data, config and code as an earlier run): every expensive task was "
                      "Cached, nothing was trained")
    return False, f"new work: {', '.join(ran)} ran" + ("" if "train" in ran else "; the model was not retrained")


def _diagnose(steps: _Steps, cfg: PipelineConfig, dataset: Any, run_dir: Path, run_id: str, why: str,
              cache: Path) -> Any:
    """The doctor's quick checks into the run folder (diagnosis.md) and the `cifar-diagnosis` artifact."""
    get_run_logger().warning("%s: running the doctor's quick checks", why)
    try:
        return steps.run(doctor_task, config=cfg, dataset=dataset, folder=str(run_dir), quick=True,
                         prefix="diagnosis", artifact_key="cifar-diagnosis", cache_dir=str(cache),
                         title=f"Diagnosis of run {run_id} ({why})")
    except Exception as exc:  # noqa: BLE001 - a failed diagnosis must not hide the run's own outcome
        get_run_logger().warning("the quick checks failed: %s", exc)
        return None


def _stale(task: Task, result: Any) -> bool:
    """A cached result that cannot serve: the cache record outlived the files it points to (a cleaned
    cache folder), or it was written before its record class moved, and Prefect's JSON decoder,
    finding no class at the stored path, handed back a plain dict."""
    try:
        expected = typing.get_type_hints(task.fn).get("return")
    except (NameError, TypeError):
        expected = None
    if isinstance(expected, type) and not isinstance(result, expected):
        return True
    return _missing_files(result)


def _missing_files(record: Any) -> bool:
    paths = [getattr(record, name, None) for name in ("path", "checkpoint")]
    return any(p is not None and not Path(p).exists() for p in paths)


@flow(name="cifar-pipeline", log_prints=True)
def cifar_pipeline(config: PipelineConfig = PipelineConfig()) -> RunSummary:
    """Train and evaluate a CIFAR-10 classifier and publish a report.

    Pick a preset and change any field; empty fields take the preset's value.
    """
    t0 = time.perf_counter()
    cfg = config.resolved()
    check_access(cfg)  # the worker's allowed folders and hosts, before anything is read or written
    cache = layout.cache_dir(cfg)
    sources = cfg.sources()
    check_sources(sources, cfg.md5, cache)
    check_folders(cfg.extra_data)
    run_id = layout.new_run_id(flow_run.get_id() or "local")
    run_dir = layout.run_dir(cfg, run_id)
    logger = get_run_logger()
    logger.info("run %s: preset %s, model %s, %g epochs, output in %s", run_id, cfg.preset, cfg.model,
                cfg.epochs, run_dir)

    steps = _Steps(layout.results_dir(cfg))
    retries = cfg.download_retries
    download = download_task.with_options(
        retries=retries, retry_delay_seconds=[cfg.retry_delay_s * 2**i for i in range(retries)] or 0
    )
    archive = steps.run(download, sources=sources, md5=cfg.md5, cache_dir=str(cache),
                        timeout=cfg.download_timeout_s)
    dataset = steps.run(build_dataset_task, archive=archive, cache_dir=str(cache))
    extra = None
    if cfg.extra_data:
        manifest = steps.run(scan_extra_data_task, folders=cfg.extra_data, classes=dataset.classes)
        # quote: Prefect would otherwise walk every entry of a large manifest looking for futures.
        extra = steps.run(extra_data_task, manifest=quote(manifest), policy=cfg.bad_images,
                          max_pixels=cfg.max_image_pixels, cache_dir=str(cache))
    budget = None
    if cfg.time_budget_min:
        # A measured warm-up decides the epochs; training, evaluation and the report see the planned config.
        budget = steps.run(budget_task, config=cfg, dataset=dataset, cache_dir=str(cache), extra=extra)
        logger.info("%s", budget.summary())
        cfg = planned_config(cfg, budget)
    try:
        trained = steps.run(train_task, config=cfg, dataset=dataset, cache_dir=str(cache), extra=extra)
    except TrainingDiverged:
        # The run still fails, but whoever finds it in the UI gets the diagnosis with it.
        _diagnose(steps, cfg, dataset, run_dir, run_id, "the loss became NaN", cache)
        raise
    diagnosis = None
    if any(e.at_chance for e in trained.epochs):
        diagnosis = _diagnose(steps, cfg, dataset, run_dir, run_id, "the loss sat at chance level", cache)
    evaluated = steps.run(evaluate_task, config=cfg, trained=trained, dataset=dataset, cache_dir=str(cache))
    decision = steps.run(promote_task, run_id=run_id, cfg=cfg, trained=trained, evaluated=evaluated,
                         dataset=dataset, seconds=time.perf_counter() - t0)
    unchanged, note = change_note(steps.states)
    logger.info(note)
    report = steps.run(
        report_task, run_dir=str(run_dir), run_id=run_id, cfg=cfg, requested=config, archive=archive,
        dataset=dataset, trained=trained, evaluated=evaluated, timings=steps.seconds, states=steps.states,
        decision=decision, extra=extra, note=note, diagnosis=diagnosis.section if diagnosis is not None else "",
        budget=budget,
    )
    summary = RunSummary(
        run_id=run_id, flow_run_id=flow_run.get_id(), preset=cfg.preset, test_accuracy=evaluated.accuracy,
        promoted=decision.promoted, champion_accuracy=decision.champion_accuracy,
        report=report.path, checkpoint=trained.checkpoint, run_dir=str(run_dir), tasks=steps.states,
        seconds=time.perf_counter() - t0, unchanged=unchanged, note=note,
    )
    atomic_write_json(run_dir / "summary.json", summary.model_dump())
    logger.info("test accuracy %.2f%%; report at %s", 100 * evaluated.accuracy, report.path)
    return summary
