"""predict and export on real image files, against a champion promoted by a real flow run.

One tiny model is trained once per session (a real flow run under the temporary Prefect API); the
tiny archive's test images are written as PNG files in an ImageFolder tree (class/index.png).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.dataset import load_arrays
from flows.cli import main
from tests.conftest import stored

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]

TINY = dict(preset="smoke", train_subset=0, test_subset=0, batch_size=32, width=8, epochs=4, retry_delay_s=0)


@pytest.fixture(scope="session")
def promoted(tmp_path_factory, tiny_archive, prefect_api):
    """(run summary, output_dir) of one flow run whose model became the champion."""
    from flows.pipeline import cifar_pipeline

    path, md5 = tiny_archive
    out = tmp_path_factory.mktemp("predict-outputs")
    summary = cifar_pipeline(config=PipelineConfig(**TINY, source=[str(path)], md5=md5, output_dir=str(out)))
    assert summary.promoted
    return summary, out


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory, tiny_dataset):
    """The tiny test set as lossless PNGs: root/<class>/<index>.png, plus the arrays."""
    record, _ = tiny_dataset
    arrays = load_arrays(record)
    root = tmp_path_factory.mktemp("images")
    for i, (image, label) in enumerate(zip(arrays.x_test, arrays.y_test)):
        folder = root / arrays.classes[label]
        folder.mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return root, arrays


def _champion(out: Path) -> dict:
    return json.loads((out / "registry" / "champion.json").read_text())


def _predict_json(capsys, *args) -> tuple[int, dict]:
    code = main(["predict", *map(str, args), "--format", "json"])
    lines = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(lines[-1])


def test_predict_accuracy_on_png_files_equals_the_evaluation(promoted, image_tree, capsys):
    summary, out = promoted
    root, arrays = image_tree
    code, doc = _predict_json(capsys, root, "--output-dir", out, "--top-k", "3")
    assert code == 0 and doc["failed"] == 0 and doc["images"] == len(arrays.y_test)
    assert doc["model_sha256"] == _champion(out)["model_sha256"]
    rows = doc["predictions"]
    correct = sum(Path(r["path"]).parent.name == r["predicted"] for r in rows)
    # The same checkpoint, the same pixels, the same preprocessing: the same accuracy as `evaluate`.
    assert correct / len(rows) == pytest.approx(summary.test_accuracy, abs=1e-12)
    assert 0.35 < summary.test_accuracy < 1  # a model that learned something, so a wrong pipeline would show
    first = rows[0]
    assert len(first["top"]) == 3 and first["top"][0]["class"] == first["predicted"]
    assert first["top"][0]["probability"] >= first["top"][1]["probability"] >= first["top"][2]["probability"]


def test_predict_files_folders_and_globs_with_a_corrupt_file(promoted, image_tree, tmp_path, capsys):
    _, out = promoted
    root, _ = image_tree
    cat_files = sorted((root / "cat").glob("*.png"))
    jpeg = tmp_path / "photo.jpg"
    Image.open(cat_files[0]).resize((100, 80)).save(jpeg, quality=90)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    Image.open(cat_files[1]).save(mixed / "good.png")
    (mixed / "notes.txt").write_text("not an image, and skipped inside folders")
    result = tmp_path / "predictions.csv"
    code = main(["predict", str(jpeg), str(root / "dog"), f"{root}/frog/*.png", str(mixed),
                 "--output-dir", str(out), "--output", str(result)])
    captured = capsys.readouterr()
    assert code == 1  # one file failed
    assert "images/s" in captured.err and "bad.png: truncated" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["failed"] == 1

    lines = result.read_text().splitlines()
    assert lines[0].startswith("# model_file: ") and lines[1] == f"# model_sha256: {_champion(out)['model_sha256']}"
    rows = list(csv.DictReader(lines[2:]))
    expected = 1 + len(list((root / "dog").glob("*.png"))) + len(list((root / "frog").glob("*.png"))) + 2
    assert len(rows) == expected
    by_name = {Path(r["path"]).name: r for r in rows}
    assert "notes.txt" not in by_name
    bad = by_name["bad.png"]
    assert bad["predicted"] == "" and bad["error"].startswith("truncated")
    good = [r for r in rows if not r["error"]]
    assert len(good) == expected - 1
    assert all(r["predicted"] == r["top1_class"] and 0 < float(r["probability"]) <= 1 for r in good)


@pytest.mark.parametrize("case", ["no champion", "unknown run id", "missing path", "bad top-k"])
def test_bad_arguments_exit_2_with_one_line(promoted, image_tree, tmp_path, capsys, case):
    _, out = promoted
    root, _ = image_tree
    args = {"no champion": [str(root), "--output-dir", str(tmp_path)],
            "unknown run id": [str(root), "--output-dir", str(out), "--model", "20990101T000000Z-nope"],
            "missing path": [str(tmp_path / "absent"), "--output-dir", str(out)],
            "bad top-k": [str(root), "--output-dir", str(out), "--top-k", "0"]}[case]
    assert main(["predict", *args]) == 2
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1 and captured.err.startswith("error: ")
    assert json.loads(captured.out.strip().splitlines()[-1])["status"] == "failed"


def test_promotion_writes_model_card_and_a_checked_onnx(promoted):
    summary, out = promoted
    champion = _champion(out)
    folder = Path(champion["model_file"]).parent
    assert champion["onnx_file"] == str(folder / "model.onnx") and (folder / "model.onnx").stat().st_size > 1000
    card = (folder / "MODEL_CARD.md").read_text()
    assert champion["model_card"] == str(folder / "MODEL_CARD.md")
    for text in ("## Intended use and limits", "32 x 32", "JPEG-derived", "float32 RGB batch N x 3 x 32 x 32",
                 f"{summary.test_accuracy:.2%}", "top-1 agreement 100.00%", champion["data_md5"],
                 "| true | predicted |"):
        assert text in card
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(folder / "model.onnx")).metadata_props}
    assert json.loads(meta["classes"])[3] == "cat" and json.loads(meta["preprocessing"])["tta"] == 1


def test_onnx_torch_export_and_eager_agree_on_every_fixture_image(promoted, image_tree, tmp_path, capsys):
    from cifar_pipeline.data.images import decode_image
    from cifar_pipeline.registry.export import eager_logits, onnx_logits
    from cifar_pipeline.registry.predict import load_model_file

    _, out = promoted
    root, arrays = image_tree
    files = sorted(root.rglob("*.png"))
    images = np.stack([decode_image(f) for f in files])
    model, _ = load_model_file(_champion(out)["model_file"])
    eager = eager_logits(model, images)
    onnx_out = onnx_logits(Path(_champion(out)["onnx_file"]), images)
    np.testing.assert_array_equal(eager.argmax(1), onnx_out.argmax(1))
    assert np.abs(eager - onnx_out).max() < 1e-3

    program = tmp_path / "model.pt2"
    assert main(["export", "--output-dir", str(out), "--format", "torch-export", "--output", str(program)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["check"]["top1_agreement"] == 1.0
    # Loads and runs with torch alone: no project code on the path, a batch size never seen at export.
    np.save(tmp_path / "x.npy", images.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    script = ("import numpy as np, torch; m = torch.export.load('model.pt2').module(); "
              "np.save('y.npy', m(torch.from_numpy(np.load('x.npy'))).detach().numpy())")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, check=True, timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy").argmax(1), eager.argmax(1))

    onnx_file = tmp_path / "cli.onnx"
    assert main(["export", "--output-dir", str(out), "--format", "onnx", "--output", str(onnx_file)]) == 0
    capsys.readouterr()
    # predict through ONNX Runtime: the same classes as the PyTorch engine.
    _, torch_doc = _predict_json(capsys, root, "--output-dir", out)
    _, onnx_doc = _predict_json(capsys, root, "--output-dir", out, "--engine", "onnx")
    assert onnx_doc["engine"] == "onnx"
    assert [r["predicted"] for r in onnx_doc["predictions"]] == [r["predicted"] for r in torch_doc["predictions"]]


def test_a_failed_onnx_export_still_promotes_the_weights(promoted, tiny_dataset, tmp_path, monkeypatch):
    import cifar_pipeline.registry.export as export
    from cifar_pipeline.errors import ExportError
    from cifar_pipeline.evaluation import EvalRecord
    from cifar_pipeline.registry.champion import update_registry
    from cifar_pipeline.training.records import TrainRecord

    summary, out = promoted
    record, _ = tiny_dataset
    trained = stored(Path(summary.checkpoint).with_name("record.json"), TrainRecord)
    evaluated = stored(next((out / "cache" / "evaluations").glob("*/record.json")), EvalRecord)

    def broken(*args, **kwargs):
        raise ExportError("ONNX export failed: RuntimeError: unsupported operator")

    monkeypatch.setattr(export, "export_onnx", broken)
    cfg = PipelineConfig(**TINY, output_dir=str(tmp_path)).resolved()
    decision = update_registry(tmp_path / "registry", "run-a", cfg, trained, evaluated, record, 1.0)
    assert decision.promoted and decision.champion.onnx_file is None
    folder = tmp_path / "registry" / "models" / "run-a"
    assert (folder / "model.pt").is_file() and not (folder / "model.onnx").exists()
    assert "the export failed** (ONNX export failed: RuntimeError: unsupported operator)" in (
        folder / "MODEL_CARD.md").read_text()


def test_predict_flow_scores_a_folder_into_a_csv(promoted, image_tree):
    from flows.predict import predict_folder

    _, out = promoted
    root, arrays = image_tree
    summary = predict_folder(folder=str(root), output_dir=str(out))
    assert summary.failed == 0 and summary.images == len(arrays.y_test)
    path = Path(summary.output)
    assert path.parent == out.resolve() / "predictions" and path.suffix == ".csv"
    assert len(path.read_text().splitlines()) == 2 + 1 + len(arrays.y_test)


def test_report_shows_labelled_test_images_confused_pairs_and_loss_by_step(promoted):
    from cifar_pipeline.training.records import TrainRecord

    summary, _ = promoted
    run_dir = Path(summary.run_dir)
    for name in ("samples.png", "confused.png", "curves.png"):
        with Image.open(run_dir / name) as image:
            assert image.width > 300 and image.height > 100, name
    report = Path(summary.report).read_text()
    assert "## Predictions on test images" in report and "![Most-confused pairs](confused.png)" in report
    trained = stored(Path(summary.checkpoint).with_name("record.json"), TrainRecord)
    assert len(trained.loss_by_step()) == trained.steps  # a few steps: every one recorded
    assert [s for s, _ in trained.loss_by_step()] == list(range(1, trained.steps + 1))
