"""The flow: download -> build dataset -> train -> evaluate -> report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import deployment, flow_run
from prefect.utilities.annotations import quote
from pydantic import BaseModel

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.errors import TrainingDiverged
from cifar_pipeline.files import atomic_write_json
from cifar_pipeline.training.budget import planned_config
from cifar_pipeline.training.deadline import Deadline
from flows.steps import Steps, begin, fetch_dataset
from tasks import (
    budget_task,
    doctor_task,
    evaluate_task,
    extra_data_task,
    figures_task,
    promote_task,
    report_task,
    scan_extra_data_task,
    train_task,
)


class RunSummary(BaseModel):
    run_id: str
    flow_run_id: str | None
    deployment: str | None = None  # e.g. "nightly"; None for a run from the command line
    preset: str
    test_accuracy: float
    promoted: bool
    champion_accuracy: float | None
    report: str
    checkpoint: str
    run_dir: str
    tasks: dict[str, str]
    seconds: float
    task_seconds: dict[str, float] = {}  # where the flow's time went, step by step
    unchanged: bool = False  # same data, config and code as an earlier run: nothing was trained
    note: str = ""


def _diagnose(steps: Steps, cfg: PipelineConfig, dataset: Any, run_dir: Path, run_id: str, why: str,
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


@flow(name="cifar-pipeline", log_prints=True)
def cifar_pipeline(config: PipelineConfig = PipelineConfig()) -> RunSummary:
    """Train and evaluate a CIFAR-10 classifier and publish a report.

    Pick a preset and change any field; empty fields take the preset's value.
    """
    t0 = time.perf_counter()
    start = begin(config)
    cfg, cache, run_id, steps, run_dir = start.cfg, start.cache, start.run_id, start.steps, start.folder
    logger = get_run_logger()
    logger.info("run %s: preset %s, model %s, %g epochs, output in %s", run_id, cfg.preset, cfg.model,
                cfg.epochs, run_dir)
    archive, dataset = fetch_dataset(start)
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
        # The deadline is no part of the training key: a run that keeps its pace trains what its plan says.
        trained = steps.run(train_task, config=cfg, dataset=dataset, cache_dir=str(cache), extra=extra,
                            deadline=Deadline.of(budget) if budget is not None else None)
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
    figures = steps.run(figures_task, config=cfg, trained=trained, evaluated=evaluated, dataset=dataset,
                        cache_dir=str(cache))
    unchanged, note = steps.change_note()
    logger.info(note)
    report = steps.run(
        report_task, run_dir=str(run_dir), run_id=run_id, cfg=cfg, requested=config, archive=archive,
        dataset=dataset, trained=trained, evaluated=evaluated, timings=steps.seconds, states=steps.states,
        decision=decision, extra=extra, note=note, diagnosis=diagnosis.section if diagnosis is not None else "",
        budget=budget, figures=figures,
    )
    summary = RunSummary(
        run_id=run_id, flow_run_id=flow_run.get_id(), deployment=deployment.get_name(), preset=cfg.preset,
        test_accuracy=evaluated.accuracy,
        promoted=decision.promoted, champion_accuracy=decision.champion_accuracy,
        report=report.path, checkpoint=trained.checkpoint, run_dir=str(run_dir), tasks=steps.states,
        seconds=time.perf_counter() - t0, task_seconds={k: round(v, 3) for k, v in steps.seconds.items()},
        unchanged=unchanged, note=note,
    )
    atomic_write_json(run_dir / "summary.json", summary.model_dump())
    logger.info("test accuracy %.2f%%; report at %s", 100 * evaluated.accuracy, report.path)
    return summary
