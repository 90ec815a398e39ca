"""Allowed roots and hosts: what a worker lets a form value reach (cifar_pipeline/access.py)."""

import os

import pytest

from cifar_pipeline.access import HOSTS_ENV, ROOTS_ENV, check_access
from cifar_pipeline.config import PipelineConfig
from cifar_pipeline.errors import ConfigError
from tests.test_cli import cli


def resolved(**values):
    return PipelineConfig(**values).resolved(environ={})


@pytest.fixture
def roots(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "data").mkdir()
    return {ROOTS_ENV: f"{tmp_path / 'out'}{os.pathsep}{tmp_path / 'data'}"}


def test_unset_means_no_restriction():
    check_access(resolved(output_dir="/etc", source=["file:///etc/passwd"], extra_data=["/"]), environ={})


def test_values_inside_the_roots_pass(tmp_path, roots):
    check_access(resolved(output_dir=str(tmp_path / "out" / "team-a"), source=[str(tmp_path / "data" / "c.tar.gz")],
                          extra_data=[str(tmp_path / "data" / "extra")]), environ=roots)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"output_dir": "/etc"}, "output_dir = '/etc'"),
        ({"output_dir": "{tmp}/out/../elsewhere"}, "output_dir = "),
        ({"source": ["file:///etc/passwd"]}, "source = 'file:///etc/passwd'"),
        ({"source": ["/etc/passwd"]}, "source = '/etc/passwd'"),
        ({"extra_data": ["/root"]}, "extra_data = '/root'"),
    ],
)
def test_values_outside_the_roots_are_refused_naming_value_and_roots(values, named, tmp_path, roots):
    values = {k: (v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v) for k, v in values.items()}
    values.setdefault("output_dir", str(tmp_path / "out"))
    with pytest.raises(ConfigError) as err:
        check_access(resolved(**values), environ=roots)
    message = str(err.value)
    assert named in message and ROOTS_ENV in message and str(tmp_path / "data") in message
    assert "\n" not in message


def test_a_link_inside_a_root_that_points_outside_is_refused(tmp_path, roots):
    (tmp_path / "out" / "escape").symlink_to("/etc")
    with pytest.raises(ConfigError, match="output_dir"):
        check_access(resolved(output_dir=str(tmp_path / "out" / "escape")), environ=roots)


def test_relative_output_dir_is_judged_where_the_worker_runs(tmp_path, roots, monkeypatch):
    monkeypatch.chdir(tmp_path / "out")
    check_access(resolved(output_dir="outputs"), environ=roots)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="output_dir = 'outputs'"):
        check_access(resolved(output_dir="outputs"), environ=roots)


def test_url_hosts_are_checked_when_hosts_are_set(tmp_path):
    env = {HOSTS_ENV: "mirror.lan, 127.0.0.1"}
    check_access(resolved(source=["http://mirror.lan/c.tar.gz", "https://127.0.0.1:8443/c.tar.gz"]), environ=env)
    with pytest.raises(ConfigError, match=r"host 169\.254\.169\.254 is not one this worker allows"):
        check_access(resolved(source=["http://169.254.169.254/latest"]), environ=env)
    with pytest.raises(ConfigError, match="www.cs.toronto.edu"):  # the official URL, when no source is set
        check_access(resolved(), environ=env)


def test_cli_refuses_a_folder_outside_the_roots_in_one_line_before_anything_starts(tmp_path, roots):
    proc = cli("run", "--output", str(tmp_path / "elsewhere"), env=roots, timeout=120)
    assert proc.returncode == 2
    assert f"output_dir = '{tmp_path / 'elsewhere'}' is outside the folders this worker allows" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "elsewhere").exists()


def test_paths_of_other_flows_are_held_to_the_same_roots(tmp_path):
    from cifar_pipeline.access import check_places

    env = {"CIFAR_PIPELINE_ALLOWED_ROOTS": str(tmp_path)}
    check_places([("folder", str(tmp_path / "incoming")), ("output", f"file://{tmp_path}/p.csv")], environ=env)
    with pytest.raises(ConfigError, match=r"output = '/etc/cron.d/x' is outside the folders this worker allows"):
        check_places([("folder", str(tmp_path)), ("output", "/etc/cron.d/x")], environ=env)
    check_places([("output", "/etc/cron.d/x")], environ={})  # no roots set: a laptop, nothing refused
