"""Shared fixtures. Prefect settings are set before anything imports Prefect."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

_PREFECT_HOME = tempfile.mkdtemp(prefix="cifar-pipeline-tests-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.pop("CIFAR_PIPELINE_SOURCE", None)
os.environ.pop("CIFAR_PIPELINE_MD5", None)

import pytest  # noqa: E402

from tests.cifar_archive import make_cifar_archive  # noqa: E402
from tests.http_server import FaultyServer  # noqa: E402

REAL_ARCHIVE = Path(__file__).resolve().parents[2] / "shared/data/cifar10/cifar-10-python.tar.gz"
REAL_MD5 = "d9faace0e3ee83e5d384d7816e454f7b"


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory) -> tuple[Path, str]:
    """A 200-image train / 100-image test archive and its md5."""
    path = tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz"
    return path, make_cifar_archive(path)


@pytest.fixture
def server(tiny_archive):
    with FaultyServer(tiny_archive[0].parent) as srv:
        yield srv


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect API for the session (a generous start-up budget for 2-core CI)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def real_archive() -> Path:
    path = Path(os.environ.get("CIFAR10_REAL_ARCHIVE", REAL_ARCHIVE))
    if not path.is_file():
        pytest.skip(f"real CIFAR-10 archive not found at {path} (set CIFAR10_REAL_ARCHIVE)")
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, tiny_archive):
    """The tiny archive decoded into a cache folder: (record, cache_dir)."""
    cache = tmp_path_factory.mktemp("dataset-cache")
    return decode(*tiny_archive, cache), cache


def decode(path: Path, md5: str, cache: Path):
    """An archive file through the download and build-dataset stages: its DatasetRecord."""
    from cifar_pipeline.data.dataset import build_dataset
    from cifar_pipeline.data.download import fetch_archive

    return build_dataset(fetch_archive([str(path)], md5, cache), cache)


def stored(record_json: Path, model):
    """The record inside a stage entry's record.json (cifar_pipeline/stage.py)."""
    return model.model_validate(json.loads(Path(record_json).read_text())["record"])
