"""Extra labelled training images from folders laid out like torchvision's ImageFolder.

    <folder>/<class name>/any/depth/<file>.{png,jpg,jpeg,webp,bmp}

`scan_folders()` lists the files with their sha256 (the manifest) and every file it refuses
(unknown class folder, a file outside any class folder, a symlink leaving the folder, a special
file). `build_extra_data()`, the `extra-data` stage, decodes the files into uint8 32x32 RGB arrays
once per manifest and persists them with joblib under `extra_data/<key>/`, where the key names the
manifest, the bad-image policy, the pixel limit and the decoding code; the file's sha256 is checked
before loading. Images
decoded for an earlier manifest are reused by content hash, so a folder that grows by a night's
images decodes only those.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from pathlib import Path

import joblib
import numpy as np
from PIL import Image
from pydantic import BaseModel

from ..errors import BadImagesError, ConfigError, ImageError, IntegrityError
from ..files import atomic_write, file_digest, load_verified_joblib
from ..provenance import code_digest
from ..stage import Output, Stage, StageRecord
from .images import MAX_PIXELS, SIZE, decode_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
PROGRESS_EVERY = 2000  # log a progress line every this many decoded files


class ImageEntry(BaseModel):
    folder: int  # index into ExtraManifest.folders
    path: str  # relative to its folder, with forward slashes
    label: int
    sha256: str


class BadImage(BaseModel):
    path: str
    reason: str


class ExtraManifest(BaseModel):
    folders: list[str]  # resolved absolute paths
    classes: list[str]
    entries: list[ImageEntry]  # sorted by folder, then path: the order the images are appended in
    bad: list[BadImage]  # refused while scanning; decoding may find more
    ignored: list[str]  # hidden files and files without an image suffix
    digest: str


class ExtraDataRecord(StageRecord):
    key: str
    path: str
    sha256: str
    # Names the decoded images and their labels, in order; what the training key includes.
    digest: str
    folders: list[str]
    classes: list[str]
    counts: list[list[int]]  # images per folder, per class
    n_images: int
    resized: int  # images that were not 32x32
    converted: int  # images that were not RGB (grayscale, palette, RGBA, ...)
    decoded: int  # files decoded when this record was built
    reused: int  # files whose decoded array came from an earlier manifest
    policy: str
    skipped: list[BadImage]

    def outputs(self) -> list[Output]:
        return [Output(self.path, self.sha256)]


def check_folders(folders: list[str]) -> None:
    """Refuse a missing folder before anything starts."""
    for folder in folders:
        path = Path(folder).expanduser()
        if not path.is_dir():
            what = "is not a folder" if path.exists() else "does not exist"
            raise ConfigError(f"extra_data folder {what}: {folder}")


def _sha256(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------- scanning

def scan_folders(folders: list[str], classes: list[str]) -> ExtraManifest:
    """List every image file with its label and sha256, and every file that must be refused."""
    check_folders(folders)
    roots = [str(Path(f).expanduser().resolve()) for f in folders]
    entries: list[ImageEntry] = []
    bad: list[BadImage] = []
    ignored: list[str] = []
    for index, root in enumerate(roots):
        for rel, full, problem in _walk(Path(root)):
            if problem:
                bad.append(BadImage(path=str(full), reason=problem))
                continue
            parts = rel.split("/")
            if parts[-1].startswith(".") or full.suffix.lower() not in IMAGE_SUFFIXES:
                ignored.append(str(full))
            elif len(parts) == 1:
                bad.append(BadImage(path=str(full), reason="not in a class folder"))
            elif parts[0] not in classes:
                bad.append(BadImage(path=str(full), reason=f"unknown class folder {parts[0]!r}"))
            else:
                entries.append(ImageEntry(folder=index, path=rel, label=classes.index(parts[0]),
                                          sha256=file_digest(full)))
    digest = _sha256({"folders": roots, "classes": classes, "entries": [e.model_dump() for e in entries],
                      "bad": [b.model_dump() for b in bad]})
    if ignored:
        log.info("extra data: ignored %d hidden or non-image file(s), e.g. %s", len(ignored), ignored[0])
    log.info("extra data: %d image file(s) in %d folder(s), %d refused while scanning", len(entries), len(roots),
             len(bad))
    return ExtraManifest(folders=roots, classes=classes, entries=entries, bad=bad, ignored=ignored, digest=digest)


def _walk(root: Path):
    """Yield (relative path, path, problem or "") for every file below root, in sorted order.

    Symlinks are resolved: one that leaves the folder is refused; a linked folder inside it is not
    followed (its target is scanned anyway, and following could loop).
    """
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        here = Path(dirpath)
        for name in list(dirnames):
            if (here / name).is_symlink():
                dirnames.remove(name)
                if not _inside(here / name, root):
                    yield _rel(here / name, root), here / name, "symlink leaving the folder"
        for name in sorted(filenames):
            full = here / name
            if full.is_symlink() and not _inside(full, root):
                yield _rel(full, root), full, "symlink leaving the folder"
                continue
            try:
                mode = full.stat().st_mode
            except OSError as exc:
                yield _rel(full, root), full, f"unreadable ({exc.strerror})"
                continue
            # A FIFO or device would block or never end when hashed.
            yield _rel(full, root), full, "" if stat.S_ISREG(mode) else "not a regular file"


def _inside(path: Path, root: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(root)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


# ---------------------------------------------------------------------------- decoding

EXTRA = Stage("extra-data", "extra_data", ExtraDataRecord, "data.extra")


def extra_data_inputs(manifest: ExtraManifest, policy: str, max_pixels: int) -> dict:
    return {"manifest": manifest.digest, "policy": policy, "max_pixels": max_pixels}


def build_extra_data(
    manifest: ExtraManifest, cache_dir: str | os.PathLike, policy: str = "fail", max_pixels: int = MAX_PIXELS,
) -> ExtraDataRecord:
    """Decode the manifest's images once; later calls with the same manifest return the record.

    policy "fail" raises BadImagesError naming every bad file and caches nothing; "skip" leaves
    bad files out and lists them in the record.
    """
    if policy not in ("fail", "skip"):
        raise ConfigError(f"bad_images must be fail or skip, not {policy!r}")
    return EXTRA.run(cache_dir, extra_data_inputs(manifest, policy, max_pixels),
                     lambda entry: _build(manifest, entry.name, entry, policy, max_pixels))


def _build(manifest: ExtraManifest, key: str, folder: Path, policy: str, max_pixels: int) -> ExtraDataRecord:
    previous = _previous_decodes(folder.parent, exclude=folder)
    n = len(manifest.entries)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    flags = np.zeros((n, 2), dtype=bool)  # resized, converted
    keep = np.ones(n, dtype=bool)
    bad = list(manifest.bad)
    decoded = reused = 0
    todo = sum(e.sha256 not in previous for e in manifest.entries)
    log.info("extra data: decoding %d new image(s), reusing %d decoded before", todo, n - todo)
    for i, entry in enumerate(manifest.entries):
        if entry.sha256 in previous:
            images[i], flags[i] = previous[entry.sha256]
            reused += 1
            continue
        path = Path(manifest.folders[entry.folder]) / entry.path
        try:
            images[i] = decode_image(path, max_pixels=max_pixels)
            flags[i] = _source_differs(path)
        except ImageError as exc:
            bad.append(BadImage(path=str(path), reason=exc.reason + (f" ({exc.detail})" if exc.detail else "")))
            keep[i] = False
        decoded += 1
        if decoded % PROGRESS_EVERY == 0:
            log.info("extra data: decoded %d/%d new image(s)", decoded, todo)
    if bad and policy == "fail":
        raise BadImagesError([f"{b.path}: {b.reason}" for b in bad])
    for b in bad:
        log.warning("extra data: skipped %s: %s", b.path, b.reason)

    kept = [e for e, k in zip(manifest.entries, keep) if k]
    labels = np.array([e.label for e in kept], dtype=np.int64)
    payload = {"x": images[keep], "y": labels, "sha256": [e.sha256 for e in kept], "flags": flags[keep]}
    target = folder / "extra.joblib"
    atomic_write(target, lambda f: joblib.dump(payload, f))
    counts = np.zeros((len(manifest.folders), len(manifest.classes)), dtype=int)
    for e in kept:
        counts[e.folder, e.label] += 1
    record = ExtraDataRecord(
        key=key, path=str(target), sha256=file_digest(target),
        digest=_sha256({"code": code_digest(EXTRA.module), "images": [[e.label, e.sha256] for e in kept]}),
        folders=manifest.folders, classes=manifest.classes, counts=counts.tolist(), n_images=len(kept),
        resized=int(flags[keep, 0].sum()), converted=int(flags[keep, 1].sum()),
        decoded=decoded, reused=reused, policy=policy, skipped=bad,
    )
    log.info("extra data: %d image(s) ready (%d decoded, %d reused, %d resized, %d skipped) in %s",
             record.n_images, decoded, reused, record.resized, len(bad), target)
    return record


def _source_differs(path: Path) -> tuple[bool, bool]:
    """(not 32x32, not RGB) of a file decode_image() already accepted: only its header is read."""
    with Image.open(path) as im:
        return im.size != (SIZE, SIZE), im.mode != "RGB"


def _previous_decodes(root: Path, exclude: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decoded images of the most recent other manifest, by source file sha256 (empty if none)."""
    # Dot folders are entries retention is removing; one may also vanish between the glob and the stat.
    entries = {}
    for path in root.glob("*/record.json"):
        if path.parent != exclude and not path.parent.name.startswith("."):
            try:
                entries[path.parent] = path.stat().st_mtime_ns
            except OSError:
                continue
    if not entries:
        return {}
    latest = max(entries, key=entries.get)
    try:
        if (record := EXTRA.stored(latest, verify=False)) is None:
            return {}
        x, _, hashes, flags = _load(record)
    except (IntegrityError, OSError, ValueError) as exc:
        log.warning("extra data: not reusing %s: %s", latest, exc)
        return {}
    return {h: (x[i], flags[i]) for i, h in enumerate(hashes)}


def _load(record: ExtraDataRecord) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    data = load_verified_joblib(record.path, record.sha256, "Delete its folder to decode the images again.")
    return data["x"], data["y"], list(data["sha256"]), data["flags"]


def training_digest(record: ExtraDataRecord | None) -> str | None:
    """What the training key includes: None without extra images, so an empty folder changes nothing."""
    return record.content_digest() if record is not None and record.n_images else None


def load_extra(record: ExtraDataRecord) -> tuple[np.ndarray, np.ndarray]:
    """The decoded images (N, 32, 32, 3) uint8 and their labels (N,) int64."""
    x, y, _, _ = _load(record)
    return x, y
