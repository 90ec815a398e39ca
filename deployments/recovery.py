"""Apply deployments/recovery.yaml: zombie detection and the rerun of crashed pipeline runs.

`python -m deployments.recovery [FILE]` against the server of PREFECT_API_URL (with
PREFECT_API_AUTH_STRING where the server has Basic auth). An automation of the same name is deleted
first, so applying again leaves one copy of each. Prints one JSON line: {"applied": {name: id}}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

RECOVERY_YAML = Path(__file__).with_name("recovery.yaml")


def load_specs(path: Path = RECOVERY_YAML) -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text())["automations"]


def apply(path: Path = RECOVERY_YAML) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    applied = {}
    with get_client(sync_client=True) as client:
        for spec in load_specs(path):
            automation = AutomationCore.model_validate(spec)
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
            applied[automation.name] = str(client.create_automation(automation))
    return applied


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(json.dumps({"applied": apply(Path(argv[0]) if argv else RECOVERY_YAML)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
