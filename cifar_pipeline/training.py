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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from pydantic import BaseModel
from tqdm import tqdm

from . import health
from .batches import TrainBatches, to_device_images
from .augment import normalizer, to_float
from .checkpoint import save_checkpoint, try_load_checkpoint
from .config import PipelineConfig
from .dataset import DatasetRecord, load_arrays
from .errors import ConfigError, TrainingDiverged
from .files import atomic_write_json, file_digest, remove_temp_files
from .models import build_model, count_parameters
from .optim import Lookahead, build_optimizer, lr_factor, set_lr
from .provenance import code_version
from .runtime import (
    autocast, autocast_dtype, device_name, precision_name, resolve_device, tune_cpu_allocator,
)

log = logging.getLogger(__name__)

WHITENING_IMAGES = 5000  # airbench estimates the patch covariance from this many images


class EpochMetrics(BaseModel):
    epoch: int
    loss: float
    train_accuracy: float
    lr: float
    seconds: float
    data_seconds: float
    images_per_second: float
    at_chance: bool


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
    step_losses: list[tuple[int, float]] = []  # (step, loss), at most ~1000 points, for the report


EpochCallback = Callable[[EpochMetrics, int], None]


def training_key(cfg: PipelineConfig, data_md5: str) -> str:
    blob = json.dumps(
        {"data": data_md5, "train": cfg.group("train"), "code": code_version("train")},
        sort_keys=True,
    )
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
) -> TrainRecord:
    key = training_key(cfg, dataset.archive_md5)
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
        record = _train(cfg, dataset, key, folder, on_epoch, progress)
        atomic_write_json(record_path, record.model_dump())
        return record


def _train(cfg, dataset, key, folder, on_epoch, progress) -> TrainRecord:
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        tune_cpu_allocator()
    arrays = load_arrays(dataset)
    x_train, y_train = subset(arrays.x_train, arrays.y_train, cfg.train_subset)
    batches = TrainBatches(
        x_train, y_train, batch_size=cfg.batch_size, device=device, seed=cfg.seed,
        normalize=cfg.normalize, flip=cfg.flip, translate=cfg.translate, cutout=cfg.cutout,
        channels_last=cfg.channels_last,
    )
    steps_per_epoch = len(batches)
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the {len(y_train)} training images")
    total_steps = math.ceil(steps_per_epoch * cfg.epochs)
    n_epochs = math.ceil(cfg.epochs)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.width)
    if hasattr(model, "init_from_data"):
        scale, shift = normalizer(cfg.normalize)
        sample = to_float(to_device_images(x_train[:WHITENING_IMAGES], "cpu"), scale, shift, False)
        model.init_from_data(sample)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    optimizer = build_optimizer(model, cfg)
    lookahead: Lookahead | None = None
    history: list[EpochMetrics] = []
    warnings: list[str] = []
    start_epoch, step = 0, 0
    step_losses: list[tuple[int, float]] = []

    checkpoint_path = folder / "checkpoint.pt"
    state = try_load_checkpoint(checkpoint_path, key)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("lookahead") is not None:
            lookahead = Lookahead(model)
            lookahead.load_state_dict(state["lookahead"])
        history = [EpochMetrics.model_validate(h) for h in state["history"]]
        warnings = list(state.get("warnings", []))
        step_losses = [tuple(p) for p in state.get("step_losses", [])]
        start_epoch, step = state["epoch"], state["step"]
        torch.set_rng_state(state["rng"]["torch"])
        log.info("resuming training %s after epoch %d (step %d)", key, start_epoch, step)

    forward = model
    if cfg.compile and device.type == "cuda":
        forward = torch.compile(model)
    amp_dtype = autocast_dtype(device, cfg.precision)
    # fp16 needs loss scaling against underflow; bf16 has fp32's range and does not.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    show_bar = sys.stderr.isatty() if progress is None else progress
    whiten_bias = getattr(getattr(model, "whiten", None), "bias", None)

    for epoch in range(start_epoch, n_epochs):
        if whiten_bias is not None:
            whiten_bias.requires_grad_(epoch < cfg.whiten_bias_epochs)
        model.train()
        batches.data_seconds = 0.0
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        epoch_steps = min(steps_per_epoch, total_steps - step)
        _sync(device)
        t0 = time.perf_counter()
        bar = tqdm(total=epoch_steps, desc=f"epoch {epoch + 1}/{n_epochs}", unit="step",
                   disable=not show_bar, leave=False, file=sys.stderr, dynamic_ncols=True)
        for i, (x, y) in enumerate(batches.epoch(epoch)):
            if i >= epoch_steps:
                break
            factor = lr_factor(step, total_steps, cfg)
            set_lr(optimizer, factor)
            with autocast(device, amp_dtype):
                out = forward(x)
                loss = F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            loss_sum += loss.detach() * len(y)
            correct += (out.detach().argmax(1) == y).sum()
            seen += len(y)
            if lookahead is None and cfg.ema and epoch >= Lookahead.START_EPOCH and step % Lookahead.EVERY == 0:
                lookahead = Lookahead(model)
            elif lookahead is not None and step % Lookahead.EVERY == 0:
                lookahead.update(model, lookahead.decay(step, total_steps))
            # On the CPU a check per step is free; on a GPU it would stall the queue, so check less often.
            if device.type == "cpu" or i % 50 == 0 or i == epoch_steps - 1:
                value = loss.item()
                if not math.isfinite(value):
                    raise TrainingDiverged(health.divergence_message(value, epoch + 1, i + 1, cfg.lr * factor))
                bar.set_postfix(loss=f"{value:.3f}", refresh=False)
                if step % max(1, total_steps // 1000) == 0 or device.type != "cpu":
                    step_losses.append((step, value))
            bar.update(1)
        bar.close()
        if lookahead is not None and step == total_steps:
            # The trained weights are the average (airbench); mid-run the average lives in the
            # checkpoint beside the weights, so an epoch boundary does not throw steps away.
            lookahead.update(model, decay=1.0)
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
        )
        if metrics.at_chance:
            message = health.chance_message(metrics.epoch, mean_loss)
            log.warning(message)
            warnings.append(message)
        history.append(metrics)
        save_checkpoint(checkpoint_path, {
            "key": key, "epoch": epoch + 1, "step": step,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "lookahead": lookahead.state_dict() if lookahead is not None else None,
            "history": [h.model_dump() for h in history], "warnings": warnings, "step_losses": step_losses,
            "rng": {"torch": torch.get_rng_state()},
            "config": cfg.model_dump(mode="json"),
        })
        log.info(
            "epoch %d/%d  loss %.4f  train acc %.4f  %.1f s  (data %.2f s)  %.0f img/s",
            metrics.epoch, n_epochs, metrics.loss, metrics.train_accuracy, metrics.seconds,
            metrics.data_seconds, metrics.images_per_second,
        )
        if on_epoch is not None:
            on_epoch(metrics, n_epochs)

    return TrainRecord(
        key=key, checkpoint=str(checkpoint_path), checkpoint_sha256=file_digest(checkpoint_path),
        epochs=history, device=str(device), device_name=device_name(device),
        precision=precision_name(amp_dtype),
        parameters=count_parameters(model), train_images=len(y_train), steps=step,
        train_seconds=sum(h.seconds for h in history),
        resumed_from_epoch=state["epoch"] if state is not None else None, warnings=warnings,
        step_losses=step_losses,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
