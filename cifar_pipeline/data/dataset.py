"""Turn a verified CIFAR-10 archive into uint8 arrays, persisted with joblib: the `build-dataset` stage.

The archive is extracted with tarfile's `data` filter after every member was checked to be a
plain file or folder, the batches are read with an unpickler that only builds numpy arrays, and
the result is written atomically to `datasets/<key>/cifar10.joblib`, the key naming the archive's
digest and this decoding code. Loading checks the file's sha256 against the record first, so a
swapped or damaged cache file is never unpickled.
"""

from __future__ import annotations

import logging
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import joblib
import numpy as np

from ..errors import ArchiveError
from ..files import atomic_write, file_digest, load_verified_joblib
from ..stage import Output, Stage, StageRecord, scratch

if TYPE_CHECKING:  # the archive's record is only read here: the download code is not the decoding's
    from .download import ArchiveRecord

log = logging.getLogger(__name__)

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META = "batches.meta"
IMAGE_SHAPE = (32, 32, 3)


class DatasetRecord(StageRecord):
    path: str
    sha256: str
    archive_md5: str
    n_train: int
    n_test: int
    classes: list[str]

    def outputs(self) -> list[Output]:
        return [Output(self.path, self.sha256)]


@dataclass(frozen=True)
class CifarArrays:
    x_train: np.ndarray  # (N, 32, 32, 3) uint8
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]


DATASET = Stage("build-dataset", "datasets", DatasetRecord, "data.dataset")


def dataset_inputs(archive: ArchiveRecord) -> dict:
    return {"archive": archive.content_digest()}


def build_dataset(archive: ArchiveRecord, cache_dir: str | os.PathLike) -> DatasetRecord:
    """Decode the archive once; later calls (and concurrent runs, which wait) return the stored record."""
    return DATASET.run(cache_dir, dataset_inputs(archive), lambda entry: _build(archive, entry))


def _build(archive: ArchiveRecord, folder: Path) -> DatasetRecord:
    with scratch(folder) as tmp:
        root = extract_archive(archive.path, tmp)
        arrays = read_batches(root)
    target = folder / "cifar10.joblib"
    payload = {
        "x_train": arrays.x_train, "y_train": arrays.y_train,
        "x_test": arrays.x_test, "y_test": arrays.y_test, "classes": arrays.classes,
    }
    atomic_write(target, lambda f: joblib.dump(payload, f))
    record = DatasetRecord(
        path=str(target), sha256=file_digest(target), archive_md5=archive.md5,
        n_train=len(arrays.y_train), n_test=len(arrays.y_test), classes=arrays.classes,
    )
    log.info("decoded %d train / %d test images into %s", record.n_train, record.n_test, target)
    return record


def load_arrays(record: DatasetRecord) -> CifarArrays:
    data = load_verified_joblib(record.path, record.sha256, "Delete the file to rebuild it from the archive.",
                                mapped=True)
    return CifarArrays(data["x_train"], data["y_train"], data["x_test"], data["y_test"], list(data["classes"]))


# ---------------------------------------------------------------------------- extraction

def extract_archive(archive: str | os.PathLike, dest: Path) -> Path:
    """Extract into `dest` and return the folder holding the batches."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member)
            tar.extractall(dest, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise ArchiveError(f"unsafe archive member refused: {exc}") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveError(f"{archive} is not a readable tar.gz archive: {exc}") from None
    hits = sorted(dest.rglob(TRAIN_BATCHES[0]))
    if not hits:
        raise ArchiveError(f"{archive} does not hold CIFAR-10: no {TRAIN_BATCHES[0]} inside")
    return hits[0].parent


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    if not (member.isfile() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "special file"
        raise ArchiveError(f"unsafe archive member refused: {name!r} is a {kind}")
    if name.startswith(("/", "\\")) or os.path.isabs(name):
        raise ArchiveError(f"unsafe archive member refused: {name!r} is an absolute path")
    if ".." in Path(name).parts:
        raise ArchiveError(f"unsafe archive member refused: {name!r} leaves the target folder")


# ---------------------------------------------------------------------------- decoding

class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR batches are dicts of lists, strings and numpy arrays; refuse anything else."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_pickle(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            raw = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ArchiveError(f"{path.name} is not a CIFAR-10 batch: {exc}") from None
    if not isinstance(raw, dict):
        raise ArchiveError(f"{path.name} is not a CIFAR-10 batch: expected a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise ArchiveError(f"archive does not hold CIFAR-10: {path.name} is missing")
    batch = _read_pickle(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise ArchiveError(f"{path.name}: 'data' must be a uint8 array of shape (N, 3072), got {shape}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (data.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ArchiveError(f"{path.name}: 'labels' must hold {data.shape[0]} values in 0..9")
    # Rows are 1024 red, then green, then blue values; store as NHWC like the original images.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_batches(root: Path) -> CifarArrays:
    train = [_read_batch(root / name) for name in TRAIN_BATCHES]
    x_test, y_test = _read_batch(root / TEST_BATCH)
    classes = _read_classes(root / META)
    return CifarArrays(
        x_train=np.concatenate([x for x, _ in train]), y_train=np.concatenate([y for _, y in train]),
        x_test=x_test, y_test=y_test, classes=classes,
    )


def _read_classes(path: Path) -> list[str]:
    if not path.is_file():
        raise ArchiveError(f"archive does not hold CIFAR-10: {path.name} is missing")
    names = _read_pickle(path).get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise ArchiveError(f"{path.name}: 'label_names' must list 10 class names")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]

