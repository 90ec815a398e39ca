"""Small CIFAR-10-format archives for tests, learnable by a tiny net (class = colour + noise)."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    labels = [int(i % 10) for i in range(n)]
    rng.shuffle(labels)
    base = np.stack([np.full((32, 32), 20 + 22 * k) for k in range(10)])  # one grey level per class
    images = np.empty((n, 3, 32, 32), dtype=np.uint8)
    for i, k in enumerate(labels):
        noise = rng.integers(-30, 31, size=(3, 32, 32))
        images[i] = np.clip(base[k][None] + noise + np.array([0, 40, 80])[:, None, None] * (k % 2), 0, 255)
    return images.reshape(n, 3072), labels


def _batch(data: np.ndarray, labels: list[int], name: str, bytes_keys: bool) -> bytes:
    batch = {"batch_label": name, "labels": labels, "data": data,
             "filenames": [f"img_{i}.png" for i in range(len(labels))]}
    if bytes_keys:  # the official archive's pickles use bytes keys (Python 2 era)
        batch = {k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in batch.items()}
    return pickle.dumps(batch, protocol=2 if bytes_keys else 4)


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0  # fixed, so the archive's md5 is reproducible
    tar.addfile(info, io.BytesIO(payload))


def make_cifar_archive(
    path: Path, *, per_batch: int = 40, n_test: int = 100, seed: int = 0, bytes_keys: bool = False,
    extra_members: list[tarfile.TarInfo] | None = None, drop: tuple[str, ...] = (),
) -> str:
    """Write a cifar-10-python.tar.gz look-alike and return its md5."""
    rng = np.random.default_rng(seed)
    folder = "cifar-10-batches-py"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        dir_info = tarfile.TarInfo(folder)
        dir_info.type, dir_info.mode, dir_info.mtime = tarfile.DIRTYPE, 0o755, 0
        tar.addfile(dir_info)
        for i in range(1, 6):
            if f"data_batch_{i}" in drop:
                continue
            data, labels = make_images(per_batch, rng)
            _add(tar, f"{folder}/data_batch_{i}", _batch(data, labels, f"training batch {i} of 5", bytes_keys))
        data, labels = make_images(n_test, rng)
        _add(tar, f"{folder}/test_batch", _batch(data, labels, "testing batch 1 of 1", bytes_keys))
        names = [n.encode() for n in CLASSES] if bytes_keys else CLASSES
        meta = {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}
        if bytes_keys:
            meta = {k.encode(): v for k, v in meta.items()}
        if "batches.meta" not in drop:
            _add(tar, f"{folder}/batches.meta", pickle.dumps(meta))
        for member in extra_members or []:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    # gzip writes the current time into its header unless told otherwise; fix it for a stable md5.
    raw = buf.getvalue()
    raw = raw[:4] + b"\x00\x00\x00\x00" + raw[8:]
    path.write_bytes(raw)
    return hashlib.md5(raw).hexdigest()
