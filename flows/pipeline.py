"""The flow: download -> build dataset -> train -> evaluate -> report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import Task, flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel

from cifar_pipeline import layout
from cifar_pipeline.budget import planned_config
from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.download import check_sources
from cifar_pipeline.files import atomic_write_json
from tasks import budget_task, build_dataset_task, download_task, evaluate_task, promote_task, report_task, train_task


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
        if state.is_completed() and state.name == "Cached" and _missing_files(result):
            # The cache record outlived the files it points to (a cleaned cache folder): redo.
            get_run_logger().warning("%s: cached result points to deleted files; running it again", task.name)
            state = bound.with_options(refresh_cache=True)(**params, return_state=True)
            result = state.result()
        self.states[task.name] = state.name
        self.seconds[task.name] = time.perf_counter() - t0
        return result


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
    cache = layout.cache_dir(cfg)
    sources = cfg.sources()
    check_sources(sources, cfg.md5, cache)
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
    budget = None
    if cfg.time_budget_min:
        # A measured warm-up decides the epochs; training, evaluation and the report see the planned config.
        budget = steps.run(budget_task, config=cfg, dataset=dataset, cache_dir=str(cache))
        logger.info("%s", budget.summary())
        cfg = planned_config(cfg, budget)
    trained = steps.run(train_task, config=cfg, dataset=dataset, cache_dir=str(cache))
    evaluated = steps.run(evaluate_task, config=cfg, trained=trained, dataset=dataset, cache_dir=str(cache))
    decision = steps.run(promote_task, run_id=run_id, cfg=cfg, trained=trained, evaluated=evaluated,
                         dataset=dataset, seconds=time.perf_counter() - t0)
    report = steps.run(
        report_task, run_dir=str(run_dir), run_id=run_id, cfg=cfg, requested=config, archive=archive,
        dataset=dataset, trained=trained, evaluated=evaluated, timings=steps.seconds, states=steps.states,
        decision=decision, budget=budget,
    )
    summary = RunSummary(
        run_id=run_id, flow_run_id=flow_run.get_id(), preset=cfg.preset, test_accuracy=evaluated.accuracy,
        promoted=decision.promoted, champion_accuracy=decision.champion_accuracy,
        report=report.path, checkpoint=trained.checkpoint, run_dir=str(run_dir), tasks=steps.states,
        seconds=time.perf_counter() - t0,
    )
    atomic_write_json(run_dir / "summary.json", summary.model_dump())
    logger.info("test accuracy %.2f%%; report at %s", 100 * evaluated.accuracy, report.path)
    return summary
