import io
import tarfile

import numpy as np
import pytest

from pathlib import Path

from cifar_pipeline.data.dataset import extract_archive, load_arrays, read_batches
from cifar_pipeline.errors import ArchiveError, IntegrityError
from cifar_pipeline.files import file_digest
from tests.cifar_archive import CLASSES, make_cifar_archive
from tests.conftest import decode


@pytest.mark.parametrize("bytes_keys", [False, True], ids=["str-keys", "official-bytes-keys"])
def test_decodes_batches_into_uint8_nhwc(tmp_path, bytes_keys):
    archive = tmp_path / "a.tar.gz"
    make_cifar_archive(archive, per_batch=12, n_test=7, bytes_keys=bytes_keys)
    arrays = read_batches(extract_archive(archive, tmp_path / "x"))
    assert arrays.x_train.shape == (60, 32, 32, 3) and arrays.x_train.dtype == np.uint8
    assert arrays.x_test.shape == (7, 32, 32, 3)
    assert arrays.y_train.dtype == np.int64 and set(arrays.y_train) <= set(range(10))
    assert arrays.classes == CLASSES


def test_pixel_layout_is_red_then_green_then_blue(tmp_path):
    archive = tmp_path / "a.tar.gz"
    make_cifar_archive(archive, per_batch=10, n_test=10)
    arrays = read_batches(extract_archive(archive, tmp_path / "x"))
    # tests.cifar_archive adds +40 green / +80 blue on odd classes: channel means must follow.
    odd = arrays.x_train[arrays.y_train % 2 == 1].astype(float).mean(axis=(0, 1, 2))
    even = arrays.x_train[arrays.y_train % 2 == 0].astype(float).mean(axis=(0, 1, 2))
    assert odd[2] - odd[0] > 50 and abs(even[2] - even[0]) < 10


def test_dataset_is_persisted_and_reused(tmp_path, tiny_archive):
    path, md5 = tiny_archive
    record = decode(path, md5, tmp_path)
    assert (record.n_train, record.n_test) == (200, 100)
    assert Path(record.path).parent.parent == tmp_path / "datasets"
    mtime = Path(record.path).stat().st_mtime_ns
    again = decode(path, md5, tmp_path)
    assert again == record
    assert Path(record.path).stat().st_mtime_ns == mtime
    assert load_arrays(record).x_train.shape == (200, 32, 32, 3)


def test_loaded_arrays_are_writable_and_writes_never_reach_the_cached_file(tmp_path, tiny_archive):
    path, md5 = tiny_archive
    record = decode(path, md5, tmp_path)
    first = load_arrays(record)
    original = first.x_train[0].copy()
    first.x_train[0] = 255 - original  # copy-on-write: private to this process
    assert (first.x_train[0] == 255 - original).all()
    assert (load_arrays(record).x_train[0] == original).all()
    assert file_digest(record.path) == record.sha256


def test_a_tampered_cache_file_is_never_unpickled(tmp_path, tiny_archive):
    path, md5 = tiny_archive
    record = decode(path, md5, tmp_path)
    with open(record.path, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(IntegrityError, match="refusing to load"):
        load_arrays(record)
    # Building again notices the damage and rebuilds.
    rebuilt = decode(path, md5, tmp_path)
    assert load_arrays(rebuilt).x_test.shape == (100, 32, 32, 3)


def _member(name: str, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_member("../../evil.txt", size=4), "leaves the target folder"),
        (_member("/tmp/evil.txt", size=4), "absolute path"),
        (_member("cifar-10-batches-py/link", type=tarfile.SYMTYPE, linkname="/etc/passwd"), "is a link"),
        (_member("cifar-10-batches-py/hard", type=tarfile.LNKTYPE, linkname="cifar-10-batches-py/test_batch"),
         "is a link"),
        (_member("cifar-10-batches-py/dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3), "special file"),
    ],
    ids=["traversal", "absolute", "symlink", "hardlink", "device"],
)
def test_unsafe_members_are_refused_before_anything_is_written(tmp_path, member, reason):
    archive = tmp_path / "bad.tar.gz"
    make_cifar_archive(archive, per_batch=4, n_test=4, extra_members=[member])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArchiveError, match=reason):
        extract_archive(archive, dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path.parent / "evil.txt").exists()


def test_archive_without_cifar_batches_is_refused(tmp_path):
    archive = tmp_path / "other.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"hello"
        info = tarfile.TarInfo("readme.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ArchiveError, match="does not hold CIFAR-10"):
        extract_archive(archive, tmp_path / "x")


def test_missing_batch_is_named(tmp_path):
    archive = tmp_path / "partial.tar.gz"
    make_cifar_archive(archive, per_batch=4, n_test=4, drop=("data_batch_3",))
    with pytest.raises(ArchiveError, match="data_batch_3 is missing"):
        read_batches(extract_archive(archive, tmp_path / "x"))


def test_not_a_tarball_is_refused(tmp_path):
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_bytes(b"this is not gzip at all")
    with pytest.raises(ArchiveError, match="not a readable tar.gz"):
        extract_archive(bogus, tmp_path / "x")


def test_pickles_that_would_run_code_are_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}))
    with pytest.raises(ArchiveError, match="refusing to load builtins.print"):
        read_batches(folder)
