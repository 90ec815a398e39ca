"""The report's figures of one model on its test set, drawn once per content (the `figures` stage).

Curves, confusion matrix, sample predictions and confused pairs depend only on the training run, its
evaluation and the data, so they are a cached stage: a rerun that trained and evaluated nothing new
copies them into its run folder without importing matplotlib or loading the test images. The trend
of recent runs (history.png) changes with every run and is drawn by the report itself.

    <cache>/figures/<key>/curves.png, confusion.png, samples.png, confused.png
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import PipelineConfig
from ..data.dataset import DatasetRecord, load_arrays
from ..evaluation import EvalRecord
from ..files import atomic_copy, file_digest
from ..registry.model_card import confused_pairs
from ..stage import Output, Stage, StageRecord
from ..training.records import TrainRecord

GRID_IMAGES = 32  # test images shown with their labels
CONFUSED_PAIRS = 4  # most-confused class pairs shown with examples


class FiguresRecord(StageRecord):
    folder: str
    files: dict[str, str]  # file name -> sha256, in drawing order

    def outputs(self) -> list[Output]:
        return [Output(str(Path(self.folder) / name), digest) for name, digest in self.files.items()]

    def copy_to(self, run_dir: str | os.PathLike) -> None:
        """The figures into a run's own folder (atomically, so a report never links a half-copied file)."""
        for name in self.files:
            atomic_copy(Path(self.folder) / name, Path(run_dir) / name)


FIGURES = Stage("figures", "figures", FiguresRecord, "report.figures")


def figures_inputs(config: PipelineConfig, trained: TrainRecord, evaluated: EvalRecord, dataset: DatasetRecord) -> dict:
    # epochs: the curves' per-step axis is in epochs, and a fractional plan's last epoch is partial.
    return {"trained": trained.content_digest(), "evaluated": evaluated.content_digest(),
            "dataset": dataset.content_digest(), "epochs": config.epochs}


def figures(config: PipelineConfig, trained: TrainRecord, evaluated: EvalRecord, dataset: DatasetRecord,
            cache_dir: str | os.PathLike) -> FiguresRecord:
    return FIGURES.run(cache_dir, figures_inputs(config, trained, evaluated, dataset),
                       lambda entry: draw(entry, config, trained, evaluated, dataset))


def draw(folder: str | os.PathLike, cfg: PipelineConfig, trained: TrainRecord, evaluated: EvalRecord,
         dataset: DatasetRecord) -> FiguresRecord:
    """Draw the figures into `folder`."""
    from .plots import plot_confused_examples, plot_confusion, plot_curves, plot_image_grid

    folder = Path(folder)
    epochs = trained.epochs
    plot_curves([e.epoch for e in epochs], [e.loss for e in epochs], [e.train_accuracy for e in epochs],
                evaluated.accuracy, folder / "curves.png", trained.loss_by_step(), trained.steps / cfg.epochs)
    plot_confusion(evaluated.confusion, evaluated.classes, folder / "confusion.png")
    if evaluated.predictions:  # absent in an evaluation cached before predictions were recorded
        arrays = load_arrays(dataset)
        predicted = evaluated.predictions
        images, true = arrays.x_test[:len(predicted)], [int(y) for y in arrays.y_test[:len(predicted)]]
        classes = evaluated.classes
        plot_image_grid(images[:GRID_IMAGES], true[:GRID_IMAGES], predicted[:GRID_IMAGES], classes,
                        folder / "samples.png")
        examples = []
        for t, p, count in confused_pairs(evaluated.confusion, classes, CONFUSED_PAIRS):
            ti, pi = classes.index(t), classes.index(p)
            picked = [i for i, (a, b) in enumerate(zip(true, predicted)) if a == ti and b == pi]
            examples.append((t, p, count, images[picked]))
        if examples:
            plot_confused_examples(examples, folder / "confused.png")
    names = ("curves.png", "confusion.png", "samples.png", "confused.png")
    return FiguresRecord(folder=str(folder), files={n: file_digest(folder / n) for n in names if (folder / n).is_file()})
