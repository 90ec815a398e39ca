"""The training loop.

`train()` is a cached stage (cifar_pipeline/stage.py): its entry, `training/<key>/`, is keyed by the
decoded data's digest (and the extra images'), the training fields of the config and the training
code. A finished entry holds `record.json` and is returned as is; an unfinished one resumes from
its last epoch checkpoint. Given a `Deadline` (a budgeted run), each epoch starts by checking that the
run still ends within its budget, and shortens it when not (cifar_pipeline/training/deadline.py).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
import os
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import PipelineConfig
from ..data.dataset import DatasetRecord
from ..data.extra import ExtraDataRecord
from ..errors import TrainingDiverged
from ..files import file_digest
from ..models import count_parameters
from . import health
from .checkpoint import save_checkpoint, try_load_checkpoint
from .cpu_tuning import BusyWindow, CpuSettings, current_cpu_settings
from .deadline import Deadline, shortened_message
from .optim import Lookahead, Schedule, set_lr
from .records import TRAIN, EpochCallback, EpochMetrics, TrainRecord, training_inputs
from .runtime import device_name, precision_name, resolve_device, tune_cpu_allocator
from .scoring import score
from .step import Step, TrainingData, new_model, new_step, start_epoch, sync, train_batches, training_data

log = logging.getLogger(__name__)

LOSS_POINTS = 50  # points per epoch of the loss-by-step curve

def train(
    cfg: PipelineConfig,
    dataset: DatasetRecord,
    cache_dir: str | os.PathLike,
    *,
    on_epoch: EpochCallback | None = None,
    progress: bool | None = None,
    extra: ExtraDataRecord | None = None,
    deadline: Deadline | None = None,
) -> TrainRecord:
    show = sys.stderr.isatty() if progress is None else progress
    return TRAIN.run(cache_dir, training_inputs(cfg, dataset, extra),
                     lambda folder: _train(TrainingJob(cfg, dataset, extra, folder, on_epoch, show, deadline)))


@dataclass(frozen=True)
class TrainingJob:
    """What one training run is given: the config, its data, where to checkpoint, whom to tell."""

    cfg: PipelineConfig
    dataset: DatasetRecord
    extra: ExtraDataRecord | None
    folder: Path  # the stage entry; its name is the key
    on_epoch: EpochCallback | None = None
    show_progress: bool = False
    deadline: Deadline | None = None  # a budgeted run: shortened when it would end past its budget

    @property
    def key(self) -> str:
        return self.folder.name


@dataclass
class _Run:
    """What one training run carries from epoch to epoch (and through a checkpoint)."""

    model: torch.nn.Module
    stepper: Step
    schedule: Schedule
    lookahead: Lookahead | None = None
    history: list[EpochMetrics] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    epoch: int = 0  # epochs finished
    wall_seconds: float = 0.0  # the epochs with their validation, lookahead and checkpoints
    first_step_at: str | None = None  # when this process finished its first step (UTC)
    step: int = 0  # optimizer steps taken
    resumed_from_epoch: int | None = None
    last_epoch: tuple[float, int, int] | None = None  # (wall seconds, first step, end step) of this process's last

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.stepper.optimizer


def _train(job: TrainingJob) -> TrainRecord:
    threads = torch.get_num_threads()
    try:
        return _train_on(job, resolve_device(job.cfg.device))
    finally:
        torch.set_num_threads(threads)


def _cpu_settings(cfg: PipelineConfig, load: BusyWindow) -> CpuSettings:
    settings = current_cpu_settings(cfg.precision, cfg.channels_last, cfg.model, load=load.cores())
    log.info("CPU %s: %s, %d thread(s)%s", settings.cpu_class, settings.precision, settings.threads,
             "".join(f"; {r}" for r in settings.reasons))
    torch.set_num_threads(settings.threads)
    return settings


def _train_on(job: TrainingJob, device: torch.device) -> TrainRecord:
    cfg, key = job.cfg, job.key
    load = None
    if device.type == "cpu":
        tune_cpu_allocator()
        # How busy the machine is, sampled while the data loads and the model is built rather than
        # in a pause of its own before the first step.
        load = BusyWindow()
    data = training_data(cfg, job.dataset, job.extra)
    batches = train_batches(cfg, data.x_train, data.y_train, device)
    steps_per_epoch = len(batches)
    planned_steps = math.ceil(steps_per_epoch * cfg.epochs)

    model = new_model(cfg, data.x_train, device)
    forward = torch.compile(model) if cfg.compile and device.type == "cuda" else model
    run = _Run(model=model, stepper=new_step(cfg, model, device, forward), schedule=Schedule(cfg, planned_steps))
    checkpoint_path = job.folder / "checkpoint.pt"
    _restore(run, checkpoint_path, key)
    amp_dtype = run.stepper.amp_dtype
    cpu_settings = _cpu_settings(cfg, load) if load is not None else None

    while run.step < run.schedule.total_steps:
        _keep_deadline(run, job.deadline, steps_per_epoch)
        total_steps = run.schedule.total_steps
        n_epochs = math.ceil(total_steps / steps_per_epoch)
        epoch, first_step = run.epoch, run.step
        start_epoch(run.model, cfg, epoch)
        batches.data_seconds = 0.0
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        epoch_steps = min(steps_per_epoch, total_steps - run.step)
        chunk = max(1, epoch_steps // LOSS_POINTS)
        chunk_losses: list[torch.Tensor] = []
        sync(device)
        t0 = time.perf_counter()
        bar = tqdm(total=epoch_steps, desc=f"epoch {epoch + 1}/{n_epochs}", unit="step",
                   disable=not job.show_progress, leave=False, file=sys.stderr, dynamic_ncols=True)
        for i, (x, y) in enumerate(batches.epoch(epoch)):
            if i >= epoch_steps:
                break
            factor = run.schedule.factor(run.step)
            set_lr(run.optimizer, factor)
            loss, out = run.stepper(x, y)
            run.step += 1
            if run.first_step_at is None:
                run.first_step_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
            loss_sum += loss.detach() * len(y)
            correct += (out.detach().argmax(1) == y).sum()
            seen += len(y)
            chunk_losses.append(loss.detach())
            _update_lookahead(run, cfg, epoch, total_steps)
            # On the CPU a check per step is free; on a GPU it would stall the queue, so check less often.
            if device.type == "cpu" or i % 50 == 0 or i == epoch_steps - 1:
                value = loss.item()
                if not math.isfinite(value):
                    raise TrainingDiverged(health.divergence_message(value, epoch + 1, i + 1, cfg.lr * factor))
                bar.set_postfix(loss=f"{value:.3f}", refresh=False)
            bar.update(1)
        bar.close()
        if run.lookahead is not None and run.step == total_steps:
            # The trained weights are the average (airbench); mid-run the average lives in the
            # checkpoint beside the weights, so an epoch boundary does not throw steps away.
            run.lookahead.update(run.model, decay=1.0)
        sync(device)
        seconds = time.perf_counter() - t0
        mean_loss = loss_sum.item() / max(seen, 1)
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(health.divergence_message(mean_loss, epoch + 1, epoch_steps, cfg.lr))
        metrics = EpochMetrics(
            epoch=epoch + 1, loss=mean_loss, train_accuracy=correct.item() / max(seen, 1),
            lr=cfg.lr * factor, seconds=seconds, data_seconds=batches.data_seconds,
            images_per_second=seen / seconds if seconds else 0.0,
            at_chance=health.is_at_chance(mean_loss),
            step_losses=_chunk_means(chunk_losses, chunk), loss_chunk=chunk, steps=len(chunk_losses),
            **_validate(run.model, data, cfg, device, amp_dtype),
        )
        run.wall_seconds += time.perf_counter() - t0
        checkpointing = time.perf_counter()
        _end_epoch(run, metrics, cfg, key, checkpoint_path, n_epochs)
        run.wall_seconds += time.perf_counter() - checkpointing
        run.last_epoch = (time.perf_counter() - t0, first_step, run.step)
        if job.on_epoch is not None:
            job.on_epoch(metrics, n_epochs)

    return TrainRecord(
        key=key, checkpoint=str(checkpoint_path), checkpoint_sha256=file_digest(checkpoint_path),
        epochs=run.history, device=str(device), device_name=device_name(device),
        precision=precision_name(amp_dtype),
        parameters=count_parameters(run.model), train_images=len(data.y_train), steps=run.step,
        planned_steps=planned_steps, steps_per_epoch=steps_per_epoch,
        train_seconds=sum(h.seconds for h in run.history), wall_seconds=run.wall_seconds,
        first_step_at=run.first_step_at,
        resumed_from_epoch=run.resumed_from_epoch, warnings=run.warnings,
        cpu_settings=cpu_settings,
    )


def _restore(run: _Run, checkpoint_path: Path, key: str) -> None:
    """Continue from the last epoch checkpoint of this configuration, if there is one."""
    state = try_load_checkpoint(checkpoint_path, key)
    if state is None:
        return
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if state.get("lookahead") is not None:
        run.lookahead = Lookahead(run.model)
        run.lookahead.load_state_dict(state["lookahead"])
    run.history = [EpochMetrics.model_validate(h) for h in state["history"]]
    run.warnings = list(state.get("warnings", []))
    run.epoch, run.step = state["epoch"], state["step"]
    if state.get("schedule") is not None:  # a deadline shortened the run before it stopped
        run.schedule.load_state_dict(state["schedule"])
    run.wall_seconds = state.get("wall_seconds", sum(h.seconds for h in run.history))
    run.resumed_from_epoch = state["epoch"]
    torch.set_rng_state(state["rng"]["torch"])
    log.info("resuming training %s after epoch %d (step %d)", key, run.epoch, run.step)


def _keep_deadline(run: _Run, deadline: Deadline | None, steps_per_epoch: int) -> None:
    """Shorten the run when the rest of it, at the last epoch's pace, would end past the deadline."""
    if deadline is None or not run.step:
        return
    # A resumed run has no last epoch in this process: the pace of the whole run so far stands in.
    seconds, start, end = run.last_epoch or (run.wall_seconds, 0, run.step)
    pace = deadline.pace(seconds, start, end, steps_per_epoch)
    total = deadline.shortened(run.wall_seconds, run.step, run.schedule.total_steps, steps_per_epoch, pace)
    if total is None:
        return
    message = shortened_message(run.schedule.total_steps / steps_per_epoch, total / steps_per_epoch, pace,
                                deadline.budget_seconds)
    log.warning("after epoch %d: %s", run.epoch, message)
    run.warnings.append(f"After epoch {run.epoch}, {message}.")
    run.schedule.shorten(run.step, total)


def _update_lookahead(run: _Run, cfg: PipelineConfig, epoch: int, total_steps: int) -> None:
    if run.step % Lookahead.EVERY:
        return
    if run.lookahead is None and cfg.ema and epoch >= cfg.ema_start_epoch:
        run.lookahead = Lookahead(run.model)
    elif run.lookahead is not None:
        run.lookahead.update(run.model, run.lookahead.decay(run.step, total_steps))


def _chunk_means(losses: list[torch.Tensor], chunk: int) -> list[float]:
    if not losses:
        return []
    values = torch.stack(losses).float().cpu()
    return [round(c.mean().item(), 5) for c in values.split(chunk)]


def _validate(model, data: TrainingData, cfg: PipelineConfig, device, amp_dtype) -> dict[str, float]:
    if not len(data.y_val):
        return {}
    loss_sum, confusion, _ = score(model, data.x_val, data.y_val, batch_size=cfg.eval_batch_size, device=device,
                                normalize=cfg.normalize, channels_last=cfg.channels_last, tta=0,
                                amp_dtype=amp_dtype)
    n = len(data.y_val)
    return {"val_loss": loss_sum / n, "val_accuracy": confusion.diag().sum().item() / n}


def _end_epoch(run: _Run, metrics: EpochMetrics, cfg: PipelineConfig, key: str, checkpoint_path: Path,
               n_epochs: int) -> None:
    """Record the epoch, warn at chance level, and checkpoint: what a killed run resumes from."""
    if metrics.at_chance:
        message = health.chance_message(metrics.epoch, metrics.loss)
        log.warning(message)
        run.warnings.append(message)
    run.history.append(metrics)
    run.epoch = metrics.epoch
    save_checkpoint(checkpoint_path, {
        "key": key, "epoch": run.epoch, "step": run.step,
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "lookahead": run.lookahead.state_dict() if run.lookahead is not None else None,
        "history": [h.model_dump() for h in run.history], "warnings": run.warnings,
        "schedule": run.schedule.state_dict(),
        "wall_seconds": run.wall_seconds,
        "rng": {"torch": torch.get_rng_state()},
        "config": cfg.model_dump(mode="json"),
    })
    val = f"  val acc {metrics.val_accuracy:.4f}" if metrics.val_accuracy is not None else ""
    log.info(
        "epoch %d/%d  loss %.4f  train acc %.4f%s  %.1f s  (data %.2f s)  %.0f img/s",
        metrics.epoch, n_epochs, metrics.loss, metrics.train_accuracy, val, metrics.seconds,
        metrics.data_seconds, metrics.images_per_second,
    )
