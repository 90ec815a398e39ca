"""The command line as scripts and cron jobs use it: a real subprocess, exit codes, stdout JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, env=None, timeout=600):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "flows", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_run_prints_one_json_line_last_and_progress_on_stderr(tmp_path, tiny_archive, server):
    path, md5 = tiny_archive
    env = {"PREFECT_HOME": str(tmp_path / "prefect"), "CIFAR_PIPELINE_SOURCE": server.url(path.name),
           "CIFAR_PIPELINE_MD5": md5}
    proc = cli("run", "--preset", "smoke", "--epochs", "1", "--seed", "3", "--output", str(tmp_path / "out"),
               "--train-subset", "0", "--test-subset", "0", "--batch-size", "32", "--width", "8", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["preset"] == "smoke" and result["status"] == "completed"
    assert 0 <= result["test_accuracy"] <= 1
    assert Path(result["report"]).is_file() and Path(result["checkpoint"]).is_file()
    assert set(result["tasks"]) == {"download", "build-dataset", "train", "evaluate", "promote", "figures",
                                   "report"}
    assert result["run_id"] and Path(result["run_dir"]).parent == tmp_path / "out" / "runs"
    assert "Finished in state" in proc.stderr  # Prefect's progress lines go to stderr
    assert all(line.startswith("{") for line in proc.stdout.strip().splitlines())
    assert server.requests, "the source came from CIFAR_PIPELINE_SOURCE"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "0"], "epochs = 0.0: Input should be greater than 0 (allowed: 0 < epochs <= 1000)"),
        (["--batch-size", "-3"], "batch_size = -3"),
        (["--lr", "7000"], "lr = 7000.0"),
        (["--preset", "warp"], "invalid choice: 'warp'"),
        (["--model", "vgg"], "invalid choice: 'vgg'"),
        (["--source", "/no/such/archive.tar.gz"], "data source does not exist: /no/such/archive.tar.gz"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(args, message, tmp_path):
    proc = cli("run", "--output", str(tmp_path), *args, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()  # nothing was started


@pytest.mark.parametrize("where", ["file", "below a file"])
def test_an_output_folder_that_is_a_file_exits_2_before_anything_starts(where, tmp_path, tiny_archive):
    path, md5 = tiny_archive
    taken = tmp_path / "notes.txt"
    taken.write_text("not a folder")
    output = taken if where == "file" else taken / "outputs"
    proc = cli("run", "--preset", "smoke", "--source", str(path), "--md5", md5, "--output", str(output),
               env={"PREFECT_HOME": str(tmp_path / "prefect")}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"output_dir = '{output}'" in proc.stderr and "is a file" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert taken.read_text() == "not a folder" and not (tmp_path / "prefect").exists()  # Prefect never started


def test_config_prints_resolved_values(tmp_path):
    proc = cli("config", "--preset", "cpu", "--epochs", "2", "--no-channels-last", timeout=120)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert cfg["preset"] == "cpu" and cfg["epochs"] == 2 and cfg["channels_last"] is False
    assert cfg["model"] == "airnet"


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "cifar-pipeline"
    if not script.exists():
        pytest.skip("package not installed in this environment (pip install -e .)")
    proc = subprocess.run([str(script), "presets"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "seed" in proc.stdout and "smoke" in proc.stdout


def test_the_quick_exit_waits_for_threads_and_exit_handlers_and_keeps_the_code(tmp_path):
    """What Prefect's workers and logging do at exit still happens; only the teardown after it is skipped."""
    probe = f"""
import atexit, os, threading, time
from pathlib import Path
from flows.quick_exit import exit_quickly
out = Path({str(tmp_path)!r})
def late_worker():  # as Prefect's log and event workers drain at shutdown
    time.sleep(0.5)
    (out / "thread").write_text("drained")
threading.Thread(target=late_worker).start()
atexit.register(lambda: (out / "handler").write_text("flushed"))
class Teardown:  # its __del__ runs only when the interpreter frees the modules (builtins gone by then)
    def __init__(self):
        self.fd = os.open(out / "teardown", os.O_WRONLY | os.O_CREAT, 0o644)
    def __del__(self, write=os.write):
        write(self.fd, b"freed")
kept = Teardown()
print("summary line without a newline", end="")
exit_quickly(3)
"""
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout == "summary line without a newline"
    assert (tmp_path / "thread").read_text() == "drained"
    assert (tmp_path / "handler").read_text() == "flushed"
    assert (tmp_path / "teardown").read_text() == ""  # the module teardown itself was skipped


def test_serve_without_a_server_explains_what_is_needed(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "flows", "serve"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "prefect server start" in proc.stderr and "PREFECT_API_URL" in proc.stderr


@pytest.mark.parametrize("args", [["--help"], ["presets"], ["schema"], ["config", "--preset", "cpu"],
                                  ["run", "--help"]])
def test_quick_subcommands_import_no_torch_prefect_or_plotting(args):
    """What a person types to look around answers in well under a second: none of the heavy packages load."""
    probe = ("import sys\nfrom flows.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "heavy = [m for m in ('torch', 'prefect', 'optuna', 'matplotlib', 'onnx') if m in sys.modules]\n"
             "print('HEAVY', heavy, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", probe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in proc.stderr, proc.stderr[-2000:]


def test_a_run_started_here_sends_no_heartbeats_unless_asked(prefect_api):
    # What the flow engine reads to start its heartbeat thread (prefect/flow_engine.py, heartbeat_seconds).
    from prefect import flow
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    from flows.cli import _run_flow

    @flow
    def heartbeat_frequency():
        return get_current_settings().flows.heartbeat_frequency

    assert _run_flow(heartbeat_frequency) == (0, None)
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}):  # a user's own setting wins
        assert _run_flow(heartbeat_frequency) == (0, 60)
    assert get_current_settings().flows.heartbeat_frequency is not None  # only the CLI's runs change
