"""A real PostgreSQL server on 127.0.0.1 for the tests that need one, in a temporary folder.

Debian's `postgresql` package provides the binaries (the README's test command installs it where
the machine allows). PostgreSQL refuses to run as root, so as root the server runs as the
`postgres` system user. Tests call `skip_reason()` first and skip with its text when it is not None.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.prefect_server import free_port

PASSWORD = "cifar-test"


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def skip_reason() -> str | None:
    if _bin_dir() is None:
        return "PostgreSQL is not installed (Debian: apt-get install postgresql; `make test` does it as root)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a `postgres` system user to run PostgreSQL as"
    return None


class PostgresServer:
    """`with PostgresServer() as pg: pg.url("asyncpg", "prefect")` -> a connection URL to a fresh database."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="cifar-pg-"))
        self.data = self.root / "data"
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def __enter__(self) -> PostgresServer:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD)
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "cifar", "--pwfile", str(pwfile),
                  "-A", "scram-sha-256", "--no-sync", "-E", "UTF8")
        self.start()
        return self

    def start(self) -> None:
        """Start the server (again, after stop(): same data folder, same port)."""
        # Sockets in our own folder (not /var/run/postgresql), TCP on loopback only, fsync off: test data.
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", opts,
                  "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` ends every session (what a restart for an upgrade does), `immediate` crashes it."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def logs(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def create_database(self, name: str) -> None:
        env_cmd = [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "cifar", "-d", "postgres",
                   "-c", f'CREATE DATABASE "{name}"']
        subprocess.run(env_cmd, check=True, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PGPASSWORD": PASSWORD})
        if name == "prefect" or name.startswith("prefect"):
            # Prefect's server needs pg_trgm; creating it as the database owner works from PostgreSQL 13 on.
            subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "cifar",
                            "-d", name, "-c", "CREATE EXTENSION IF NOT EXISTS pg_trgm"],
                           check=True, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PGPASSWORD": PASSWORD})

    def prefect_env(self, database: str) -> dict[str, str]:
        """The Prefect server's database settings, the password in its own variable (never in a URL)."""
        return {"PREFECT_SERVER_DATABASE_DRIVER": "postgresql+asyncpg", "PREFECT_SERVER_DATABASE_HOST": "127.0.0.1",
                "PREFECT_SERVER_DATABASE_PORT": str(self.port), "PREFECT_SERVER_DATABASE_USER": "cifar",
                "PREFECT_SERVER_DATABASE_NAME": database, "PREFECT_SERVER_DATABASE_PASSWORD": PASSWORD}

    def url(self, driver: str, database: str) -> str:
        """e.g. url("asyncpg", "prefect") for Prefect, url("psycopg2", "optuna") for Optuna/SQLAlchemy."""
        return f"postgresql+{driver}://cifar:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def __exit__(self, *exc) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        deadline = time.monotonic() + 30
        while (self.data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(self.root, ignore_errors=True)
