"""Champion and challenger: promotion decisions, atomic switches, the run history."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.download import ArchiveRecord
from cifar_pipeline.evaluation import evaluate, evaluate_checkpoint
from cifar_pipeline.files import file_digest
from cifar_pipeline.registry.champion import decide, read_champion, read_history, update_registry
from cifar_pipeline.report.report import write_report
from cifar_pipeline.training.checkpoint import load_checkpoint
from cifar_pipeline.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(preset="smoke", train_subset=0, test_subset=0, batch_size=32, width=8, epochs=2)


@pytest.fixture
def trained_run(tiny_dataset, tmp_path):
    record, _ = tiny_dataset
    cfg = PipelineConfig(**SMALL, output_dir=str(tmp_path)).resolved({})
    trained = train(cfg, record, tmp_path / "cache", progress=False)
    return cfg, trained, evaluate(cfg, trained, record, tmp_path / "cache"), record


def test_decision_needs_more_than_the_margin():
    assert decide(0.50, None, 0.0) == (True, "no champion yet: the first model becomes the champion")
    assert decide(0.52, 0.50, 0.01)[0] and not decide(0.505, 0.50, 0.01)[0]
    assert not decide(0.50, 0.50, 0.0)[0]  # a tie keeps the champion
    assert "the champion stays" in decide(0.40, 0.50, 0.0)[1]


def test_first_run_is_promoted_an_equal_one_is_not_a_better_one_is(trained_run, tmp_path):
    cfg, trained, evaluated, record = trained_run
    registry = tmp_path / "registry"
    first = update_registry(registry, "run-1", cfg, trained, evaluated, record, 10.0)
    assert first.promoted and first.champion.run_id == "run-1"
    champion_file = Path(first.champion.model_file)
    assert champion_file.is_file() and file_digest(champion_file) == first.champion.model_sha256
    assert "optimizer" not in load_checkpoint(champion_file)  # weights and config only

    same = update_registry(registry, "run-2", cfg, trained, evaluated, record, 10.0)
    assert not same.promoted and same.champion.run_id == "run-1"
    assert same.champion_accuracy == evaluated.accuracy

    margin_cfg = PipelineConfig(**SMALL, promote_margin=0.05).resolved({})
    slightly = evaluated.model_copy(update={"accuracy": evaluated.accuracy + 0.03})
    assert not update_registry(registry, "run-3", margin_cfg, trained, slightly, record, 10.0).promoted
    clearly = evaluated.model_copy(update={"accuracy": evaluated.accuracy + 0.06})
    better = update_registry(registry, "run-4", margin_cfg, trained, clearly, record, 10.0)
    assert better.promoted and read_champion(registry).run_id == "run-4"

    history = read_history(registry)
    assert list(history["run_id"]) == ["run-1", "run-2", "run-3", "run-4"]
    assert list(history["promoted"]) == [True, False, False, True]


def test_champion_is_remeasured_on_a_different_test_set(trained_run, tmp_path):
    cfg, trained, evaluated, record = trained_run
    registry = tmp_path / "registry"
    update_registry(registry, "run-1", cfg, trained, evaluated, record, 1.0)
    other = PipelineConfig(**{**SMALL, "test_subset": 40, "tta": 0}).resolved({})
    other_eval = evaluate(other, trained, record, tmp_path / "cache")
    decision = update_registry(registry, "run-2", other, trained, other_eval, record, 1.0)
    champion = read_champion(registry)
    expected = evaluate_checkpoint(champion.model_file, champion.model_sha256, cfg, other, record).accuracy
    assert decision.champion_accuracy == expected == other_eval.accuracy  # same weights, same 40 images


def test_report_shows_the_decision_and_the_trend(trained_run, tmp_path):
    cfg, trained, evaluated, record = trained_run
    registry = tmp_path / "registry"
    archive = ArchiveRecord(path="a", md5=record.archive_md5, size=1, source="test")
    for i in range(3):
        decision = update_registry(registry, f"run-{i}", cfg, trained, evaluated, record, 1.0)
    report = write_report(tmp_path / "run", "run-2", cfg, PipelineConfig(preset="smoke"), archive, record,
                          trained, evaluated, {"train": 1.0}, decision=decision)
    assert "## Champion" in report.markdown and "**not promoted**" in report.markdown
    assert "| difference | +0.00% |" in report.markdown
    assert "![Recent runs](history.png)" in report.markdown and (tmp_path / "run" / "history.png").is_file()


PROMOTE_LOOP = """
import sys
from pathlib import Path
from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.dataset import DatasetRecord
from cifar_pipeline.evaluation import EvalRecord
from cifar_pipeline.registry.champion import update_registry
from cifar_pipeline.training.records import TrainRecord
cfg = PipelineConfig.model_validate_json(sys.argv[1])
trained = TrainRecord.model_validate_json(sys.argv[2])
evaluated = EvalRecord.model_validate_json(sys.argv[3])
record = DatasetRecord.model_validate_json(sys.argv[4])
i = 0
while True:  # every run better than the last: every one is promoted
    i += 1
    better = evaluated.model_copy(update={"accuracy": i / 1e6})
    update_registry(Path(sys.argv[5]), f"{sys.argv[6]}-run-{i}", cfg, trained, better, record, 1.0)
    print(i, flush=True)
"""


@pytest.mark.slow
def test_killing_a_promotion_never_leaves_a_mix_of_two_models(trained_run, tmp_path):
    cfg, trained, evaluated, record = trained_run
    registry = tmp_path / "registry"
    for attempt in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", PROMOTE_LOOP, cfg.model_dump_json(), trained.model_dump_json(),
             evaluated.model_dump_json(), record.model_dump_json(), str(registry), f"attempt{attempt}"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one promotion done
        time.sleep(random.uniform(0.05, 0.5))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        champion = read_champion(registry)  # parses: never half-written
        assert file_digest(champion.model_file) == champion.model_sha256
        recorded = json.loads((Path(champion.model_file).parent / "record.json").read_text())
        assert recorded["run_id"] == champion.run_id
        read_history(registry)  # parses: never half-written
    # The next run restores a history row lost between the switch and the history write.
    update_registry(registry, "next", cfg, trained, evaluated, record, 1.0)
    history = read_history(registry)
    assert read_champion(registry).run_id in set(history["run_id"])
    assert history["run_id"].is_unique
