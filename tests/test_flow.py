"""The whole flow under a real (temporary) Prefect API, on the tiny archive served over HTTP."""

import json
from pathlib import Path

import pytest

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.data.download import archive_path

pytestmark = pytest.mark.usefixtures("prefect_api")

TINY = dict(preset="smoke", train_subset=0, test_subset=0, batch_size=32, width=8, epochs=2, retry_delay_s=0)


def run_flow(**values):
    from flows.pipeline import cifar_pipeline

    return cifar_pipeline(config=PipelineConfig(**{**TINY, **values}))


def test_full_flow_writes_report_checkpoint_and_artifacts(tmp_path, tiny_archive, server):
    path, md5 = tiny_archive
    summary = run_flow(source=[server.url(path.name)], md5=md5, output_dir=str(tmp_path))
    assert summary.tasks == {k: "Completed" for k in ("download", "build-dataset", "train", "evaluate", "promote",
                                                      "figures", "report")}
    assert summary.promoted  # the first model in a fresh registry becomes the champion
    assert 0 <= summary.test_accuracy <= 1
    report = Path(summary.report).read_text()
    for heading in ("## Metrics by epoch", "## Test set by class", "## Configuration", "## Environment", md5):
        assert heading in report
    run_dir = Path(summary.run_dir)
    assert (run_dir / "curves.png").stat().st_size > 1000 and (run_dir / "confusion.png").stat().st_size > 1000
    assert json.loads((run_dir / "summary.json").read_text())["run_id"] == summary.run_id
    assert Path(summary.checkpoint).is_file()

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[summary.flow_run_id]))
        )
    by_key = {a.key: a for a in artifacts if a.key}
    assert by_key["cifar-report"].type == "markdown" and "data:image/png;base64," in by_key["cifar-report"].data
    assert by_key["cifar-per-class"].type == "table"
    assert any(a.type == "progress" and a.data == 100.0 for a in artifacts)


def test_second_identical_run_trains_nothing(tmp_path, tiny_archive):
    path, md5 = tiny_archive
    first = run_flow(source=[str(path)], md5=md5, output_dir=str(tmp_path))
    checkpoint = Path(first.checkpoint)
    mtime = checkpoint.stat().st_mtime_ns
    second = run_flow(source=[str(path)], md5=md5, output_dir=str(tmp_path))
    assert second.tasks == {"download": "Cached", "build-dataset": "Cached", "train": "Cached",
                            "evaluate": "Cached", "promote": "Completed", "figures": "Cached", "report": "Completed"}
    assert checkpoint.stat().st_mtime_ns == mtime
    assert second.run_dir != first.run_dir and second.test_accuracy == first.test_accuracy
    # The model's figures are the first run's, copied into the new run's own folder; the trend of
    # runs is drawn again (it has one run more).
    for name in ("curves.png", "confusion.png", "samples.png", "confused.png"):
        assert (Path(second.run_dir) / name).read_bytes() == (Path(first.run_dir) / name).read_bytes()
    assert (Path(second.run_dir) / "history.png").is_file() and not (Path(first.run_dir) / "history.png").exists()


def test_changed_hyperparameter_retrains_but_changed_template_does_not(tmp_path, tiny_archive, monkeypatch):
    path, md5 = tiny_archive
    common = dict(source=[str(path)], md5=md5, output_dir=str(tmp_path))
    first = run_flow(**common)
    changed = run_flow(lr=0.7, **common)
    assert changed.tasks["train"] == "Completed" and changed.checkpoint != first.checkpoint
    assert changed.tasks["download"] == "Cached" and changed.tasks["build-dataset"] == "Cached"

    import cifar_pipeline.report.report as report

    original = report.load_template()
    monkeypatch.setattr(report, "load_template", lambda: "# New layout\n" + original)
    restyled = run_flow(**common)
    assert restyled.tasks["train"] == "Cached" and restyled.tasks["evaluate"] == "Cached"
    assert Path(restyled.report).read_text().startswith("# New layout")


def test_cleaned_cache_folder_is_rebuilt_even_with_a_cache_record(tmp_path, tiny_archive):
    import shutil

    path, md5 = tiny_archive
    common = dict(source=[str(path)], md5=md5, output_dir=str(tmp_path))
    first = run_flow(**common)
    shutil.rmtree(Path(first.checkpoint).parent)  # someone deleted the training folder
    again = run_flow(**common)
    assert Path(again.checkpoint).is_file()
    assert again.tasks["train"] == "Completed"


def test_cached_results_written_before_a_class_moved_are_redone(tmp_path, tiny_archive):
    path, md5 = tiny_archive
    common = dict(source=[str(path)], md5=md5, output_dir=str(tmp_path))
    first = run_flow(**common)
    # What an upgrade that moves a record class leaves behind: results naming the old module.
    moved = 0
    for record in (tmp_path / "cache" / "results").iterdir():
        text = record.read_text()
        if "cifar_pipeline.data.download.ArchiveRecord" in text:
            record.write_text(text.replace("cifar_pipeline.data.download.ArchiveRecord",
                                           "cifar_pipeline.download.ArchiveRecord"))
            moved += 1
    assert moved == 1
    again = run_flow(**common)
    assert again.tasks["download"] == "Completed" and again.tasks["train"] == "Cached"
    assert again.test_accuracy == first.test_accuracy


def test_failing_server_is_retried_until_it_answers(tmp_path, tiny_archive, server):
    path, md5 = tiny_archive
    server.faults = ["503", "503"]
    summary = run_flow(source=[server.url(path.name)], md5=md5, output_dir=str(tmp_path))
    assert summary.tasks["download"] == "Completed"
    assert [r["fault"] for r in server.requests] == ["503", "503", "ok"]


def test_corrupt_archive_fails_clearly_and_caches_nothing(tmp_path, tiny_archive):
    from flows.pipeline import cifar_pipeline

    path, md5 = tiny_archive
    wrong = "1" * 32
    state = cifar_pipeline(
        config=PipelineConfig(**{**TINY, "source": [str(path)], "md5": wrong, "output_dir": str(tmp_path)}),
        return_state=True,
    )
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert f"expected md5 {wrong}, got {md5}" in str(error) and str(path) in str(error)
    archives = tmp_path / "cache" / "archives"
    assert [p for p in archives.rglob("*") if p.suffix != ".lock"] == []


def test_download_gives_up_after_the_last_retry_with_a_clear_error(tmp_path, tiny_archive, server):
    from flows.pipeline import cifar_pipeline

    path, md5 = tiny_archive
    server.faults = ["503"] * 10
    config = PipelineConfig(**{**TINY, "source": [server.url(path.name)], "md5": md5, "output_dir": str(tmp_path),
                               "download_retries": 2})
    state = cifar_pipeline(config=config, return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert server.url(path.name) in message and "HTTP 503" in message and "--source URL_OR_PATH" in message
    assert len(server.requests) == 3  # the first try and two retries
    assert not archive_path(tmp_path / "cache", md5).exists()
