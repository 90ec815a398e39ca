"""A cached stage: one expensive step of the pipeline, declared once.

A stage names its folder under the cache, the record it returns and the module whose code makes
that record. Its key is a digest of its inputs (the content digests of the upstream records it
takes and the config fields it reads) and of the code it runs: the module and every module it
imports (`provenance.code_digest`). So a change anywhere upstream changes every key below it, and
a change elsewhere (the report, the CLI) changes none.

`Stage.run` is the one place that takes an entry's lock, returns the stored record when its files
still verify, removes what an interrupted build left behind, builds, and writes the record last:

    <cache>/<folder>/<key>/record.json    stage, key, inputs, code digest and the record (written last)
    <cache>/<folder>/<key>/...            what the build wrote, each file atomically
    <cache>/<folder>/<key>.lock           the entry's lock: outside the entry, so removing an entry
                                          (retention) never leaves a waiter holding a deleted lock
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

from filelock import FileLock
from pydantic import BaseModel, ValidationError

from . import layout
from .files import atomic_write_json, file_digest
from .provenance import code_digest

log = logging.getLogger(__name__)

FORMAT = 2  # of record.json; entries without it were written before keys chained by content
RECORD = "record.json"
SCRATCH_PREFIX = ".build-"
# Temp names a killed build leaves: atomic_file's, scratch folders, and the archive extraction of
# versions before stages.
LEFTOVER_PATTERNS = (".*.tmp", f"{SCRATCH_PREFIX}*", ".extract-*")


class Output(NamedTuple):
    path: str
    digest: str
    algorithm: str = "sha256"


class StageRecord(BaseModel):
    """What a stage returns. Subclasses name the files they own; their digests chain the keys."""

    def outputs(self) -> list[Output]:
        return []

    def content_digest(self) -> str:
        """What a downstream key takes from this record: the digests of the files it produced, or,
        for a record that is its own product (an evaluation), the record itself."""
        outputs = self.outputs()
        if len(outputs) == 1:
            return outputs[0].digest
        text = "|".join(o.digest for o in outputs) if outputs else self.model_dump_json()
        return hashlib.sha256(text.encode()).hexdigest()[:20]


R = TypeVar("R", bound=StageRecord)


def digest_of(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Stage(Generic[R]):
    name: str  # also the Prefect cache key's prefix
    folder: str  # under the cache folder
    record: type[R]
    module: str | None  # the code that makes the record ("data.dataset"); None: inputs alone decide it

    def __post_init__(self) -> None:
        # Digest the code now, at import, in the importing thread: keys are later computed in Prefect's
        # task threads, where parsing source at the same time as another thread can fail in CPython 3.11.
        if self.module:
            code_digest(self.module)

    def key(self, inputs: dict[str, Any]) -> str:
        code = code_digest(self.module) if self.module else None
        return digest_of({"stage": self.name, "inputs": inputs, "code": code})

    def entry(self, cache_dir: str | os.PathLike, key: str) -> Path:
        return layout.stage_dir(cache_dir, self.folder) / key

    def lock(self, cache_dir: str | os.PathLike, key: str) -> FileLock:
        folder = layout.stage_dir(cache_dir, self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        return entry_lock(folder / key)

    def run(self, cache_dir: str | os.PathLike, inputs: dict[str, Any], build: Callable[[Path], R],
            reuse: Callable[[R], bool] | None = None) -> R:
        """The stored record for these inputs, or `build(entry folder)`'s, stored. Concurrent runs of
        one key build once: the second waits for the lock, then finds the record. A stored record that
        `reuse` rejects (one that answers less than this caller asks) is built again in its place."""
        key = self.key(inputs)
        entry = self.entry(cache_dir, key)
        with self.lock(cache_dir, key):
            if (found := self.stored(entry)) is not None:
                if reuse is None or reuse(found):
                    log.info("%s %s: cached in %s", self.name, key, entry)
                    return found
                log.info("%s %s: the stored record does not answer this run; building it again", self.name, key)
            entry.mkdir(parents=True, exist_ok=True)
            if removed := remove_leftovers(entry):
                log.info("%s %s: removed %d leftover(s) of an interrupted build", self.name, key, removed)
            warn_earlier_version(self, entry.parent)
            try:
                record = build(entry)
            except BaseException:
                _remove_if_empty(entry)  # a failed build caches nothing (a partial download or checkpoint stays)
                raise
            atomic_write_json(entry / RECORD, {
                "format": FORMAT, "stage": self.name, "key": key, "inputs": inputs,
                "code": code_digest(self.module) if self.module else None,
                "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "record": record.model_dump(mode="json"),
            })
            return record

    def stored(self, entry: Path, verify: bool = True) -> R | None:
        """The entry's record if it is whole: None when absent, from an earlier version, or when a file
        it names is gone or (verify) changed. A payload is only ever loaded after this check."""
        path = entry / RECORD
        if not path.exists():
            return None
        try:
            envelope = json.loads(path.read_text())
            if envelope.get("format") != FORMAT:
                raise ValueError(f"format {envelope.get('format')}")
            record = self.record.model_validate(envelope["record"])
        except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
            log.warning("%s: %s cannot be read (%s); building it again", self.name, path, str(exc).splitlines()[0])
            return None
        for output in record.outputs():
            gone = not Path(output.path).exists()
            if gone or (verify and file_digest(output.path, output.algorithm) != output.digest):
                log.warning("%s: cache in %s is damaged (%s is gone or changed); building it again", self.name,
                            entry, output.path)
                return None
        return record

    def holds(self, cache_dir: str | os.PathLike, inputs: dict[str, Any], record: Any) -> bool:
        """Whether a record found elsewhere (Prefect's task cache) still stands for these inputs: it is
        this stage's record class, and the entry still holds it with its files. Cheap: no hashing."""
        if not isinstance(record, self.record):
            return False
        stored = self.stored(self.entry(cache_dir, self.key(inputs)), verify=False)
        return stored is not None and stored == record


def entry_lock(entry: Path, timeout: float = -1) -> FileLock:
    """The lock every user of an entry takes: the stage's runner, and retention before removing it."""
    return FileLock(str(entry.parent / f"{entry.name}.lock"), timeout=timeout)


def remove_leftovers(entry: Path) -> int:
    """Remove temp files and scratch folders of builds that were killed. Only call while holding the
    entry's lock, so that no live build owns them."""
    removed = 0
    for pattern in LEFTOVER_PATTERNS:
        for path in entry.glob(pattern):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed += 1
    return removed


def _remove_if_empty(entry: Path) -> None:
    try:
        entry.rmdir()
    except OSError:
        pass


@contextmanager
def scratch(entry: Path) -> Iterator[Path]:
    """A temporary folder inside the entry (same file system: its files can be renamed into place),
    removed afterwards, and by the next build when a kill skipped that."""
    path = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=entry))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


_warned: set[Path] = set()


def earlier_version_entries(folder: Path) -> list[Path]:
    """Entries in a stage's folder written before stages (bare records, files named by key)."""
    found = []
    for child in sorted(folder.iterdir()) if folder.is_dir() else []:
        if child.name.startswith(".") or child.suffix == ".lock":
            continue
        if child.is_dir():
            if (child / "dataset.json").exists() or _bare_record(child / RECORD):
                found.append(child)
        elif child.suffix == ".json":  # (an earlier archive, <md5>.tar.gz, is moved in by the download)
            found.append(child)
    return found


def _bare_record(path: Path) -> bool:
    try:
        return path.exists() and "format" not in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def warn_earlier_version(stage: Stage, folder: Path) -> None:
    if folder in _warned:
        return
    _warned.add(folder)
    if old := earlier_version_entries(folder):
        log.warning("%s: %d cache entr%s in %s were written by an earlier version of cifar-pipeline and are not "
                    "reused; this run builds %s again, once (`cifar-pipeline gc` removes the old entries)",
                    stage.name, len(old), "y" if len(old) == 1 else "ies", folder, stage.name)
