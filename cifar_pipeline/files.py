"""Disk helpers: streaming digests and atomic writes (temp file in the same folder, fsync, rename)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

CHUNK = 1 << 20
log = logging.getLogger(__name__)



def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write to a temp file next to `path`; rename over it only if the block finishes.

    A crash, a full disk or an exception leaves the previous file (if any) untouched and no
    partial file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    with atomic_file(path, "wb") as f:
        write(f)
    return Path(path)


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    with open(source, "rb") as src:
        return atomic_write(path, lambda dst: shutil.copyfileobj(src, dst, CHUNK))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _fsync_dir(folder: Path) -> None:
    # The rename itself is durable only once the directory entry is flushed.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_verified_joblib(path: str | os.PathLike, sha256: str, remedy: str, *, mapped: bool = False) -> Any:
    """joblib.load a cached payload, only after its sha256 matched: a damaged file is never unpickled.

    `mapped`: its arrays are mapped copy-on-write rather than read (writable, the file untouched):
    the pages the digest has just read are used as they are instead of copied again by the unpickler
    (benchmarks/RESULTS.md, Zen 5, 2026-12-04). Cached files are replaced by rename, never rewritten,
    so a mapping keeps the content that was verified.
    """
    import joblib

    actual = file_digest(path)
    if actual != sha256:
        from .errors import IntegrityError

        raise IntegrityError(f"{path} has sha256 {actual}, not {sha256} as recorded; refusing to load it. {remedy}")
    return joblib.load(path, mmap_mode="c" if mapped else None)
