"""MODEL_CARD.md for a promoted model (after Mitchell et al., "Model Cards for Model Reporting").

Written beside the weights at every promotion, whether or not the ONNX export succeeded (the card
then says why there is no model.onnx).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import OFFICIAL_MD5, PipelineConfig
from ..data.dataset import DatasetRecord
from ..evaluation import EvalRecord
from ..files import atomic_write_text
from ..training.records import TrainRecord


def confused_pairs(confusion: list[list[int]], classes: list[str], n: int = 5) -> list[tuple[str, str, int]]:
    """The `n` (true class, predicted class, count) cells off the diagonal with the most images."""
    cells = [(confusion[i][j], i, j) for i in range(len(classes)) for j in range(len(classes)) if i != j]
    return [(classes[i], classes[j], count) for count, i, j in sorted(cells, key=lambda c: -c[0])[:n] if count]


def render_model_card(
    run_id: str, cfg: PipelineConfig, trained: TrainRecord, evaluated: EvalRecord, dataset: DatasetRecord,
    model_sha256: str, onnx: dict | None, onnx_error: str | None,
) -> str:
    from .predict import INPUT_DESCRIPTION, preprocessing  # torch: only when a model is promoted

    prep = preprocessing(cfg)
    per_class = "\n".join(f"| {c} | {a:.2%} | {sum(row)} |"
                          for c, a, row in zip(evaluated.classes, evaluated.per_class_accuracy, evaluated.confusion))
    pairs = "\n".join(f"| {t} | {p} | {n} | {n / max(sum(evaluated.confusion[evaluated.classes.index(t)]), 1):.1%} |"
                      for t, p, n in confused_pairs(evaluated.confusion, evaluated.classes))
    if onnx is not None:
        onnx_text = (f"`model.onnx` (opset {onnx['opset']}, dynamic batch). Checked in ONNX Runtime against "
                     f"the PyTorch model on {onnx['images']} test images: top-1 agreement "
                     f"{onnx['top1_agreement']:.2%}, largest logit difference {onnx['max_logit_difference']:.2g}.")
    else:
        onnx_text = (f"**No `model.onnx`: the export failed** ({onnx_error}). The PyTorch weights (`model.pt`) "
                     "are complete and are the champion; `cifar-pipeline export --model "
                     f"{run_id} --format onnx --output model.onnx` retries the export.")
    extra = ", ".join(cfg.extra_data or []) or "none"
    return f"""# Model card: CIFAR-10 classifier `{run_id}`

## What it is

An image classifier for the 10 CIFAR-10 classes ({", ".join(evaluated.classes)}): the `{cfg.model}` network
(width {cfg.width}, {trained.parameters:,} parameters) trained by cifar-pipeline with preset `{cfg.preset}`
for {cfg.epochs:g} epoch(s) ({trained.steps} steps, optimizer `{cfg.optimizer}`) on {trained.device_name}.

| file | what |
|---|---|
| `model.pt` | weights + config + class names + preprocessing (sha256 `{model_sha256}`); `torch.load(path, weights_only=True)` |
| `model.onnx` | the network with its preprocessing inside; see below |

## Inputs and preprocessing

- Inputs are **32 x 32 RGB** images. `cifar-pipeline predict` turns any image file into that: grayscale,
  palette and RGBA become RGB (alpha over white), other sizes are centre-cropped to a square and
  resized with antialiasing (Lanczos).
- The exported model (`model.onnx`, or `cifar-pipeline export --format torch-export`) takes a
  **{INPUT_DESCRIPTION}** and returns logits over the classes in the order above; the
  normalisation (mean {prep["mean"]}, std {prep["std"]}) and test-time augmentation (level {prep["tta"]}:
  0 none, 1 + mirror, 2 + one-pixel shifts) are inside the graph. Apply softmax for probabilities.
- {onnx_text}

## Training data

| | |
|---|---|
| archive md5 | `{dataset.archive_md5}` |
| decoded dataset sha256 | `{dataset.sha256}` |
| training images used | {trained.train_images} |
| extra image folders | {extra} |
| augmentation | flip `{cfg.flip}`, translate {cfg.translate}, cutout {cfg.cutout}, label smoothing {cfg.label_smoothing} |
| training key | `{trained.key}` |

## Evaluation

Test accuracy **{evaluated.accuracy:.2%}** (loss {evaluated.loss:.4f}) on {evaluated.n_images} test images of the
same archive, test-time augmentation level {evaluated.tta}.

| class | accuracy | test images |
|---|---|---|
{per_class}

The class pairs it confuses most (true class predicted as another):

| true | predicted | images | share of the true class |
|---|---|---|---|
{pairs}

## Intended use and limits

- Intended for: classifying small photos into the 10 CIFAR-10 classes, as a baseline and for batch
  scoring in this pipeline. Every image gets one of the 10 classes: there is no "none of these".
- Trained only on **32 x 32** images; larger photos are shrunk to 32 x 32, so fine detail is lost and
  objects that fill little of the frame are hard. Accuracy on photos unlike CIFAR-10 (other framing,
  lighting, cameras, drawings) will be lower than the test figure above.
- {_data_origin(dataset.archive_md5)}
- The classes are imbalanced in its mistakes (table above); do not use it where an error on one
  class costs more than on another without checking that class's accuracy first.
- Not for decisions about people, and not a safety component.
"""


def _data_origin(md5: str) -> str:
    text = ("The training data are **JPEG-derived**: CIFAR-10's images are downscaled web photos, most of them "
            "JPEG-compressed before they were shrunk")
    if md5 != OFFICIAL_MD5:
        text += (", and this archive is not the official one (md5 above): a re-encoded copy whose images carry "
                 "JPEG artefacts. The test figure is measured on the same kind of images")
    return text + "."


def write_model_card(path: str | os.PathLike, *args, **kwargs) -> Path:
    return atomic_write_text(path, render_model_card(*args, **kwargs))
