"""Commands run the way a user runs them: each in its own process, timed from outside.

The blog's script measured inside the benchmark's process ran about a quarter slower than the same
script run alone (issue 20: 1,072 against 1,393 images/s): whatever the process had set before
(threads, the heap setting, oneDNN's state) carried over. Every side of a comparison is therefore a
fresh interpreter here, with the caller's environment less what only a harness sets (NOT_CARRIED).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a benchmark or test harness may set and a user's shell would not: not carried into a user's process.
NOT_CARRIED = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTEST_CURRENT_TEST")


def user_env(drop: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_CARRIED + drop}
    env["PYTHONPATH"] = str(ROOT)
    return {**env, **extra}


class Timed:
    """A finished command: wall seconds from launch, its launch time (epoch seconds) and its output."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, check: bool = True) -> None:
        self.launched = time.time()
        start = time.perf_counter()
        done = subprocess.run(argv, env=env or user_env(), cwd=ROOT, capture_output=True, text=True, check=False)
        self.wall = time.perf_counter() - start
        self.returncode, self.stdout, self.stderr = done.returncode, done.stdout, done.stderr
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")

    def last_json(self) -> dict:
        lines = self.stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else {}


def python(*args: str, env: dict[str, str] | None = None) -> Timed:
    return Timed([sys.executable, *args], env)


def blog_script(torchvision_root: Path, epochs: int, seed: int) -> dict:
    """benchmarks/seed_code.py as a script: the blog's code, end to end."""
    run = python("benchmarks/seed_code.py", "--root", str(torchvision_root), "--epochs", str(epochs),
                 "--seed", str(seed))
    return {**run.last_json(), "wall_seconds": run.wall}


def pipeline_run(*args: str, env: dict[str, str] | None = None) -> tuple[Timed, dict]:
    """`cifar-pipeline run ARGS` (python -m flows run): the command and its summary line."""
    run = python("-m", "flows", "run", *args, env=env)
    return run, run.last_json()


def training_record(summary: dict) -> dict:
    """The stored training record of a finished run (the stage entry its stages.json names)."""
    run_dir = Path(summary["run_dir"])
    entry = json.loads((run_dir / "stages.json").read_text())["train"]
    cache = run_dir.parents[1] / "cache"
    return json.loads((cache / entry / "record.json").read_text())["record"]


def seconds_to_first_step(run: Timed, record: dict) -> float:
    """From the command's launch to the end of its first training step."""
    return datetime.fromisoformat(record["first_step_at"]).timestamp() - run.launched
