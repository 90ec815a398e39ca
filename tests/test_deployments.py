"""Deployments against a real Prefect server: prefect.yaml, a process worker, `serve`, the UI's runs.

The server, the worker and `serve` are real processes on 127.0.0.1; runs are triggered through the
API exactly as the UI's "Custom run" form does (create a flow run of a deployment with parameters).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.prefect_server import BIN, PrefectServer, start, stop, wait_for_runs

pytestmark = [pytest.mark.slow, pytest.mark.server]

ROOT = Path(__file__).resolve().parents[1]
TINY = {"preset": "smoke", "train_subset": 0, "test_subset": 0, "batch_size": 32, "width": 8, "epochs": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_archive):
    home = tmp_path_factory.mktemp("prefect-server")
    with PrefectServer(home) as srv:
        path, md5 = tiny_archive
        # The machine's data source, as an air-gapped site sets it for its workers.
        srv.env.update(CIFAR_PIPELINE_SOURCE=str(path), CIFAR_PIPELINE_MD5=md5)
        yield srv


@pytest.fixture(scope="module")
def api(server):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server.url}):
        yield server


@pytest.fixture(scope="module")
def deployed(api):
    api.deploy(ROOT)
    return api


@pytest.fixture(scope="module")
def worker(deployed, tmp_path_factory):
    # As on a shared server: runs may only touch the test's temporary folders (archive, outputs).
    proc = deployed.worker(ROOT, tmp_path_factory.getbasetemp(), limit=2)
    yield proc
    stop(proc)


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _wait(flow_run_ids, timeout=400):
    return wait_for_runs(flow_run_ids, timeout, poll=1)


def _summary(output_dir: Path, flow_run_id) -> dict:
    found = [json.loads(p.read_text()) for p in output_dir.glob("runs/*/summary.json")]
    return next(s for s in found if s["flow_run_id"] == str(flow_run_id))


def test_prefect_yaml_creates_a_scheduled_nightly_and_an_on_demand_deployment(deployed):
    with _client() as client:
        nightly = client.read_deployment_by_name("cifar-pipeline/nightly")
        on_demand = client.read_deployment_by_name("cifar-pipeline/on-demand")
    schedule = nightly.schedules[0].schedule
    assert (schedule.cron, schedule.timezone) == ("0 2 * * *", "UTC") and nightly.schedules[0].active
    assert nightly.global_concurrency_limit.limit == 1
    assert nightly.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    assert nightly.parameters == {"config": {"preset": "cpu"}} and nightly.work_pool_name == "cifar-cpu"
    assert on_demand.schedules == [] and on_demand.enforce_parameter_schema
    with _client() as client:
        scoring = client.read_deployment_by_name("cifar-predict/score-folder")
    assert scoring.schedules == [] and scoring.parameters == {"folder": "incoming"}
    with _client() as client:
        doctor = client.read_deployment_by_name("cifar-doctor/doctor")
    assert doctor.schedules == [] and doctor.work_pool_name == "cifar-cpu"

    # The UI form: the typed config, every field described, ranges included.
    schema = on_demand.parameter_openapi_schema
    fields = schema["definitions"]["PipelineConfig"]["properties"]
    assert fields["preset"]["enum"] == ["seed", "smoke", "cpu", "fast"]
    epochs = fields["epochs"]
    assert (epochs["type"], epochs["exclusiveMinimum"], epochs["maximum"]) == ("number", 0, 1000)
    # A plain input or a dropdown per field, never an "X | None" type toggle.
    assert not [name for name, f in fields.items() if "anyOf" in f or f.get("default", "") is None]
    assert fields["device"]["enum"] == ["auto", "cpu", "cuda"]
    assert all(f.get("description") for f in fields.values())


def on_demand_runs() -> list:
    """Runs of the on-demand deployment only: what a test caused, not what background services add."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with _client() as client:
        dep = client.read_deployment_by_name("cifar-pipeline/on-demand")
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))


def test_bad_parameter_from_the_api_is_rejected_before_any_run(deployed):
    from prefect.deployments import run_deployment

    before = len(on_demand_runs())
    with pytest.raises(Exception, match=r"config\.epochs.*minimum"):
        run_deployment("cifar-pipeline/on-demand", parameters={"config": {"preset": "smoke", "epochs": 0}},
                       timeout=0)
    assert len(on_demand_runs()) == before


@pytest.mark.parametrize("config", [{"output_dir": "/etc"}, {"source": ["file:///etc/passwd"]}])
def test_values_outside_the_workers_allowed_roots_fail_at_once_and_write_nothing(worker, config, tmp_path,
                                                                                 tmp_path_factory):
    from prefect.deployments import run_deployment

    values = {"preset": "smoke", "output_dir": str(tmp_path), **config}
    run = run_deployment("cifar-pipeline/on-demand", parameters={"config": values}, timeout=400)
    assert run.state.is_failed()
    message = run.state.message
    field = "source" if "source" in config else "output_dir"
    assert f"{field} = {values[field] if field == 'output_dir' else values[field][0]!r}" in message
    assert "is outside the folders this worker allows" in message and "\n" not in message
    assert str(tmp_path_factory.getbasetemp()) in message
    assert list(tmp_path.iterdir()) == []  # as root the tests could write to /etc: nothing went there either
    assert not Path("/etc/cache").exists() and not Path("/etc/runs").exists()


def test_ui_run_executes_on_the_worker_and_the_champion_is_kept(worker, deployed, tmp_path):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.deployments import run_deployment

    params = {"config": {**TINY, "output_dir": str(tmp_path)}}
    first = run_deployment("cifar-pipeline/on-demand", parameters=params, timeout=400)
    second = run_deployment("cifar-pipeline/on-demand", parameters=params, timeout=400)
    assert first.state.is_completed() and second.state.is_completed()
    with _client() as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[first.id])))
    keys = {a.key for a in artifacts if a.key}
    assert {"cifar-report", "cifar-per-class"} <= keys

    one, two = _summary(tmp_path, first.id), _summary(tmp_path, second.id)
    assert one["promoted"] and not two["promoted"]  # an equal model does not replace the champion
    assert two["tasks"]["train"] == "Cached"
    champion = json.loads((tmp_path / "registry" / "champion.json").read_text())
    assert champion["run_id"] == one["run_id"]
    assert "**not promoted**" in Path(two["report"]).read_text()


def test_two_runs_at_once_both_finish_with_their_own_outputs(worker, deployed, tmp_path):
    from prefect.deployments import run_deployment

    runs = [run_deployment("cifar-pipeline/on-demand", timeout=0,
                           parameters={"config": {**TINY, "seed": seed, "output_dir": str(tmp_path)}})
            for seed in (1, 2)]
    finished = _wait([r.id for r in runs])
    assert [r.state.name for r in finished] == ["Completed", "Completed"]
    summaries = [_summary(tmp_path, r.id) for r in runs]
    assert summaries[0]["run_dir"] != summaries[1]["run_dir"]
    assert summaries[0]["checkpoint"] != summaries[1]["checkpoint"]  # two seeds, two trainings
    for s in summaries:
        assert Path(s["report"]).is_file() and Path(s["checkpoint"]).is_file()
    history = (tmp_path / "registry" / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header + one row per run, none lost to the other


def test_serve_refuses_deployments_that_a_work_pool_runs(deployed):
    proc = subprocess.run([str(BIN / "cifar-pipeline"), "serve"], env=deployed.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "cifar-pipeline/nightly (work pool cifar-cpu)" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_registers_the_same_deployments_and_runs_them(worker, api, tmp_path):
    from prefect.deployments import run_deployment

    stop(worker)  # one way of running at a time: serve replaces the pool-bound deployments
    for name in ("cifar-pipeline/nightly", "cifar-pipeline/on-demand", "cifar-predict/score-folder",
                 "cifar-doctor/doctor", "cifar-maintenance/maintenance"):
        assert api.cli("deployment", "delete", name, cwd=ROOT).returncode == 0
    proc = start([str(BIN / "cifar-pipeline"), "serve"], api.env, api.home / "serve.log", cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while "are being served" not in (api.home / "serve.log").read_text():
            assert proc.poll() is None, (api.home / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(1)
        with _client() as client:
            nightly = client.read_deployment_by_name("cifar-pipeline/nightly")
        assert nightly.schedules[0].schedule.cron == "0 2 * * *"
        assert nightly.global_concurrency_limit.limit == 1
        run = run_deployment("cifar-pipeline/on-demand", timeout=400,
                             parameters={"config": {**TINY, "output_dir": str(tmp_path)}})
        assert run.state.is_completed(), run.state
        assert _summary(tmp_path, run.id)["test_accuracy"] >= 0
    finally:
        stop(proc)
