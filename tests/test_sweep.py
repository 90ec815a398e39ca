"""Sweeps without a Prefect server: the search space, local parallel trials, faults, Optuna on PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.errors import ConfigError
from cifar_pipeline.sweep.space import load_space, parse_space
from tests.prefect_server import start, stop

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "smoke", "--train-subset", "0", "--test-subset", "0", "--batch-size", "32", "--width", "8",
        "--validation-images", "50"]


def _base(**changes) -> PipelineConfig:
    return PipelineConfig(preset="smoke", validation_images=50, **changes).resolved()


@pytest.mark.parametrize("preset", ["smoke", "cpu"])
def test_default_spaces_ship_and_validate(preset):
    space = load_space(None, PipelineConfig(preset=preset).resolved())
    assert len(space.dimensions) >= 2


@pytest.mark.parametrize(("space", "message"), [
    ({"widht": {"choices": [8]}}, "widht: unknown field"),
    ({"lr": {"low": 2.0, "high": 1.0}}, "lr: empty range"),
    ({"width": {"choices": []}}, "width: empty list of choices"),
    ({"lr": {"low": 0.1, "high": 500.0, "log": True}}, "lr: value 500.0 is not allowed"),
    ({"flip": {"choices": ["random", "sideways"]}}, "flip: value 'sideways' is not allowed"),
    ({"output_dir": {"choices": ["a", "b"]}}, "output_dir: cannot be searched"),
])
def test_bad_space_names_the_field(space, message):
    with pytest.raises(ConfigError, match=message):
        parse_space(space, _base())


def test_suggestions_follow_the_space():
    import optuna

    space = parse_space({"lr": {"low": 0.5, "high": 2.0, "log": True}, "width": {"low": 8, "high": 16, "step": 8},
                         "flip": {"choices": ["none", "random"]}}, _base())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        params = space.suggest(study.ask())
        assert 0.5 <= params["lr"] <= 2.0 and params["width"] in (8, 16) and params["flip"] in ("none", "random")
        assert isinstance(params["width"], int)


def _cli(args, env, **kwargs):
    return subprocess.run([sys.executable, "-m", "flows", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, **kwargs)


def test_trials_hold_out_validation_images_and_keep_their_width():
    from cifar_pipeline.sweep.study import sweep_config

    cfg = sweep_config(PipelineConfig(preset="cpu", budget_widths=[64, 32]).resolved({}))
    assert cfg.validation_images == 5000 and cfg.budget_widths == [] and cfg.max_epochs == 0
    assert cfg.width == PipelineConfig(preset="cpu").resolved({}).width
    assert sweep_config(cfg) is cfg


@pytest.fixture
def cli_env(tmp_path):
    return {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(tmp_path / "prefect-home")}


@pytest.mark.parametrize(("text", "message"), [
    ("[depth]\nchoices = [1, 2]\n", "depth: unknown field"),
    ("[epochs]\nlow = 3\nhigh = 3\n", "epochs: empty range"),
    ("[batch_size]\nchoices = [16, 100000]\n", "batch_size: value 100000 is not allowed"),
])
def test_cli_rejects_a_bad_space_before_anything_starts(tmp_path, cli_env, tiny_archive, text, message):
    space = tmp_path / "space.toml"
    space.write_text(text)
    out = tmp_path / "out"
    path, md5 = tiny_archive
    result = _cli(["sweep", *TINY, "--source", str(path), "--md5", md5, "--output", str(out), "--space", str(space)],
                  cli_env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert json.loads(result.stdout.strip().splitlines()[-1])["status"] == "failed"
    assert not out.exists()  # no study, no download, no run


def _journal_trials(storage: str, study: str):
    import optuna

    from cifar_pipeline.sweep.study import open_storage

    try:
        return optuna.load_study(study_name=study, storage=open_storage(storage)).get_trials(deepcopy=False)
    except KeyError:
        return []


@pytest.mark.slow
def test_local_parallel_sweep_survives_divergence_and_a_killed_coordinator(tmp_path, cli_env, tiny_archive):
    """--parallel 2 without a server: a diverging trial fails with its reason, the sweep is SIGKILLed after
    two trials and started again: finished trials are kept, the rest run, the winner is promoted."""
    from cifar_pipeline.sweep.study import open_study

    path, md5 = tiny_archive
    out = tmp_path / "out"
    storage = str(out / "sweeps" / "optuna.journal")
    space = tmp_path / "space.toml"
    space.write_text("[lr]\nlow = 0.001\nhigh = 0.01\nlog = true\n")
    # Trial 0 is enqueued with a learning rate (outside the space) that makes the loss NaN in epoch 1.
    open_study("local", storage).enqueue_trial({"lr": 100.0})
    args = ["sweep", *TINY, "--source", str(path), "--md5", md5, "--output", str(out), "--study", "local",
            "--trials", "4", "--parallel", "2", "--space", str(space), "--model", "seed_net", "--batch-size", "8",
            "--schedule", "constant", "--momentum", "0.99"]
    first = start([sys.executable, "-m", "flows", *args], cli_env, tmp_path / "first.log", cwd=ROOT)
    try:
        deadline = time.monotonic() + 300
        while sum(t.state.is_finished() for t in _journal_trials(storage, "local")) < 2:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.5)
        finished_before = {t.number: t.datetime_complete for t in _journal_trials(storage, "local")
                           if t.state.is_finished()}
        os.killpg(first.pid, signal.SIGKILL)  # the coordinator and its trial processes, mid-sweep
        first.wait()
    finally:
        stop(first)

    second = _cli(args, cli_env, timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    trials = {t["number"]: t for t in summary["trials"]}
    assert sorted(trials) == [0, 1, 2, 3]  # nothing asked twice, nothing lost
    after = {t.number: t for t in _journal_trials(storage, "local")}
    assert {n: after[n].datetime_complete for n in finished_before} == finished_before  # not repeated
    assert trials[0]["state"] == "FAIL" and "loss became nan" in trials[0]["reason"]
    assert all(trials[n]["state"] in ("COMPLETE", "PRUNED") for n in range(1, 4))
    assert {after[n].user_attrs["threads"] for n in trials if "threads" in after[n].user_attrs} == {
        max(1, len(os.sched_getaffinity(0)) // 2)}  # the cores are shared, not all taken by each trial
    best = summary["best"]
    assert best["val_accuracy"] == max(t["val_accuracy"] or 0 for t in trials.values())
    assert best["promoted"] and best["test_accuracy"] is not None
    champion = json.loads((out / "registry" / "champion.json").read_text())
    assert champion["config"]["lr"] == best["params"]["lr"] and champion["config"]["validation_images"] == 50
    report = Path(summary["report"]).read_text()
    assert "validation split" in report and "test set" in report and best["report"] in report
    assert (Path(summary["report"]).parent / "history.png").stat().st_size > 0


@pytest.mark.slow
def test_two_studies_on_postgres_at_once(tmp_path, tiny_dataset):
    """Optuna on a real PostgreSQL: two sweeps at once, each with two trial processes writing to its study."""
    from tests.postgres_server import PostgresServer, skip_reason

    if reason := skip_reason():
        pytest.skip(reason)
    from cifar_pipeline.sweep.local_trials import LocalLauncher
    from cifar_pipeline.sweep.study import leaderboard, open_study, run_trials

    dataset, cache = tiny_dataset
    with PostgresServer() as pg:
        pg.create_database("optuna")
        url = pg.url("psycopg2", "optuna")
        results, errors = {}, []

        def sweep(name: str, width: int) -> None:
            try:
                cfg = _base(width=width, source=["unused"], md5="0" * 32)
                space = parse_space({"width": {"choices": [width]}, "lr": {"low": 0.5, "high": 2.0}}, cfg)
                study = open_study(name, url)
                launcher = LocalLauncher(name, url, dataset, str(cache), tmp_path / name, parallel=2)
                run_trials(study, space, cfg, 2, 2, launcher, poll_s=0.3)
                results[name] = open_study(name, url)
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=sweep, args=a) for a in (("alpha", 8), ("beta", 12))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=400)
        assert not errors, errors
        for name, width in (("alpha", 8), ("beta", 12)):
            trials = results[name].get_trials()
            assert [t.number for t in trials] == [0, 1]
            assert all(t.state.name == "COMPLETE" and t.params["width"] == width for t in trials)
            assert all(t.user_attrs["config"]["width"] == width for t in trials)
            assert len({t.user_attrs["pid"] for t in trials}) == 2  # two processes, one study
            assert leaderboard(results[name])["val_accuracy"].notna().all()
