"""The model registry: the deployed (champion) model and the history of runs.

    <output_dir>/registry/models/<run_id>/model.pt    weights + config of every model ever promoted
    <output_dir>/registry/models/<run_id>/model.onnx  its ONNX export (absent if the export failed)
    <output_dir>/registry/models/<run_id>/MODEL_CARD.md  what it is, its data, accuracy and limits
    <output_dir>/registry/champion.json               which of them is the champion, with its metrics
    <output_dir>/registry/history.csv                 one row per finished run

Promotion writes the new model's folder completely first and then replaces champion.json in one
rename, so a crash at any moment leaves either the old champion or the new one, never a mix. The
history row follows; if a crash falls between the two, the next run restores the missing row.
Everything happens under a file lock, so two runs finishing together decide one after the other.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from filelock import FileLock
from pydantic import BaseModel

from .. import layout
from ..config import PipelineConfig
from ..data.dataset import DatasetRecord, load_arrays
from ..evaluation import EvalRecord, evaluate_checkpoint
from ..files import atomic_write_json, atomic_write_text, file_digest
from ..training.records import TrainRecord

EXPORT_CHECK_IMAGES = 256  # real test images the ONNX export is checked on at promotion

HISTORY_COLUMNS = ["finished_at", "run_id", "preset", "model", "test_accuracy", "champion_accuracy",
                   "promoted", "seconds", "reason"]


class ChampionRecord(BaseModel):
    run_id: str
    accuracy: float
    test_images: int
    tta: int
    data_md5: str
    config: dict
    model_file: str
    model_sha256: str
    promoted_at: str
    onnx_file: str | None = None
    model_card: str | None = None


class PromotionDecision(BaseModel):
    promoted: bool
    reason: str
    challenger_accuracy: float
    champion_accuracy: float | None  # the champion measured on this run's test set
    champion: ChampionRecord | None  # the champion after the decision
    history_file: str


def registry_dir(cfg: PipelineConfig) -> Path:
    return layout.registry_dir(cfg.output_dir)


def decide(challenger: float, champion: float | None, margin: float) -> tuple[bool, str]:
    """Promote only a model that beats the champion by more than `margin` (accuracy, 0-1)."""
    if champion is None:
        return True, "no champion yet: the first model becomes the champion"
    gain = challenger - champion
    if gain > margin:
        return True, f"beats the champion by {gain:+.2%} (required: more than {margin:+.2%})"
    return False, f"does not beat the champion by more than {margin:.2%} ({gain:+.2%}); the champion stays"


def read_champion(folder: Path) -> ChampionRecord | None:
    path = folder / "champion.json"
    return ChampionRecord.model_validate_json(path.read_text()) if path.exists() else None


def read_history(folder: Path) -> pd.DataFrame:
    path = folder / "history.csv"
    if not path.exists():
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    return pd.read_csv(path)


def _same_test_set(champion: ChampionRecord, evaluated: EvalRecord, data_md5: str) -> bool:
    return (champion.data_md5, champion.test_images, champion.tta) == (data_md5, evaluated.n_images, evaluated.tta)


def update_registry(
    folder: Path,
    run_id: str,
    cfg: PipelineConfig,
    trained: TrainRecord,
    evaluated: EvalRecord,
    dataset: DatasetRecord,
    seconds: float,
) -> PromotionDecision:
    """Compare with the champion, promote if better, append to the history: one atomic decision.

    When the champion's recorded accuracy was measured on another test set (other data, subset or
    test-time augmentation), it is measured again on this run's, so the comparison is fair.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        champion = read_champion(folder)
        history = _with_champion_row(read_history(folder), champion)
        champion_accuracy = None
        if champion is not None:
            same = _same_test_set(champion, evaluated, dataset.archive_md5)
            champion_accuracy = champion.accuracy if same else _remeasure(champion, cfg, dataset)
        promoted, reason = decide(evaluated.accuracy, champion_accuracy, cfg.promote_margin)
        if promoted:
            champion = _install(folder, run_id, cfg, trained, evaluated, dataset)
        row = {
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run_id": run_id,
            "preset": cfg.preset, "model": cfg.model, "test_accuracy": evaluated.accuracy,
            "champion_accuracy": champion_accuracy, "promoted": promoted, "seconds": round(seconds, 1),
            "reason": reason,
        }
        history = _append(history, row)
        atomic_write_text(folder / "history.csv", history.to_csv(index=False))
    return PromotionDecision(promoted=promoted, reason=reason, challenger_accuracy=evaluated.accuracy,
                             champion_accuracy=champion_accuracy, champion=champion,
                             history_file=str(folder / "history.csv"))


def _append(history: pd.DataFrame, row: dict) -> pd.DataFrame:
    return pd.concat([history, pd.DataFrame([row])], ignore_index=True) if len(history) else pd.DataFrame([row])


def _with_champion_row(history: pd.DataFrame, champion: ChampionRecord | None) -> pd.DataFrame:
    """Restore the row of a champion whose run was killed between promotion and history write."""
    if champion is None or champion.run_id in set(history["run_id"].astype(str)):
        return history
    return _append(history, {
        "finished_at": champion.promoted_at, "run_id": champion.run_id, "preset": champion.config.get("preset"),
        "model": champion.config.get("model"), "test_accuracy": champion.accuracy, "champion_accuracy": None,
        "promoted": True, "seconds": None, "reason": "promoted; history row restored after an interrupted run",
    })


def _install(folder: Path, run_id: str, cfg: PipelineConfig, trained: TrainRecord, evaluated: EvalRecord,
             dataset: DatasetRecord) -> ChampionRecord:
    # Imported here: deciding against the champion (every run) needs no torch; installing one does.
    from ..training.checkpoint import load_checkpoint, save_checkpoint
    from .export import export_for_promotion
    from .model_card import write_model_card
    from .predict import preprocessing

    state = load_checkpoint(trained.checkpoint)
    model_file = folder / "models" / run_id / "model.pt"
    # Weights, the config that rebuilds the model and what predicting needs (class names, input
    # preprocessing); no optimizer state in the deployed model.
    save_checkpoint(model_file, {"model": state["model"], "config": cfg.model_dump(mode="json"),
                                 "classes": dataset.classes, "preprocessing": preprocessing(cfg)})
    model_sha256 = file_digest(model_file)
    # The weights are complete before the exports: an ONNX failure is logged and noted in the
    # card, and the model is promoted all the same.
    onnx_file = model_file.with_name("model.onnx")
    onnx, onnx_error = export_for_promotion(model_file, onnx_file, load_arrays(dataset).x_test[:EXPORT_CHECK_IMAGES])
    card = write_model_card(model_file.with_name("MODEL_CARD.md"), run_id, cfg, trained, evaluated, dataset,
                            model_sha256, onnx, onnx_error)
    record = ChampionRecord(
        run_id=run_id, accuracy=evaluated.accuracy, test_images=evaluated.n_images, tta=evaluated.tta,
        data_md5=dataset.archive_md5, config=cfg.model_dump(mode="json"), model_file=str(model_file),
        model_sha256=model_sha256, promoted_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        onnx_file=str(onnx_file) if onnx is not None else None, model_card=str(card),
    )
    atomic_write_json(model_file.parent / "record.json", record.model_dump())
    atomic_write_json(folder / "champion.json", record.model_dump())  # the switch: one rename
    return record


def _remeasure(champion: ChampionRecord, cfg: PipelineConfig, dataset: DatasetRecord) -> float:
    model_cfg = PipelineConfig.model_validate(champion.config)
    return evaluate_checkpoint(champion.model_file, champion.model_sha256, model_cfg, cfg, dataset).accuracy
