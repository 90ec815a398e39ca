"""A real `prefect server start` on 127.0.0.1 for the tests that need one, stopped by process id."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """A background process in its own session, so that stop() also ends what it started."""
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        # A process worker started from a non-interactive parent may not exit on SIGTERM.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


class PrefectServer:
    """`ui=True` serves the web UI too; `database` replaces the SQLite file with another URL (PostgreSQL).

    Optional, for the team set-up (deployments/TEAM.md) and the restart tests:
    - `auth`: the Basic auth string; the server gets PREFECT_SERVER_API_AUTH_STRING, clients (`env`)
      PREFECT_API_AUTH_STRING;
    - `server_env`: settings only the server process sees (database parts, lease storage); a
      PREFECT_SERVER_DATABASE_DRIVER there replaces `database`;
    - `stop_server()` / `start_server()`: stop the server's process group and start it again on the
      same port and database (a restart, as an operator would do it).
    Clients use `url` and `env`; `via(url, cert_file)` points them at a TLS proxy in front instead.
    """

    def __init__(self, home: Path, *, ui: bool = False, database: str | None = None, auth: str | None = None,
                 server_env: dict[str, str] | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.direct_url = f"http://127.0.0.1:{self.port}/api"
        self.url = self.direct_url
        self.auth = auth
        self.server_env = dict(server_env or {})
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "true" if ui else "false",
            # The browser asks this address for the API; without it a port other than 4200 shows
            # "Unable to connect to Prefect server".
            "PREFECT_UI_API_URL": self.url,
            # The scheduler would add Scheduled runs of the nightly deployment at moments the tests do
            # not control (and a worker would start them near 02:00 UTC); the schedule itself is kept.
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        }
        if "PREFECT_SERVER_DATABASE_DRIVER" not in self.server_env:
            self.env["PREFECT_API_DATABASE_CONNECTION_URL"] = database or f"sqlite+aiosqlite:///{home / 'prefect.db'}"
        if auth is not None:
            self.env["PREFECT_API_AUTH_STRING"] = auth
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def _server_env(self) -> dict[str, str]:
        env = {k: v for k, v in self.env.items() if k not in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
        if self.auth is not None:
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.auth
        return {**env, **self.server_env}

    def via(self, url: str, cert_file: str | None = None) -> None:
        """Clients (and the UI, from the next start on) reach the API at `url`, e.g. a TLS proxy."""
        self.url = url
        self.env.update(PREFECT_API_URL=url, PREFECT_UI_API_URL=url)
        if cert_file:
            self.env["PREFECT_API_SSL_CERT_FILE"] = cert_file

    def start_server(self, timeout: float = 240) -> None:
        """Start `prefect server start` (again) and wait until it answers its health check."""
        self.home.mkdir(parents=True, exist_ok=True)
        log = self.home / ("server.log" if not self.starts else f"server-{self.starts}.log")
        self.starts += 1
        self.proc = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                           str(self.port)], self._server_env(), log)
        deadline = time.monotonic() + timeout  # first start migrates a fresh database: slow on 2 cores
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("prefect server exited:\n" + log.read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"{self.direct_url}/health", timeout=2) as response:
                    if response.read().strip() == b"true":
                        return
            except OSError:
                pass
            time.sleep(0.5)
        stop(self.proc)
        raise RuntimeError(f"prefect server did not answer within {timeout:.0f} s")

    def stop_server(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    def logs(self) -> str:
        """Everything the server wrote, over all its starts."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.home.glob("server*.log")))

    def __enter__(self) -> "PrefectServer":
        self.start_server()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_server()

    def worker(self, root: Path, allowed: Path, limit: int) -> subprocess.Popen:
        """A process worker on the cifar-cpu pool, started from `root`; its runs may only touch `allowed`
        (as on a shared server)."""
        env = {**self.env, "CIFAR_PIPELINE_ALLOWED_ROOTS": str(allowed)}
        return start([str(BIN / "prefect"), "worker", "start", "--pool", "cifar-cpu", "--limit", str(limit)],
                     env, self.home / "worker.log", cwd=root)

    def cli(self, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "prefect"), *args], env=self.env, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)

    def deploy(self, root: Path, *names: str) -> None:
        """Apply deployments/prefect.yaml (all, or the named ones) after creating the work pools they use."""
        import yaml

        specs = yaml.safe_load((root / "deployments/prefect.yaml").read_text())["deployments"]
        pools = {s["work_pool"]["name"] for s in specs if not names or s["name"] in names}
        for pool in sorted(pools):
            created = self.cli("work-pool", "create", pool, "--type", "process", cwd=root)
            assert created.returncode == 0, created.stdout + created.stderr
        which = [arg for name in names for arg in ("-n", name)] or ["--all"]
        deployed = self.cli("--no-prompt", "deploy", *which, "--prefect-file", "deployments/prefect.yaml", cwd=root)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a systemd-style environment file (deployments/worker.env, server.env)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip('"')
    return values


def wait_for_runs(flow_run_ids, timeout: float = 400, poll: float = 0.5) -> list:
    """The flow runs, once every one of them is in a final state (the current API's)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_flow_run(i) for i in flow_run_ids]
            if all(r.state and r.state.is_final() for r in runs):
                return runs
            assert time.monotonic() < deadline, [r.state for r in runs]
            time.sleep(poll)
