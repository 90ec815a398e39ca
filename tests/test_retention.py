"""Retention policy (cifar_pipeline/retention.py) on hand-built inventories, and `gc` on small trees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from cifar_pipeline.retention import (
    DAY_S,
    Entry,
    Inventory,
    Model,
    Policy,
    ResultFile,
    Run,
    collect,
    decide,
    scan,
)

ROOT = Path(__file__).resolve().parents[1]
NOW = 2_000_000_000.0
OLD = NOW - 30 * DAY_S  # older than every grace period and running window
STRICT = Policy(keep_runs=1, keep_days=0, keep_champions=1, grace_s=15 * 60)


def run(run_id: str, age_days: float, *refs: str, finished: bool = True, deployment: str | None = None,
        removable: bool = True) -> Run:
    t = NOW - age_days * DAY_S
    return Run(run_id=run_id, path=Path("/o/runs") / run_id, started=t, touched=t, finished=finished,
               deployment=deployment, entries=frozenset(refs), removable=removable)


def entry(ref: str, mtime: float = OLD, earlier: bool = False) -> Entry:
    folder, key = ref.split("/")
    return Entry(folder=folder, key=key, path=Path("/o/cache") / ref, mtime=mtime, size=100, earlier=earlier)


def result(name: str, mtime: float = OLD) -> ResultFile:
    return ResultFile(path=Path("/o/cache/results") / name, mtime=mtime, size=10)


def refs(entries) -> set[str]:
    return {e.ref for e in entries}


def night(i: int, *extra: str, **kw) -> Run:
    """Night i: the shared archive and dataset, its own training and evaluation."""
    return run(f"2026010{i}T020000Z-n{i}", 10 - i, "archives/a", "datasets/d", f"training/t{i}",
               f"evaluations/e{i}", *extra, **kw)


NIGHT_ENTRIES = ["archives/a", "datasets/d"] + [f"{f}/{p}{i}" for i in range(1, 5)
                                                for f, p in (("training", "t"), ("evaluations", "e"))]


def test_the_latest_runs_keep_their_entries_and_the_rest_go():
    inv = Inventory(now=NOW, runs=[night(i) for i in range(1, 5)], entries=[entry(r) for r in NIGHT_ENTRIES])
    plan = decide(inv, Policy(keep_runs=2, keep_days=0, grace_s=0))
    assert [r.run_id for r in plan.remove_runs] == ["20260101T020000Z-n1", "20260102T020000Z-n2"]
    assert refs(plan.keep_entries) == {"archives/a", "datasets/d", "training/t3", "evaluations/e3", "training/t4",
                                       "evaluations/e4"}
    assert refs(plan.remove_entries) == {"training/t1", "evaluations/e1", "training/t2", "evaluations/e2"}


def test_runs_sort_by_their_id_time_not_by_listing_order():
    inv = Inventory(now=NOW, runs=[night(4), night(2), night(3), night(1)], entries=[])
    assert [r.run_id for r in decide(inv, STRICT).keep_runs] == ["20260104T020000Z-n4"]


def test_a_running_run_keeps_what_it_named_and_a_crashed_one_does_not():
    running = run("20260105T020000Z-live", 0.5, "archives/a", "training/live", finished=False)
    crashed = run("20260103T020000Z-dead", 5, "archives/a", "training/dead", finished=False)
    inv = Inventory(now=NOW, runs=[night(1), crashed, running],
                    entries=[entry(r) for r in ("archives/a", "training/live", "training/dead", "training/t1")])
    plan = decide(inv, STRICT)
    assert running in plan.keep_runs and crashed in plan.remove_runs
    assert refs(plan.keep_entries) == {"archives/a", "training/live", "training/t1"}
    assert refs(plan.remove_entries) == {"training/dead"}


def test_the_latest_run_of_each_deployment_stays_unless_turned_off():
    weekly = night(1, deployment="weekly")
    inv = Inventory(now=NOW, runs=[weekly, night(2, deployment="nightly"), night(3, deployment="nightly"),
                                   night(4)], entries=[entry(r) for r in NIGHT_ENTRIES])
    plan = decide(inv, STRICT)
    assert {r.run_id[-2:] for r in plan.keep_runs} == {"n1", "n3", "n4"}  # weekly, nightly, command line
    assert "training/t1" in refs(plan.keep_entries) and "training/t2" in refs(plan.remove_entries)
    off = decide(inv, Policy(keep_runs=1, keep_days=0, keep_latest_per_deployment=False))
    assert {r.run_id[-2:] for r in off.keep_runs} == {"n4"}


def test_keep_days_keeps_recent_runs_too():
    inv = Inventory(now=NOW, runs=[night(i) for i in range(1, 5)], entries=[])  # 9, 8, 7, 6 days old
    plan = decide(inv, Policy(keep_runs=1, keep_days=7.5))
    assert {r.run_id[-2:] for r in plan.keep_runs} == {"n3", "n4"}


def test_nothing_younger_than_the_grace_period_goes():
    fresh = NOW - 60
    inv = Inventory(now=NOW, runs=[night(2)], entries=[entry("training/new", mtime=fresh), entry("training/old")],
                    results=[result("train-new", fresh), result("train-old"), result("evaluate-orphan")])
    plan = decide(inv, STRICT)
    assert refs(plan.keep_entries) == {"training/new"} and refs(plan.remove_entries) == {"training/old"}
    assert {f.path.name for f in plan.keep_results} == {"train-new"}
    assert {f.path.name for f in plan.remove_results} == {"train-old", "evaluate-orphan"}


def test_prefect_results_follow_their_entries():
    inv = Inventory(now=NOW, runs=[night(1), night(2)], entries=[entry(r) for r in NIGHT_ENTRIES[:6]],
                    results=[result("download-a"), result("build-dataset-d"), result("train-t1"),
                             result("train-t2"), result("evaluate-e2"), result("extra-data-gone"),
                             result("dataset-0123abc-old-naming")])
    plan = decide(inv, STRICT)
    assert {f.path.name for f in plan.keep_results} == {"download-a", "build-dataset-d", "train-t2", "evaluate-e2"}
    assert {f.path.name for f in plan.remove_results} == {"train-t1", "extra-data-gone", "dataset-0123abc-old-naming"}


def test_stages_no_run_names_stay_and_earlier_versions_go():
    # measure-speed and diagnose run inside other tasks: no stages.json names their folders.
    inv = Inventory(now=NOW, runs=[night(2)],
                    entries=[entry("budget/b1"), entry("diagnoses/x"), entry("training/t2"),
                             entry("datasets/bare", earlier=True), entry("budget/older", earlier=True)])
    plan = decide(inv, STRICT)
    assert refs(plan.keep_entries) == {"budget/b1", "diagnoses/x", "training/t2"}
    assert refs(plan.remove_entries) == {"datasets/bare", "budget/older"}


def test_doctor_and_sweep_folders_hold_entries_only_while_running_and_are_never_removed():
    doctor_live = run("d-live", 0.1, "diagnoses/q", "training/probe", finished=False, removable=False)
    doctor_old = run("d-old", 9, "training/old-probe", finished=False, removable=False)
    inv = Inventory(now=NOW, runs=[night(3), doctor_live, doctor_old],
                    entries=[entry("training/probe"), entry("training/old-probe"), entry("training/t3")])
    plan = decide(inv, STRICT)
    assert not plan.remove_runs
    assert refs(plan.keep_entries) == {"training/probe", "training/t3"}


def test_the_champion_and_k_predecessors_stay():
    models = [Model(run_id=f"m{i}", path=Path(f"/o/registry/models/m{i}"), mtime=OLD, size=5) for i in range(6)]
    inv = Inventory(now=NOW, models=models, champion="m4", predecessors=["m3", "m1", "m0"],
                    promoted=["m5", "m4", "m3", "m2", "m1", "m0"])  # m5 was rolled back from
    plan = decide(inv, Policy(keep_champions=2))
    assert {m.run_id for m in plan.keep_models} == {"m5", "m4", "m3", "m1"}
    assert {m.run_id for m in decide(inv, Policy(keep_champions=0)).keep_models} == {"m4", "m5"}
    unknown = Inventory(now=NOW, models=models)  # no champion.json, no history: all stay
    assert not decide(unknown, Policy(keep_champions=0)).remove_models


# --- on disk ------------------------------------------------------------------------------------


def make_tree(root: Path) -> dict[str, Path]:
    """Two finished runs and the entries they name, a killed gc's garbage and an earlier-version record."""
    paths = {}
    for i, key in ((1, "aaaa1"), (2, "bbbb2")):
        run_dir = root / "runs" / f"2026010{i}T020000Z-n{i}"
        run_dir.mkdir(parents=True)
        (run_dir / "report.md").write_text("report")
        (run_dir / "stages.json").write_text(json.dumps({"download": "archives/arch", "train": f"training/{key}"}))
        (run_dir / "summary.json").write_text(json.dumps({"run_id": run_dir.name, "deployment": None}))
        entry_dir = root / "cache" / "training" / key
        entry_dir.mkdir(parents=True)
        (entry_dir / "checkpoint.pt").write_bytes(b"x" * 1000)
        (entry_dir / "record.json").write_text(json.dumps({"format": 2}))
        (root / "cache" / "training" / f"{key}.lock").touch()
        (root / "cache" / "results").mkdir(parents=True, exist_ok=True)
        (root / "cache" / "results" / f"train-{key}").write_text("{}")
        paths[f"run{i}"], paths[f"entry{i}"] = run_dir, entry_dir
    (root / "cache" / "archives" / "arch").mkdir(parents=True)
    (root / "cache" / "archives" / "arch" / "record.json").write_text(json.dumps({"format": 2}))
    garbage = root / "cache" / "training" / ".gc-cccc3-123"
    garbage.mkdir()
    (garbage / "half.pt").write_bytes(b"y" * 500)
    (root / "cache" / "datasets").mkdir()
    (root / "cache" / "datasets" / "0123.json").write_text("{}")  # an earlier version's bare record
    paths["garbage"] = garbage
    return paths


def test_gc_removes_by_renaming_keeps_locks_and_finishes_a_killed_gc(tmp_path):
    paths = make_tree(tmp_path)
    listed = collect(tmp_path, Policy(keep_runs=1, keep_days=0, grace_s=0), dry_run=True)
    assert paths["run1"].is_dir() and paths["entry1"].is_dir() and paths["garbage"].is_dir()  # dry run: untouched
    result = collect(tmp_path, Policy(keep_runs=1, keep_days=0, grace_s=0))
    assert sorted(result["removed"]) == sorted(listed["removed"]) and result["freed_bytes"] == listed["freed_bytes"]
    assert set(result["removed"]) == {str(paths["garbage"]), str(paths["run1"]), str(paths["entry1"]),
                                      str(tmp_path / "cache/results/train-aaaa1"),
                                      str(tmp_path / "cache/datasets/0123.json")}
    assert result["freed_bytes"] == 500 + 1000 + len('{"format": 2}') + 2 + 2 + tree_bytes_of_run1()
    assert not paths["run1"].exists() and not paths["entry1"].exists() and not paths["garbage"].exists()
    assert paths["entry2"].is_dir() and (tmp_path / "cache/results/train-bbbb2").exists()
    assert (tmp_path / "cache/training/aaaa1.lock").exists()  # a waiter may hold it
    assert not [p for p in tmp_path.rglob(".gc-*") if p.name != ".gc.lock"]


def tree_bytes_of_run1() -> int:
    stages = json.dumps({"download": "archives/arch", "train": "training/aaaa1"})
    summary = json.dumps({"run_id": "20260101T020000Z-n1", "deployment": None})
    return len("report") + len(stages) + len(summary)


def test_an_entry_whose_lock_is_held_is_skipped(tmp_path):
    paths = make_tree(tmp_path)
    with FileLock(str(tmp_path / "cache/training/aaaa1.lock")):
        result = collect(tmp_path, Policy(keep_runs=1, keep_days=0, grace_s=0))
    assert paths["entry1"].is_dir() and (tmp_path / "cache/results/train-aaaa1").exists()
    assert result["skipped"] == [{"path": str(paths["entry1"]), "why": "its lock is held (a run is building or "
                                                                        "using it)"}]
    assert not paths["run1"].exists()  # the report goes; the entry waits for the next gc


def test_scan_reads_runs_stages_and_registry(tmp_path):
    make_tree(tmp_path)
    inv = scan(tmp_path, now=NOW)
    assert [r.run_id for r in inv.runs] == ["20260101T020000Z-n1", "20260102T020000Z-n2"]
    assert inv.runs[0].finished and inv.runs[0].entries == {"archives/arch", "training/aaaa1"}
    assert {e.ref: e.earlier for e in inv.entries} == {"archives/arch": False, "datasets/0123": True,
                                                       "training/aaaa1": False, "training/bbbb2": False}
    assert {f.key for f in inv.results} == {"aaaa1", "bbbb2"} and len(inv.garbage) == 1


def gc_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows", "gc", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("bad", [["--keep-runs", "0"], ["--keep-runs", "-3"], ["--keep-champions", "-1"]])
def test_gc_refuses_bad_values_in_one_line_and_removes_nothing(tmp_path, bad):
    paths = make_tree(tmp_path)
    proc = gc_cli("--output-dir", str(tmp_path), "--grace-minutes", "0", *bad)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and bad[0] in proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["status"] == "failed"
    assert paths["run1"].is_dir() and paths["entry1"].is_dir() and paths["garbage"].is_dir()


def test_gc_command_prints_one_json_line_last(tmp_path):
    paths = make_tree(tmp_path)
    proc = gc_cli("--output-dir", str(tmp_path), "--keep-runs", "1", "--keep-days", "0", "--grace-minutes", "0",
                  "--dry-run")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["dry_run"] and str(paths["entry1"]) in summary["removed"] and summary["freed_bytes"] > 1000
    assert summary["kept"]["runs"] == 1 and paths["entry1"].is_dir()


def test_the_maintenance_deployment_is_weekly_on_the_cpu_pool_and_served():
    from deployments.serve import load_deployments, to_runner_deployment

    spec = next(s for s in load_deployments() if s["name"] == "maintenance")
    assert spec["work_pool"]["name"] == "cifar-cpu"
    assert spec["schedules"][0]["cron"].split()[-1] == "0"  # once a week (Sundays)
    deployment = to_runner_deployment(spec)
    assert deployment.parameters["keep_runs"] >= 1 and deployment.schedules
