"""Command line: `cifar-pipeline run --preset NAME [--FIELD VALUE ...]`.

Every field of PipelineConfig is an option (`--batch-size 64`, `--no-channels-last`, `--source`
may repeat). Human-readable progress goes to stderr; the last line on stdout is one JSON object.
Exit codes: 0 success, 1 the run failed, 2 bad input (nothing was started).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
import typing
from typing import Any, NoReturn

from cifar_pipeline import layout
from cifar_pipeline.config import PRESETS, PipelineConfig, validate_config
from cifar_pipeline.download import check_sources
from cifar_pipeline.errors import ConfigError, PipelineError

# Offline machines: the local server's telemetry would log a DNS error on every start, and a cold
# start on 2 cores (database migrations) can exceed Prefect's 20 s default.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, so that cron mail and CI logs show the reason, not a usage dump.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _option_kwargs(name: str, annotation: Any, description: str) -> dict[str, Any]:
    base = annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        base = next(a for a in typing.get_args(annotation) if a is not type(None))
    origin = typing.get_origin(base)
    if base is bool:
        return {"action": argparse.BooleanOptionalAction, "help": description}
    if origin is typing.Literal:
        return {"choices": list(typing.get_args(base)), "help": description}
    if origin is list:
        return {"action": "append", "metavar": "URL_OR_PATH", "help": description + " May repeat."}
    if base in (int, float):
        return {"type": base, "metavar": "N", "help": description}
    return {"type": str, "metavar": name.upper(), "help": description}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cifar-pipeline", description="Train and evaluate a CIFAR-10 classifier with Prefect.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run the flow once (Prefect's local server starts on its own)")
    show = sub.add_parser("config", help="print the resolved configuration as JSON, without running")
    doctor = sub.add_parser("doctor", help="diagnose why a configuration does not learn (a minute or two); "
                                           "exit 1 when a check fails")
    for p in (run, show, doctor):
        for name, field in PipelineConfig.model_fields.items():
            flag = "--" + name.replace("_", "-")
            aliases = ["--output"] if name == "output_dir" else []
            p.add_argument(flag, *aliases, dest=name, default=None,
                           **_option_kwargs(name, field.annotation, field.description or ""))
    serve = sub.add_parser("serve", help="register the nightly and on-demand deployments and run them here "
                                         "(needs a Prefect server: PREFECT_API_URL)")
    serve.add_argument("--limit", type=int, default=None, metavar="N", help="at most N runs at once")
    sub.add_parser("presets", help="list the presets")
    sub.add_parser("schema", help="print the configuration's JSON schema")
    return parser


def config_from_args(ns: argparse.Namespace) -> PipelineConfig:
    values = {k: v for k, v in vars(ns).items() if k in PipelineConfig.model_fields and v is not None}
    requested = validate_config(values)
    cfg = requested.resolved()  # validate the merged values now, before anything starts
    check_sources(cfg.sources(), cfg.md5, layout.cache_dir(cfg))
    return requested


def _fail(message: str, code: int, **extra: Any) -> int:
    print(f"error: {message}", file=sys.stderr)
    print(json.dumps({"status": "failed", "error": message, **extra}))
    return code


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {text}"


def run(config: PipelineConfig) -> int:
    from flows.pipeline import cifar_pipeline

    state = cifar_pipeline(config=config, return_state=True)
    if not state.is_completed():
        outcome = state.result(raise_on_failure=False)
        reason = _one_line(outcome) if isinstance(outcome, BaseException) else state.message or state.name
        return _fail(reason, 1, state=state.name)
    summary = state.result()
    print(json.dumps({"status": "completed", **summary.model_dump()}))
    return 0


def run_doctor(config: PipelineConfig) -> int:
    from flows.doctor import doctor

    state = doctor(config=config, return_state=True)
    if not state.is_completed():
        outcome = state.result(raise_on_failure=False)
        reason = _one_line(outcome) if isinstance(outcome, BaseException) else state.message or state.name
        return _fail(reason, 1, state=state.name)
    summary = state.result()
    print(json.dumps(summary.model_dump()))
    return 1 if summary.status == "fail" else 0


def serve(limit: int | None) -> int:
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return _fail("serve needs a Prefect server to schedule runs: start one with `prefect server start` "
                     "and set PREFECT_API_URL=http://127.0.0.1:4200/api", 2)
    from deployments.serve import main as serve_main

    try:
        serve_main(limit=limit)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    return 0


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.command == "presets":
        for name, preset in PRESETS.items():
            print(f"{name:8} {preset.get('description', '')}")
        return 0
    if ns.command == "serve":
        return serve(ns.limit)
    if ns.command == "schema":
        print(json.dumps(PipelineConfig.model_json_schema(), indent=2))
        return 0
    try:
        config = config_from_args(ns)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    if ns.command == "config":
        print(config.resolved().model_dump_json(indent=2))
        return 0
    try:
        return run_doctor(config) if ns.command == "doctor" else run(config)
    except KeyboardInterrupt:
        return _fail("interrupted; finished epochs are checkpointed and the next run resumes them", 130)
    except PipelineError as exc:
        return _fail(_one_line(exc), 1)


if __name__ == "__main__":
    sys.exit(main())
