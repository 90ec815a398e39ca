"""Extra labelled images from ImageFolder trees: real PNG/JPEG files written from the tiny archive."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cifar_pipeline.data.extra as extra_data
from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.dataset import load_arrays
from cifar_pipeline.data.extra import build_extra_data, load_extra, scan_folders
from cifar_pipeline.errors import BadImagesError, ConfigError
from cifar_pipeline.training.records import training_key
from cifar_pipeline.training.step import training_data


@pytest.fixture
def archive_images(tiny_dataset):
    record, _ = tiny_dataset
    arrays = load_arrays(record)
    return arrays.x_train, arrays.y_train, arrays.classes


def write_folder(root: Path, images, labels, classes, start: int = 0, suffix: str = "png") -> list[Path]:
    """An ImageFolder tree: CLASS/batch-<i // 10>/img_<i>.<suffix>, the class's folder one level deeper."""
    paths = []
    for i, (image, label) in enumerate(zip(images, labels), start):
        path = root / classes[label] / f"batch-{i // 10}" / f"img_{i:04d}.{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def build(folder, classes, cache, **kwargs):
    return build_extra_data(scan_folders([str(folder)], classes), cache, **kwargs)


def test_folder_is_decoded_counted_and_cached(archive_images, tmp_path):
    x, y, classes = archive_images
    folder = tmp_path / "extra"
    write_folder(folder, x[:12], y[:12], classes)
    write_folder(folder, x[12:15], y[12:15], classes, start=12, suffix="jpg")
    Image.fromarray(x[15]).resize((64, 48)).save(folder / classes[y[15]] / "wide.png")
    Image.fromarray(x[16]).convert("L").save(folder / classes[y[16]] / "gray.png")
    Image.fromarray(x[17]).convert("P").save(folder / classes[y[17]] / "palette.bmp")
    rgba = np.concatenate([x[18], np.full((32, 32, 1), 200, dtype=np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(folder / classes[y[18]] / "alpha.png")
    Image.fromarray(x[19]).save(folder / classes[y[19]] / "lossless.webp", lossless=True)
    (folder / classes[0] / "notes.txt").write_text("not an image suffix: ignored")

    record = build(folder, classes, tmp_path / "cache")
    assert record.n_images == 20 and record.resized == 1 and record.converted == 3
    assert record.counts == [np.bincount(y[:20], minlength=10).tolist()]
    xe, ye = load_extra(record)
    assert xe.shape == (20, 32, 32, 3) and xe.dtype == np.uint8
    decoded = {img.tobytes() for img in xe}
    assert all(img.tobytes() in decoded for img in x[:12])  # PNG is lossless: pixel for pixel
    assert x[19].tobytes() in decoded  # so is lossless WebP
    assert sorted(ye.tolist()) == sorted(y[:20].tolist())

    again = build(folder, classes, tmp_path / "cache")
    assert again == record  # the persisted record, nothing decoded again


def test_added_file_decodes_only_it_and_changes_the_digest(archive_images, tiny_dataset, tmp_path, monkeypatch):
    x, y, classes = archive_images
    folder = tmp_path / "extra"
    write_folder(folder, x[:10], y[:10], classes)
    first = build(folder, classes, tmp_path / "cache")

    decoded = []
    real = extra_data.decode_image
    monkeypatch.setattr(extra_data, "decode_image", lambda p, **kw: decoded.append(Path(p)) or real(p, **kw))
    added = write_folder(folder, x[10:11], y[10:11], classes, start=10)
    second = build(folder, classes, tmp_path / "cache")
    assert decoded == added
    assert (second.decoded, second.reused, second.n_images) == (1, 10, 11)
    assert second.digest != first.digest and second.path != first.path
    cfg = PipelineConfig(preset="smoke").resolved({})
    data, _ = tiny_dataset
    assert training_key(cfg, data, first) != training_key(cfg, data, second)
    assert training_key(cfg, data, first) != training_key(cfg, data)


def test_extra_images_join_the_training_split_only(archive_images, tiny_dataset, tmp_path):
    x, y, classes = archive_images
    record, _ = tiny_dataset
    folder = tmp_path / "extra"
    write_folder(folder, x[:10], y[:10], classes)
    extra = build(folder, classes, tmp_path / "cache")
    cfg = PipelineConfig(preset="smoke", train_subset=0, validation_images=50).resolved({})
    plain, more = training_data(cfg, record), training_data(cfg, record, extra)
    np.testing.assert_array_equal(more.x_val, plain.x_val)
    np.testing.assert_array_equal(more.x_train[: len(plain.x_train)], plain.x_train)
    assert len(more.y_train) == len(plain.y_train) + 10
    assert len(load_arrays(record).y_test) == 100  # evaluation reads the archive's test split, untouched


def write_bad_files(folder: Path, outside: Path, x, classes) -> dict[str, str]:
    """One file of each bad kind; returns {path: expected reason}."""
    cat = folder / classes[3]
    cat.mkdir(parents=True, exist_ok=True)
    bad = {}
    Image.fromarray(np.full((32, 32), 4000, dtype=np.uint16)).save(cat / "deep.png")  # 16-bit grayscale PNG
    bad["deep.png"] = "16-bit"
    Image.fromarray(x[0]).save(cat / "whole.png")
    (cat / "cut.png").write_bytes((cat / "whole.png").read_bytes()[:300])
    (cat / "whole.png").unlink()
    bad["cut.png"] = "truncated"
    (cat / "empty.png").write_bytes(b"")
    bad["empty.png"] = "empty file"
    (cat / "text.png").write_text("this is not a picture\n")
    bad["text.png"] = "not an image"
    Image.fromarray(x[1]).resize((100, 100)).save(cat / "huge.png")
    bad["huge.png"] = "too large"
    (folder / "dragon").mkdir()
    Image.fromarray(x[2]).save(folder / "dragon" / "d.png")
    bad["d.png"] = "unknown class folder 'dragon'"
    outside.mkdir(exist_ok=True)
    Image.fromarray(x[3]).save(outside / "secret.png")
    os.symlink(outside / "secret.png", cat / "link.png")
    bad["link.png"] = "symlink leaving the folder"
    (folder / classes[4]).mkdir(exist_ok=True)
    os.symlink(outside, folder / classes[4] / "linked")  # a folder of images linked from elsewhere
    bad["linked"] = "symlink leaving the folder"
    return {str(p): reason for p in [*cat.iterdir(), folder / "dragon" / "d.png", folder / classes[4] / "linked"]
            for name, reason in bad.items() if p.name == name}


def test_bad_images_fail_the_build_naming_every_file_and_cache_nothing(archive_images, tmp_path):
    x, y, classes = archive_images
    folder = tmp_path / "extra"
    write_folder(folder, x[:5], y[:5], classes)
    bad = write_bad_files(folder, tmp_path / "outside", x, classes)
    assert len(bad) == 8
    with pytest.raises(BadImagesError) as info:
        build(folder, classes, tmp_path / "cache", policy="fail", max_pixels=5000)
    message = str(info.value)
    assert message.startswith("8 bad extra image file(s)")
    for path, reason in bad.items():
        assert f"{path}: {reason}" in message
    assert not list((tmp_path / "cache").rglob("*.joblib")) and not list((tmp_path / "cache").rglob("record.json"))


def test_bad_images_are_skipped_and_listed_with_the_reason(archive_images, tmp_path):
    x, y, classes = archive_images
    folder = tmp_path / "extra"
    write_folder(folder, x[:5], y[:5], classes)
    bad = write_bad_files(folder, tmp_path / "outside", x, classes)
    record = build(folder, classes, tmp_path / "cache", policy="skip", max_pixels=5000)
    assert record.n_images == 5
    assert {b.path: b.reason.split(" (")[0] for b in record.skipped} == bad
    assert "secret" not in str(load_extra(record))  # nothing from outside came in


def test_missing_folder_is_a_config_error(tmp_path, archive_images):
    with pytest.raises(ConfigError, match="extra_data folder does not exist: /no/such/folder"):
        scan_folders(["/no/such/folder"], archive_images[2])


# ---------------------------------------------------------------------------- in the flow

TINY = dict(preset="smoke", train_subset=0, test_subset=0, batch_size=32, width=8, epochs=1, retry_delay_s=0)


def run_flow(**values):
    from flows.pipeline import cifar_pipeline

    return cifar_pipeline(config=PipelineConfig(**{**TINY, **values}))


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_nightly_unchanged_folder_is_cached_and_a_grown_one_retrains(archive_images, tiny_archive, tmp_path,
                                                                      monkeypatch):
    import json

    x, y, classes = archive_images
    path, md5 = tiny_archive
    folder = tmp_path / "extra"
    write_folder(folder, x[:20], y[:20], classes)
    common = dict(source=[str(path)], md5=md5, output_dir=str(tmp_path / "out"), extra_data=[str(folder)])

    first = run_flow(**common)
    assert first.tasks["extra-data"] == "Completed" and first.tasks["train"] == "Completed"
    assert not first.unchanged
    trained = json.loads(next((tmp_path / "out/cache/training").glob("*/record.json")).read_text())["record"]
    assert trained["train_images"] == 200 + 20
    report = Path(first.report).read_text()
    assert "## Extra training images" in report and f"1. `{folder}`" in report
    assert re.search(r"\| all +\| +200 \| +20 \| +220 \|", report)  # archive, the folder, total
    checkpoint = Path(first.checkpoint)
    mtime = checkpoint.stat().st_mtime_ns

    second = run_flow(**common)
    assert second.tasks == {"download": "Cached", "build-dataset": "Cached", "scan-extra-data": "Completed",
                            "extra-data": "Cached", "train": "Cached", "evaluate": "Cached",
                            "promote": "Completed", "figures": "Cached", "report": "Completed"}
    assert second.unchanged and second.note.startswith("nothing changed")
    assert second.note in Path(second.report).read_text()
    assert checkpoint.stat().st_mtime_ns == mtime

    decoded = []
    real = extra_data.decode_image
    monkeypatch.setattr(extra_data, "decode_image", lambda p, **kw: decoded.append(Path(p)) or real(p, **kw))
    added = write_folder(folder, x[20:21], y[20:21], classes, start=20)
    third = run_flow(**common)
    assert decoded == added
    assert third.tasks["extra-data"] == "Completed" and third.tasks["train"] == "Completed"
    assert third.tasks["evaluate"] == "Completed" and third.tasks["build-dataset"] == "Cached"
    assert not third.unchanged and "train" in third.note
    assert third.checkpoint != first.checkpoint
    report = Path(third.report).read_text()
    assert "decoded 1 file(s) and reused 20" in report and "## Champion" in report
    assert "on 100 test images" in report  # the archive's test split, as before


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_flow_skips_bad_images_and_lists_them_in_the_report(archive_images, tiny_archive, tmp_path):
    x, y, classes = archive_images
    path, md5 = tiny_archive
    folder = tmp_path / "extra"
    write_folder(folder, x[:5], y[:5], classes)
    (folder / classes[0]).mkdir(exist_ok=True)
    (folder / classes[0] / "empty.png").write_bytes(b"")
    common = dict(source=[str(path)], md5=md5, output_dir=str(tmp_path / "out"), extra_data=[str(folder)])

    from flows.pipeline import cifar_pipeline

    state = cifar_pipeline(config=PipelineConfig(**{**TINY, **common}), return_state=True)
    assert state.is_failed()
    assert f"{folder / classes[0] / 'empty.png'}: empty file" in str(state.result(raise_on_failure=False))
    assert not (tmp_path / "out/cache/training").exists()

    summary = run_flow(bad_images="skip", **common)
    report = Path(summary.report).read_text()
    assert "**1 file(s) skipped** (`bad_images = skip`)" in report
    assert f"- `{folder / classes[0] / 'empty.png'}`: empty file" in report


def test_cli_refuses_a_missing_folder_before_anything_starts(tmp_path, tiny_archive):
    import json
    import subprocess
    import sys

    path, md5 = tiny_archive
    proc = subprocess.run(
        [sys.executable, "-m", "flows", "run", "--preset", "smoke", "--source", str(path), "--md5", md5,
         "--output", str(tmp_path / "out"), "--extra-data", str(tmp_path / "missing")],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: extra_data folder does not exist: {tmp_path / 'missing'}"]
    assert json.loads(proc.stdout.splitlines()[-1])["status"] == "failed"
    assert not (tmp_path / "out").exists()


def test_empty_folder_keeps_the_training_key(archive_images, tmp_path):
    from cifar_pipeline.data.extra import training_digest

    (tmp_path / "extra").mkdir()
    record = build(tmp_path / "extra", archive_images[2], tmp_path / "cache")
    assert record.n_images == 0 and training_digest(record) is None


def test_damaged_cache_is_never_loaded_and_is_rebuilt(archive_images, tmp_path):
    x, y, classes = archive_images
    folder = tmp_path / "extra"
    write_folder(folder, x[:4], y[:4], classes)
    first = build(folder, classes, tmp_path / "cache")
    Path(first.path).write_bytes(b"not what was written")
    write_folder(folder, x[4:5], y[4:5], classes, start=4)
    grown = build(folder, classes, tmp_path / "cache")
    assert (grown.decoded, grown.reused) == (5, 0)  # the damaged file was not reused
    (folder / classes[y[4]] / "batch-0" / "img_0004.png").unlink()
    again = build(folder, classes, tmp_path / "cache")  # same manifest as the first: rebuilt, not loaded
    assert again.key == first.key and again.reused == 4 and load_extra(again)[0].shape == (4, 32, 32, 3)
