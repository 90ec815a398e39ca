"""Trials as local processes: the sweep's default, with nothing to start.

Each trial is a fresh `python -m cifar_pipeline.sweep.local_trials` process that shares the machine's
cores with the others: with K trials at once each gets cores/K threads (OMP_NUM_THREADS and
torch.set_num_threads), so K trials do not fight over every core. Its log goes to a file beside
the sweep; a process that dies without telling the study fails its trial with the log's last line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from ..data.dataset import DatasetRecord


def threads_per_trial(parallel: int, cores: int | None = None) -> int:
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, parallel))


class LocalTrial:
    def __init__(self, proc: subprocess.Popen, log_file: Path) -> None:
        self.proc, self.log_file = proc, log_file

    def poll(self) -> str | None:
        code = self.proc.poll()
        if code is None:
            return None
        if code == 0:
            return ""
        lines = [ln for ln in self.log_file.read_text(errors="replace").splitlines() if ln.strip()]
        why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return f"trial process {self.proc.pid} {why}" + (f": {lines[-1].strip()}" if lines else "")


class LocalLauncher:
    """`launch(number)` for study.run_trials: one process per trial."""

    def __init__(self, study: str, storage: str, dataset: DatasetRecord, cache_dir: str, log_dir: Path,
                 parallel: int) -> None:
        self.args = ["--study", study, "--storage", storage, "--dataset", dataset.model_dump_json(),
                     "--cache-dir", str(cache_dir)]
        self.log_dir = log_dir
        self.threads = threads_per_trial(parallel)
        self.procs: list[subprocess.Popen] = []

    def __call__(self, number: int) -> LocalTrial:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.log_dir / f"trial-{number}.log"
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        with open(log_file, "a") as log:
            proc = subprocess.Popen([sys.executable, "-m", __name__, *self.args, "--number", str(number)],
                                    env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return LocalTrial(proc, log_file)

    def stop(self) -> None:
        """End trial processes still running (the coordinator is stopping); their trials resume next time."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cifar_pipeline.sweep.local_trials",
                                     description="Run one sweep trial.")
    for name in ("--study", "--storage", "--dataset", "--cache-dir"):
        parser.add_argument(name, required=True)
    parser.add_argument("--number", type=int, required=True)
    ns = parser.parse_args(argv)
    import logging

    import torch

    from .study import open_study, run_trial

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    study = open_study(ns.study, ns.storage)
    outcome = run_trial(study, ns.number, DatasetRecord.model_validate_json(ns.dataset), ns.cache_dir)
    print(json.dumps(outcome.model_dump()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
