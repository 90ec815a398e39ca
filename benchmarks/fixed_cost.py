"""A run's fixed cost: everything outside the training loop, each figure beside its reference.

- the interpreter and the imports (`python -c pass`, `import torch`, `import prefect`) against
  `cifar-pipeline --help`, `presets`, `schema` and `config` (target: --help under 1 s);
- a process's first optimizer, built just before the first step: `torch.optim.SGD` (its compile
  guards import torch._dynamo) against the pipeline's (cifar_pipeline/training/optim.py);
- an empty Prefect flow run (the temporary server's start and stop) against a cached rerun of
  `--preset smoke` on the same temporary server (target: at most 2x);
- with a local server started once (`prefect server start --background`, which the CLI finds): a
  cached rerun (target: under 5 s), the seconds from its JSON line to its end beside the same
  command ending as a plain script does (flows/quick_exit.py), and a run that trains, from the
  command to its first step (target: within 8 s), with the data already decoded as in a debugging loop;
- where the first smoke run's flow time went, step by step (download, decoding, training,
  evaluation, report, promotion with its ONNX export).

Every command is its own process in one PREFECT_HOME made for the part, so nothing of the
developer's Prefect state counts.
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.user_runs import ROOT, python, pipeline_run, seconds_to_first_step, training_record, user_env

EMPTY_FLOW = "from prefect import flow\n@flow\ndef empty():\n    pass\nempty()\n"
# The first optimizer of a fresh process, built as training builds it just before its first step.
FIRST_OPTIMIZER = ("import time, torch\nfrom torch import nn\nfrom cifar_pipeline.training.optim import SGD\n"
                   "model = nn.Linear(4, 2)\nstart = time.perf_counter()\n{cls}(model.parameters(), lr=0.1)\n"
                   "print(time.perf_counter() - start)\n")

# The same command ending as a plain script ends: the interpreter frees every module before it exits.
ORDINARY_EXIT = "import sys\nfrom flows.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def _summary_to_exit(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from a command's last line on stdout (the CLI's JSON summary) to the end of its process."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    last = time.perf_counter()
    for _ in proc.stdout:
        last = time.perf_counter()
    if proc.wait():
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode})")
    return time.perf_counter() - last


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _median_wall(argv: list[str], env: dict[str, str], repeats: int) -> float:
    return statistics.median(python(*argv, env=env).wall for _ in range(repeats))


def fixed_costs(archive: str, md5: str, work: Path, repeats: int = 3) -> dict:
    home = Path(tempfile.mkdtemp(prefix="prefect-home-", dir=work))
    # No PREFECT_API_URL: the temporary server is the reference, then the background one is found.
    env = user_env(drop=("PREFECT_API_URL",), PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    out: dict = {"repeats": repeats}
    for name, argv in {"python -c pass": ["-c", "pass"], "import torch": ["-c", "import torch"],
                       "import prefect": ["-c", "import prefect"],
                       "cifar-pipeline --help": ["-m", "flows", "--help"],
                       "cifar-pipeline presets": ["-m", "flows", "presets"],
                       "cifar-pipeline schema": ["-m", "flows", "schema"],
                       "cifar-pipeline config --preset cpu": ["-m", "flows", "config", "--preset", "cpu"]}.items():
        out[name] = _median_wall(argv, env, repeats)

    firsts = {"torch.optim.SGD": [], "SGD": []}
    for _ in range(repeats):  # interleaved, each its own process
        for cls, times in firsts.items():
            times.append(float(python("-c", FIRST_OPTIMIZER.format(cls=cls), env=env).stdout.split()[-1]))
    out["first optimizer: torch.optim.SGD"] = statistics.median(firsts["torch.optim.SGD"])
    out["first optimizer: cifar_pipeline SGD"] = statistics.median(firsts["SGD"])

    python("-c", EMPTY_FLOW, env=env)  # the first start of a fresh PREFECT_HOME migrates its database
    out["empty flow run (temporary server)"] = _median_wall(["-c", EMPTY_FLOW], env, repeats)
    smoke = ["--preset", "smoke", "--source", archive, "--md5", md5, "--output-dir", str(work / "smoke")]
    first, summary = pipeline_run(*smoke, env=env)
    out["smoke, first run (temporary server)"] = first.wall
    out["smoke, first run: flow steps (s)"] = summary.get("task_seconds", {})
    out["smoke, first run: flow"] = summary["seconds"]
    cached = [pipeline_run(*smoke, env=env) for _ in range(repeats)]
    assert all(s["unchanged"] for _, s in cached), "a rerun of an unchanged smoke run trained again"
    out["smoke, cached rerun (temporary server)"] = statistics.median(r.wall for r, _ in cached)
    out["smoke, cached rerun: flow"] = statistics.median(s["seconds"] for _, s in cached)

    port = _free_port()
    served = {**env, "PREFECT_SERVER_API_PORT": str(port)}
    start = time.perf_counter()
    python("-m", "prefect", "server", "start", "--background", "--port", str(port), env=served)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/api/health")
        out["local server: start, once (s)"] = time.perf_counter() - start
        pipeline_run(*smoke, env=served)  # the first call against it registers the flow
        cached = [pipeline_run(*smoke, env=served) for _ in range(repeats)]
        assert all("local Prefect server" in r.stderr for r, _ in cached), "the CLI did not find the server"
        out["smoke, cached rerun (local server)"] = statistics.median(r.wall for r, _ in cached)
        out["smoke, cached rerun (local server): flow"] = statistics.median(s["seconds"] for _, s in cached)
        out["smoke, cached rerun (local server): flow steps (s)"] = cached[-1][1].get("task_seconds", {})
        exits: dict[str, list[float]] = {"cli": [], "ordinary": []}
        for _ in range(repeats):  # interleaved
            exits["cli"].append(_summary_to_exit(["-m", "flows", "run", *smoke], served))
            exits["ordinary"].append(_summary_to_exit(["-c", ORDINARY_EXIT, "run", *smoke], served))
        out["smoke, cached rerun (local server): summary to exit"] = statistics.median(exits["cli"])
        out["smoke, cached rerun (local server): summary to exit, ordinary"] = statistics.median(exits["ordinary"])
        firsts = []
        for seed in range(1, repeats + 1):  # a new seed trains; download and decoding stay cached
            run, summary = pipeline_run(*smoke, "--seed", str(1000 + seed), env=served)
            firsts.append(seconds_to_first_step(run, training_record(summary)))
        out["smoke, command to first training step (local server)"] = statistics.median(firsts)
    finally:
        python("-m", "prefect", "server", "stop", env=served)
    return out


def _wait_healthy(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the background server did not answer {url} within {timeout_s:g} s")


def rows(out: dict) -> list[tuple[str, str]]:
    """The part's table: each figure beside its reference and target."""
    empty = out["empty flow run (temporary server)"]
    table = [(name, f"{out[name]:.2f} s") for name in
             ("python -c pass", "import torch", "import prefect", "cifar-pipeline --help", "cifar-pipeline presets",
              "cifar-pipeline schema", "cifar-pipeline config --preset cpu")]
    table[3] = (table[3][0] + " (target < 1 s)", table[3][1])
    table.append(("the first optimizer of a process: `torch.optim.SGD` (imports torch._dynamo) / the pipeline's",
                  f"{out['first optimizer: torch.optim.SGD']:.2f} s / {out['first optimizer: cifar_pipeline SGD']:.3f} s"))
    table += [
        ("empty Prefect flow run (temporary server's start and stop)", f"{empty:.2f} s"),
        ("`--preset smoke`, first run (fresh output folder)", f"{out['smoke, first run (temporary server)']:.1f} s "
         f"(flow {out['smoke, first run: flow']:.1f} s)"),
        ("`--preset smoke`, cached rerun / empty flow run (target <= 2x)",
         f"{out['smoke, cached rerun (temporary server)']:.2f} s / {empty:.2f} s = "
         f"**{out['smoke, cached rerun (temporary server)'] / empty:.2f}x** (flow {out['smoke, cached rerun: flow']:.2f} s)"),
        ("local server: `prefect server start --background`, once", f"{out['local server: start, once (s)']:.1f} s"),
        ("`--preset smoke`, cached rerun, local server (target < 5 s)",
         f"**{out['smoke, cached rerun (local server)']:.2f} s** (flow {out['smoke, cached rerun (local server): flow']:.2f} s: "
         + ", ".join(f"{k} {v:.2f}" for k, v in out["smoke, cached rerun (local server): flow steps (s)"].items()) + ")"),
        ("`--preset smoke`, cached rerun, local server: its JSON line to the process's end, a plain script's "
         "exit / the CLI's", f"{out['smoke, cached rerun (local server): summary to exit, ordinary']:.2f} s / "
         f"{out['smoke, cached rerun (local server): summary to exit']:.2f} s"),
        ("`--preset smoke`, command to first training step, local server (target < 8 s)",
         f"**{out['smoke, command to first training step (local server)']:.2f} s**"),
    ]
    steps = out["smoke, first run: flow steps (s)"]
    table.append(("`--preset smoke`, first run, flow steps", ", ".join(f"{k} {v:.1f} s" for k, v in steps.items())))
    return table
