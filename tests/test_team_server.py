"""A team's setup (deployments/TEAM.md): one Prefect server on PostgreSQL behind TLS, Basic auth, workers.

Real PostgreSQL, a real `prefect server` listening on 127.0.0.1 only with PREFECT_SERVER_API_AUTH_STRING,
nginx with deployments/nginx.conf and a self-signed certificate in front, and real process workers
(each as on its own machine: limit 1, its own CUDA_VISIBLE_DEVICES and allowed roots) that reach the API
only through the proxy, with the credential read from a file. One server for the module.
"""

from __future__ import annotations

import base64
import contextvars
import csv
import os
import secrets
import ssl
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import browser, postgres_server, tls_proxy
from tests.prefect_server import BIN, PrefectServer, env_file, start, stop
from tests.test_deployments import ROOT, TINY, _client, _summary, _wait
from tests.test_restarts import LONG, _epoch, _no_half_written_files, _wait_for_epoch

pytestmark = [pytest.mark.slow, pytest.mark.server]

DEPLOYMENTS = ROOT / "deployments"
BURST = 20
STATUS_CALLS = """
import base64, os, ssl, sys, time, urllib.error, urllib.request
url, cafile, stop = sys.argv[1:]
context = ssl.create_default_context(cafile=cafile)
auth = "Basic " + base64.b64encode(os.environ["PREFECT_API_AUTH_STRING"].encode()).decode()
while not os.path.exists(stop):
    request = urllib.request.Request(url, data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": auth})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            code = response.status
    except urllib.error.HTTPError as error:
        code = error.code
    print(code, time.monotonic() - t0, flush=True)
    time.sleep(0.2)
"""


@pytest.fixture(scope="module")
def team(tmp_path_factory, tiny_archive):
    for reason in (postgres_server.skip_reason(), tls_proxy.skip_reason()):
        if reason:
            pytest.skip(reason)
    from prefect.settings import (PREFECT_API_AUTH_STRING, PREFECT_API_SSL_CERT_FILE, PREFECT_API_URL,
                                  temporary_settings)

    root = tmp_path_factory.mktemp("team")
    # The credential lives in a file only its owner reads, as on the team's machines; every process
    # gets it through its environment.
    secret_file = root / "prefect-auth"
    secret_file.write_text(f"cifar-team:{secrets.token_urlsafe(24)}\n")
    secret_file.chmod(0o600)
    credential = secret_file.read_text().strip()
    path, md5 = tiny_archive
    with postgres_server.PostgresServer() as pg:
        pg.create_database("prefect")
        srv = PrefectServer(root / "server", ui=True, auth=credential,
                            server_env={**env_file(DEPLOYMENTS / "server.env"), **pg.prefect_env("prefect")})
        with tls_proxy.TlsProxy(root / "proxy", srv.port) as proxy:
            srv.via(f"{proxy.url}/api", str(proxy.cert))
            with srv, temporary_settings({PREFECT_API_URL: srv.url, PREFECT_API_AUTH_STRING: credential,
                                          PREFECT_API_SSL_CERT_FILE: str(proxy.cert)}):
                srv.deploy(ROOT, "nightly", "on-demand")
                srv.pg, srv.proxy, srv.credential, srv.root = pg, proxy, credential, root
                srv.shared = root / "shared"  # the team's shared output folder (NFS on a real team)
                srv.worker_env = {**srv.env, **env_file(DEPLOYMENTS / "worker.env"),
                                  "CIFAR_PIPELINE_SOURCE": str(path), "CIFAR_PIPELINE_MD5": md5,
                                  "CIFAR_PIPELINE_ALLOWED_ROOTS": f"{srv.shared}:{path.parent}"}
                assert "PREFECT_SERVER_DATABASE_PASSWORD" not in srv.worker_env
                yield srv


@pytest.fixture(scope="module")
def workers(team):
    procs = []
    for gpu in ("0", "1"):
        env = {**team.worker_env, "CUDA_VISIBLE_DEVICES": gpu}
        procs.append(start([str(BIN / "prefect"), "worker", "start", "--pool", "cifar-cpu", "--limit", "1",
                            "--name", f"machine-{gpu}"], env, team.root / f"worker-{gpu}.log", cwd=ROOT))
    yield procs
    for proc in procs:
        stop(proc)


def _request(team, path: str, credential: str | None, body: bytes | None = b"{}") -> int:
    request = urllib.request.Request(f"{team.proxy.url}{path}", data=body, method="POST" if body else "GET",
                                     headers={"Content-Type": "application/json"})
    if credential is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(credential.encode()).decode())
    context = ssl.create_default_context(cafile=str(team.proxy.cert))
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_api_over_tls_lets_in_only_the_right_credential(team):
    assert _request(team, "/api/flows/filter", None) == 401
    assert _request(team, "/api/flows/filter", "cifar-team:wrong") == 401
    assert _request(team, "/api/flows/filter", team.credential) == 200
    assert _request(team, "/api/health", None, body=None) == 200  # Prefect leaves health checks open
    # Plain HTTP to the TLS port is refused; the server itself is on 127.0.0.1 only.
    with pytest.raises(Exception):
        urllib.request.urlopen(f"http://127.0.0.1:{team.proxy.port}/api/health", timeout=10).read()
    assert team.direct_url.startswith("http://127.0.0.1:")


def test_two_workers_with_the_credential_run_two_runs_at_once(team, workers):
    from prefect.deployments import run_deployment

    shared = team.shared
    runs = [run_deployment("cifar-pipeline/on-demand", timeout=0, parameters={
        "config": {**TINY, "seed": seed, "output_dir": str(shared)}}) for seed in (1, 2)]
    finished = _wait([r.id for r in runs])
    assert [r.state.name for r in finished] == ["Completed", "Completed"], [r.state for r in finished]
    summaries = [_summary(shared, r.id) for r in runs]
    assert summaries[0]["run_dir"] != summaries[1]["run_dir"]
    for s in summaries:
        assert (shared / "runs" / s["run_id"] / "report.md").is_file()
    with open(shared / "registry" / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["run_id"] for row in rows) == sorted(s["run_id"] for s in summaries)
    logs = "".join((team.root / f"worker-{gpu}.log").read_text() for gpu in ("0", "1"))
    assert all(str(r.id) in logs for r in runs)  # picked up by the pool's workers


def test_postgresql_restart_during_training_the_run_rides_through_and_completes(team, workers, tmp_path):
    from prefect.deployments import run_deployment

    out = team.shared / "pg-restart"
    run = run_deployment("cifar-pipeline/on-demand", timeout=0,
                         parameters={"config": {**LONG, "epochs": 60, "seed": 3, "output_dir": str(out)}})
    _wait_for_epoch(out, 1, run.id)
    stopped = time.monotonic()
    team.pg.stop("fast")  # every session ends, as in a restart for an upgrade
    at_stop = _epoch(out)
    time.sleep(5)
    team.pg.start()
    outage = time.monotonic() - stopped
    print(f"PostgreSQL outage {outage:.1f} s; training went from epoch {at_stop} to {_epoch(out)} meanwhile")
    [finished] = _wait([run.id])
    assert finished.state.is_completed(), finished.state
    assert finished.run_count == 1
    assert Path(_summary(out, run.id)["report"]).is_file()
    _no_half_written_files(out)


def test_a_burst_of_twenty_nightly_requests_each_runs_or_is_cancelled_and_the_server_answers(team, workers):
    """CANCEL_NEW at limit 1: a request that finds a nightly run going is cancelled, none is lost."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    out = team.shared / "burst"
    # Someone watching the UI during the burst: status calls from their own process (not this one's
    # threads, which share one interpreter lock with the twenty clients).
    stop_file = team.root / "burst.stop"
    watcher = subprocess.Popen([sys.executable, "-c", STATUS_CALLS, f"{team.proxy.url}/api/flow_runs/count",
                                str(team.proxy.cert), str(stop_file)], env=team.env, stdout=subprocess.PIPE, text=True)
    with _client() as client:
        dep = client.read_deployment_by_name("cifar-pipeline/nightly")

    def request(_):  # what the UI's Run button and run_deployment send, each from its own client
        with _client() as client:
            return client.create_flow_run_from_deployment(dep.id, parameters={"config": {**TINY, "output_dir": str(out)}}).id

    try:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=BURST) as pool:
            # Each thread with this test's settings (the API address, credential and certificate),
            # copied here: a thread starts with an empty context.
            contexts = [contextvars.copy_context() for _ in range(BURST)]
            ids = list(pool.map(lambda i: contexts[i].run(request, i), range(BURST)))
        requested = time.monotonic() - started
        finished = _wait(ids, timeout=300)
    finally:
        stop_file.touch()
        calls = [line.split() for line in watcher.communicate(timeout=60)[0].splitlines()]
    statuses = [int(code) for code, _ in calls]
    latencies = [float(seconds) for _, seconds in calls]
    assert set(statuses) == {200}, statuses
    names = [r.state.name for r in finished]
    ran = [r for r in finished if r.state.is_completed()]
    cancelled = [r for r in finished if r.state.is_cancelled()]
    print(f"burst: {BURST} requested in {requested:.1f} s; {len(ran)} ran, {len(cancelled)} cancelled; "
          f"slowest status call {max(latencies):.2f} s of {len(latencies)}")
    assert len(ran) + len(cancelled) == BURST, names
    assert ran and cancelled
    assert all("concurrency" in (r.state.message or "").lower() for r in cancelled), [r.state.message for r in cancelled]
    # One at a time: no two runs of the nightly deployment overlapped.
    spans = sorted((r.start_time, r.end_time) for r in ran)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    summaries = [_summary(out, r.id) for r in ran]
    assert len({s["run_dir"] for s in summaries}) == len(ran) == len(list((out / "runs").iterdir()))
    with _client() as client:
        all_runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
    assert {r.id for r in finished} <= {r.id for r in all_runs}
    # The server keeps answering through the burst: typical calls stay quick and none stalls. Bounds, not
    # timings: on a 2-core AVX2 EPYC (Zen 1) the slowest of 147 calls took 2.7 s, a blocked server takes
    # the client's whole timeout.
    assert statistics.median(latencies) < 1.0 and max(latencies) < 5.0, sorted(latencies)[-5:]


def _chromium():
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager would try to download a driver: no network
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(browser.CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1400"):
        options.add_argument(arg)
    options.accept_insecure_certs = True  # the test's self-signed certificate; a team uses a trusted one
    driver = webdriver.Chrome(service=Service(str(browser.CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(120)
    return driver


def test_the_ui_over_tls_asks_for_the_credential_and_then_shows_the_runs(team, tmp_path):
    if reason := browser.skip_reason():
        pytest.skip(reason)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _chromium()
    try:
        driver.get(f"{team.proxy.url}/v2/runs")
        assert driver.current_url.startswith("https://")
        wait = WebDriverWait(driver, 90)
        field = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "input[type=password]"))
        assert field.get_attribute("placeholder") == "admin:pass"
        field.send_keys("cifar-team:wrong")
        driver.find_element(By.XPATH, "//button[@type='submit']").click()
        wait.until(lambda d: "failed" in d.find_element(By.TAG_NAME, "body").text.lower()
                   or "invalid" in d.find_element(By.TAG_NAME, "body").text.lower())
        field = driver.find_element(By.CSS_SELECTOR, "input[type=password]")
        field.clear()
        field.send_keys(team.credential)
        driver.find_element(By.XPATH, "//button[@type='submit']").click()
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "input[type=password]"))
        wait.until(lambda d: "cifar-pipeline" in d.find_element(By.TAG_NAME, "body").text)
        driver.save_screenshot(str(browser.screenshot_dir(tmp_path) / "team-ui-runs.png"))
    finally:
        driver.quit()


def _all(read, **kwargs) -> list:
    """Every item of a paged API listing (the server answers 200 at most per call)."""
    items: list = []
    while page := read(limit=200, offset=len(items), **kwargs):
        items += page
    return items


def test_the_credential_and_the_database_password_are_in_no_log_and_no_artifact(team):
    """Last in the module: everything the runs above wrote, on disk and in Prefect, is searched."""
    from prefect.client.schemas.filters import LogFilter

    secrets_ = {"credential": team.credential, "database password": postgres_server.PASSWORD}
    texts = {"server logs": team.logs(), "proxy logs": team.proxy.logs(), "postgres log": team.pg.logs()}
    for path in team.root.rglob("*"):
        if path.is_file() and path != team.root / "prefect-auth" and path.suffix not in (".pt", ".png", ".joblib",
                                                                                       ".gz", ".db", ".key"):
            texts[str(path)] = path.read_text(errors="replace")
    with _client() as client:
        texts["run logs"] = "\n".join(log.message for log in _all(client.read_logs, log_filter=LogFilter()))
        texts["artifacts"] = "\n".join(str(a.data) for a in _all(client.read_artifacts))
    assert texts["run logs"] and texts["artifacts"]
    leaks = [(what, where) for what, secret in secrets_.items() for where, text in texts.items()
             if secret in text or base64.b64encode(secret.encode()).decode() in text]
    assert not leaks
