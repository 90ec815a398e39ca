"""A sweep's Optuna study: where it is stored, how trials are asked for, run and told, and the leaderboard.

The coordinator asks the study for a trial (TPE suggests its parameters, stored in the study) and
hands only the trial's number to whoever runs it: a local process or a Prefect worker elsewhere.
The trial process trains through the library's `train()`, reports validation accuracy after every
epoch (the pruner may stop it there) and tells the study how it ended. Everything a trial needs
lives in the study's storage, so a stopped coordinator started again continues the same study:
finished trials are kept, unfinished ones are run again (their training resumes from its
checkpoint) and only the missing ones are asked for.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import optuna
import pandas as pd
from pydantic import BaseModel

from .. import layout
from ..config import PipelineConfig, validate_config
from ..data.dataset import DatasetRecord
from ..errors import PipelineError, TrainingDiverged
from ..training.loop import train
from ..training.records import EpochMetrics
from .options import SweepOptions
from .space import SearchSpace

log = logging.getLogger(__name__)

SWEEP_VALIDATION_IMAGES = 5000  # held out of training when a sweep's config does not say
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


class TrialPruned(PipelineError):
    """The pruner stopped a trial that fell behind the others; not a failure, never retried."""


class TrialOutcome(BaseModel):
    number: int
    state: str
    val_accuracy: float | None = None
    reason: str = ""


def study_name(options: SweepOptions, cfg: PipelineConfig) -> str:
    return options.study or f"sweep-{cfg.preset}"


def storage_url(options: SweepOptions, cfg: PipelineConfig) -> str:
    if options.storage:
        return options.storage
    return str(layout.sweeps_dir(cfg.output_dir) / "optuna.journal")


def sweep_config(cfg: PipelineConfig) -> PipelineConfig:
    """A resolved config with a validation split (sweeps select on it, never on the test set), a fixed
    width and no growth: trials compare what they were given, so a time budget may cut epochs but never
    swap the width or add epochs."""
    if cfg.validation_images and not cfg.budget_widths and not cfg.max_epochs:
        return cfg
    n_train = cfg.train_subset or 50000
    return validate_config({**cfg.model_dump(), "budget_widths": [], "max_epochs": 0.0,
                            "validation_images": cfg.validation_images or min(SWEEP_VALIDATION_IMAGES, n_train // 5)})


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """A database URL (PostgreSQL for teams, several machines) or a journal file (one machine, the default)."""
    if "://" in url:
        return _rdb_storage(url)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(url))


def _rdb_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except (IntegrityError, ProgrammingError):
            # Two sweeps opening a fresh database at once race to create Optuna's tables; the loser
            # finds them made on the next try.
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def open_study(name: str, url: str, seed: int = 0) -> optuna.Study:
    """Create the study or load it: a sweep started again continues where it stopped."""
    return optuna.create_study(
        study_name=name, storage=open_storage(url), direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True),
        # Compare a trial with the median of the others at the same epoch, once two have finished.
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )


def ask(study: optuna.Study, space: SearchSpace, cfg: PipelineConfig) -> int:
    trial = study.ask()
    params = space.suggest(trial)
    trial.set_user_attr("config", {**cfg.model_dump(mode="json"), **params})
    return trial.number


def _trial(study: optuna.Study, number: int) -> optuna.Trial:
    storage = study._storage  # noqa: SLF001 - Optuna's documented way to re-open a trial by id
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)  # noqa: SLF001
    return optuna.Trial(study, trial_id)


def run_trial(study: optuna.Study, number: int, dataset: DatasetRecord, cache_dir: str | os.PathLike) -> TrialOutcome:
    """Train trial `number` of the study and tell the study how it ended (complete, pruned or failed)."""
    trial = _trial(study, number)
    frozen = study._storage.get_trial(trial._trial_id)  # noqa: SLF001
    if frozen.state in FINISHED:  # a rerun of a trial that already ended: nothing to do
        return outcome_of(frozen)
    cfg = validate_config(frozen.user_attrs["config"])
    t0 = time.perf_counter()
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("gpu", os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    trial.set_user_attr("threads", _threads())

    def on_epoch(metrics: EpochMetrics, total: int) -> None:
        trial.report(metrics.val_accuracy, metrics.epoch)
        trial.set_user_attr("epochs_run", metrics.epoch)
        if metrics.epoch < total and trial.should_prune():
            raise TrialPruned(f"pruned after epoch {metrics.epoch}: validation accuracy "
                              f"{metrics.val_accuracy:.4f} is below the median of the other trials")

    try:
        record = train(cfg, dataset, cache_dir, on_epoch=on_epoch, progress=False)
    except (TrialPruned, TrainingDiverged) as exc:
        pruned = isinstance(exc, TrialPruned)
        state = optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.FAIL
        _finish(study, trial, state, None, reason=" ".join(str(exc).split()), seconds=time.perf_counter() - t0)
        return TrialOutcome(number=number, state=state.name, reason=str(exc))
    value = record.epochs[-1].val_accuracy
    trial.set_user_attr("epochs_run", len(record.epochs))
    trial.set_user_attr("train_seconds", round(record.train_seconds, 2))
    _finish(study, trial, optuna.trial.TrialState.COMPLETE, value, seconds=time.perf_counter() - t0)
    return TrialOutcome(number=number, state="COMPLETE", val_accuracy=value)


def _finish(study, trial, state, value, *, seconds: float, reason: str = "") -> None:
    if study._storage.get_trial(trial._trial_id).state in FINISHED:  # noqa: SLF001 - told by a twin run
        return
    trial.set_user_attr("seconds", round(seconds, 2))
    if reason:
        trial.set_user_attr("reason", reason)
    study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state,
               skip_if_finished=True)


def fail_unfinished(study: optuna.Study, number: int, reason: str) -> bool:
    """Mark a trial failed when whatever ran it ended without telling the study (a killed process)."""
    trial = _trial(study, number)
    if study._storage.get_trial(trial._trial_id).state in FINISHED:  # noqa: SLF001
        return False
    trial.set_user_attr("reason", reason)
    study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    return True


def outcome_of(frozen: optuna.trial.FrozenTrial) -> TrialOutcome:
    return TrialOutcome(number=frozen.number, state=frozen.state.name, val_accuracy=frozen.value,
                        reason=frozen.user_attrs.get("reason", ""))


def _threads() -> int:
    import torch

    return torch.get_num_threads()


class TrialHandle(Protocol):
    def poll(self) -> str | None:
        """None while the trial runs; when it has ended, "" or why it failed."""


Launch = Callable[[int], TrialHandle]


def run_trials(study: optuna.Study, space: SearchSpace, cfg: PipelineConfig, n_trials: int, parallel: int,
               launch: Launch, *, poll_s: float = 1.0, on_done: Callable[[TrialOutcome], None] | None = None,
               ) -> list[TrialOutcome]:
    """Keep `parallel` trials running until the study holds `n_trials` finished ones.

    Unfinished trials of an earlier, interrupted coordinator run first; a trial whose runner
    ended without telling the study (killed, crashed) is marked failed with the runner's reason.
    """
    queue = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,
                                                                         optuna.trial.TrialState.WAITING))]
    if queue:
        log.info("continuing study %s: %d unfinished trial(s) run again: %s", study.study_name, len(queue), queue)
    running: dict[int, TrialHandle] = {}
    done: list[TrialOutcome] = []
    while True:
        while len(running) < parallel:
            if queue:
                number = queue.pop(0)
            elif len(study.get_trials(deepcopy=False)) < n_trials:
                number = ask(study, space, cfg)
            else:
                break
            log.info("trial %d: started", number)
            running[number] = launch(number)
        if not running:
            return done
        time.sleep(poll_s)
        for number, handle in list(running.items()):
            ended = handle.poll()
            if ended is None:
                continue
            del running[number]
            if fail_unfinished(study, number, ended or "the trial ended without reporting a result"):
                log.warning("trial %d failed: %s", number, ended)
            outcome = outcome_of(study.get_trials(deepcopy=False)[number])
            log.info("trial %d: %s %s", number, outcome.state,
                     f"val acc {outcome.val_accuracy:.4f}" if outcome.val_accuracy is not None else outcome.reason)
            done.append(outcome)
            if on_done is not None:
                on_done(outcome)


def leaderboard(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, best validation accuracy first."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        rows.append({
            "trial": t.number, "state": t.state.name,
            "params": ", ".join(f"{k}={_short(v)}" for k, v in t.params.items()),
            "val_accuracy": t.value, "epochs_run": attrs.get("epochs_run", len(t.intermediate_values)),
            "seconds": attrs.get("seconds"), "train_seconds": attrs.get("train_seconds"),
            "host": attrs.get("host", ""), "pid": attrs.get("pid"), "gpu": attrs.get("gpu", ""),
            "reason": attrs.get("reason", ""),
        })
    frame = pd.DataFrame(rows, columns=["trial", "state", "params", "val_accuracy", "epochs_run", "seconds",
                                        "train_seconds", "host", "pid", "gpu", "reason"])
    return frame.sort_values(["val_accuracy", "trial"], ascending=[False, True], na_position="last",
                             ignore_index=True)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
