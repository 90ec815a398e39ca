"""The sweep flows: `cifar-sweep` searches hyperparameters with Optuna, `cifar-trial` runs one trial.

cifar-sweep: download -> build dataset -> run trials (local processes, or flow runs of the
`cifar-trial` deployment on a work pool) -> the winner (best validation accuracy) through the
cifar-pipeline flow (test set, champion gate, run report) -> sweep report.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel

from cifar_pipeline import layout
from cifar_pipeline.config import PipelineConfig, validate_config
from cifar_pipeline.errors import PipelineError
from cifar_pipeline.sweep.leaderboard import Winner
from cifar_pipeline.sweep.space import load_space
from cifar_pipeline.sweep.study import (
    SweepOptions,
    TrialOutcome,
    best_trial,
    leaderboard,
    open_study,
    storage_url,
    study_name,
    sweep_config,
)
from flows.pipeline import cifar_pipeline
from flows.steps import begin, fetch_dataset
from tasks.sweep import run_trials_task, sweep_report_task, trial_task


class SweepSummary(BaseModel):
    status: str
    study: str
    storage: str
    trials: list[dict]
    best: dict | None
    report: str
    seconds: float


@flow(name="cifar-trial", log_prints=True)
def cifar_trial(config: PipelineConfig, study: str, storage: str, number: int) -> TrialOutcome:
    """One trial of a sweep: train the parameters the study chose for trial `number` and report to it."""
    # A trial runs on whichever worker takes it: that worker's allowed folders apply.
    start = begin(config, lambda cfg, run_id: layout.sweeps_dir(cfg.output_dir) / study / "trials" / run_id)
    _, dataset = fetch_dataset(start)
    outcome = trial_task(study=study, storage=storage, number=number, dataset=dataset, cache_dir=str(start.cache))
    get_run_logger().info("trial %d of %s: %s %s", number, study, outcome.state, outcome.reason)
    return outcome


@flow(name="cifar-sweep", log_prints=True)
def cifar_sweep(
    config: PipelineConfig = PipelineConfig(preset="smoke"),
    trials: int = 8,
    parallel: int = 2,
    space: str = "",
    study: str = "",
    storage: str = "",
    trial_deployment: str = "",
) -> SweepSummary:
    """Search hyperparameters (Optuna TPE with pruning) on a validation split; the winner meets the champion.

    space: a TOML search-space file (empty: the preset's default). storage: an Optuna database URL or a
    journal file (empty: one under output_dir). trial_deployment: e.g. cifar-trial/trial to run trials
    on that deployment's work pool (empty: local processes).
    """
    t0 = time.perf_counter()
    options = SweepOptions(trials=trials, parallel=parallel, space=space, study=study, storage=storage,
                           trial_deployment=trial_deployment)
    start = begin(sweep_config(config.resolved()),
                  lambda cfg, run_id: layout.sweeps_dir(cfg.output_dir) / study_name(options, cfg) / run_id)
    cfg, cache, folder = start.cfg, start.cache, start.folder
    search = load_space(options.space, cfg)
    name, url = study_name(options, cfg), storage_url(options, cfg)
    logger = get_run_logger()
    logger.info("sweep %s: %d trials, %d at once, %d validation images, study in %s", name, trials, parallel,
                cfg.validation_images, url)
    _, dataset = fetch_dataset(start)
    run_trials_task(study=name, storage=url, config=cfg, space=search, trials=trials, parallel=parallel,
                    dataset=dataset, cache_dir=str(cache), log_dir=str(folder / "trials"),
                    trial_deployment=trial_deployment)

    opened = open_study(name, url, seed=cfg.seed)
    best = best_trial(opened)
    winner = None
    if best is not None:
        logger.info("winner: trial %d, validation accuracy %.4f; measuring it on the test set", best.number,
                    best.value)
        run = cifar_pipeline(config=validate_config(best.user_attrs["config"]))
        winner = Winner(number=best.number, params=best.params, val_accuracy=best.value,
                        test_accuracy=run.test_accuracy, promoted=run.promoted, report=run.report,
                        reason=_gate(run.promoted, run.champion_accuracy))
    report = sweep_report_task(folder=str(folder), study=name, storage=url, config=cfg,
                               space_text=Path(search.source).read_text(), winner=winner,
                               seconds=time.perf_counter() - t0)
    board = leaderboard(opened)
    rows = [{"number": int(r.trial), "state": r.state, "params": opened.trials[int(r.trial)].params,
             "val_accuracy": None if r.val_accuracy != r.val_accuracy else r.val_accuracy, "host": r.host,
             "pid": r.pid, "gpu": r.gpu, "epochs_run": r.epochs_run, "seconds": r.seconds,
             "train_seconds": r.train_seconds, "reason": r.reason}
            for r in board.astype(object).where(board.notna(), None).itertuples()]
    best_row = None if winner is None else {
        "number": winner.number, "params": winner.params, "val_accuracy": winner.val_accuracy,
        "test_accuracy": winner.test_accuracy, "promoted": winner.promoted, "report": winner.report}
    if winner is None:
        raise PipelineError(f"sweep {name}: no trial completed; see {report.path}")
    return SweepSummary(status="completed", study=name, storage=url, trials=rows, best=best_row,
                        report=report.path, seconds=time.perf_counter() - t0)


def _gate(promoted: bool, champion: float | None) -> str:
    if promoted:
        return "no champion yet" if champion is None else f"beat the champion's {champion:.2%}"
    return f"did not beat the champion's {champion:.2%}" if champion is not None else "not promoted"
