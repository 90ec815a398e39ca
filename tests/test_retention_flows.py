"""Retention against real runs: gc while a run trains, a gc killed half way, thirty nights with a weekly gc."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifar_pipeline import layout
from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.retention import RESULTS_FOLDER, TRASH_PREFIX, Policy, collect, tree_size

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(preset="smoke", train_subset=0, test_subset=0, batch_size=32, width=8, epochs=1, retry_delay_s=0)


def run_flow(**values):
    from flows.pipeline import cifar_pipeline

    return cifar_pipeline(config=PipelineConfig(**{**TINY, **values}))


def stage_states(summary) -> dict[str, str]:
    from tasks.cache_policies import is_stage

    return {name: state for name, state in summary.tasks.items() if is_stage(name)}


def entries_of(run_dir: str | Path) -> dict[str, str]:
    return json.loads((Path(run_dir) / "stages.json").read_text())


def gc_cli(output: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows", "gc", "--output-dir", str(output), "--keep-days", "0",
                           "--grace-minutes", "0", *args], cwd=ROOT, capture_output=True, text=True, timeout=120, **kw)


def entry_files(cache: Path) -> dict[str, list[str]]:
    """Every entry under its real name, with the files it holds, in every stage's folder."""
    found = {}
    for folder in sorted(p.name for p in cache.iterdir() if p.is_dir() and p.name != RESULTS_FOLDER):
        for entry in sorted((cache / folder).glob("[!.]*")):
            if entry.is_dir():
                found[f"{folder}/{entry.name}"] = sorted(str(p.relative_to(entry)) for p in entry.rglob("*"))
    return found


def test_gc_while_a_run_trains_leaves_that_run_whole(tmp_path, tiny_archive):
    from cifar_pipeline.training.checkpoint import load_checkpoint

    path, md5 = tiny_archive
    common = dict(source=[str(path)], md5=md5, output_dir=str(tmp_path))
    old = run_flow(seed=1, **common)
    kept = run_flow(seed=2, **common)
    epochs = 60  # 15-20 s of training on 2 cores, after the CLI's own Prefect server has started
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows", "run", "--preset", "smoke", "--train-subset", "0", "--test-subset", "0",
         "--batch-size", "32", "--width", "16", "--epochs", str(epochs), "--retry-delay-s", "0", "--seed", "3",
         "--source", str(path), "--md5", md5, "--output", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=(tmp_path / "run.log").open("w"), text=True)
    try:
        runs = tmp_path / "runs"
        deadline = time.monotonic() + 300
        while True:  # until the third run has checkpointed an epoch
            assert proc.poll() is None, "the run ended before gc could run beside it"
            assert time.monotonic() < deadline
            live = [p for p in runs.iterdir() if p.name not in (Path(old.run_dir).name, Path(kept.run_dir).name)]
            if live and (live[0] / "stages.json").exists() and "train" in entries_of(live[0]):
                checkpoint = tmp_path / "cache" / entries_of(live[0])["train"] / "checkpoint.pt"
                if checkpoint.exists():
                    break
            time.sleep(0.3)
        gc = gc_cli(tmp_path, "--keep-runs", "1", "--keep-champions", "0")
        # Still training when gc is done: the record is written last, after the final epoch.
        assert proc.poll() is None and not (checkpoint.parent / "record.json").exists(), "gc ran after training"
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert gc.returncode == 0, gc.stderr
    removed = json.loads(gc.stdout.strip().splitlines()[-1])["removed"]
    assert old.run_dir in removed and str(tmp_path / "cache" / entries_of(kept.run_dir)["train"]) not in removed
    assert not Path(old.run_dir).exists() and Path(kept.run_dir).is_dir()

    assert proc.returncode == 0, out[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["status"] == "completed" and summary["tasks"]["train"] == "Completed"
    assert Path(summary["report"]).is_file() and (Path(summary["run_dir"]) / "summary.json").is_file()
    assert load_checkpoint(summary["checkpoint"])["epoch"] == epochs
    for ref in entries_of(summary["run_dir"]).values():
        assert (tmp_path / "cache" / ref / "record.json").is_file(), ref


SLOW_DELETE = """
import os, sys, time
from pathlib import Path
import cifar_pipeline.retention as retention
from flows.cli import main

original = retention._delete
def stalling_delete(path):
    # Half of a training entry deleted, then stuck: the parent kills this process here.
    if "/training/" in str(path) and path.name.startswith(retention.TRASH_PREFIX):
        files = sorted(p for p in path.rglob("*") if p.is_file())
        files[0].unlink()
        Path(os.environ["GC_MARKER"]).write_text(str(path))
        time.sleep(600)
    original(path)
retention._delete = stalling_delete
sys.exit(main(sys.argv[1:]))
"""


def test_a_gc_killed_half_way_is_finished_by_the_next_and_the_kept_run_stays_cached(tmp_path, tiny_archive):
    path, md5 = tiny_archive
    common = dict(source=[str(path)], md5=md5, output_dir=str(tmp_path))
    old = run_flow(seed=1, **common)
    kept = run_flow(seed=2, **common)
    cache = tmp_path / "cache"
    before, old_train = entry_files(cache), entries_of(old.run_dir)["train"]
    marker = tmp_path / "marker"
    args = ["gc", "--output-dir", str(tmp_path), "--keep-runs", "1", "--keep-days", "0", "--grace-minutes", "0"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_DELETE, *args], cwd=ROOT, env={**os.environ,
                            "GC_MARKER": str(marker)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    half = Path(marker.read_text())
    assert half.is_dir() and half.name.startswith(TRASH_PREFIX)  # garbage, under a name nothing reads
    after = entry_files(cache)
    for ref, files in after.items():  # every entry under its real name is whole
        assert files == before[ref], ref
    assert old_train not in after and not Path(old.run_dir).exists()

    gc = gc_cli(tmp_path, "--keep-runs", "1")
    assert gc.returncode == 0, gc.stderr
    assert str(half) in json.loads(gc.stdout.strip().splitlines()[-1])["removed"]
    assert not [p for p in tmp_path.rglob(f"{TRASH_PREFIX}*") if p.is_dir()]
    for ref in entries_of(kept.run_dir).values():
        assert ref in entry_files(cache)

    rerun = run_flow(seed=2, **common)
    assert set(stage_states(rerun).values()) == {"Cached"}, rerun.tasks
    assert rerun.checkpoint == kept.checkpoint


# --- thirty nights -------------------------------------------------------------------------------

NIGHTS = 30
GC_EVERY = 7
IMAGES_PER_NIGHT = 4
KEEP = Policy(keep_runs=3, keep_days=0, keep_champions=1, grace_s=0)


def library_night(cfg: PipelineConfig, night: int, report_files: Path) -> None:
    """One night through the library stages themselves, as the flow runs them (a whole flow per night
    would take minutes more): its entries, a stages.json naming them, a promotion decision, and a
    report folder as large as a real one (a real night's figures)."""
    from cifar_pipeline.data.dataset import build_dataset
    from cifar_pipeline.data.download import fetch_archive
    from cifar_pipeline.data.extra import build_extra_data, scan_folders
    from cifar_pipeline.evaluation import evaluate
    from cifar_pipeline.registry.champion import registry_dir, update_registry
    from cifar_pipeline.training.loop import train
    from tasks.cache_policies import entry_of

    cfg = cfg.resolved()
    cache = str(layout.cache_dir(cfg))
    run_id = layout.new_run_id(f"night-{night:02d}")
    run_dir = layout.run_dir(cfg, run_id)
    shutil.copytree(report_files, run_dir, ignore=shutil.ignore_patterns("stages.json", "summary.json"))
    stages = {}

    def used(name, **params):
        stages[name] = entry_of(name, {**params, "cache_dir": cache})
        (run_dir / "stages.json").write_text(json.dumps(stages))

    used("download", sources=cfg.sources(), md5=cfg.md5)
    archive = fetch_archive(cfg.sources(), cfg.md5, cache)
    used("build-dataset", archive=archive)
    dataset = build_dataset(archive, cache)
    manifest = scan_folders(cfg.extra_data, dataset.classes)
    used("extra-data", manifest=manifest, policy=cfg.bad_images, max_pixels=cfg.max_image_pixels)
    extra = build_extra_data(manifest, cache, policy=cfg.bad_images, max_pixels=cfg.max_image_pixels)
    used("train", config=cfg, dataset=dataset, extra=extra)
    trained = train(cfg, dataset, cache, extra=extra)
    used("evaluate", config=cfg, trained=trained, dataset=dataset)
    evaluated = evaluate(cfg, trained, dataset, cache)
    update_registry(registry_dir(cfg), run_id, cfg, trained, evaluated, dataset, seconds=1.0)
    (run_dir / "summary.json").write_text(json.dumps({"run_id": run_id, "deployment": None}))


def test_thirty_nights_with_a_weekly_gc_stay_within_a_few_nights_of_disk(tmp_path, tiny_archive, tiny_dataset,
                                                                         capsys):
    from cifar_pipeline.data.dataset import load_arrays
    from cifar_pipeline.registry.predict import load_predictor
    from cifar_pipeline.registry.rollback import lineage
    from tests.test_extra_data import write_folder

    path, md5 = tiny_archive
    arrays, classes = load_arrays(tiny_dataset[0]), tiny_dataset[0].classes
    out, extra = tmp_path / "outputs", tmp_path / "incoming"
    cfg = PipelineConfig(**TINY, source=[str(path)], md5=md5, output_dir=str(out), extra_data=[str(extra)])
    sizes, freed = [], 0
    template = tmp_path / "report"  # the first night's report folder, copied for the library nights
    for night in range(1, NIGHTS + 1):
        lo = (night - 1) * IMAGES_PER_NIGHT  # a few new images every night
        write_folder(extra, arrays.x_train[lo:lo + IMAGES_PER_NIGHT], arrays.y_train[lo:lo + IMAGES_PER_NIGHT],
                     classes, start=lo)
        if night in (1, NIGHTS):  # a whole flow: a real report folder, Prefect's result records
            last = run_flow(**cfg.model_dump(exclude_unset=True))
            if not template.exists():
                shutil.copytree(last.run_dir, template)
        else:
            library_night(cfg, night, template)
        sizes.append(tree_size(out))
        if night % GC_EVERY == 0 or night == NIGHTS:
            result = collect(out, KEEP)
            freed += result["freed_bytes"]
            assert not result["skipped"], result["skipped"]
            after_gc = sizes[-1] = tree_size(out)

    with_gc, without_gc = after_gc, after_gc + freed
    growth = max(b - a for a, b in zip(sizes, sizes[1:]) if b > a)  # the most one night added
    shared = tree_size(out / "cache/archives") + tree_size(out / "cache/datasets")
    bound = shared + (KEEP.keep_runs + KEEP.keep_champions + 1) * growth
    with capsys.disabled():
        print(f"\ndisk after {NIGHTS} nights: {with_gc / 1e6:.1f} MB with a weekly gc (keep {KEEP.keep_runs} runs, "
              f"{KEEP.keep_champions} predecessor), {without_gc / 1e6:.1f} MB without; bound {bound / 1e6:.1f} MB "
              f"(archive + data {shared / 1e6:.1f} MB + {KEEP.keep_runs + KEEP.keep_champions + 1} nights of at most "
              f"{growth / 1e6:.2f} MB)")
    assert with_gc <= bound < without_gc
    assert result["kept"]["runs"] == KEEP.keep_runs
    assert len(list((out / "runs").iterdir())) == KEEP.keep_runs

    current = lineage(out / "registry")
    for model in [current.champion, *current.predecessors[:KEEP.keep_champions]]:
        assert load_predictor(model.model_file, "cpu") is not None
    assert len(list((out / "registry/models").iterdir())) <= KEEP.keep_champions + 2  # + one rolled back from

    rerun = run_flow(**cfg.model_dump(exclude_unset=True))
    assert set(stage_states(rerun).values()) == {"Cached"}, rerun.tasks
    assert rerun.checkpoint == last.checkpoint
