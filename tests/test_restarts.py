"""Runs that outlive their server or their worker (deployments/TEAM.md, "Restarts and crashes").

A real SQLite `prefect server` with deployments/server.env, a process worker with deployments/worker.env,
the automations of deployments/recovery.yaml; runs of the `nightly` deployment (concurrency limit 1)
with a tiny config that trains long enough to be interrupted at a known point: once its first epoch
checkpoint is on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.prefect_server import BIN, PrefectServer, env_file, start, stop
from tests.test_deployments import ROOT, TINY, _client, _summary, _wait

pytestmark = [pytest.mark.slow, pytest.mark.server]

DEPLOYMENTS = ROOT / "deployments"
WORKER_ENV = env_file(DEPLOYMENTS / "worker.env")
# Long enough to stop a server (about 15 s to come back on 2 cores) while it trains; lr 0.3 keeps the
# loss off chance level on the tiny archive (no doctor's checks after training).
LONG = {**TINY, "epochs": 80, "lr": 0.3}
# The shortest heartbeat Prefect allows, and the module's zombie window: every run here beats at
# HEARTBEAT_S, and 2.5 beats cover one lost while the server restarts (16 s on a Zen 1 EPYC).
HEARTBEAT_S, ZOMBIE_WITHIN_S = 30, 75
HEARTBEAT_ENV = {**WORKER_ENV, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}


def _epoch(output_dir: Path) -> int:
    from cifar_pipeline.training.checkpoint import load_checkpoint

    for path in output_dir.glob("cache/training/*/checkpoint.pt"):
        try:
            return load_checkpoint(path)["epoch"]
        except Exception:  # noqa: BLE001 - being written, or not there yet
            pass
    return 0


def _wait_for_epoch(output_dir: Path, epoch: int, run_id, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while (seen := _epoch(output_dir)) < epoch:
        with _client() as client:
            state = client.read_flow_run(run_id).state
        assert not state.is_final(), f"the run ended before epoch {epoch}: {state}"
        assert time.monotonic() < deadline, f"no epoch {epoch} checkpoint after {timeout} s"
        time.sleep(0.2)
    return seen


def _no_half_written_files(output_dir: Path) -> None:
    assert not [p for p in output_dir.rglob("*") if p.name.endswith(".tmp")], "a temporary file was left behind"
    champion = json.loads((output_dir / "registry" / "champion.json").read_text())
    assert champion["run_id"]
    assert (output_dir / "registry" / "history.csv").read_text().count("\n") >= 2


def _flow_run_processes(flow_run_id) -> list[int]:
    """Processes started for one flow run (the worker gives them PREFECT__FLOW_RUN_ID)."""
    needle = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_archive):
    home = tmp_path_factory.mktemp("restarts-server")
    with PrefectServer(home, server_env=env_file(DEPLOYMENTS / "server.env")) as server:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        path, md5 = tiny_archive
        server.env.update(CIFAR_PIPELINE_SOURCE=str(path), CIFAR_PIPELINE_MD5=md5)
        with temporary_settings({PREFECT_API_URL: server.url}):
            server.deploy(ROOT, "nightly", "on-demand")
            # The recovery automations as deployed, with a zombie window sized for the test's 30 s heartbeat.
            spec = yaml.safe_load((DEPLOYMENTS / "recovery.yaml").read_text())
            for automation in spec["automations"]:
                if automation["name"] == "cifar-crash-zombie-runs":
                    automation["trigger"]["within"] = ZOMBIE_WITHIN_S
            (home / "recovery.yaml").write_text(yaml.safe_dump(spec))
            applied = subprocess.run([sys.executable, "-m", "deployments.recovery", str(home / "recovery.yaml")],
                                     env=server.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert applied.returncode == 0, applied.stderr[-3000:]
            yield server


def _start_worker(srv, tmp_path_factory, name: str):
    # One thread per run, so the resumed run and the reference training below do the same arithmetic.
    env = {**srv.env, **WORKER_ENV, "OMP_NUM_THREADS": "1",
           "CIFAR_PIPELINE_ALLOWED_ROOTS": str(tmp_path_factory.getbasetemp())}
    return start([str(BIN / "prefect"), "worker", "start", "--pool", "cifar-cpu", "--limit", "1", "--name", name],
                 env, srv.home / f"{name}.log", cwd=ROOT)


@pytest.fixture(scope="module")
def worker(srv, tmp_path_factory):
    proc = _start_worker(srv, tmp_path_factory, "worker-1")
    yield proc
    stop(proc)


def test_the_worker_environment_and_the_deployments_job_variables_agree():
    specs = yaml.safe_load((DEPLOYMENTS / "prefect.yaml").read_text())["deployments"]
    for spec in specs:
        env = spec["work_pool"]["job_variables"]["env"]
        assert env == {k: v for k, v in WORKER_ENV.items() if k in env} and set(env) == set(WORKER_ENV), spec["name"]
    # No credential in the file: no key or value that holds one.
    def leaves(node):
        if isinstance(node, dict):
            for key, value in node.items():
                yield str(key)
                yield from leaves(value)
        elif isinstance(node, list):
            for item in node:
                yield from leaves(item)
        else:
            yield str(node)

    found = [x for x in leaves(yaml.safe_load((DEPLOYMENTS / "prefect.yaml").read_text()))
             if "AUTH_STRING" in x or "PASSWORD" in x or "postgresql" in x]
    assert not found


def test_server_restart_during_training_the_nightly_run_rides_through_and_completes(srv, worker, tmp_path):
    from prefect.deployments import run_deployment

    out = tmp_path / "out"
    # Beating at the module's heartbeat: at the deployment's 180 s, the 75 s zombie window would crash any
    # run that outlasts it (the run takes minutes on a slow machine).
    run = run_deployment("cifar-pipeline/nightly", timeout=0, parameters={"config": {**LONG, "output_dir": str(out)}},
                         job_variables={"env": HEARTBEAT_ENV})
    _wait_for_epoch(out, 1, run.id)
    with _client() as client:
        lease_id = client.read_flow_run(run.id).state.state_details.deployment_concurrency_lease_id
    assert lease_id is not None  # the nightly deployment's concurrency limit holds a lease for this run

    stopped = time.monotonic()
    srv.stop_server()  # its whole process group, as `systemctl restart` would
    at_stop = _epoch(out)
    time.sleep(3)
    srv.start_server()
    outage = time.monotonic() - stopped
    at_start = _epoch(out)
    print(f"server outage {outage:.1f} s; training went from epoch {at_stop} to {at_start} meanwhile")
    assert at_start < LONG["epochs"], "training ended during the outage: make LONG longer"

    with _client() as client:
        assert not client.read_flow_run(run.id).state.is_final()
        # What killed the nightly run in the issue: its lease unknown to the restarted server (410 Gone).
        client.renew_concurrency_lease(lease_id=lease_id, lease_duration=300)
    [finished] = _wait([run.id])
    assert finished.state.is_completed(), finished.state
    assert finished.run_count == 1  # rode through: not crashed and rerun
    summary = _summary(out, run.id)
    assert Path(summary["report"]).is_file()
    _no_half_written_files(out)
    log = (srv.home / "worker-1.log").read_text()
    assert "lease renewal failed" not in log


def test_a_run_whose_worker_machine_died_is_crashed_by_the_heartbeat_check_rerun_and_resumes(
        srv, worker, tmp_path, tmp_path_factory, tiny_dataset):
    from prefect.deployments import run_deployment

    from cifar_pipeline.training.checkpoint import load_checkpoint
    import torch

    out = tmp_path / "out"
    config = {**LONG, "epochs": 40, "seed": 5, "output_dir": str(out)}
    run = run_deployment("cifar-pipeline/nightly", timeout=0, parameters={"config": config},
                         job_variables={"env": HEARTBEAT_ENV})
    _wait_for_epoch(out, 2, run.id)
    # The machine dies: the worker and the flow-run process it started, at once, with no goodbye.
    os.killpg(worker.pid, signal.SIGKILL)
    for pid in _flow_run_processes(run.id):
        os.kill(pid, signal.SIGKILL)
    worker.wait(timeout=30)
    killed = time.monotonic()
    killed_at = _epoch(out)
    with _client() as client:
        assert client.read_flow_run(run.id).state.is_running()  # nobody is left to say otherwise
    restarted = _start_worker(srv, tmp_path_factory, "worker-2")
    try:
        [finished] = _wait([run.id], timeout=300)
    finally:
        stop(restarted)
    print(f"killed at epoch {killed_at}; Completed {time.monotonic() - killed:.0f} s later")
    assert finished.state.is_completed(), finished.state
    with _client() as client:
        states = [(s.name, s.message or "") for s in client.read_flow_run_states(run.id)]
    crashed = [m for name, m in states if name == "Crashed"]
    assert crashed and "missing heartbeats" in crashed[0], states
    assert "AwaitingRetry" in [name for name, _ in states]
    assert finished.run_count == 2
    summary = _summary(out, run.id)
    record = json.loads((Path(summary["checkpoint"]).parent / "record.json").read_text())
    record = record.get("record", record)  # the stage file wraps the TrainRecord
    assert record["resumed_from_epoch"] is not None and record["resumed_from_epoch"] >= killed_at >= 2

    # The same weights as one uninterrupted training of the same config (one thread, like the worker's).
    straight = tmp_path / "straight"
    script = ("import sys; from cifar_pipeline.config import PipelineConfig; "
              "from cifar_pipeline.data.dataset import DatasetRecord; from cifar_pipeline.training.loop import train; "
              "r = train(PipelineConfig.model_validate_json(sys.argv[1]).resolved({}), "
              "DatasetRecord.model_validate_json(sys.argv[2]), sys.argv[3], progress=False); print(r.checkpoint)")
    cfg = {k: v for k, v in config.items() if k != "output_dir"}
    done = subprocess.run([sys.executable, "-c", script, json.dumps(cfg), tiny_dataset[0].model_dump_json(),
                           str(straight)], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a = load_checkpoint(Path(done.stdout.strip().splitlines()[-1]))["model"]
    b = load_checkpoint(Path(summary["checkpoint"]))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    _no_half_written_files(out)
