"""Test-set evaluation: loss, accuracy, per-class accuracy and the confusion matrix (the `evaluate` stage)."""

from __future__ import annotations

import logging
import os
import time

import pandas as pd

from .config import PipelineConfig
from .data.dataset import DatasetRecord, load_arrays
from .errors import IntegrityError
from .files import file_digest
from .stage import Stage, StageRecord
from .training.records import TrainRecord

log = logging.getLogger(__name__)


class EvalRecord(StageRecord):
    loss: float
    accuracy: float
    tta: int
    n_images: int
    classes: list[str]
    per_class_accuracy: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    seconds: float
    predictions: list[int] = []  # predicted class of each evaluated test image, in order (for the report)

    def per_class_frame(self) -> pd.DataFrame:
        counts = [sum(row) for row in self.confusion]
        return pd.DataFrame(
            {"class": self.classes, "accuracy": self.per_class_accuracy, "images": counts}
        )

    def confusion_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.confusion, index=pd.Index(self.classes, name="true"),
                            columns=pd.Index(self.classes, name="predicted"))


EVALUATE = Stage("evaluate", "evaluations", EvalRecord, "evaluation")


def evaluation_inputs(config: PipelineConfig, trained: TrainRecord, dataset: DatasetRecord) -> dict:
    return {"checkpoint": trained.content_digest(), "dataset": dataset.content_digest(),
            "eval": config.group("eval"), "normalize": config.normalize}


def evaluate(
    cfg: PipelineConfig, trained: TrainRecord, dataset: DatasetRecord, cache_dir: str | os.PathLike
) -> EvalRecord:
    """Evaluate a training run's checkpoint; the result is kept under a key of everything it depends on."""
    return EVALUATE.run(cache_dir, evaluation_inputs(cfg, trained, dataset),
                        lambda _entry: evaluate_checkpoint(trained.checkpoint, trained.checkpoint_sha256, cfg, cfg,
                                                           dataset))


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    sha256: str,
    model_cfg: PipelineConfig,
    cfg: PipelineConfig,
    dataset: DatasetRecord,
) -> EvalRecord:
    """Test a checkpoint: the model is rebuilt from `model_cfg`, evaluated with `cfg`'s settings.

    The two differ when the champion, trained with another recipe, is measured on this run's test set.
    """
    actual = file_digest(checkpoint)
    if actual != sha256:
        raise IntegrityError(
            f"checkpoint {checkpoint} has sha256 {actual}, not {sha256} as recorded; refusing to evaluate it"
        )
    # Imported here: the record and the stage above load without torch, for a cached run.
    import torch

    from .models import build_model
    from .training.checkpoint import load_checkpoint
    from .training.runtime import autocast_dtype, resolve_device
    from .training.scoring import score

    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    state = load_checkpoint(checkpoint, map_location=device)
    model = build_model(model_cfg.model, model_cfg.width)
    model.load_state_dict(state["model"])
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format).eval()
    arrays = load_arrays(dataset)
    n = min(cfg.test_subset or len(arrays.y_test), len(arrays.y_test))
    x_test, y_test = arrays.x_test[:n], arrays.y_test[:n]
    loss_sum, confusion_cpu, predictions = score(
        model, x_test, y_test, batch_size=cfg.eval_batch_size, device=device, normalize=model_cfg.normalize,
        channels_last=cfg.channels_last, tta=cfg.tta, amp_dtype=autocast_dtype(device, cfg.precision),
    )
    per_class = (confusion_cpu.diag() / confusion_cpu.sum(1).clamp(min=1)).tolist()
    record = EvalRecord(
        loss=loss_sum / n, accuracy=confusion_cpu.diag().sum().item() / n, tta=cfg.tta, n_images=n,
        classes=dataset.classes, per_class_accuracy=per_class, confusion=confusion_cpu.tolist(),
        seconds=time.perf_counter() - t0, predictions=predictions.tolist(),
    )
    log.info("test accuracy %.4f, loss %.4f on %d images (tta %d)", record.accuracy, record.loss, n, cfg.tta)
    return record
