"""Retention: what `cifar-pipeline gc` and the weekly maintenance run keep, and the removal itself.

`scan(output_dir)` lists what is on disk (an `Inventory`), `decide(inventory, policy)` says what to
keep and what to remove without touching anything (a `Plan`, tested on hand-built inventories),
and `apply(plan, ...)` removes. Kept whatever the policy says:

  - the champion and its K predecessors (registry/models/<run_id>): rollback switches to them;
  - every kept run's folder, each cache entry its stages.json names, and those entries' Prefect
    result records, so rerunning a kept run's config is a cache hit in every stage;
  - what a running flow holds: a run without summary.json whose stages.json is recent counts as
    running; an entry whose lock is held is skipped; anything younger than a grace period stays.

A removal renames first, to a dot name beside it (`.gc-...`), and deletes after: a gc killed half
way leaves either a whole entry under its real name or garbage under a dot name, which the next gc
removes. Lock files stay: deleting one would let a waiter and a newcomer lock different files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from . import layout
from .errors import PipelineError
from .stage import earlier_version_entries, entry_lock

log = logging.getLogger(__name__)

STAGES_FILE = "stages.json"  # written by each flow run before each stage (flows/steps.py)
SUMMARY_FILE = "summary.json"  # written when a pipeline run completes
RESULTS_FOLDER = "results"  # cache/results: Prefect's task-result records, named "<stage name>-<key>"
TRASH_PREFIX = ".gc-"
GC_LOCK = ".gc.lock"  # in the cache folder: one gc at a time
CLI_RUNS = "(command line)"  # the deployment group of runs started without a deployment

DAY_S = 86400.0


class RetentionBusy(PipelineError):
    pass


@dataclass(frozen=True)
class Policy:
    keep_runs: int = 10  # the N latest completed runs
    keep_days: float = 7.0  # and every run newer than this (0: none by age)
    keep_champions: int = 5  # predecessors of the champion kept for rollback
    keep_latest_per_deployment: bool = True  # the latest completed run of each deployment
    grace_s: float = 15 * 60  # nothing younger is removed: it may be in the middle of being made
    running_s: float = 48 * 3600  # a run without summary.json this recent counts as running


@dataclass(frozen=True)
class Run:
    run_id: str
    path: Path
    started: float  # epoch seconds, from the run id (UTC time first), else the folder's mtime
    touched: float  # the newest mtime of the folder, stages.json and summary.json
    finished: bool  # summary.json written
    deployment: str | None  # from summary.json; None for a run from the command line
    entries: frozenset[str] = frozenset()  # "<stage folder>/<key>" from stages.json
    removable: bool = True  # runs/<run_id>; doctor and sweep folders only hold entries while running


@dataclass(frozen=True)
class Entry:
    folder: str  # the stage folder under the cache
    key: str
    path: Path  # the entry folder (or, for an earlier version, a file)
    mtime: float  # the newest of the entry and its files: a training checkpoint is rewritten every epoch
    size: int
    earlier: bool = False  # written by a version before stages: never reused

    @property
    def ref(self) -> str:
        return f"{self.folder}/{self.key}"


@dataclass(frozen=True)
class ResultFile:
    path: Path
    mtime: float
    size: int

    @property
    def key(self) -> str:
        return self.path.name.rsplit("-", 1)[-1]


@dataclass(frozen=True)
class Model:
    run_id: str
    path: Path
    mtime: float
    size: int


@dataclass
class Inventory:
    now: float
    runs: list[Run] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    results: list[ResultFile] = field(default_factory=list)
    models: list[Model] = field(default_factory=list)
    champion: str | None = None
    predecessors: list[str] = field(default_factory=list)  # the lineage's, the previous champion first
    promoted: list[str] = field(default_factory=list)  # promoted run ids in history.csv, newest first
    garbage: list[tuple[Path, int]] = field(default_factory=list)  # what a killed gc left: (path, size)


@dataclass
class Plan:
    keep_runs: list[Run]
    remove_runs: list[Run]
    keep_entries: list[Entry]
    remove_entries: list[Entry]
    keep_results: list[ResultFile]
    remove_results: list[ResultFile]
    keep_models: list[Model]
    remove_models: list[Model]
    garbage: list[tuple[Path, int]]
    running: list[Run]


def decide(inv: Inventory, policy: Policy) -> Plan:
    """What to keep and what to remove. Pure: the inventory and the policy decide everything."""
    young = lambda mtime: inv.now - mtime < policy.grace_s  # noqa: E731
    running = [r for r in inv.runs if not r.finished and inv.now - r.touched < policy.running_s]
    completed = sorted((r for r in inv.runs if r.removable and r.finished), key=lambda r: (r.started, r.run_id),
                       reverse=True)
    keep = {r.path for r in running} | {r.path for r in completed[:policy.keep_runs]}
    if policy.keep_days > 0:
        keep |= {r.path for r in inv.runs if r.removable and inv.now - r.started < policy.keep_days * DAY_S}
    if policy.keep_latest_per_deployment:
        latest: dict[str, Run] = {}
        for r in completed:  # newest first
            latest.setdefault(r.deployment or CLI_RUNS, r)
        keep |= {r.path for r in latest.values()}
    keep |= {r.path for r in inv.runs if young(r.touched)}
    kept_runs = [r for r in inv.runs if r.path in keep or not r.removable]
    needed = set().union(*(r.entries for r in inv.runs if r.path in keep))

    # A stage folder that no run names belongs to a stage run inside another task (plan-budget's
    # measure-speed, the doctor's diagnose): no stages.json says which of its entries a run needs,
    # so they all stay (they are small). Entries of earlier versions are never reused and go.
    named = {ref.split("/", 1)[0] for r in inv.runs for ref in r.entries}
    kept_entries, removed_entries = [], []
    for e in inv.entries:
        stays = not e.earlier and (e.ref in needed or e.folder not in named)
        (kept_entries if stays or young(e.mtime) else removed_entries).append(e)

    kept_keys = {e.key for e in kept_entries}
    kept_results, removed_results = [], []
    for f in inv.results:
        (kept_results if f.key in kept_keys or young(f.mtime) else removed_results).append(f)

    champions = set(inv.promoted[:policy.keep_champions + 1]) | set(inv.predecessors[:policy.keep_champions])
    if inv.champion is not None:
        champions.add(inv.champion)
    kept_models, removed_models = [], []
    for m in inv.models:
        # No champion and no history: the registry cannot say which models rollback needs; keep all.
        stays = m.run_id in champions or not champions or young(m.mtime)
        (kept_models if stays else removed_models).append(m)

    return Plan(keep_runs=kept_runs, remove_runs=[r for r in inv.runs if r not in kept_runs],
                keep_entries=kept_entries, remove_entries=removed_entries, keep_results=kept_results,
                remove_results=removed_results, keep_models=kept_models, remove_models=removed_models,
                garbage=list(inv.garbage), running=running)


# --- what is on disk -------------------------------------------------------------------------------


def tree_size(path: Path) -> int:
    """Bytes of the files under `path` (apparent sizes, as `du -sb` counts them)."""
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
    except OSError:
        return 0
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass  # removed meanwhile
    return total


def _newest_mtime(path: Path) -> float:
    """The entry's own mtime and that of its files one level down (where builds write)."""
    newest = path.stat().st_mtime
    if path.is_dir():
        with os.scandir(path) as children:
            for child in children:
                try:
                    newest = max(newest, child.stat(follow_symlinks=False).st_mtime)
                except OSError:
                    pass
    return newest


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _run_started(run_id: str, fallback: float) -> float:
    try:
        return datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return fallback


def read_run(folder: Path, removable: bool = True) -> Run:
    stages_file, summary_file = folder / STAGES_FILE, folder / SUMMARY_FILE
    stages = _read_json(stages_file) or {}
    summary = _read_json(summary_file)
    mtimes = [p.stat().st_mtime for p in (folder, stages_file, summary_file) if p.exists()]
    touched = max(mtimes) if mtimes else 0.0
    return Run(run_id=folder.name, path=folder, started=_run_started(folder.name, folder.stat().st_mtime),
               touched=touched, finished=summary is not None,
               deployment=(summary or {}).get("deployment"),
               entries=frozenset(v for v in stages.values() if isinstance(v, str)), removable=removable)


def _children(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _holder_folders(root: Path) -> Iterable[Path]:
    """Folders of doctor runs and sweeps (and their trials) that wrote a stages.json."""
    for top in (root / "doctor", root / "sweeps"):
        if top.is_dir():
            yield from (p.parent for p in top.rglob(STAGES_FILE) if TRASH_PREFIX not in str(p))


def scan_runs(root: Path) -> list[Run]:
    runs = [read_run(p) for p in _children(root / "runs") if p.is_dir() and not p.name.startswith(".")]
    return runs + [read_run(p, removable=False) for p in _holder_folders(root)]


def running_refs(root: Path, now: float, running_s: float) -> set[str]:
    """Entries named by runs that are running now: read again right before each removal, so that a
    run that started after the scan keeps what it is about to use."""
    refs: set[str] = set()
    folders = [p for p in _children(root / "runs") if p.is_dir() and not p.name.startswith(".")]
    for folder in [*folders, *_holder_folders(root)]:
        stages = folder / STAGES_FILE
        try:
            if (folder / SUMMARY_FILE).exists() or now - stages.stat().st_mtime >= running_s:
                continue
        except OSError:
            continue
        refs |= {v for v in (_read_json(stages) or {}).values() if isinstance(v, str)}
    return refs


def scan(output_dir: str | os.PathLike, now: float | None = None) -> Inventory:
    root = layout.output_root(output_dir)
    inv = Inventory(now=time.time() if now is None else now, runs=scan_runs(root))
    cache = root / "cache"
    for folder in _children(cache):
        if not folder.is_dir():
            continue
        if folder.name == RESULTS_FOLDER:
            for f in _children(folder):
                if f.name.startswith(TRASH_PREFIX):
                    inv.garbage.append((f, tree_size(f)))
                elif f.is_file() and not f.name.startswith(".") and f.suffix != ".lock":
                    st = f.stat()
                    inv.results.append(ResultFile(path=f, mtime=st.st_mtime, size=st.st_size))
            continue
        earlier = set(earlier_version_entries(folder))
        for child in _children(folder):
            if child.name.startswith(TRASH_PREFIX):
                inv.garbage.append((child, tree_size(child)))
            elif child.is_dir() and not child.name.startswith("."):
                inv.entries.append(Entry(folder=folder.name, key=child.name, path=child, mtime=_newest_mtime(child),
                                         size=tree_size(child), earlier=child in earlier))
            elif child in earlier:  # a bare <key>.json record of an earlier version
                inv.entries.append(Entry(folder=folder.name, key=child.stem, path=child, mtime=child.stat().st_mtime,
                                         size=child.stat().st_size, earlier=True))
    registry = layout.registry_dir(root)
    for child in _children(registry):
        if child.name.startswith(TRASH_PREFIX):
            inv.garbage.append((child, tree_size(child)))
    for model in _children(registry / "models"):
        if model.is_dir():
            inv.models.append(Model(run_id=model.name, path=model, mtime=_newest_mtime(model), size=tree_size(model)))
    for child in _children(root / "runs"):
        if child.name.startswith(TRASH_PREFIX):
            inv.garbage.append((child, tree_size(child)))
    _read_registry(registry, inv)
    return inv


def _read_registry(registry: Path, inv: Inventory) -> None:
    if not registry.is_dir():
        return
    from .registry.champion import read_history
    from .registry.rollback import lineage

    try:
        current, history = lineage(registry), read_history(registry)
    except (OSError, ValueError) as exc:
        # An unreadable champion.json or history: no way to tell which models rollback needs, so all stay.
        log.warning("retention: cannot read the registry in %s (%s); keeping every model", registry, exc)
        return
    inv.champion = current.champion.run_id if current.champion else None
    inv.predecessors = [r.run_id for r in current.predecessors]
    promoted = [str(run_id) for run_id, flag in zip(history["run_id"], history["promoted"])
                if str(flag).strip().lower() in ("true", "1", "1.0")]
    inv.promoted = list(dict.fromkeys(reversed(promoted)))


# --- removal -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    dry_run: bool
    freed_bytes: int = 0
    removed: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"path": ..., "why": ...}

    def summary(self, plan: Plan) -> dict:
        return {
            "status": "dry-run" if self.dry_run else "completed", "dry_run": self.dry_run,
            "freed_bytes": self.freed_bytes, "removed": self.removed, "skipped": self.skipped,
            "kept": {"runs": len([r for r in plan.keep_runs if r.removable]), "running": len(plan.running),
                     "entries": len(plan.keep_entries), "results": len(plan.keep_results),
                     "champions": len(plan.keep_models)},
        }


def _delete(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


def _discard(path: Path, trash_name: str) -> Path:
    """Rename out of the way (one atomic step), so a kill never leaves half of it under its name."""
    trash = path.parent / f"{TRASH_PREFIX}{trash_name}-{os.getpid()}"
    os.rename(path, trash)
    return trash


class Remover:
    def __init__(self, root: Path, policy: Policy, dry_run: bool, now: float,
                 log: Callable[[str], None] = lambda _: None) -> None:
        self.root, self.policy, self.now, self.log = root, policy, now, log
        self.out = Outcome(dry_run=dry_run)

    def _done(self, path: Path, size: int) -> None:
        self.out.removed.append(str(path))
        self.out.freed_bytes += size

    def _skip(self, path: Path, why: str) -> None:
        self.out.skipped.append({"path": str(path), "why": why})
        self.log(f"kept {path}: {why}")

    def garbage(self, path: Path, size: int) -> None:
        if not self.out.dry_run:
            _delete(path)
        self._done(path, size)

    def run_folder(self, run: Run) -> None:
        size = tree_size(run.path)
        if not self.out.dry_run:
            _delete(_discard(run.path, f"run-{run.run_id}"))
        self._done(run.path, size)

    def entry(self, e: Entry, results: list[ResultFile]) -> None:
        lock = entry_lock(e.path, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            return self._skip(e.path, "its lock is held (a run is building or using it)")
        try:
            if self.out.dry_run:
                if e.ref in running_refs(self.root, self.now, self.policy.running_s):
                    return self._skip(e.path, "a running flow names it")
                self._done(e.path, e.size)
            else:
                trash = _discard(e.path, e.key)
                # Named by a run that started after the scan: put it back (it was gone for a moment only,
                # and a run that looked then found no entry and waits for this lock to build it).
                if e.ref in running_refs(self.root, time.time(), self.policy.running_s):
                    os.rename(trash, e.path)
                    return self._skip(e.path, "a running flow started using it")
                for f in results:  # before the entry's files: the Prefect record must never outlive them
                    self.result_file(f)
                _delete(trash)
                self._done(e.path, e.size)
                return None
            for f in results:
                self.result_file(f)
        finally:
            lock.release()
        return None

    def result_file(self, f: ResultFile) -> None:
        if not self.out.dry_run:
            f.path.unlink(missing_ok=True)
        self._done(f.path, f.size)

    def models(self, models: list[Model]) -> None:
        if not models:
            return
        registry = models[0].path.parent.parent
        lock = FileLock(str(registry / ".lock"), timeout=0)  # the lock promotion and rollback hold
        try:
            lock.acquire()
        except Timeout:
            for m in models:
                self._skip(m.path, "the registry is locked (a promotion or rollback is under way)")
            return
        try:
            for m in models:
                if not self.out.dry_run:
                    # Into registry/, not models/: models/*/record.json is how the registry lists its models.
                    _delete(_discard_to(m.path, registry, f"model-{m.run_id}"))
                self._done(m.path, m.size)
        finally:
            lock.release()


def _discard_to(path: Path, folder: Path, trash_name: str) -> Path:
    trash = folder / f"{TRASH_PREFIX}{trash_name}-{os.getpid()}"
    os.rename(path, trash)
    return trash


def apply(plan: Plan, output_dir: str | os.PathLike, policy: Policy, dry_run: bool = False,
          log: Callable[[str], None] = lambda _: None) -> Outcome:
    root = layout.output_root(output_dir)
    remover = Remover(root, policy, dry_run, time.time(), log)
    for path, size in plan.garbage:  # a killed gc's: finish it first
        remover.garbage(path, size)
    for run in plan.remove_runs:  # the reports first: a run listed nowhere needs none of its entries
        remover.run_folder(run)
    by_key: dict[str, list[ResultFile]] = {}
    for f in plan.remove_results:
        by_key.setdefault(f.key, []).append(f)
    for e in plan.remove_entries:
        remover.entry(e, by_key.pop(e.key, []))
    for files in by_key.values():  # records whose entry is gone already
        for f in files:
            remover.result_file(f)
    remover.models(plan.remove_models)
    return remover.out


def collect(output_dir: str | os.PathLike, policy: Policy, dry_run: bool = False,
            log: Callable[[str], None] = lambda _: None) -> dict:
    """Scan, decide and remove (or, dry_run, only list): the summary `gc` prints. One gc at a time per
    output folder (the CLI and the maintenance deployment may overlap): a second one finds the
    lock held and raises RetentionBusy."""
    cache = layout.output_root(output_dir) / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(cache / GC_LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RetentionBusy(f"another gc is running on {output_dir} (it holds {cache / GC_LOCK})") from None
    try:
        plan = decide(scan(output_dir), policy)
        return apply(plan, output_dir, policy, dry_run, log).summary(plan)
    finally:
        lock.release()
