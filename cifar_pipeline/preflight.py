"""Checks before any work: what a run reads and writes must exist, be allowed and be writable.

The CLI runs them before Prefect starts (a bad value is exit 2 and one line, not a failed run half
a minute later) and every flow runs them again first, since a deployment's parameters come from
the UI, not the CLI.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import layout
from .access import check_access
from .config import PipelineConfig
from .data.download import check_sources
from .data.extra import check_folders
from .errors import ConfigError


def check_output_dir(output_dir: str | os.PathLike, field: str = "output_dir") -> None:
    """The folder exists and is writable, or can be created: no part of the path is a file, and the
    nearest existing folder above it is writable."""
    path = layout.output_root(output_dir)
    for place in (path / "cache", path):
        if place.exists() and not place.is_dir():
            raise ConfigError(f"{field} = {str(output_dir)!r}: {place} is a file, not a folder; "
                              "name a folder (it is created when missing)")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{field} = {str(output_dir)!r}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
        raise ConfigError(f"{field} = {str(output_dir)!r} {what} by this user")


def check_run(cfg: PipelineConfig) -> None:
    """Everything a run of a resolved config needs, before anything starts."""
    check_access(cfg)  # the worker's allowed folders and hosts, before anything is read or written
    check_output_dir(cfg.output_dir)
    check_sources(cfg.sources(), cfg.md5, layout.cache_dir(cfg))
    check_folders(cfg.extra_data)
