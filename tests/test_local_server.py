"""The CLI finds a local background Prefect server: Prefect's pid file, a live process, an answer on 127.0.0.1.

A real HTTP server on 127.0.0.1 stands in for the API's health route; the whole path against a real
`prefect server start --background` is measured by the benchmark's fixed part (tests/test_benchmarks.py).
"""

import http.server
import os
import subprocess
import sys
import threading

import pytest

from flows.local_server import background_server_url, use_background_server


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _environ(home, port, **extra):
    return {"PREFECT_HOME": str(home), "PREFECT_SERVER_API_PORT": str(port), **extra}


def test_a_live_background_server_is_found_and_used(tmp_path, health_server):
    (tmp_path / "server.pid").write_text(str(os.getpid()))
    environ = _environ(tmp_path, health_server)
    assert background_server_url(environ) == f"http://127.0.0.1:{health_server}/api"
    assert use_background_server(environ) == f"http://127.0.0.1:{health_server}/api"
    assert environ["PREFECT_API_URL"] == f"http://127.0.0.1:{health_server}/api"


def test_a_configured_api_url_wins(tmp_path, health_server):
    (tmp_path / "server.pid").write_text(str(os.getpid()))
    environ = _environ(tmp_path, health_server, PREFECT_API_URL="http://elsewhere:4200/api")
    assert use_background_server(environ) is None and environ["PREFECT_API_URL"] == "http://elsewhere:4200/api"


def test_no_pid_file_a_dead_process_or_no_answer_means_the_temporary_server(tmp_path, health_server):
    assert background_server_url(_environ(tmp_path, health_server)) is None  # no pid file
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "server.pid").write_text(dead.stdout.strip())
    assert background_server_url(_environ(tmp_path, health_server)) is None  # the process is gone
    (tmp_path / "server.pid").write_text(str(os.getpid()))
    silent = health_server + 1 if health_server < 65535 else health_server - 1
    environ = _environ(tmp_path, silent)
    assert use_background_server(environ) is None and "PREFECT_API_URL" not in environ  # nothing answers
    (tmp_path / "server.pid").write_text("not a pid")
    assert background_server_url(_environ(tmp_path, health_server)) is None
