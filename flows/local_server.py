"""A local Prefect server started once, found by the CLI: Prefect's start kept out of the debugging loop.

Without PREFECT_API_URL every `cifar-pipeline run` starts and stops Prefect's temporary server, about
10-15 s on 2 cores before and after the work. Started once with `prefect server start --background`
(Prefect writes PREFECT_HOME/server.pid; `prefect server stop` ends it), a server answering on this
machine is used instead, so a cached rerun costs little more than the interpreter and its imports.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import MutableMapping
from pathlib import Path

PID_FILE = "server.pid"  # prefect.cli._server_utils.SERVER_PID_FILE_NAME (3.9)
HEALTH_TIMEOUT_S = 0.5


def background_server_url(environ: MutableMapping[str, str]) -> str | None:
    """The API URL of a background server started from this PREFECT_HOME that answers, else None."""
    home = Path(environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    try:
        pid = int((home / PID_FILE).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if not pid or not _alive(pid):
        return None
    host = environ.get("PREFECT_SERVER_API_HOST") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    url = f"http://{host}:{environ.get('PREFECT_SERVER_API_PORT') or 4200}/api"
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=HEALTH_TIMEOUT_S) as response:
            return url if response.status == 200 else None
    except OSError:
        return None


def use_background_server(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Point Prefect at a local background server when no API is configured; the URL, or None.

    Call before Prefect is imported: its settings are read then."""
    if environ.get("PREFECT_API_URL"):
        return None
    url = background_server_url(environ)
    if url is not None:
        environ["PREFECT_API_URL"] = url
    return url


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
