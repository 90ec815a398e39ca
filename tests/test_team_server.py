"""A team's setup (deployments/TEAM.md): one Prefect server on PostgreSQL, one worker per machine or GPU.

Real PostgreSQL, real `prefect server`, two real process workers (each as on its own machine: limit 1,
its own CUDA_VISIBLE_DEVICES and allowed roots); two on-demand runs at once share one output folder.
"""

from __future__ import annotations

import csv

import pytest

from tests import postgres_server
from tests.prefect_server import BIN, PrefectServer, start, stop
from tests.test_deployments import ROOT, TINY, _summary, _wait

pytestmark = [pytest.mark.slow, pytest.mark.server]


def test_two_workers_on_a_postgresql_server_run_two_runs_at_once(tmp_path, tiny_archive):
    if reason := postgres_server.skip_reason():
        pytest.skip(reason)
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    shared = tmp_path / "shared"  # the team's shared output folder (NFS on a real team)
    path, md5 = tiny_archive
    with postgres_server.PostgresServer() as pg:
        pg.create_database("prefect")
        with PrefectServer(tmp_path / "server", database=pg.url("asyncpg", "prefect")) as srv, \
                temporary_settings({PREFECT_API_URL: srv.url}):
            srv.deploy(ROOT)
            workers = []
            for gpu in ("0", "1"):
                env = {**srv.env, "CUDA_VISIBLE_DEVICES": gpu, "CIFAR_PIPELINE_SOURCE": str(path),
                       "CIFAR_PIPELINE_MD5": md5,
                       "CIFAR_PIPELINE_ALLOWED_ROOTS": f"{shared}:{path.parent}"}
                workers.append(start([str(BIN / "prefect"), "worker", "start", "--pool", "cifar-cpu", "--limit", "1",
                                      "--name", f"machine-{gpu}"], env, tmp_path / f"worker-{gpu}.log", cwd=ROOT))
            try:
                runs = [run_deployment("cifar-pipeline/on-demand", timeout=0, parameters={
                    "config": {**TINY, "seed": seed, "output_dir": str(shared)}}) for seed in (1, 2)]
                finished = _wait([r.id for r in runs])
            finally:
                for proc in workers:
                    stop(proc)
    assert [r.state.name for r in finished] == ["Completed", "Completed"], [r.state for r in finished]
    summaries = [_summary(shared, r.id) for r in runs]
    assert summaries[0]["run_dir"] != summaries[1]["run_dir"]
    for s in summaries:
        assert (shared / "runs" / s["run_id"] / "report.md").is_file()
    with open(shared / "registry" / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["run_id"] for row in rows) == sorted(s["run_id"] for s in summaries)
    logs = "".join((tmp_path / f"worker-{gpu}.log").read_text() for gpu in ("0", "1"))
    assert all(str(r.id) in logs for r in runs)  # picked up by the pool's workers
