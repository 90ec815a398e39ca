"""Real crashes: a training process killed with SIGKILL, and writes that fail as on a full disk."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.evaluation import evaluate
from cifar_pipeline.training.checkpoint import load_checkpoint, save_checkpoint
from cifar_pipeline.training.loop import train
from cifar_pipeline.training.records import training_dir, training_key

ROOT = Path(__file__).resolve().parents[1]

# The cpu recipe (EMA, alternate flips, translation) shrunk; enough epochs to kill it mid-way.
CFG = dict(preset="cpu", width=8, batch_size=32, epochs=40, tta=0)

# A run picks its threads from the CPU's load when it starts, and another thread count sums in another
# order: both sides of the comparison plan for an idle CPU, whatever else the machine is doing.
PIN_THREADS = """
import cifar_pipeline.training.loop as loop
from cifar_pipeline.training import cpu_tuning
loop.current_cpu_settings = lambda *args, **kwargs: cpu_tuning.current_cpu_settings(*args, load=0.0)
"""

TRAIN_SCRIPT = PIN_THREADS + """
import sys
from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.dataset import DatasetRecord
from cifar_pipeline.training.loop import train
cfg = PipelineConfig.model_validate_json(sys.argv[1])
record = DatasetRecord.model_validate_json(sys.argv[2])
train(cfg, record, sys.argv[3], progress=False)
"""


def _epoch_of(path: Path) -> int:
    try:
        return load_checkpoint(path)["epoch"]
    except Exception:  # noqa: BLE001 - not there yet
        return 0


@pytest.mark.slow
def test_sigkill_mid_training_resumes_and_ends_with_the_same_weights(tiny_dataset, tmp_path, monkeypatch):
    import cifar_pipeline.training.loop as loop
    from cifar_pipeline.training import cpu_tuning

    record, _ = tiny_dataset
    cfg = PipelineConfig(**CFG).resolved({})
    # The same pin as the subprocess's, for the straight run and the resumed one.
    monkeypatch.setattr(loop, "current_cpu_settings",
                        lambda *args, **kwargs: cpu_tuning.current_cpu_settings(*args, load=0.0))
    straight = train(cfg, record, tmp_path / "straight", progress=False)

    cache = tmp_path / "killed"
    folder = training_dir(cache, training_key(cfg, record))
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, cfg.model_dump_json(), record.model_dump_json(),
                             str(cache)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while _epoch_of(folder / "checkpoint.pt") < 3:
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(random.uniform(0, 0.2))  # somewhere inside a later epoch, or inside a save
        assert not (folder / "record.json").exists()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = _epoch_of(folder / "checkpoint.pt")

    resumed = train(cfg, record, cache, progress=False)
    assert resumed.resumed_from_epoch == killed_at >= 3
    a = load_checkpoint(straight.checkpoint)["model"]
    b = load_checkpoint(resumed.checkpoint)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [e.loss for e in resumed.epochs] == [e.loss for e in straight.epochs]
    assert not list(folder.glob(".*.tmp")), "leftover temp files of the killed writer were removed"


def test_a_half_written_checkpoint_is_never_loaded(tiny_dataset, tmp_path):
    record, _ = tiny_dataset
    cfg = PipelineConfig(**{**CFG, "epochs": 2}).resolved({})
    folder = training_dir(tmp_path, training_key(cfg, record))
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated by a crash")
    result = train(cfg, record, tmp_path, progress=False)
    assert result.resumed_from_epoch is None and len(result.epochs) == 2


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like ENOSPC
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
try:
    exec(sys.argv[2])
except OSError as exc:
    print("OSError", exc.errno)
else:
    print("no error")
"""


def _with_full_disk(limit: int, code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(limit), code], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1, "model": {"w": torch.zeros(8)}})
    code = ("import torch; from cifar_pipeline.training.checkpoint import save_checkpoint; "
            f"save_checkpoint({str(path)!r}, {{'epoch': 2, 'model': {{'w': torch.ones(100000)}}}})")
    assert _with_full_disk(64 * 1024, code) == "OSError 27"
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.zeros(8))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_full_disk_while_writing_the_report_keeps_the_previous_one(tiny_dataset, tmp_path):
    from cifar_pipeline.data.download import ArchiveRecord
    from cifar_pipeline.report.report import write_report

    record, _ = tiny_dataset
    cfg = PipelineConfig(**{**CFG, "epochs": 1}).resolved({})
    trained = train(cfg, record, tmp_path, progress=False)
    evaluated = evaluate(cfg, trained, record, tmp_path)
    archive = ArchiveRecord(path="a.tar.gz", md5=record.archive_md5, size=1, source="test")
    run_dir = tmp_path / "run"
    args = dict(run_id="r1", cfg=cfg.model_dump(), requested={"preset": "cpu"}, archive=archive.model_dump(),
                dataset=record.model_dump(), trained=trained.model_dump(), evaluated=evaluated.model_dump(),
                timings={"train": 1.0})
    write_report(run_dir, "r1", cfg, PipelineConfig(preset="cpu"), archive, record, trained, evaluated, {"train": 1.0})
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    code = (
        "import json; from cifar_pipeline.report.report import write_report; from cifar_pipeline.config import "
        "PipelineConfig; from cifar_pipeline.data.download import ArchiveRecord; "
        "from cifar_pipeline.data.dataset import DatasetRecord; from cifar_pipeline.training.records import TrainRecord; "
        f"from cifar_pipeline.evaluation import EvalRecord; a = json.loads({json.dumps(json.dumps(args))}); "
        f"write_report({str(run_dir)!r}, 'r2', PipelineConfig(**a['cfg']), PipelineConfig(**a['requested']), "
        "ArchiveRecord(**a['archive']), DatasetRecord(**a['dataset']), TrainRecord(**a['trained']), "
        "EvalRecord(**a['evaluated']), a['timings'])"
    )
    assert _with_full_disk(8 * 1024, code) == "OSError 27"
    after = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert after == before  # every file intact, and no temp file left behind
