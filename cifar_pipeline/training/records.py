"""What training returns and under which key: per-epoch metrics, the record of a finished run, the stage.

Kept free of torch, like every record module: a cached run loads these records and keys its stages
without importing what builds them (cifar_pipeline/training/loop.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from ..data.extra import training_digest
from ..stage import Output, Stage, StageRecord
from .cpu_tuning import CpuSettings

if TYPE_CHECKING:
    from ..config import PipelineConfig
    from ..data.dataset import DatasetRecord
    from ..data.extra import ExtraDataRecord


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


class TrainRecord(StageRecord):
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
    planned_steps: int = 0  # more than `steps` when a deadline shortened the run; 0: not recorded
    steps_per_epoch: int = 0
    train_seconds: float  # the epochs' own steps
    resumed_from_epoch: int | None
    warnings: list[str]
    # Training as a budget counts it: the epochs with their validation, lookahead and checkpoints.
    wall_seconds: float = 0.0
    first_step_at: str | None = None  # when the first step of the process that trained finished (UTC)
    # CPU runs: the machine's class and the settings chosen for it (cifar_pipeline/training/cpu_tuning.py).
    cpu_settings: CpuSettings | None = None

    @property
    def shortened(self) -> bool:
        return self.planned_steps > self.steps

    def trained_epochs(self) -> float:
        return self.steps / self.steps_per_epoch if self.steps_per_epoch else float(len(self.epochs))

    def outputs(self) -> list[Output]:
        return [Output(self.checkpoint, self.checkpoint_sha256)]

    def loss_by_step(self) -> list[tuple[int, float]]:
        """(step at the end of each chunk, the chunk's mean loss) over the whole run, for the report."""
        points, start = [], 0
        for e in self.epochs:
            points += [(min(start + (i + 1) * e.loss_chunk, start + e.steps), v) for i, v in enumerate(e.step_losses)]
            start += e.steps
        return points


EpochCallback = Callable[[EpochMetrics, int], None]


TRAIN = Stage("train", "training", TrainRecord, "training.loop")


def training_inputs(config: PipelineConfig, dataset: DatasetRecord, extra: ExtraDataRecord | None = None) -> dict:
    inputs = {"dataset": dataset.content_digest(), "train": config.group("train")}
    if digest := training_digest(extra):  # only then: runs without extra images keep their keys
        inputs["extra"] = digest
    return inputs


def training_key(cfg: PipelineConfig, dataset: DatasetRecord, extra: ExtraDataRecord | None = None) -> str:
    return TRAIN.key(training_inputs(cfg, dataset, extra))


def training_dir(cache_dir: str | os.PathLike, key: str) -> Path:
    return TRAIN.entry(cache_dir, key)
