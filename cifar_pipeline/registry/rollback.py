"""The champion's lineage and rollback: make an earlier registered model the champion again.

The lineage is replayed from registry/history.csv: a promotion puts its model on top, a rollback
to a model in the lineage removes everything above it (rolling back twice goes two steps back, not
to and fro), a rollback to a model outside it (one rolled back earlier) puts it on top. champion.json
has the last word: a champion whose history row was lost to a crash is placed as a rollback would.

A rollback switches champion.json in one rename (temp file, fsync, rename) under the registry's
lock, then appends its history row, like a promotion: predict, export and the score-folder flow
read champion.json on every call, so they use the new champion at once.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from filelock import FileLock
from pydantic import BaseModel

from ..errors import ConfigError, IntegrityError
from ..files import atomic_write_json, atomic_write_text, file_digest
from .champion import ChampionRecord, read_champion, read_history

ROLLBACK = "rollback"  # how a rollback's history row begins: "rollback from A to B: reason"


class Lineage(BaseModel):
    champion: ChampionRecord | None
    predecessors: list[ChampionRecord]  # the previous champion first
    registered: list[ChampionRecord]  # every model in registry/models/, oldest first


class RollbackResult(BaseModel):
    status: str  # "rolled-back" or "unchanged" (the model asked for already is the champion)
    champion: ChampionRecord
    previous: ChampionRecord
    reason: str
    history_file: str


def registry_folder(output_dir: str | Path) -> Path:
    return Path(output_dir).expanduser().resolve() / "registry"


def registered_models(folder: Path) -> dict[str, ChampionRecord]:
    """run id -> record of every model in registry/models/ (promotion writes record.json beside model.pt)."""
    found = []
    for record in (folder / "models").glob("*/record.json"):
        try:
            found.append(ChampionRecord.model_validate_json(record.read_text()))
        except ValueError:
            continue  # a folder without a complete record was never a champion
    return {r.run_id: r for r in sorted(found, key=lambda r: (r.promoted_at, r.run_id))}


def _truthy(value: object) -> bool:
    return str(value).strip().lower() in ("true", "1", "1.0")


def _place(stack: list[str], run_id: str, rollback: bool) -> None:
    if rollback and run_id in stack:
        del stack[len(stack) - stack[::-1].index(run_id):]
    elif not stack or stack[-1] != run_id:
        stack.append(run_id)


def lineage(folder: Path) -> Lineage:
    stack: list[str] = []
    history = read_history(folder)
    for run_id, promoted, reason in zip(history["run_id"], history["promoted"], history["reason"]):
        if _truthy(promoted):
            _place(stack, str(run_id), str(reason).startswith(ROLLBACK))
    champion = read_champion(folder)
    if champion is not None:
        _place(stack, champion.run_id, rollback=True)
    models = registered_models(folder)
    predecessors = [models[r] for r in reversed(stack[:-1]) if r in models] if champion else []
    return Lineage(champion=champion, predecessors=predecessors, registered=list(models.values()))


def rollback(folder: Path, run_id: str | None = None, reason: str = "manual rollback") -> RollbackResult:
    """Make `run_id` (default: the previous champion) the champion; ConfigError when there is none."""
    if not (folder / "champion.json").is_file():  # checked before the lock, which would create the folder
        raise ConfigError(f"no champion in {folder}: nothing to roll back")
    with FileLock(str(folder / ".lock")):  # the lock promotion holds: never half of each
        current = lineage(folder)
        if run_id is None:
            if not current.predecessors:
                raise ConfigError(f"no earlier champion to roll back to: {current.champion.run_id} is the first "
                                  f"(registered models: {len(current.registered)})")
            target = current.predecessors[0]
        else:
            target = next((r for r in current.registered if r.run_id == run_id), None)
            if target is None:
                known = ", ".join(r.run_id for r in current.registered[-5:]) or "none"
                raise ConfigError(f"unknown run id {run_id!r}: not a model in {folder / 'models'} (known: {known})")
        if target.run_id == current.champion.run_id:
            return RollbackResult(status="unchanged", champion=target, previous=current.champion,
                                  reason=f"{target.run_id} is already the champion",
                                  history_file=str(folder / "history.csv"))
        _check_model(target)
        text = f"{ROLLBACK} from {current.champion.run_id} to {target.run_id}: {' '.join(reason.split())}"
        atomic_write_json(folder / "champion.json", target.model_dump())  # the switch: one rename
        _append_history(folder, target, current.champion, text)
    return RollbackResult(status="rolled-back", champion=target, previous=current.champion, reason=text,
                          history_file=str(folder / "history.csv"))


def _check_model(target: ChampionRecord) -> None:
    # A damaged or missing model file must not become the champion: predict would fail on it.
    path = Path(target.model_file)
    if not path.is_file():
        raise IntegrityError(f"model file {path} of {target.run_id} is missing; the champion stays")
    if file_digest(path) != target.model_sha256:
        raise IntegrityError(f"model file {path} of {target.run_id} does not match its recorded sha256; "
                             "the champion stays")


def _append_history(folder: Path, target: ChampionRecord, previous: ChampionRecord, reason: str) -> None:
    row = {
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "run_id": target.run_id,
        "preset": target.config.get("preset"), "model": target.config.get("model"),
        "test_accuracy": target.accuracy, "champion_accuracy": previous.accuracy, "promoted": True,
        "seconds": None, "reason": reason,
    }
    history = read_history(folder)
    history = pd.concat([history, pd.DataFrame([row])], ignore_index=True) if len(history) else pd.DataFrame([row])
    atomic_write_text(folder / "history.csv", history.to_csv(index=False))
