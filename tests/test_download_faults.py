"""Network faults injected by a real HTTP server on 127.0.0.1: nothing bad is ever cached."""

import hashlib

import pytest

from cifar_pipeline.data.download import archive_path, fetch_archive
from cifar_pipeline.errors import ChecksumMismatch, DownloadError


def _cached_files(cache):
    folder = cache / "archives"
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


@pytest.mark.parametrize("fault", ["reset", "truncate"])
def test_broken_transfer_keeps_the_partial_file_and_resumes_with_range(tmp_path, tiny_archive, server, fault):
    path, md5 = tiny_archive
    url = server.url(path.name)
    server.faults = [fault]
    with pytest.raises(DownloadError) as info:
        fetch_archive([url], md5, tmp_path, timeout=5)
    assert info.value.transient and "resumes" in str(info.value)
    part = archive_path(tmp_path, md5).with_suffix(".part")
    assert 0 < part.stat().st_size < path.stat().st_size
    assert not archive_path(tmp_path, md5).exists()  # never under the trusted name

    size = part.stat().st_size
    record = fetch_archive([url], md5, tmp_path, timeout=5)
    assert server.requests[-1]["range"] == f"bytes={size}-"
    assert server.requests[-1]["served_from"] == size  # only the missing tail travelled
    assert hashlib.md5(open(record.path, "rb").read()).hexdigest() == md5
    assert not part.exists()


def test_server_without_range_support_restarts_from_zero(tmp_path, tiny_archive, server):
    path, md5 = tiny_archive
    server.faults = ["truncate"]
    server.ranges = False
    with pytest.raises(DownloadError):
        fetch_archive([server.url(path.name)], md5, tmp_path, timeout=5)
    record = fetch_archive([server.url(path.name)], md5, tmp_path, timeout=5)
    assert server.requests[-1]["range"] is not None  # asked to resume...
    assert server.requests[-1]["served_from"] == 0  # ...got the whole body, and started over
    assert hashlib.md5(open(record.path, "rb").read()).hexdigest() == md5


def test_flipped_bytes_are_caught_and_the_partial_file_dropped(tmp_path, tiny_archive, server):
    path, md5 = tiny_archive
    server.faults = ["flip"]
    with pytest.raises(ChecksumMismatch, match=f"expected md5 {md5}"):
        fetch_archive([server.url(path.name)], md5, tmp_path, timeout=5)
    assert _cached_files(tmp_path) == []
    assert fetch_archive([server.url(path.name)], md5, tmp_path, timeout=5).md5 == md5


def test_stalled_server_times_out_instead_of_hanging(tmp_path, tiny_archive, server):
    path, md5 = tiny_archive
    server.faults = ["stall"]
    server.stall_seconds = 3
    with pytest.raises(DownloadError, match="timed out|network error") as info:
        fetch_archive([server.url(path.name)], md5, tmp_path, timeout=0.5)
    assert info.value.transient
    assert _cached_files(tmp_path) == []


def test_mirrors_are_tried_in_order(tmp_path, tiny_archive, server):
    path, md5 = tiny_archive
    server.faults = ["503"]
    first, second = server.url(path.name), server.url(path.name) + "?mirror=2"
    record = fetch_archive([first, second], md5, tmp_path, timeout=5)
    assert record.source == second
    assert [r["fault"] for r in server.requests] == ["503", "ok"]


def test_all_sources_failing_names_each_and_says_how_to_use_a_mirror(tmp_path, tiny_archive, server):
    path, md5 = tiny_archive
    server.faults = ["503", "404"]
    sources = [server.url(path.name), server.url("gone.tar.gz"), str(tmp_path / "missing.tar.gz")]
    with pytest.raises(DownloadError) as info:
        fetch_archive(sources, md5, tmp_path, timeout=5)
    message = str(info.value)
    assert all(s in message for s in sources)
    assert "HTTP 503" in message and "HTTP 404" in message and "does not exist" in message
    assert "--source URL_OR_PATH --md5 HEX" in message and "CIFAR_PIPELINE_SOURCE" in message
    assert info.value.transient  # one of them (the 503) may recover


def test_a_damaged_cached_archive_is_fetched_again(tmp_path, tiny_archive):
    path, md5 = tiny_archive
    record = fetch_archive([str(path)], md5, tmp_path)
    with open(record.path, "r+b") as f:
        f.write(b"garbage")
    again = fetch_archive([str(path)], md5, tmp_path)
    assert again.source == str(path)
    assert hashlib.md5(open(again.path, "rb").read()).hexdigest() == md5
