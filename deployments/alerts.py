"""`cifar-pipeline alerts apply`: the automations of automations.yaml on a Prefect server, by name.

Each automation is created, or updated in place when one of that name exists (extra copies made by
hand are deleted), so applying twice leaves the same automations with the same ids. Messages go
through one Prefect notification block: `--webhook URL` saves (or overwrites) the `cifar-alerts`
block; `--block TYPE/NAME` uses a block someone saved already (Slack, e-mail, ...).

Why a plain webhook is saved as Prefect's Slack Webhook block: that block hands every URL that is
not a hooks.slack.com one to Apprise, which sends `json://` / `jsons://` URLs as a JSON POST and
`mailto://` as e-mail, and reports a refused or unreachable target as a failed notification. The
server then records a `prefect.automation.action.failed` event. The Custom Webhook block does not:
in Prefect 3.9.1 its HTTP errors escape the action, the server retries it three times (four POSTs)
and drops it, with a traceback in the server log only.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import yaml

from cifar_pipeline.errors import ConfigError

AUTOMATIONS_YAML = Path(__file__).with_name("automations.yaml")
DEFAULT_BLOCK_NAME = "cifar-alerts"
NOTIFY_ACTION = "send-notification"


def load_specs(path: Path = AUTOMATIONS_YAML) -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text())["automations"]


def build_automations(block_document_id: UUID, specs: list[dict[str, Any]] | None = None,
                      late_within: timedelta | None = None) -> list[Any]:
    """The automations with the block filled in; `late_within` shortens the nightly-late window (tests)."""
    from prefect.events.schemas.automations import AutomationCore

    built = []
    for spec in copy.deepcopy(specs if specs is not None else load_specs()):
        for action in spec["actions"]:
            if action["type"] == NOTIFY_ACTION:
                action["block_document_id"] = str(block_document_id)
        # The repository is the whole definition: an automation paused by hand is enabled again.
        spec.setdefault("enabled", True)
        spec.setdefault("actions_on_trigger", [])
        spec.setdefault("actions_on_resolve", [])
        if late_within is not None and spec["trigger"].get("posture") == "Proactive":
            spec["trigger"]["within"] = late_within.total_seconds()
        built.append(AutomationCore.model_validate(spec))
    return built


def apprise_url(url: str) -> str:
    """An http(s) URL becomes Apprise's JSON webhook; Slack's own URLs and Apprise URLs stay as they are."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and not parts.netloc.startswith("hooks.slack"):
        return urlunsplit(("json" if parts.scheme == "http" else "jsons", *parts[1:]))
    return url


def save_webhook_block(url: str, name: str = DEFAULT_BLOCK_NAME) -> UUID:
    from apprise import Apprise
    from prefect.blocks.notifications import SlackWebhook

    target = apprise_url(url)
    if not Apprise().add(target):
        raise ConfigError(f"--webhook {url!r} is neither an http(s) URL nor an Apprise URL (mailto://, json://, ...)")
    return SlackWebhook(url=target).save(name, overwrite=True)


def find_block(spec: str) -> UUID:
    """`TYPE/NAME` (as `prefect block ls` shows it) -> the id of a saved notification block."""
    from prefect.blocks.core import Block
    from prefect.exceptions import ObjectNotFound

    if spec.count("/") != 1:
        raise ConfigError(f"--block {spec!r}: give TYPE/NAME, e.g. slack-webhook/cifar-alerts (see prefect block ls)")
    try:
        block = Block.load(spec)
    except (ObjectNotFound, ValueError, KeyError) as exc:
        raise ConfigError(f"--block {spec!r}: no such block on this server ({' '.join(str(exc).split())[:200]})")
    if "notify" not in block.get_block_capabilities():
        raise ConfigError(f"--block {spec!r} is not a notification block (Slack, e-mail, webhook, ...)")
    return block._block_document_id


def apply_automations(automations: list[Any]) -> list[dict[str, str]]:
    """Create or update each automation by name; more than one of a name: the newest stays."""
    from prefect.client.orchestration import get_client

    applied = []
    with get_client(sync_client=True) as client:
        for automation in automations:
            existing = client.read_automations_by_name(automation.name)  # newest first
            if existing:
                client.update_automation(existing[0].id, automation)
                for extra in existing[1:]:
                    client.delete_automation(extra.id)
                applied.append({"name": automation.name, "id": str(existing[0].id), "action": "updated"})
            else:
                new_id = client.create_automation(automation)
                applied.append({"name": automation.name, "id": str(new_id), "action": "created"})
    return applied


def apply(webhook: str | None = None, block: str | None = None, block_name: str = DEFAULT_BLOCK_NAME,
          late_within: timedelta | None = None) -> dict[str, Any]:
    if (webhook is None) == (block is None):
        raise ConfigError("give one of --webhook URL or --block TYPE/NAME")
    block_id = save_webhook_block(webhook, block_name) if webhook else find_block(block)
    applied = apply_automations(build_automations(block_id, late_within=late_within))
    return {"block": f"slack-webhook/{block_name}" if webhook else block, "block_document_id": str(block_id),
            "automations": applied}
