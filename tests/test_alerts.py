"""Alerts against a real Prefect server: automations applied by `cifar-pipeline alerts apply`, runs of the
real deployments on a real process worker, messages caught by a real HTTP server on 127.0.0.1.

The receiver gets what the notification block sends (Apprise's JSON webhook: {"title", "message", ...});
it can also answer 500, and a closed port stands for a target that is down.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.prefect_server import BIN, PrefectServer, free_port, stop, wait_for_runs

pytestmark = [pytest.mark.slow, pytest.mark.server]

ROOT = Path(__file__).resolve().parents[1]
TINY = {"preset": "smoke", "train_subset": 0, "test_subset": 0, "batch_size": 32, "width": 8, "epochs": 1}
FAILED_RUN, REGRESSION, NIGHTLY_LATE = "cifar-pipeline-run-failed", "cifar-pipeline-regression", \
    "cifar-pipeline-nightly-late"


class Receiver:
    """A webhook target: records each POST (arrival time, path, JSON body); /broken answers 500."""

    def __init__(self) -> None:
        self.posts: list[tuple[float, str, dict]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.posts.append((time.time(), self.path, json.loads(body or b"{}")))
                self.send_response(500 if self.path.startswith("/broken") else 200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def about(self, text: str, path: str = "/ok") -> list[tuple[float, dict]]:
        return [(t, body) for t, p, body in list(self.posts)
                if p == path and text in body.get("title", "") + body.get("message", "")]

    def wait_for(self, text: str, path: str = "/ok", timeout: float = 60) -> list[tuple[float, dict]]:
        deadline = time.monotonic() + timeout
        while not self.about(text, path):
            assert time.monotonic() < deadline, f"no message about {text!r} at {path}: {self.posts}"
            time.sleep(0.1)
        return self.about(text, path)


@pytest.fixture(scope="module")
def receiver():
    rec = Receiver()
    rec.thread.start()
    yield rec
    rec.httpd.shutdown()
    rec.httpd.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_archive):
    srv = PrefectServer(tmp_path_factory.mktemp("alerts-server"))
    # What {{ flow_run|ui_url }} builds on, in the server's own environment.
    srv.env["PREFECT_UI_URL"] = f"http://127.0.0.1:{srv.port}"
    # Proactive windows are checked every 5 s by default; every second keeps the late-check test short.
    srv.env["PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY"] = "PT1S"
    with srv:
        path, md5 = tiny_archive
        srv.env.update(CIFAR_PIPELINE_SOURCE=str(path), CIFAR_PIPELINE_MD5=md5)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: srv.url}):
            srv.deploy(ROOT, "nightly", "on-demand")
            yield srv


@pytest.fixture(scope="module")
def worker(server, tmp_path_factory):
    proc = server.worker(ROOT, tmp_path_factory.getbasetemp(), limit=3)
    yield proc
    stop(proc)


def _apply_cli(server, *args: str) -> dict:
    proc = subprocess.run([str(BIN / "cifar-pipeline"), "alerts", "apply", *args], env=server.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def alerts(server, receiver):
    """The automations applied through the command line, then again: (first result, second result)."""
    from deployments.alerts import apply

    first = _apply_cli(server, "--webhook", receiver.url("/ok"))
    return first, apply(webhook=receiver.url("/ok"))  # what the command runs, without starting Python again


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _automations() -> dict:
    with _client() as client:
        return {a.name: a for a in client.read_automations()}


def _wait(flow_run_ids, timeout=400):
    return wait_for_runs(flow_run_ids, timeout)


def _start(deployment: str, config: dict):
    from prefect.deployments import run_deployment

    return run_deployment(f"cifar-pipeline/{deployment}", parameters={"config": config}, timeout=0)


def _refused_run_config() -> dict:
    # Refused by the worker's allowed folders before any work: a failure with a one-line reason, fast.
    return {**TINY, "output_dir": "/etc"}


@pytest.fixture(scope="module")
def regression_outputs(tmp_path_factory, tiny_dataset):
    """An output folder whose champion scored 100 % on the tiny test set, registered by the real code."""
    from cifar_pipeline.config import PipelineConfig
    from cifar_pipeline.evaluation import evaluate
    from cifar_pipeline.registry import export as export_module
    from cifar_pipeline.registry.champion import registry_dir, update_registry
    from cifar_pipeline.training.loop import train

    record, _ = tiny_dataset
    out = tmp_path_factory.mktemp("regression-outputs")
    cfg = PipelineConfig(**TINY, output_dir=str(out)).resolved({})
    trained = train(cfg, record, out / "test-cache", progress=False)
    perfect = evaluate(cfg, trained, record, out / "test-cache").model_copy(update={"accuracy": 1.0})
    export, export_module.export_for_promotion = export_module.export_for_promotion, lambda *a: (None, "skipped")
    try:
        assert update_registry(registry_dir(cfg), "perfect-champion", cfg, trained, perfect, record, 1.0).promoted
    finally:
        export_module.export_for_promotion = export
    return out


@pytest.fixture(scope="module")
def three_runs(alerts, worker, regression_outputs, tmp_path_factory):
    """At once: a refused nightly run, a successful on-demand run and an on-demand run below the champion.

    (Two nightly runs cannot overlap: the deployment's concurrency limit cancels the second one.)
    """
    success_out = tmp_path_factory.mktemp("success-outputs")
    runs = {"failed": _start("nightly", _refused_run_config()),
            "success": _start("on-demand", {**TINY, "output_dir": str(success_out)}),
            "regression": _start("on-demand", {**TINY, "output_dir": str(regression_outputs)})}
    finished = dict(zip(runs, _wait([r.id for r in runs.values()])))
    return finished, {"success": success_out, "regression": regression_outputs}


def test_apply_twice_keeps_one_automation_each_with_the_late_check_as_intended(alerts):
    first, second = alerts
    assert [a["action"] for a in first["automations"]] == ["created"] * 3
    assert [a["action"] for a in second["automations"]] == ["updated"] * 3
    assert [a["id"] for a in first["automations"]] == [a["id"] for a in second["automations"]]
    assert first["block_document_id"] == second["block_document_id"]
    automations = _automations()
    assert sorted(automations) == sorted([FAILED_RUN, REGRESSION, NIGHTLY_LATE])  # no duplicates
    for automation in automations.values():
        assert automation.enabled
        assert [str(a.block_document_id) for a in automation.actions] == [first["block_document_id"]]

    late = automations[NIGHTLY_LATE].trigger
    assert late.posture == "Proactive" and late.within == timedelta(hours=26) and late.threshold == 1
    assert late.after == {"prefect.flow-run.Completed"} == late.expect
    scope = [dict(r.root) for r in late.match_related]
    assert {"prefect.resource.role": "deployment", "prefect.resource.name": "nightly"} in scope
    failed = automations[FAILED_RUN].trigger
    assert failed.posture == "Reactive"
    assert {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"} <= failed.expect


def test_a_failed_nightly_run_sends_one_message_with_its_reason_and_url(three_runs, receiver, server):
    run = three_runs[0]["failed"]
    assert run.state.is_failed() and "is outside the folders this worker allows" in run.state.message
    (arrived, body), = receiver.wait_for(str(run.id))
    delay = arrived - run.state.timestamp.timestamp()
    print(f"\nfailed run ended -> message at the webhook: {delay:.2f} s")
    assert run.name in body["title"] and "Failed" in body["title"] and "nightly" in body["title"]
    assert f"Reason: {run.state.message}" in body["message"]
    assert f"http://127.0.0.1:{server.port}/runs/flow-run/{run.id}" in body["message"]
    time.sleep(max(3.0, 2 * delay))
    assert len(receiver.about(str(run.id))) == 1  # once: the worker's own report of the exit adds nothing


def test_a_successful_run_sends_nothing_and_a_regression_sends_one_message_with_both_accuracies(three_runs,
                                                                                                receiver):
    runs, outputs = three_runs
    assert runs["success"].state.is_completed() and runs["regression"].state.is_completed()
    summary = next(json.loads(p.read_text()) for p in outputs["regression"].glob("runs/*/summary.json"))
    assert not summary["promoted"] and summary["champion_accuracy"] == 1.0
    (_, body), = receiver.wait_for(f"run {summary['run_id']}")
    assert f"tested {summary['test_accuracy']:.2%}" in body["message"]
    assert "the champion perfect-champion has 100.00%" in body["message"]
    assert f"{100 * (1 - summary['test_accuracy']):.2f}" in f"{body['message']}"
    assert str(runs["regression"].id) in body["message"]  # the run's URL
    time.sleep(2)
    assert len(receiver.about(f"run {summary['run_id']}")) == 1
    assert receiver.about(str(runs["success"].id)) == [] and receiver.about(runs["success"].name) == []


def _action_failures(automation_id, triggering_event_id, timeout=60) -> list:
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter, EventResourceFilter

    deadline = time.monotonic() + timeout
    while True:
        with _client() as client:
            page = client.read_events(EventFilter(
                event=EventNameFilter(name=["prefect.automation.action.failed"]),
                resource=EventResourceFilter(id=[f"prefect.automation.{automation_id}"]),
                related=EventRelatedFilter(id=[f"prefect.event.{triggering_event_id}"])), limit=50)
        if page.events or time.monotonic() > deadline:
            return page.events
        time.sleep(1)


@pytest.mark.parametrize("target", ["/broken", "down"])
def test_a_target_that_fails_leaves_the_run_as_it_was_and_the_failure_in_the_event_feed(target, three_runs,
                                                                                        receiver, server):
    from deployments.alerts import apply

    url = receiver.url(target) if target != "down" else f"http://127.0.0.1:{free_port()}/hook"
    apply(webhook=url)
    try:
        run = _wait([_start("nightly", _refused_run_config()).id])[0]
        assert run.state.name == "Failed" and "is outside the folders this worker allows" in run.state.message
        failures = _action_failures(_automations()[FAILED_RUN].id, run.state.id)
        assert len(failures) == 1, failures
        assert failures[0].payload["reason"] == "Notification failed"
        assert ("500" if target == "/broken" else "connection") in failures[0].payload["notification_log"].lower()
        if target == "/broken":
            assert len(receiver.about(str(run.id), "/broken")) == 1  # tried once, not again and again
    finally:
        apply(webhook=receiver.url("/ok"))


def test_the_nightly_late_check_fires_when_no_nightly_run_completes_within_its_window(alerts, receiver, server):
    """The applied automation with only `within` shortened to 10 s: it fires once the window passes."""
    from deployments.alerts import apply

    applied = time.time()
    apply(webhook=receiver.url("/ok"), late_within=timedelta(seconds=10))
    try:
        arrived, body = receiver.wait_for("No run of cifar-pipeline/nightly completed", timeout=60)[0]
        assert "Check the worker" in body["message"]
        assert 10 <= arrived - applied < 30, arrived - applied
    finally:
        apply(webhook=receiver.url("/ok"))
    assert _automations()[NIGHTLY_LATE].trigger.within == timedelta(hours=26)
