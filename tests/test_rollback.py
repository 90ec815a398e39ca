"""`cifar-pipeline champion` and `champion rollback`: the lineage, atomic switches, predictions that follow.

Two tiny models are trained for real (two seeds) and registered by the real promotion code; the
second becomes the champion. Rollbacks then go through the command line in this process, and
through a separate process that is SIGKILLed at forced points and at random moments.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.dataset import load_arrays
from cifar_pipeline.evaluation import evaluate
from cifar_pipeline.files import file_digest
from cifar_pipeline.registry import export as export_module
from cifar_pipeline.registry.champion import ChampionRecord, read_champion, read_history, update_registry
from cifar_pipeline.registry.rollback import lineage
from cifar_pipeline.training.loop import train
from flows.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(preset="smoke", train_subset=0, test_subset=0, batch_size=32, width=8, epochs=2)


@pytest.fixture(scope="module")
def two_models(tiny_dataset, tmp_path_factory):
    """Two trainings of the tiny archive (seeds 1 and 2): [(cfg, trained, evaluated)], and the dataset."""
    record, _ = tiny_dataset
    cache = tmp_path_factory.mktemp("rollback-cache")
    runs = []
    for seed in (1, 2):
        cfg = PipelineConfig(**SMALL, seed=seed).resolved({})
        trained = train(cfg, record, cache, progress=False)
        runs.append((cfg, trained, evaluate(cfg, trained, record, cache)))
    return runs, record


@pytest.fixture
def registry(two_models, tmp_path, monkeypatch):
    """A registry whose champion `run-b` replaced `run-a`: (output_dir, registry folder)."""
    # The ONNX export at promotion takes longer than everything else here and plays no part in a rollback.
    monkeypatch.setattr(export_module, "export_for_promotion", lambda *args: (None, "not exported in this test"))
    (cfg_a, trained_a, eval_a), (cfg_b, trained_b, eval_b) = two_models[0]
    folder = tmp_path / "registry"
    assert update_registry(folder, "run-a", cfg_a, trained_a, eval_a, two_models[1], 1.0).promoted
    # The gate needs a gain; the second model's recorded accuracy is set above the first one's.
    better = eval_b.model_copy(update={"accuracy": eval_a.accuracy + 0.1})
    assert update_registry(folder, "run-b", cfg_b, trained_b, better, two_models[1], 1.0).promoted
    return tmp_path, folder


def _cli(capsys, *args: str) -> tuple[int, dict, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]), err


def test_champion_shows_the_lineage_and_rollback_walks_it_back_and_forth(registry, capsys):
    out, folder = registry
    code, shown, table = _cli(capsys, "champion", "--output-dir", str(out))
    assert code == 0 and shown["champion"]["run_id"] == "run-b"
    assert [p["run_id"] for p in shown["predecessors"]] == ["run-a"]
    assert "champion" in table and "previous" in table and "run-a" in table

    code, result, err = _cli(capsys, "champion", "rollback", "--output-dir", str(out), "--reason", "bad labels")
    assert (code, result["status"], result["champion"], result["previous"]) == (0, "rolled-back", "run-a", "run-b")
    assert read_champion(folder).run_id == "run-a"
    last = read_history(folder).iloc[-1]
    assert last["run_id"] == "run-a" and last["reason"] == "rollback from run-b to run-a: bad labels"
    shown = _cli(capsys, "champion", "--output-dir", str(out))[1]
    assert shown["champion"]["run_id"] == "run-a" and shown["predecessors"] == []
    assert shown["registered"] == ["run-a", "run-b"]

    # Nothing before the first champion: exit 2, one line, nothing changed.
    code, result, err = _cli(capsys, "champion", "rollback", "--output-dir", str(out))
    assert code == 2 and result["status"] == "failed" and "no earlier champion" in result["error"]
    assert err.count("\n") == 1 and read_champion(folder).run_id == "run-a"

    # A named model that was rolled back can come back; the lineage then has run-a below it again.
    code, result, _ = _cli(capsys, "champion", "rollback", "run-b", "--output-dir", str(out))
    assert code == 0 and read_champion(folder).run_id == "run-b"
    assert [p.run_id for p in lineage(folder).predecessors] == ["run-a"]
    assert _cli(capsys, "champion", "rollback", "run-b", "--output-dir", str(out))[1]["status"] == "unchanged"


def test_an_unknown_run_id_exits_2_with_one_line_and_changes_nothing(registry, capsys):
    out, folder = registry
    before = (folder / "champion.json").read_bytes(), (folder / "history.csv").read_bytes()
    code, result, err = _cli(capsys, "champion", "rollback", "no-such-run", "--output-dir", str(out))
    assert code == 2 and "unknown run id 'no-such-run'" in result["error"] and "run-a" in result["error"]
    assert err.count("\n") == 1 and "Traceback" not in err
    assert ((folder / "champion.json").read_bytes(), (folder / "history.csv").read_bytes()) == before


def test_rollback_with_no_earlier_champion_exits_2(two_models, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export_module, "export_for_promotion", lambda *args: (None, "not exported in this test"))
    cfg, trained, evaluated = two_models[0][0]
    update_registry(tmp_path / "registry", "only", cfg, trained, evaluated, two_models[1], 1.0)
    code, result, err = _cli(capsys, "champion", "rollback", "--output-dir", str(tmp_path))
    assert code == 2 and "no earlier champion" in result["error"] and err.count("\n") == 1
    assert read_champion(tmp_path / "registry").run_id == "only"


def test_a_damaged_model_file_is_not_made_the_champion(registry, capsys):
    out, folder = registry
    model_a = folder / "models" / "run-a" / "model.pt"
    model_a.write_bytes(model_a.read_bytes()[:-10])
    code, result, err = _cli(capsys, "champion", "rollback", "--output-dir", str(out))
    assert code == 1 and "does not match its recorded sha256" in result["error"]
    assert read_champion(folder).run_id == "run-b"


def test_predict_export_and_score_folder_follow_the_new_champion_at_once(registry, two_models, tmp_path, capsys):
    from cifar_pipeline.registry.predict import load_predictor, resolve_model
    from cifar_pipeline.registry.prediction_files import score_folder

    out, folder = registry
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(load_arrays(two_models[1]).x_test[3]).save(images / "test3.png")

    def predicted() -> dict:
        result = tmp_path / "predictions.json"
        assert main(["predict", str(images / "test3.png"), "--output-dir", str(out), "--format", "json",
                     "--output", str(result), "--device", "cpu"]) == 0
        capsys.readouterr()
        return json.loads(result.read_text())

    def direct(run_id: str) -> list[float]:
        model = folder / "models" / run_id / "model.pt"
        logits = load_predictor(model, "cpu").logits(np.asarray(Image.open(images / "test3.png"))[None])
        return (np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())[0].tolist()

    before = predicted()
    assert before["model_sha256"] == read_champion(folder).model_sha256
    assert main(["champion", "rollback", "--output-dir", str(out)]) == 0
    capsys.readouterr()
    after = predicted()
    model_a = folder / "models" / "run-a" / "model.pt"
    assert after["model_file"] == str(model_a) and after["model_sha256"] == file_digest(model_a)
    assert after["model_sha256"] != before["model_sha256"]
    # The probabilities are run-a's own, not run-b's: the new champion's weights are what scored the file.
    top = after["predictions"][0]["top"][0]
    probabilities_a, probabilities_b = direct("run-a"), direct("run-b")
    assert probabilities_a != probabilities_b
    assert top["probability"] == pytest.approx(max(probabilities_a), abs=1e-5)
    assert resolve_model(out) == model_a  # what `export --model champion` loads
    scored = score_folder(str(images), output_dir=str(out), output=str(tmp_path / "scored.csv"), progress=print)
    assert scored.model_sha256 == file_digest(model_a)


# A rollback in a separate process, held still just before or just after the rename of
# champion.json (os.replace, which atomic writes end with), or looping between the two models.
ROLLBACK_PROCESS = r"""
import os, sys, time
from pathlib import Path
from cifar_pipeline.registry.rollback import rollback

folder, mode = Path(sys.argv[1]), sys.argv[2]
real_replace = os.replace

def replace(src, dst):
    if Path(dst).name == "champion.json" and mode == "before-rename":
        print("held", flush=True)
        time.sleep(120)
    real_replace(src, dst)
    if Path(dst).name == "champion.json" and mode == "after-rename":
        print("held", flush=True)
        time.sleep(120)

os.replace = replace
if mode == "loop":
    print("held", flush=True)
    while True:
        for run_id in ("run-a", "run-b"):
            rollback(folder, run_id, "kill test")
else:
    rollback(folder, None, "kill test")
"""


def _kill_during(folder: Path, mode: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", ROLLBACK_PROCESS, str(folder), mode], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        if mode == "loop":
            time.sleep(random.uniform(0.2, 1.0))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _consistent_champion(folder: Path) -> str:
    """champion.json parses, is one model's record exactly, and its model file is intact."""
    champion = ChampionRecord.model_validate_json((folder / "champion.json").read_text())
    recorded = json.loads((folder / "models" / champion.run_id / "record.json").read_text())
    assert json.loads((folder / "champion.json").read_text()) == recorded
    assert file_digest(champion.model_file) == champion.model_sha256
    read_history(folder)  # parses: never half-written
    assert lineage(folder).champion.run_id == champion.run_id
    return champion.run_id


@pytest.mark.slow
def test_a_killed_rollback_leaves_the_old_or_the_new_champion_never_a_mix(registry, capsys):
    out, folder = registry
    _kill_during(folder, "before-rename")  # the new champion.json is complete under its temp name
    assert _consistent_champion(folder) == "run-b"
    _kill_during(folder, "after-rename")  # switched; the history row not yet written
    assert _consistent_champion(folder) == "run-a"
    # The lineage already reads as after a rollback: run-a has no predecessor, run-b can be named.
    assert lineage(folder).predecessors == []
    for _ in range(2):
        _kill_during(folder, "loop")
        assert _consistent_champion(folder) in ("run-a", "run-b")
    code, result, _ = _cli(capsys, "champion", "rollback", "run-b", "--output-dir", str(out))
    assert code == 0 and read_champion(folder).run_id == "run-b"
