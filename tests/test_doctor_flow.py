"""The doctor through Prefect and the command line, and its quick checks inside a failing run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cifar_pipeline.config import PipelineConfig
from tests.doctor_faults import HEALTHY, learnable_archive
from tests.test_cli import cli

pytestmark = pytest.mark.slow

FAST = {"CIFAR_PIPELINE_DOCTOR_BUDGET_S": "0.5"}  # probe plan at its floors (see test_doctor.py)
# The blog's Net, trained with an lr so small that its first epoch sits at chance.
AT_CHANCE = dict(preset="seed", train_subset=0, test_subset=0, batch_size=32, epochs=1, lr=1e-6, precision="fp32")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return learnable_archive(tmp_path_factory.mktemp("doctor-flow-data"))


@pytest.fixture
def fast_doctor(monkeypatch):
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)


def _artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in found if a.key}


@pytest.mark.usefixtures("prefect_api", "fast_doctor")
def test_doctor_flow_writes_a_run_scoped_report_and_artifacts(tmp_path, archive):
    from flows.doctor import doctor

    path, md5 = archive
    summary = doctor(config=PipelineConfig(**HEALTHY, source=[str(path)], md5=md5, output_dir=str(tmp_path)))
    assert summary.status == "pass", summary.checks
    assert set(summary.checks) == {"data", "input_scale", "start", "learning_rate", "one_batch", "gradients",
                                   "labels"}
    report = Path(summary.report)
    assert report.parent == tmp_path / "doctor" / summary.run_id
    assert (report.parent / "doctor-lr-range.png").is_file() and (report.parent / "doctor.json").is_file()
    artifacts = _artifacts(summary.flow_run_id)
    assert "data:image/png;base64," in artifacts["cifar-doctor"].data
    assert artifacts["cifar-doctor-checks"].type == "table"


@pytest.mark.usefixtures("prefect_api", "fast_doctor")
def test_run_at_chance_carries_the_quick_checks_in_its_report(tmp_path, archive):
    from flows.pipeline import cifar_pipeline

    path, md5 = archive
    summary = cifar_pipeline(config=PipelineConfig(**AT_CHANCE, source=[str(path)], md5=md5,
                                                   output_dir=str(tmp_path)))
    assert summary.tasks["doctor"] == "Completed"
    report = Path(summary.report).read_text()
    assert "at chance level" in report and "## Diagnosis (the doctor's quick checks)" in report
    assert "learning_rate" in report and "![Learning-rate range test](diagnosis-lr-range.png)" in report
    assert (Path(summary.run_dir) / "diagnosis-lr-range.png").is_file()
    quick = json.loads((Path(summary.run_dir) / "diagnosis.json").read_text())
    assert quick["plan"]["quick"] and "one_batch" not in {c["name"] for c in quick["checks"]}
    artifacts = _artifacts(summary.flow_run_id)
    assert "data:image/png;base64," in artifacts["cifar-report"].data  # the figures travel with the report
    assert "cifar-diagnosis" in artifacts

    # The same run again: training is a cache hit, and so are its quick checks (no probes rerun);
    # the new run folder still gets its own diagnosis files.
    again = cifar_pipeline(config=PipelineConfig(**AT_CHANCE, source=[str(path)], md5=md5,
                                                 output_dir=str(tmp_path)))
    assert again.tasks["train"] == "Cached" and again.run_dir != summary.run_dir
    assert json.loads((Path(again.run_dir) / "diagnosis.json").read_text()) == quick  # same `seconds`, same curves
    assert (Path(again.run_dir) / "diagnosis-lr-range.png").is_file()
    assert "## Diagnosis (the doctor's quick checks)" in Path(again.report).read_text()


@pytest.mark.usefixtures("prefect_api", "fast_doctor")
def test_diverged_run_fails_but_leaves_a_diagnosis_first(tmp_path, archive):
    from flows.pipeline import cifar_pipeline

    path, md5 = archive
    config = PipelineConfig(**{**AT_CHANCE, "lr": 90.0, "momentum": 0.9}, source=[str(path)], md5=md5,
                            output_dir=str(tmp_path))
    state = cifar_pipeline(config=config, return_state=True)
    assert state.is_failed() and "loss became" in str(state.result(raise_on_failure=False))
    diagnosis = next((tmp_path / "runs").glob("*/diagnosis.md")).read_text()
    assert "learning_rate" in diagnosis and "(quick checks only)" in diagnosis
    assert "cifar-diagnosis" in _artifacts(state.state_details.flow_run_id)


def test_cli_doctor_exit_codes_and_last_line_json(tmp_path, archive):
    path, md5 = archive
    common = ["--source", str(path), "--md5", md5, "--output", str(tmp_path / "out"), "--preset", "smoke",
              "--train-subset", "0", "--test-subset", "0", "--batch-size", "64", "--width", "8"]
    env = {"PREFECT_HOME": str(tmp_path / "prefect"), **FAST}

    healthy = cli("doctor", *common, "--lr", "0.3", env=env)
    assert healthy.returncode == 0, healthy.stderr[-3000:]
    result = json.loads(healthy.stdout.strip().splitlines()[-1])
    assert result["status"] == "pass" and result["configured_lr"] == 0.3
    assert all(v["result"] == "pass" for v in result["checks"].values())
    assert len(result["lr_range"]) == 2 and Path(result["report"]).is_file()
    assert "doctor: learning rate" in healthy.stderr  # progress goes to stderr

    too_small = cli("doctor", *common, "--lr", "0.0001", env=env)
    assert too_small.returncode == 1
    result = json.loads(too_small.stdout.strip().splitlines()[-1])
    assert result["status"] == "fail" and result["checks"]["learning_rate"]["result"] == "fail"
    assert "far too small" in result["checks"]["learning_rate"]["message"]

    before = sorted((tmp_path / "out" / "doctor").iterdir())
    bad = cli("doctor", *common, "--lr", "-1", env=env, timeout=120)
    assert bad.returncode == 2 and "lr = -1.0" in bad.stderr and "Traceback" not in bad.stderr
    assert sorted((tmp_path / "out" / "doctor").iterdir()) == before  # nothing was started
