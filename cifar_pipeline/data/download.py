"""Fetch cifar-10-python.tar.gz into a content-addressed cache, verified by md5: the `download` stage.

Sources are tried in order: http(s) URLs (resumed with a Range request when a partial file is
left from an earlier attempt), file:// URLs and local paths. Bytes stream into a temporary file
that is renamed to `archives/<key>/cifar-10-python.tar.gz` (the key names the md5 alone) only after
the digest matches, so a later run never trusts a partial or unverified file.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import ChecksumMismatch, ConfigError, DownloadError
from ..files import CHUNK, atomic_file
from ..stage import Output, Stage, StageRecord

log = logging.getLogger(__name__)

USER_AGENT = "cifar-pipeline (+https://github.com/; archive fetch)"
HINT = (
    "To use a mirror or a local copy, pass --source URL_OR_PATH --md5 HEX "
    "(or set CIFAR_PIPELINE_SOURCE / CIFAR_PIPELINE_MD5)."
)

HTTP_CHUNK = 64 * 1024

Progress = Callable[[int, int | None], None]


ARCHIVE_NAME = "cifar-10-python.tar.gz"


class ArchiveRecord(StageRecord):
    path: str
    md5: str
    size: int
    source: str

    def outputs(self) -> list[Output]:
        return [Output(self.path, self.md5, "md5")]


# No code digest: the bytes are named by their md5, whatever code fetched them.
DOWNLOAD = Stage("download", "archives", ArchiveRecord, None)


def archive_inputs(md5: str) -> dict:
    return {"md5": md5}


def archive_path(cache_dir: str | os.PathLike, md5: str) -> Path:
    return DOWNLOAD.entry(cache_dir, DOWNLOAD.key(archive_inputs(md5))) / ARCHIVE_NAME


def fetch_archive(
    sources: Sequence[str],
    md5: str,
    cache_dir: str | os.PathLike,
    *,
    timeout: float = 30.0,
    on_progress: Progress | None = None,
) -> ArchiveRecord:
    """Return the cached archive with this md5, fetching it from the first source that works."""
    if not sources:
        raise DownloadError("no data source given. " + HINT)
    return DOWNLOAD.run(cache_dir, archive_inputs(md5),
                        lambda entry: _fetch(entry, sources, md5, Path(cache_dir), timeout, on_progress))


def _fetch(entry: Path, sources: Sequence[str], md5: str, cache_dir: Path, timeout: float,
           on_progress: Progress | None) -> ArchiveRecord:
    final = entry / ARCHIVE_NAME
    if (moved := _adopt_earlier_copy(cache_dir, md5, final)) is not None:
        return moved
    errors: list[tuple[str, DownloadError]] = []
    for source in sources:
        try:
            size = _fetch_one(source, md5, final, timeout, on_progress)
        except DownloadError as exc:
            log.warning("source %s failed: %s", source, exc)
            errors.append((source, exc))
            continue
        final.with_suffix(".part").unlink(missing_ok=True)  # a partial download another source made moot
        log.info("archive %s verified and cached at %s", md5, final)
        return ArchiveRecord(path=str(final), md5=md5, size=size, source=source)
    raise _combined(errors)


def _adopt_earlier_copy(cache_dir: Path, md5: str, final: Path) -> ArchiveRecord | None:
    """Versions before stages kept the archive at archives/<md5>.tar.gz: move it in rather than fetch
    163 MB again, once its md5 is checked."""
    old = cache_dir / DOWNLOAD.folder / f"{md5}.tar.gz"
    if not old.is_file():
        return None
    if _md5_of(old) != md5:
        log.warning("an earlier version's archive %s does not have md5 %s; fetching again", old, md5)
        return None
    os.replace(old, final)
    log.info("archive %s: moved the earlier version's copy into %s", md5, final)
    return ArchiveRecord(path=str(final), md5=md5, size=final.stat().st_size, source=str(old))


def _combined(errors: list[tuple[str, DownloadError]]) -> DownloadError:
    transient = any(exc.transient for _, exc in errors)
    if len(errors) == 1 and isinstance(errors[0][1], ChecksumMismatch):
        return errors[0][1]
    detail = "; ".join(f"{source}: {exc}" for source, exc in errors)
    return DownloadError(f"could not fetch the CIFAR-10 archive ({detail}). {HINT}", transient=transient)


def _local_path(source: str) -> Path | None:
    """The file a local source names, or None for a URL."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(source).expanduser()
    if parsed.scheme in ("http", "https"):
        return None
    raise ConfigError(f"unsupported data source {source!r}: use an http(s) URL, a file:// URL or a path")


def check_sources(sources: Sequence[str], md5: str, cache_dir: str | os.PathLike) -> None:
    """Fail before any work when the archive cannot be had: not cached and no source can exist."""
    locals_ = [_local_path(s) for s in sources]  # also rejects unknown schemes
    if archive_path(cache_dir, md5).exists() or (Path(cache_dir) / DOWNLOAD.folder / f"{md5}.tar.gz").exists():
        return
    if sources and all(p is not None and not p.is_file() for p in locals_):
        missing = ", ".join(str(p) for p in locals_)
        raise ConfigError(f"data source does not exist: {missing}. {HINT}")


def _fetch_one(source: str, md5: str, final: Path, timeout: float, on_progress: Progress | None) -> int:
    path = _local_path(source)
    if path is None:
        return _fetch_http(source, md5, final, timeout, on_progress)
    return _copy_local(path, source, md5, final, on_progress)


def _copy_local(path: Path, source: str, md5: str, final: Path, on_progress: Progress | None) -> int:
    if not path.is_file():
        raise DownloadError(f"{path} does not exist or is not a file")
    total = path.stat().st_size
    digest = hashlib.md5()
    done = 0
    with open(path, "rb") as src, atomic_file(final) as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            done += len(chunk)
            _report(on_progress, done, total)
        if digest.hexdigest() != md5:
            # Raising inside atomic_file discards the temp file: nothing is cached.
            raise ChecksumMismatch(source, md5, digest.hexdigest())
    return total


def _fetch_http(url: str, md5: str, final: Path, timeout: float, on_progress: Progress | None) -> int:
    part = final.with_suffix(".part")
    digest = hashlib.md5()
    have = part.stat().st_size if part.exists() else 0
    if have:
        with open(part, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            # The partial file is already complete (or longer than the body): verify it as is.
            return _finish_http(part, digest, url, md5, final)
        transient = exc.code >= 500 or exc.code in (408, 429)
        raise DownloadError(f"HTTP {exc.code} {exc.reason}", transient=transient) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"network error: {reason}", transient=True) from None
    with response:
        resumed = have and response.status == 206 and _range_start(response) == have
        if not resumed:
            have = 0
            digest = hashlib.md5()
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        if resumed:
            log.info("resuming %s at byte %d", url, have)
        done = have
        try:
            with open(part, "ab" if resumed else "wb") as out:
                # Small reads: bytes that arrived before a reset are on disk and need not travel again.
                while chunk := response.read(HTTP_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    _report(on_progress, done, total)
                out.flush()
                os.fsync(out.fileno())
        except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError, OSError) as exc:
            kind = "read timed out" if isinstance(exc, (socket.timeout, TimeoutError)) else "connection broke"
            raise DownloadError(
                f"{kind} after {done} bytes ({exc.__class__.__name__}); "
                "the partial file is kept and the next attempt resumes it",
                transient=True,
            ) from None
        if total is not None and done != total:
            raise DownloadError(f"body ended after {done} of {total} bytes; the next attempt resumes it",
                                transient=True)
    return _finish_http(part, digest, url, md5, final)


def _finish_http(part: Path, digest, url: str, md5: str, final: Path) -> int:
    actual = digest.hexdigest()
    if actual != md5:
        part.unlink(missing_ok=True)
        # A corrupted transfer may not repeat, so a remote mismatch is worth one more try.
        raise ChecksumMismatch(url, md5, actual, transient=True)
    size = part.stat().st_size
    os.replace(part, final)
    return size


def _range_start(response) -> int | None:
    value = response.headers.get("Content-Range", "")  # "bytes 100-999/1000"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _md5_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _report(on_progress: Progress | None, done: int, total: int | None) -> None:
    if on_progress is not None:
        on_progress(done, total)

