"""Sweeps on a real Prefect server with two real process workers, each with its own (fake) GPU.

Workers poll every second (PREFECT_WORKER_QUERY_SECONDS=1, tests/prefect_server.py); the sweep
looks at its trials' flow runs every 2 s (tasks/sweep.py POOL_POLL_S).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.prefect_server import BIN, PrefectServer, start, stop

pytestmark = [pytest.mark.slow, pytest.mark.server]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_archive):
    """A server, the trial deployment on the cifar-trials pool, and two workers (GPU 0 and GPU 1)."""
    home = tmp_path_factory.mktemp("sweep-server")
    with PrefectServer(home) as srv:
        path, md5 = tiny_archive
        srv.env.update(CIFAR_PIPELINE_SOURCE=str(path), CIFAR_PIPELINE_MD5=md5, PYTHONPATH=str(ROOT))
        srv.deploy(ROOT, "trial")
        workers, started = [], {}
        for gpu in ("0", "1"):
            started[gpu] = time.time()
            workers.append(start([str(BIN / "prefect"), "worker", "start", "--pool", "cifar-trials", "--limit", "1",
                                  "--name", f"gpu-{gpu}"], {**srv.env, "CUDA_VISIBLE_DEVICES": gpu},
                                 home / f"worker-{gpu}.log", cwd=ROOT))
        srv.worker_started = started
        try:
            yield srv
        finally:
            for proc in workers:
                stop(proc)


def _sweep(pool, out: Path, study: str, *extra: str, trials: int = 4) -> subprocess.Popen:
    args = [sys.executable, "-m", "flows", "sweep", "--preset", "smoke", "--train-subset", "0", "--test-subset", "0",
            "--batch-size", "32", "--width", "8", "--validation-images", "50", "--output", str(out),
            "--study", study, "--trials", str(trials), "--parallel", "2", "--trial-deployment", "cifar-trial/trial",
            *extra]
    return subprocess.Popen(args, env=pool.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 400) -> dict:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-4000:]
    return json.loads(stdout.strip().splitlines()[-1])


def _flow_runs(pool, name_prefix: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: pool.url}), get_client(sync_client=True) as client:
        return [r for r in client.read_flow_runs(limit=200) if r.name.startswith(name_prefix)]


def test_trials_run_on_both_workers_and_the_winner_is_promoted(pool, tmp_path):
    out = tmp_path / "out"
    summary = _finish(_sweep(pool, out, "pool"))
    trials = summary["trials"]
    assert sorted(t["number"] for t in trials) == [0, 1, 2, 3] and summary["status"] == "completed"
    assert all(t["state"] in ("COMPLETE", "PRUNED") for t in trials)
    assert {t["gpu"] for t in trials} == {"0", "1"}  # each worker's CUDA_VISIBLE_DEVICES reached its trials
    assert len({t["pid"] for t in trials}) == 4 and all(t["host"] for t in trials)  # a process per flow run
    best = summary["best"]
    assert best["promoted"] and best["test_accuracy"] is not None
    assert best["val_accuracy"] == max(t["val_accuracy"] for t in trials if t["val_accuracy"] is not None)
    runs = _flow_runs(pool, "pool-trial-")
    assert len(runs) == 4 and all(r.state.is_completed() for r in runs)  # one flow run per trial, no duplicate
    champion = json.loads((out / "registry" / "champion.json").read_text())
    assert champion["config"]["lr"] == best["params"]["lr"]
    board = (Path(summary["report"]).parent / "leaderboard.csv").read_text().splitlines()
    assert len(board) == 5 and board[0].startswith("trial,state,params,val_accuracy,epochs_run,seconds")
    first = min(r.start_time for r in runs).timestamp()
    latency = {t["number"]: t["seconds"] for t in trials}
    print(f"\nworker start to first trial: {first - min(pool.worker_started.values()):.1f} s; "
          f"trial seconds (in the trial process): {latency}; "
          f"flow-run wall: {[round(r.total_run_time.total_seconds(), 1) for r in runs]}")


def test_a_worker_process_killed_mid_trial_fails_only_that_trial(pool, tmp_path):
    import optuna

    from cifar_pipeline.sweep.study import open_storage

    out = tmp_path / "out"
    space = tmp_path / "space.toml"
    space.write_text("[epochs]\nchoices = [12]\n\n[lr]\nlow = 0.5\nhigh = 2.0\n")  # trials long enough to kill
    proc = _sweep(pool, out, "killed", "--space", str(space), trials=3)
    storage = str(out / "sweeps" / "optuna.journal")
    killed: dict = {}

    def kill_one() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                trials = optuna.load_study(study_name="killed", storage=open_storage(storage)).get_trials()
            except (KeyError, FileNotFoundError):
                trials = []
            for t in trials:
                if t.state.name == "RUNNING" and t.intermediate_values and "pid" in t.user_attrs:
                    os.kill(t.user_attrs["pid"], signal.SIGKILL)  # the flow-run process a worker started
                    killed.update(number=t.number, pid=t.user_attrs["pid"])
                    return
            time.sleep(0.3)

    watcher = threading.Thread(target=kill_one)
    watcher.start()
    summary = _finish(proc, timeout=500)
    watcher.join()
    assert killed, "no trial was seen running"
    trials = {t["number"]: t for t in summary["trials"]}
    assert sorted(trials) == [0, 1, 2]
    victim = trials[killed["number"]]
    assert victim["state"] == "FAIL" and "Crashed" in victim["reason"], victim
    others = [t for n, t in trials.items() if n != killed["number"]]
    assert all(t["state"] in ("COMPLETE", "PRUNED") for t in others) and summary["best"]["number"] != killed["number"]
    champion = json.loads((out / "registry" / "champion.json").read_text())  # whole, and the winner's
    assert champion["config"]["lr"] == summary["best"]["params"]["lr"]
