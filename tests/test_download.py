import hashlib

import pytest

from cifar_pipeline.data.download import archive_path, check_sources, fetch_archive
from cifar_pipeline.errors import ChecksumMismatch, ConfigError, DownloadError


def test_local_path_is_verified_and_cached(tmp_path, tiny_archive):
    path, md5 = tiny_archive
    record = fetch_archive([str(path)], md5, tmp_path)
    cached = archive_path(tmp_path, md5)
    assert record.path == str(cached) and record.source == str(path)
    assert hashlib.md5(cached.read_bytes()).hexdigest() == md5
    # Second call: a cache hit, the source is not read again.
    assert fetch_archive(["/does/not/matter"], md5, tmp_path) == record


def test_file_url_works(tmp_path, tiny_archive):
    path, md5 = tiny_archive
    assert fetch_archive([path.as_uri()], md5, tmp_path).size == path.stat().st_size


def test_http_download_then_cache_hit(tmp_path, tiny_archive, server):
    path, md5 = tiny_archive
    record = fetch_archive([server.url(path.name)], md5, tmp_path)
    assert record.source == server.url(path.name)
    assert len(server.requests) == 1
    fetch_archive([server.url(path.name)], md5, tmp_path)
    assert len(server.requests) == 1  # served from the cache


def test_wrong_digest_names_source_expected_and_actual_and_caches_nothing(tmp_path, tiny_archive):
    path, md5 = tiny_archive
    wrong = "0" * 32
    with pytest.raises(ChecksumMismatch) as info:
        fetch_archive([str(path)], wrong, tmp_path)
    message = str(info.value)
    assert str(path) in message and wrong in message and md5 in message and "nothing was cached" in message
    assert not info.value.transient
    assert [p for p in (tmp_path / "archives").rglob("*") if not p.name.endswith(".lock")] == []


def test_corrupt_body_over_http_is_rejected_and_not_kept(tmp_path, tiny_archive, server):
    path, md5 = tiny_archive
    server.faults = ["flip"]
    with pytest.raises(ChecksumMismatch) as info:
        fetch_archive([server.url(path.name)], md5, tmp_path)
    assert info.value.transient  # a garbled transfer is worth another try
    assert not archive_path(tmp_path, md5).exists()
    assert not archive_path(tmp_path, md5).with_suffix(".part").exists()


def test_server_error_is_transient_and_not_found_is_not(tmp_path, tiny_archive, server):
    path, md5 = tiny_archive
    server.faults = ["503"]
    with pytest.raises(DownloadError, match="HTTP 503") as info:
        fetch_archive([server.url(path.name)], md5, tmp_path)
    assert info.value.transient
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        fetch_archive([server.url("missing.tar.gz")], md5, tmp_path)
    assert not info.value.transient


def test_check_sources_fails_fast_for_missing_local_files(tmp_path, tiny_archive):
    path, md5 = tiny_archive
    with pytest.raises(ConfigError, match="does not exist: /nope/a.tar.gz"):
        check_sources(["/nope/a.tar.gz"], md5, tmp_path)
    with pytest.raises(ConfigError, match="unsupported data source"):
        check_sources(["ftp://example.org/a.tar.gz"], md5, tmp_path)
    check_sources(["/nope/a.tar.gz", "http://127.0.0.1:9/a.tar.gz"], md5, tmp_path)  # a URL may work
    fetch_archive([str(path)], md5, tmp_path)
    check_sources(["/nope/a.tar.gz"], md5, tmp_path)  # cached: the source is not needed
