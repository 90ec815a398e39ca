import math

import pytest
import torch

from cifar_pipeline.config import PRESETS, PipelineConfig
from cifar_pipeline.errors import TrainingDiverged
from cifar_pipeline.evaluation import evaluate
from cifar_pipeline.training.checkpoint import load_checkpoint
from cifar_pipeline.training.loop import train
from cifar_pipeline.training.records import training_dir, training_key

from .interrupted import same_weights, stopped_and_resumed

# Each preset, shrunk to a few CPU steps on the tiny archive; the method itself is unchanged.
SHRUNK = {
    "seed": dict(train_subset=16, epochs=20),  # one fixed batch: plain SGD at lr 0.01 moves slowly
    "smoke": dict(train_subset=0, epochs=3, batch_size=32, width=8),
    "cpu": dict(epochs=3, batch_size=32, width=8),
    "fast": dict(epochs=3, batch_size=32, width=8, compile=False),
}


def test_every_preset_has_a_shrunk_variant():
    assert set(SHRUNK) == set(PRESETS)


@pytest.mark.parametrize("preset", sorted(SHRUNK))
def test_loss_decreases_for_each_preset(preset, tiny_dataset, tmp_path):
    record, _ = tiny_dataset
    cfg = PipelineConfig(preset=preset, **SHRUNK[preset]).resolved({})
    result = train(cfg, record, tmp_path, progress=False)
    losses = [e.loss for e in result.epochs]
    assert len(losses) == math.ceil(cfg.epochs)
    assert losses[-1] < losses[0] - 0.002, losses
    assert all(e.images_per_second > 0 and e.data_seconds < e.seconds for e in result.epochs)


def test_checkpoint_holds_everything_needed_to_resume(tiny_dataset, tmp_path):
    record, _ = tiny_dataset
    cfg = PipelineConfig(preset="smoke", **SHRUNK["smoke"]).resolved({})
    result = train(cfg, record, tmp_path, progress=False)
    state = load_checkpoint(result.checkpoint)  # weights_only=True inside
    assert {"model", "optimizer", "epoch", "step", "rng", "config", "history", "key"} <= set(state)
    assert state["epoch"] == 3 and state["key"] == result.key
    assert state["config"]["lr"] == cfg.lr
    assert isinstance(state["rng"]["torch"], torch.Tensor)


def test_finished_training_is_reused_not_repeated(tiny_dataset, tmp_path):
    record, _ = tiny_dataset
    cfg = PipelineConfig(preset="smoke", **SHRUNK["smoke"]).resolved({})
    first = train(cfg, record, tmp_path, progress=False)
    mtime = (training_dir(tmp_path, first.key) / "checkpoint.pt").stat().st_mtime_ns
    again = train(cfg, record, tmp_path, progress=False)
    assert again == first
    assert (training_dir(tmp_path, first.key) / "checkpoint.pt").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("preset", ["cpu", "fast"])  # Muon state; lookahead state, flips, translation
def test_interrupted_training_resumes_to_the_same_weights(preset, tiny_dataset, tmp_path):
    record, _ = tiny_dataset
    cfg = PipelineConfig(preset=preset, **SHRUNK[preset]).resolved({})
    straight = train(cfg, record, tmp_path / "straight", progress=False)
    resumed = stopped_and_resumed(cfg, record, tmp_path / "resumed")
    assert resumed.resumed_from_epoch == 2
    assert same_weights(straight.checkpoint, resumed.checkpoint) == []
    assert [e.loss for e in resumed.epochs] == [e.loss for e in straight.epochs]


def test_key_changes_with_training_fields_only(tiny_dataset):
    record, _ = tiny_dataset
    base = PipelineConfig(preset="smoke").resolved({})
    assert training_key(base, record) == training_key(PipelineConfig(preset="smoke", tta=2).resolved({}), record)
    assert training_key(base, record) != training_key(PipelineConfig(preset="smoke", lr=0.5).resolved({}), record)
    # Other decoded bytes (a new archive, or new decoding code) make another key.
    assert training_key(base, record) != training_key(base, record.model_copy(update={"sha256": "f" * 64}))


def test_nan_loss_stops_at_once_with_the_checklist(tiny_dataset, tmp_path):
    record, _ = tiny_dataset
    cfg = PipelineConfig(preset="seed", lr=100, epochs=5, train_subset=64).resolved({})
    with pytest.raises(TrainingDiverged) as info:
        train(cfg, record, tmp_path, progress=False)
    message = str(info.value)
    assert "training stopped" in message and "learning rate" in message and "zero_grad" in message
    assert "epoch 1" in message


def test_chance_level_loss_is_flagged(tiny_dataset, tmp_path):
    record, _ = tiny_dataset
    cfg = PipelineConfig(preset="seed", lr=1e-7, epochs=1).resolved({})
    result = train(cfg, record, tmp_path, progress=False)
    assert result.epochs[0].at_chance
    assert "chance level" in result.warnings[0]


def test_evaluation_reports_per_class_and_confusion(tiny_dataset, tmp_path):
    record, _ = tiny_dataset
    cfg = PipelineConfig(preset="smoke", **SHRUNK["smoke"]).resolved({})
    trained = train(cfg, record, tmp_path, progress=False)
    result = evaluate(cfg, trained, record, tmp_path)
    confusion = result.confusion_frame()
    assert confusion.shape == (10, 10) and confusion.values.sum() == 100
    assert result.accuracy == pytest.approx(confusion.values.trace() / 100)
    per_class = result.per_class_frame()
    assert list(per_class["class"]) == record.classes and per_class["images"].sum() == 100
    assert 0 <= result.accuracy <= 1 and result.loss > 0


@pytest.mark.parametrize("level", [0, 1, 2])
def test_tta_levels_all_evaluate(tiny_dataset, tmp_path, level):
    record, _ = tiny_dataset
    cfg = PipelineConfig(preset="smoke", tta=level, **SHRUNK["smoke"]).resolved({})
    trained = train(cfg, record, tmp_path, progress=False)
    assert evaluate(cfg, trained, record, tmp_path).tta == level


def test_a_changed_checkpoint_is_refused_by_evaluation(tiny_dataset, tmp_path):
    from cifar_pipeline.errors import IntegrityError

    record, _ = tiny_dataset
    cfg = PipelineConfig(preset="smoke", **SHRUNK["smoke"]).resolved({})
    trained = train(cfg, record, tmp_path, progress=False)
    with open(trained.checkpoint, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(IntegrityError, match="refusing to evaluate"):
        evaluate(cfg, trained, record, tmp_path)


def test_validation_split_is_held_out_fixed_by_the_seed_and_scored_each_epoch(tiny_dataset, tmp_path):
    from cifar_pipeline.data.dataset import load_arrays
    from cifar_pipeline.training.step import training_data

    record, _ = tiny_dataset
    cfg = PipelineConfig(preset="smoke", **SHRUNK["smoke"], validation_images=50).resolved({})
    data = training_data(cfg, record)
    assert (len(data.y_train), len(data.y_val)) == (150, 50)
    again = training_data(cfg, record)
    assert (again.x_val == data.x_val).all()
    other_seed = training_data(cfg.model_copy(update={"seed": 1}), record)
    assert not (other_seed.x_val == data.x_val).all()
    # Held out means absent from training: every image of the split lands on exactly one side.
    rows = {img.tobytes() for img in load_arrays(record).x_train}
    train_rows, val_rows = {i.tobytes() for i in data.x_train}, {i.tobytes() for i in data.x_val}
    assert not train_rows & val_rows and train_rows | val_rows == rows

    result = train(cfg, record, tmp_path, progress=False)
    assert result.train_images == 150
    assert all(e.val_accuracy is not None and 0 <= e.val_accuracy <= 1 and e.val_loss > 0 for e in result.epochs)
    plain = train(PipelineConfig(preset="smoke", **SHRUNK["smoke"]).resolved({}), record, tmp_path, progress=False)
    assert all(e.val_accuracy is None for e in plain.epochs) and plain.train_images == 200


def test_loss_by_step_is_recorded_in_chunks_that_average_to_the_epoch_loss(tiny_dataset, tmp_path):
    record, _ = tiny_dataset
    cfg = PipelineConfig(preset="smoke", **SHRUNK["smoke"]).resolved({})
    epoch = train(cfg, record, tmp_path, progress=False).epochs[0]
    steps = 200 // 32
    assert epoch.loss_chunk == 1 and len(epoch.step_losses) == steps
    # The epoch's loss is the image-weighted mean of the steps; all batches here hold 32 images.
    assert sum(epoch.step_losses) / steps == pytest.approx(epoch.loss, rel=1e-3)
