"""The training loop.

`train()` is idempotent per configuration: its folder, `training/<key>/`, is named by a digest
of the data, the training fields of the config and the training code. A finished folder holds
`record.json` and is returned as is; an unfinished one resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from pydantic import BaseModel
from tqdm import tqdm

from ..config import PipelineConfig
from ..data.augment import normalizer, to_float
from ..data.batches import TrainBatches, to_device_images
from ..data.dataset import DatasetRecord, load_arrays
from ..data.extra import ExtraDataRecord, load_extra, training_digest
from ..errors import ConfigError, TrainingDiverged
from ..files import atomic_write_json, file_digest, remove_temp_files
from ..models import build_model, count_parameters
from ..provenance import code_version
from . import health
from .checkpoint import save_checkpoint, try_load_checkpoint
from .cpu_tuning import CpuSettings, current_cpu_settings
from .optim import Lookahead, build_optimizer, lr_factor, set_lr
from .runtime import (
    autocast,
    autocast_dtype,
    device_name,
    precision_name,
    resolve_device,
    tune_cpu_allocator,
)
from .scoring import score

log = logging.getLogger(__name__)

WHITENING_IMAGES = 5000  # airbench estimates the patch covariance from this many images
LOSS_POINTS = 50  # points per epoch of the loss-by-step curve


class EpochMetrics(BaseModel):
    epoch: int
    loss: float
    train_accuracy: float
    lr: float
    seconds: float
    data_seconds: float
    images_per_second: float
    at_chance: bool
    # Mean loss of consecutive chunks of `loss_chunk` steps (about LOSS_POINTS per epoch): the curve by step.
    step_losses: list[float] = []
    loss_chunk: int = 1
    steps: int = 0  # optimizer steps in this epoch
    # Accuracy and mean loss on the held-out validation split (validation_images > 0), else None.
    val_accuracy: float | None = None
    val_loss: float | None = None


class TrainRecord(BaseModel):
    key: str
    checkpoint: str
    checkpoint_sha256: str
    epochs: list[EpochMetrics]
    device: str
    device_name: str
    precision: str  # what ran: "bf16", "fp16" or "fp32" (a CPU without bf16 instructions runs fp32)
    parameters: int
    train_images: int
    steps: int
    train_seconds: float
    resumed_from_epoch: int | None
    warnings: list[str]
    # CPU runs: the machine's class and the settings chosen for it (cifar_pipeline/training/cpu_tuning.py).
    cpu_settings: CpuSettings | None = None

    def loss_by_step(self) -> list[tuple[int, float]]:
        """(step at the end of each chunk, the chunk's mean loss) over the whole run, for the report."""
        points, start = [], 0
        for e in self.epochs:
            points += [(min(start + (i + 1) * e.loss_chunk, start + e.steps), v) for i, v in enumerate(e.step_losses)]
            start += e.steps
        return points


EpochCallback = Callable[[EpochMetrics, int], None]


def training_key(cfg: PipelineConfig, data_md5: str, extra_digest: str | None = None) -> str:
    parts = {"data": data_md5, "train": cfg.group("train"), "code": code_version("train")}
    if extra_digest:  # only then: runs without extra images keep their keys
        parts["extra"] = extra_digest
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def training_dir(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir) / "training" / key


def subset(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    return (x[:n], y[:n]) if n else (x, y)


def train(
    cfg: PipelineConfig,
    dataset: DatasetRecord,
    cache_dir: str | os.PathLike,
    *,
    on_epoch: EpochCallback | None = None,
    progress: bool | None = None,
    extra: ExtraDataRecord | None = None,
) -> TrainRecord:
    key = training_key(cfg, dataset.archive_md5, training_digest(extra))
    folder = training_dir(cache_dir, key)
    folder.mkdir(parents=True, exist_ok=True)
    # Two runs with the same configuration train once: the second waits, then reuses the result.
    with FileLock(str(folder / "train.lock")):
        if removed := remove_temp_files(folder):
            log.info("removed %d temp file(s) of an interrupted checkpoint write", removed)
        record_path = folder / "record.json"
        if record_path.exists():
            record = TrainRecord.model_validate_json(record_path.read_text())
            if Path(record.checkpoint).exists() and file_digest(record.checkpoint) == record.checkpoint_sha256:
                log.info("training %s already finished; reusing %s", key, record.checkpoint)
                return record
        record = _train(cfg, dataset, key, folder, on_epoch, progress, extra)
        atomic_write_json(record_path, record.model_dump())
        return record


class TrainingData(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray  # empty unless cfg.validation_images > 0
    y_val: np.ndarray


def training_data(cfg: PipelineConfig, dataset: DatasetRecord, extra: ExtraDataRecord | None = None) -> TrainingData:
    """The images training sees: the training split (or its first `train_subset`), less a held-out
    validation split of `validation_images` chosen by the seed, so every trial of a sweep holds out
    the same images; then the extra images, if any (never in the validation split)."""
    arrays = load_arrays(dataset)
    x, y = subset(arrays.x_train, arrays.y_train, cfg.train_subset)
    n_val = cfg.validation_images
    if n_val >= len(y):
        raise ConfigError(f"validation_images {n_val} leaves no training images out of {len(y)}")
    order = np.random.default_rng(cfg.seed).permutation(len(y)) if n_val else np.arange(len(y))
    val, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    x_train, y_train = x[train_idx], y[train_idx]
    if extra is not None and extra.n_images:
        x_extra, y_extra = load_extra(extra)
        x_train, y_train = np.concatenate([x_train, x_extra]), np.concatenate([y_train, y_extra])
    return TrainingData(x_train, y_train, x[val], y[val])


@dataclass
class _Run:
    """What one training run carries from epoch to epoch (and through a checkpoint)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lookahead: Lookahead | None = None
    history: list[EpochMetrics] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    resumed_from_epoch: int | None = None


def _train(cfg, dataset, key, folder, on_epoch, progress, extra=None) -> TrainRecord:
    device = resolve_device(cfg.device)
    cpu_settings = None
    if device.type == "cpu":
        tune_cpu_allocator()
        cpu_settings = current_cpu_settings(cfg.precision, cfg.channels_last, cfg.model)
        log.info("CPU %s: %s, %d thread(s)%s", cpu_settings.cpu_class, cpu_settings.precision, cpu_settings.threads,
                 "".join(f"; {r}" for r in cpu_settings.reasons))
    threads = torch.get_num_threads()
    try:
        if cpu_settings is not None:
            torch.set_num_threads(cpu_settings.threads)
        return _train_on(cfg, dataset, key, folder, on_epoch, progress, device, cpu_settings, extra)
    finally:
        torch.set_num_threads(threads)


def train_batches(cfg: PipelineConfig, data: TrainingData, device: torch.device) -> TrainBatches:
    """The training split as the configured batches and augmentation, on `device`."""
    batches = TrainBatches(
        data.x_train, data.y_train, batch_size=cfg.batch_size, device=device, seed=cfg.seed,
        normalize=cfg.normalize, flip=cfg.flip, translate=cfg.translate, cutout=cfg.cutout,
        channels_last=cfg.channels_last, brightness=cfg.brightness, contrast=cfg.contrast,
    )
    if len(batches) == 0:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the {len(data.y_train)} training images")
    return batches


def _train_on(cfg, dataset, key, folder, on_epoch, progress, device, cpu_settings, extra) -> TrainRecord:
    data = training_data(cfg, dataset, extra)
    batches = train_batches(cfg, data, device)
    steps_per_epoch = len(batches)
    total_steps = math.ceil(steps_per_epoch * cfg.epochs)
    n_epochs = math.ceil(cfg.epochs)

    run = _new_run(cfg, data.x_train, device)
    checkpoint_path = folder / "checkpoint.pt"
    _restore(run, checkpoint_path, key)

    forward = run.model
    if cfg.compile and device.type == "cuda":
        forward = torch.compile(run.model)
    amp_dtype = autocast_dtype(device, cfg.precision)
    # fp16 needs loss scaling against underflow; bf16 has fp32's range and does not.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    show_bar = sys.stderr.isatty() if progress is None else progress
    whiten_bias = getattr(getattr(run.model, "whiten", None), "bias", None)

    for epoch in range(run.epoch, n_epochs):
        if whiten_bias is not None:
            whiten_bias.requires_grad_(epoch < cfg.whiten_bias_epochs)
        run.model.train()
        batches.data_seconds = 0.0
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        epoch_steps = min(steps_per_epoch, total_steps - run.step)
        chunk = max(1, epoch_steps // LOSS_POINTS)
        chunk_losses: list[torch.Tensor] = []
        _sync(device)
        t0 = time.perf_counter()
        bar = tqdm(total=epoch_steps, desc=f"epoch {epoch + 1}/{n_epochs}", unit="step",
                   disable=not show_bar, leave=False, file=sys.stderr, dynamic_ncols=True)
        for i, (x, y) in enumerate(batches.epoch(epoch)):
            if i >= epoch_steps:
                break
            factor = lr_factor(run.step, total_steps, cfg)
            set_lr(run.optimizer, factor)
            loss, out = _step(forward, run.optimizer, scaler, x, y, cfg, device, amp_dtype)
            run.step += 1
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
        _sync(device)
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
        _end_epoch(run, metrics, cfg, key, checkpoint_path, n_epochs)
        if on_epoch is not None:
            on_epoch(metrics, n_epochs)

    return TrainRecord(
        key=key, checkpoint=str(checkpoint_path), checkpoint_sha256=file_digest(checkpoint_path),
        epochs=run.history, device=str(device), device_name=device_name(device),
        precision=precision_name(amp_dtype),
        parameters=count_parameters(run.model), train_images=len(data.y_train), steps=run.step,
        train_seconds=sum(h.seconds for h in run.history),
        resumed_from_epoch=run.resumed_from_epoch, warnings=run.warnings,
        cpu_settings=cpu_settings,
    )


def _new_run(cfg: PipelineConfig, x_train: np.ndarray, device: torch.device) -> _Run:
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.width)
    if hasattr(model, "init_from_data"):
        scale, shift = normalizer(cfg.normalize)
        sample = to_float(to_device_images(x_train[:WHITENING_IMAGES], "cpu"), scale, shift, False)
        model.init_from_data(sample)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    return _Run(model=model, optimizer=build_optimizer(model, cfg))


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
    run.resumed_from_epoch = state["epoch"]
    torch.set_rng_state(state["rng"]["torch"])
    log.info("resuming training %s after epoch %d (step %d)", key, run.epoch, run.step)


def _step(forward, optimizer, scaler, x, y, cfg, device, amp_dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step, in the order the seed blog's checklist asks: zero_grad, backward, step."""
    with autocast(device, amp_dtype):
        out = forward(x)
        loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, out


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
        "rng": {"torch": torch.get_rng_state()},
        "config": cfg.model_dump(mode="json"),
    })
    val = f"  val acc {metrics.val_accuracy:.4f}" if metrics.val_accuracy is not None else ""
    log.info(
        "epoch %d/%d  loss %.4f  train acc %.4f%s  %.1f s  (data %.2f s)  %.0f img/s",
        metrics.epoch, n_epochs, metrics.loss, metrics.train_accuracy, val, metrics.seconds,
        metrics.data_seconds, metrics.images_per_second,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
