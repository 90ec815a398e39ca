"""The cached-stage concept (cifar_pipeline/stage.py): keys that chain by content, code found from the
imports, leftovers of killed builds removed, entries of earlier versions redone once with a warning."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar_pipeline import stage as stage_module
from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.dataset import DATASET, load_arrays
from cifar_pipeline.data.download import DOWNLOAD
from cifar_pipeline.data.extra import EXTRA
from cifar_pipeline.doctor.report import DIAGNOSE
from cifar_pipeline.doctor.run import make_bench
from cifar_pipeline.evaluation import EVALUATE
from cifar_pipeline.provenance import NEUTRAL, code_files
from cifar_pipeline.report.figures import FIGURES
from cifar_pipeline.training.budget import MEASURE
from cifar_pipeline.training.records import TRAIN
from cifar_pipeline.training.step import new_model, train_batches, training_data
from tests import stage_builds

ROOT = Path(__file__).resolve().parents[1]
ALL = [DOWNLOAD, DATASET, EXTRA, MEASURE, TRAIN, EVALUATE, FIGURES, DIAGNOSE]


def test_every_stage_is_declared_once_with_its_own_folder():
    assert [s.name for s in ALL] == list(stage_builds.STAGES)
    assert len({s.folder for s in ALL}) == len(ALL)


def test_code_of_a_stage_is_what_it_imports():
    train = code_files("training.loop")
    for needed in ("data/dataset.py", "data/batches.py", "data/augment.py", "models/airnet.py", "training/step.py",
                   "training/optim.py", "training/loop.py"):
        assert needed in train
    assert not any(f.startswith(("report/", "registry/", "sweep/", "doctor/")) for f in train)
    # The decoding does not run the download's code (it only reads its record) nor any training code.
    assert code_files("data.dataset") == ("data/__init__.py", "data/dataset.py")
    assert "data/dataset.py" in code_files("evaluation") and "data/dataset.py" in code_files("doctor.run")
    assert not any(f.split("/")[0].removesuffix(".py") in NEUTRAL for f in train)


@pytest.mark.parametrize("stage", [s for s in ALL if s.module], ids=lambda s: s.name)
def test_the_code_digest_covers_every_module_a_stage_loads(stage):
    """Checked against the interpreter, not the parser: what importing the stage's module loads."""
    probe = ("import sys, json, importlib; importlib.import_module('cifar_pipeline.' + sys.argv[1]); "
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith('cifar_pipeline'))))")
    out = subprocess.run([sys.executable, "-c", probe, stage.module], capture_output=True, text=True, cwd=ROOT,
                         check=True, timeout=120).stdout
    loaded = {m.removeprefix("cifar_pipeline").lstrip(".") for m in json.loads(out.splitlines()[-1])}
    covered = {f.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for f in code_files(stage.module)}
    missing = {m for m in loaded if m and m not in covered and m.split(".")[0] not in NEUTRAL}
    assert not missing, f"{stage.name}: loaded but not in its code digest: {sorted(missing)}"


def test_keys_chain_by_content(tiny_dataset):
    record, _ = tiny_dataset
    cfg = PipelineConfig(preset="smoke").resolved({})
    other_bytes = record.model_copy(update={"sha256": "0" * 64})
    assert TRAIN.key({"dataset": record.content_digest(), "train": cfg.group("train")}) != TRAIN.key(
        {"dataset": other_bytes.content_digest(), "train": cfg.group("train")})
    # The same inputs in another stage are another entry.
    assert TRAIN.key({"x": 1}) != EVALUATE.key({"x": 1})


def test_the_doctors_first_batches_and_model_are_trainings(tiny_dataset):
    record, _ = tiny_dataset
    cfg = PipelineConfig(preset="smoke", train_subset=150, validation_images=30, batch_size=16, flip="random",
                         translate=2, cutout=4, brightness=0.1, contrast=0.2, width=8).resolved({})
    device = torch.device("cpu")
    data = training_data(cfg, record)
    bench = make_bench(cfg, load_arrays(record), device)
    ours = list(train_batches(cfg, data.x_train, data.y_train, device).epoch(0))[:3]
    doctors = list(bench.batches(cfg.batch_size).epoch(0))[:3]
    for (x, y), (dx, dy) in zip(ours, doctors, strict=True):
        assert torch.equal(y, dy) and torch.equal(x, dx)
    trained, probed = new_model(cfg, data.x_train, device).state_dict(), bench.model().state_dict()
    assert all(torch.equal(trained[k], probed[k]) for k in trained)


def _leftovers(folder: Path) -> list[Path]:
    return [p for pattern in stage_module.LEFTOVER_PATTERNS for p in folder.rglob(pattern)]


@pytest.mark.slow
@pytest.mark.parametrize("name", stage_builds.STAGES)
def test_sigkill_mid_build_then_rerun_completes_and_leaves_nothing_behind(name, tmp_path, tiny_archive):
    path, md5 = tiny_archive
    cache, marker = tmp_path / "cache", tmp_path / "blocked"
    env = {**os.environ, "CIFAR_PIPELINE_DOCTOR_BUDGET_S": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "tests.stage_builds", name, str(cache), str(path), md5,
                             str(marker)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the build never reached its block"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    stage = next(s for s in ALL if s.name == name)
    folder = cache / stage.folder
    assert _leftovers(folder), f"{name}: the kill left nothing half-done to clean up"

    os.environ["CIFAR_PIPELINE_DOCTOR_BUDGET_S"] = "2"
    try:
        stage_builds.build(name, cache, str(path), md5)
    finally:
        del os.environ["CIFAR_PIPELINE_DOCTOR_BUDGET_S"]
    assert _leftovers(folder) == []
    entries = [p for p in folder.iterdir() if p.is_dir()]
    assert entries and all((e / stage_module.RECORD).is_file() for e in entries)


def test_entries_of_an_earlier_version_are_rebuilt_once_with_a_warning(tiny_archive, tmp_path, caplog):
    path, md5 = tiny_archive
    cache = tmp_path / "cache"
    # What the version before stages left: the archive under its md5, a bare dataset record.
    (cache / "archives").mkdir(parents=True)
    shutil.copy(path, cache / "archives" / f"{md5}.tar.gz")
    old = cache / "datasets" / md5
    old.mkdir(parents=True)
    (old / "dataset.json").write_text(json.dumps({"path": str(old / "cifar10.joblib"), "sha256": "0" * 64}))
    with caplog.at_level(logging.INFO, logger="cifar_pipeline"):
        from tests.conftest import decode

        record = decode(cache / "archives" / "gone.tar.gz", md5, cache)  # no source: the old copy is moved in
    assert not (cache / "archives" / f"{md5}.tar.gz").exists()
    assert record.n_train == 200
    warned = [r.getMessage() for r in caplog.records if "are not reused" in r.getMessage()]
    assert any("moved the earlier version" in r.getMessage() for r in caplog.records)
    assert len(warned) == 1 and "build-dataset" in warned[0]


def test_a_record_of_another_format_is_rebuilt_not_trusted(tiny_dataset, tmp_path, caplog):
    record, _ = tiny_dataset
    cfg = PipelineConfig(preset="smoke", epochs=1, width=8, batch_size=32).resolved({})
    from cifar_pipeline.training.loop import train

    first = train(cfg, record, tmp_path, progress=False)
    envelope = Path(first.checkpoint).parent / stage_module.RECORD
    bare = json.loads(envelope.read_text())["record"]
    envelope.write_text(json.dumps(bare))  # a record as versions before stages wrote it
    with caplog.at_level(logging.WARNING, logger="cifar_pipeline"):
        again = train(cfg, record, tmp_path, progress=False)
    assert any("cannot be read" in r.getMessage() for r in caplog.records)
    assert again.checkpoint == first.checkpoint and np.isclose(again.epochs[-1].loss, first.epochs[-1].loss)


def test_a_stored_record_the_caller_does_not_accept_is_built_again_in_its_place(tmp_path):
    # The budget's probe (one step timed) answers a run that gives its width up, not one that could choose it.
    class Answer(stage_module.StageRecord):
        complete: bool

    stage = stage_module.Stage("answer", "answers", Answer, None)
    built = []

    def build(complete):
        return lambda _entry: built.append(complete) or Answer(complete=complete)

    assert stage.run(tmp_path, {"x": 1}, build(False)) == Answer(complete=False)
    assert stage.run(tmp_path, {"x": 1}, build(True), reuse=lambda r: not r.complete) == Answer(complete=False)
    assert stage.run(tmp_path, {"x": 1}, build(True), reuse=lambda r: r.complete) == Answer(complete=True)
    assert stage.run(tmp_path, {"x": 1}, build(False)) == Answer(complete=True)  # stored in its place
    assert built == [False, True] and len(list((tmp_path / "answers").glob("*/record.json"))) == 1


def _copy_of_the_code(root: Path) -> Path:
    src = root / "src"
    for package in ("cifar_pipeline", "tasks", "flows", "deployments"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _run(src: Path, home: Path, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "PREFECT_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-m", "flows", "run", *args], cwd=src, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_change_to_the_decoding_reruns_everything_below_it_and_a_report_change_nothing(tmp_path, tiny_archive):
    path, md5 = tiny_archive
    src = _copy_of_the_code(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import cifar_pipeline; print(cifar_pipeline.__file__)"],
                           env={**os.environ, "PYTHONPATH": str(src)}, cwd=src, capture_output=True, text=True,
                           check=True)
    assert probe.stdout.strip().startswith(str(src))  # the runs below use the copy
    out = tmp_path / "out"
    args = ("--preset", "smoke", "--source", str(path), "--md5", md5, "--output", str(out), "--train-subset", "0",
            "--test-subset", "0", "--batch-size", "32", "--width", "8", "--epochs", "1")
    first = _run(src, tmp_path / "prefect", *args)

    # A decoding change that alters the arrays: the images come out inverted.
    with open(src / "cifar_pipeline" / "data" / "dataset.py", "a") as f:
        f.write("\n\n_read = read_batches\n\n\ndef read_batches(root):\n    a = _read(root)\n"
                "    return CifarArrays(255 - a.x_train, a.y_train, 255 - a.x_test, a.y_test, a.classes)\n")
    second = _run(src, tmp_path / "prefect", *args)
    assert second["tasks"]["download"] == "Cached"
    assert {k: second["tasks"][k] for k in ("build-dataset", "train", "evaluate")} == dict.fromkeys(
        ("build-dataset", "train", "evaluate"), "Completed")
    envelopes = [json.loads(p.read_text()) for p in (out / "cache" / "datasets").glob("*/record.json")]
    old, new = sorted(envelopes, key=lambda e: e["written_at"])
    assert np.array_equal(load_arrays(DATASET.record.model_validate(new["record"])).x_train,
                          255 - load_arrays(DATASET.record.model_validate(old["record"])).x_train)
    trained = json.loads((Path(second["checkpoint"]).parent / "record.json").read_text())
    assert trained["inputs"]["dataset"] == new["record"]["sha256"]  # trained on the new arrays

    with open(src / "cifar_pipeline" / "report" / "report.py", "a") as f:
        f.write("\n# a wording change in the report\n")
    third = _run(src, tmp_path / "prefect", *args)
    assert {k: third["tasks"][k] for k in ("download", "build-dataset", "train", "evaluate")} == dict.fromkeys(
        ("download", "build-dataset", "train", "evaluate"), "Cached")
    assert third["tasks"]["report"] == "Completed" and third["test_accuracy"] == second["test_accuracy"]
    assert first["checkpoint"] != second["checkpoint"] == third["checkpoint"]
