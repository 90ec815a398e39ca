"""Checkpoints: plain dicts of tensors and primitives, written atomically, loaded weights-only."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write

log = logging.getLogger(__name__)

FORMAT = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write via temp file + fsync + rename: a crash or a full disk leaves the previous checkpoint intact.

    The bytes are built in memory first: torch.save's zip writer reports a failed write as an
    obscure RuntimeError, while a plain write raises the OSError (ENOSPC) a user can act on.
    """
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    return atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    # weights_only: a checkpoint can never run code when loaded.
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cifar-pipeline checkpoint (format {FORMAT})")
    return state


def try_load_checkpoint(path: Path, key: str) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None when absent, unreadable or from another run."""
    if not path.exists():
        return None
    try:
        state = load_checkpoint(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file means: start afresh
        log.warning("ignoring unreadable checkpoint %s (%s); training from scratch", path, exc)
        return None
    if state.get("key") != key:
        log.warning("checkpoint %s belongs to another configuration; training from scratch", path)
        return None
    return state
