"""Command line: `cifar-pipeline run --preset NAME [--FIELD VALUE ...]`.

Every field of PipelineConfig is an option (`--batch-size 64`, `--no-channels-last`, `--source`
may repeat). Human-readable progress goes to stderr; the last line on stdout is one JSON object.
Exit codes: 0 success, 1 the run failed, 2 bad input (nothing was started).
"""

from __future__ import annotations

from flows.quick_exit import exit_quickly  # first: its exit handler must run after every other one

import argparse
import json
import os
import sys
import types
import typing
from typing import Any, NoReturn

from pydantic import ValidationError

from cifar_pipeline.config import PRESETS, PipelineConfig, describe_validation_error, validate_config
from cifar_pipeline.errors import ConfigError, PipelineError
from cifar_pipeline.preflight import check_run

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
        base = typing.get_args(annotation)[0]  # the value's type; the other side is "empty"
    if typing.get_origin(base) is typing.Annotated:
        base = typing.get_args(base)[0]
    origin = typing.get_origin(base)
    if base is bool:
        return {"action": argparse.BooleanOptionalAction, "help": description}
    if origin is typing.Literal:
        return {"choices": list(typing.get_args(base)), "help": description}
    if origin is list and typing.get_origin(typing.get_args(base)[0]) is typing.Annotated:  # numbers
        return {"type": str, "metavar": "N,N,...", "help": description + " Comma-separated; \"\" for none."}
    if origin is list and typing.get_origin(typing.get_args(base)[0]) is tuple:  # budget_frontier
        return {"type": str, "metavar": "WxE=ACC,...", "help": description + " Comma-separated; \"\" for none."}
    if origin is list:
        metavar = "DIR" if name == "extra_data" else "URL_OR_PATH"
        return {"action": "append", "metavar": metavar, "help": description + " May repeat."}
    if base in (int, float):
        return {"type": base, "metavar": "N", "help": description}
    return {"type": str, "metavar": name.upper(), "help": description}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cifar-pipeline", description="Train and evaluate a CIFAR-10 classifier with Prefect.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run the flow once (Prefect's local server starts on its own)")
    show = sub.add_parser("config", help="print the resolved configuration as JSON, without running")
    sweep = sub.add_parser("sweep", help="search hyperparameters with Optuna (trials in parallel, locally or on "
                                         "a work pool); the winner on validation meets the champion")
    _add_sweep_options(sweep)
    doctor = sub.add_parser("doctor", help="diagnose why a configuration does not learn (a minute or two); "
                                           "exit 1 when a check fails")
    for p in (run, show, sweep, doctor):
        for name, field in PipelineConfig.model_fields.items():
            flag = "--" + name.replace("_", "-")
            aliases = ["--output"] if name == "output_dir" else []
            p.add_argument(flag, *aliases, dest=name, default=None,
                           **_option_kwargs(name, field.annotation, field.description or ""))
    serve = sub.add_parser("serve", help="register the nightly and on-demand deployments and run them here "
                                         "(needs a Prefect server: PREFECT_API_URL)")
    serve.add_argument("--limit", type=int, default=None, metavar="N", help="at most N runs at once")
    _add_predict_parsers(sub)
    _add_registry_parsers(sub)
    _add_gc_parser(sub)
    sub.add_parser("presets", help="list the presets")
    sub.add_parser("schema", help="print the configuration's JSON schema")
    return parser


def _add_predict_parsers(sub: argparse._SubParsersAction) -> None:
    predict = sub.add_parser("predict", help="classify image files with the champion (or another model)")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (searched recursively) "
                         "or globs (quote them: 'photos/**/*.jpg')")
    export = sub.add_parser("export", help="export a model to ONNX or a torch.export program")
    for p in (predict, export):
        p.add_argument("--model", default="champion", help="champion (default), a run id of the registry, or a "
                       "model file (model.pt, a training checkpoint; predict also takes model.onnx)")
        p.add_argument("--output-dir", default="outputs", metavar="DIR",
                       help="the folder `run` writes to, holding registry/ (default: outputs)")
    predict.add_argument("--top-k", type=int, default=5, metavar="K", help="classes listed per image (default 5)")
    predict.add_argument("--format", choices=["csv", "json"], default="csv", help="output format (default csv)")
    predict.add_argument("--output", default=None, metavar="FILE", help="write predictions here (default: stdout)")
    predict.add_argument("--batch-size", type=int, default=256, metavar="N", help="images per batch (default 256)")
    predict.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                         help="torch (on the GPU when present), or onnx: ONNX Runtime on the model.onnx "
                         "beside the model file")
    predict.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="torch engine's device")
    export.add_argument("--format", choices=["onnx", "torch-export"], required=True, help="what to write")
    export.add_argument("--output", required=True, metavar="FILE", help="the file to write")


def _add_registry_parsers(sub: argparse._SubParsersAction) -> None:
    champion = sub.add_parser("champion", help="show the champion and its predecessors; `champion rollback` "
                              "makes an earlier model the champion again")
    actions = champion.add_subparsers(dest="champion_command", parser_class=_Parser)
    rollback = actions.add_parser("rollback", help="make the previous champion (or RUN_ID) the champion, in one "
                                  "atomic step, with a history row")
    rollback.add_argument("run_id", nargs="?", default=None, metavar="RUN_ID",
                          help="a run id from registry/models/ (default: the previous champion)")
    rollback.add_argument("--reason", default="manual rollback", help="why, for registry/history.csv")
    for p, default in ((champion, "outputs"), (rollback, argparse.SUPPRESS)):
        p.add_argument("--output-dir", default=default, metavar="DIR",
                       help="the folder `run` writes to, holding registry/ (default: outputs)")
    alerts = sub.add_parser("alerts", help="Prefect automations that report failed, regressed and missing runs "
                            "(needs a Prefect server: PREFECT_API_URL)")
    apply = alerts.add_subparsers(dest="alerts_command", required=True, parser_class=_Parser).add_parser(
        "apply", help="create or update the automations of deployments/automations.yaml (idempotent)")
    target = apply.add_mutually_exclusive_group(required=True)
    target.add_argument("--webhook", metavar="URL", help="where messages go: an http(s) URL (JSON POST), a Slack "
                        "incoming-webhook URL or an Apprise URL (mailto://...); saved as the notification block "
                        "slack-webhook/BLOCK_NAME")
    target.add_argument("--block", metavar="TYPE/NAME", help="an existing notification block instead "
                        "(prefect block ls), e.g. sendgrid-email/oncall")
    apply.add_argument("--block-name", default="cifar-alerts", metavar="NAME",
                       help="the name --webhook saves its block under (default: cifar-alerts)")


def _add_gc_parser(sub: argparse._SubParsersAction) -> None:
    gc = sub.add_parser("gc", help="remove old runs, cache entries, Prefect results and models that the retention "
                        "policy no longer keeps (the champion, its predecessors and what kept or running runs "
                        "need always stay)")
    gc.add_argument("--output-dir", default="outputs", metavar="DIR", help="the folder `run` writes to (default: "
                    "outputs)")
    gc.add_argument("--keep-runs", type=int, default=10, metavar="N", help="keep the N latest completed runs "
                    "(default 10; at least 1)")
    gc.add_argument("--keep-days", type=float, default=7.0, metavar="D", help="also keep every run newer than D "
                    "days (default 7; 0: none by age)")
    gc.add_argument("--keep-champions", type=int, default=5, metavar="K", help="keep the champion and its K "
                    "predecessors in registry/models/ for rollback (default 5)")
    gc.add_argument("--keep-latest-per-deployment", action=argparse.BooleanOptionalAction, default=True,
                    help="also keep the latest completed run of each deployment (default: yes)")
    gc.add_argument("--grace-minutes", type=float, default=15.0, metavar="M", help="never remove anything "
                    "younger than M minutes (default 15)")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")


def gc_command(ns: argparse.Namespace) -> int:
    from cifar_pipeline.retention import Policy, RetentionBusy, collect

    if ns.keep_runs < 1:
        return _fail(f"--keep-runs must be at least 1, got {ns.keep_runs} (the latest run is what a rerun "
                     "of the nightly reuses)", 2)
    for flag, value in (("--keep-days", ns.keep_days), ("--keep-champions", ns.keep_champions),
                        ("--grace-minutes", ns.grace_minutes)):
        if value < 0:
            return _fail(f"{flag} must be 0 or more, got {value:g}", 2)
    if not os.path.isdir(ns.output_dir):
        return _fail(f"--output-dir {ns.output_dir} is not a folder", 2)
    policy = Policy(keep_runs=ns.keep_runs, keep_days=ns.keep_days, keep_champions=ns.keep_champions,
                    keep_latest_per_deployment=ns.keep_latest_per_deployment, grace_s=60 * ns.grace_minutes)
    try:
        result = collect(ns.output_dir, policy, dry_run=ns.dry_run, log=lambda line: print(line, file=sys.stderr))
    except RetentionBusy as exc:
        return _fail(str(exc), 1)
    verb = "would free" if ns.dry_run else "freed"
    print(f"gc: {len(result['removed'])} path(s), {verb} {result['freed_bytes'] / 1e6:.1f} MB; kept {result['kept']}",
          file=sys.stderr)
    print(json.dumps(result))
    return 0


def champion_command(ns: argparse.Namespace) -> int:
    from cifar_pipeline.registry.rollback import lineage, registry_folder, rollback

    folder = registry_folder(ns.output_dir)
    if ns.champion_command == "rollback":
        try:
            result = rollback(folder, ns.run_id, ns.reason)
        except ConfigError as exc:
            return _fail(str(exc), 2)
        except PipelineError as exc:  # a damaged model file: the champion stays
            return _fail(_one_line(exc), 1)
        print(f"champion: {result.champion.run_id} ({result.champion.accuracy:.2%}), was "
              f"{result.previous.run_id} ({result.previous.accuracy:.2%}); {result.reason}", file=sys.stderr)
        print(json.dumps({"status": result.status, "champion": result.champion.run_id,
                          "previous": result.previous.run_id, "model_file": result.champion.model_file,
                          "reason": result.reason, "history": result.history_file}))
        return 0
    current = lineage(folder)
    print(_champion_table(current), file=sys.stderr)
    brief = ["run_id", "accuracy", "test_images", "promoted_at", "model_file"]
    print(json.dumps({
        "status": "ok", "registry": str(folder),
        "champion": current.champion.model_dump(include=set(brief)) if current.champion else None,
        "predecessors": [r.model_dump(include=set(brief)) for r in current.predecessors],
        "registered": [r.run_id for r in current.registered],
    }))
    return 0


def _champion_table(current) -> str:
    from tabulate import tabulate

    if current.champion is None:
        return "no champion yet: `cifar-pipeline run` promotes the first model"
    roles = {current.champion.run_id: "champion"}
    roles.update({r.run_id: f"previous {i}" if i > 1 else "previous" for i, r in enumerate(current.predecessors, 1)})
    rows = [[roles.get(r.run_id, ""), r.run_id, f"{r.accuracy:.2%}", r.test_images, r.config.get("preset"),
             r.config.get("model"), r.promoted_at] for r in reversed(current.registered)]
    return tabulate(rows, headers=["role", "run id", "accuracy", "test images", "preset", "model", "promoted at"])


def alerts_command(ns: argparse.Namespace) -> int:
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return _fail("alerts go to a Prefect server: set PREFECT_API_URL=http://SERVER:4200/api", 2)
    from deployments.alerts import apply

    try:
        result = apply(webhook=ns.webhook, block=ns.block, block_name=ns.block_name)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    for a in result["automations"]:
        print(f"{a['action']:8} {a['name']} ({a['id']})", file=sys.stderr)
    print(f"messages go through the block {result['block']}; run links need PREFECT_UI_URL on the server",
          file=sys.stderr)
    print(json.dumps({"status": "applied", **result}))
    return 0


def predict_command(ns: argparse.Namespace) -> int:
    from cifar_pipeline.registry.predict import load_predictor, resolve_model
    from cifar_pipeline.registry.prediction_files import collect_images, run_predictions

    try:
        if ns.top_k < 1 or ns.batch_size < 1:
            raise ConfigError("--top-k and --batch-size must be at least 1")
        model_file = resolve_model(ns.output_dir, ns.model, ns.engine)
        paths = collect_images(ns.paths)
        predictor = load_predictor(model_file, ns.device)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    print(f"predict: {len(paths)} images with {model_file} ({predictor.info.engine})", file=sys.stderr)
    summary = run_predictions(predictor, paths, output=ns.output, fmt=ns.format, top_k=ns.top_k,
                              batch_size=ns.batch_size)
    if ns.output or ns.format == "csv":
        # CSV on stdout stays plain CSV; the summary line then goes to stderr.
        print(json.dumps(summary.model_dump()), file=sys.stdout if ns.output else sys.stderr)
    return 1 if summary.failed else 0


def export_command(ns: argparse.Namespace) -> int:
    from cifar_pipeline.registry.export import export_model_file
    from cifar_pipeline.registry.predict import resolve_model

    try:
        model_file = resolve_model(ns.output_dir, ns.model)
        if model_file.suffix == ".onnx":
            raise ConfigError("--model must be a PyTorch model file (model.pt), not an ONNX file")
    except ConfigError as exc:
        return _fail(str(exc), 2)
    try:
        result = export_model_file(model_file, ns.output, ns.format)
    except ConfigError as exc:  # not a readable model file
        return _fail(str(exc), 2)
    except PipelineError as exc:
        return _fail(_one_line(exc), 1)
    print(json.dumps({"status": "completed", **result}))
    return 0


def _add_sweep_options(parser: argparse.ArgumentParser) -> None:
    from cifar_pipeline.sweep.options import SweepOptions

    for name, field in SweepOptions.model_fields.items():
        kind = int if field.annotation is int else str
        parser.add_argument("--" + name.replace("_", "-"), dest=f"sweep_{name}", type=kind, default=field.default,
                            metavar="N" if kind is int else name.upper(), help=field.description)


def sweep(ns: argparse.Namespace, config: PipelineConfig) -> int:
    from cifar_pipeline.sweep.space import load_space
    from cifar_pipeline.sweep.study import SweepOptions, sweep_config

    try:
        options = SweepOptions(**{k.removeprefix("sweep_"): v for k, v in vars(ns).items() if k.startswith("sweep_")})
        load_space(options.space, sweep_config(config.resolved()))  # a bad space stops here, before any trial
    except ValidationError as exc:
        return _fail(describe_validation_error(exc).replace("configuration", "sweep option"), 2)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    from flows.sweep import cifar_sweep

    code, summary = _run_flow(cifar_sweep, config=config, **options.model_dump())
    if summary is None:
        return code
    print(json.dumps(summary.model_dump()))
    return 0


def config_from_args(ns: argparse.Namespace) -> PipelineConfig:
    values = {k: v for k, v in vars(ns).items() if k in PipelineConfig.model_fields and v is not None}
    requested = validate_config(values)
    check_run(requested.resolved())  # the merged values, the folders and the sources, before anything starts
    return requested


def _fail(message: str, code: int, **extra: Any) -> int:
    print(f"error: {message}", file=sys.stderr)
    print(json.dumps({"status": "failed", "error": message, **extra}))
    return code


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {text}"


def _run_flow(flow_fn: Any, **params: Any) -> tuple[int, Any]:
    """(0, the flow's result) or (exit code 1, None) after printing the failure's one-line reason."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    # Heartbeats are for runs a worker or `serve` starts: a run started here carries no deployment
    # tag, so the zombie check of deployments/recovery.yaml never reads its heartbeats, and the engine
    # joins its heartbeat thread, which sleeps in 1 s steps, after the flow ends: up to a second on
    # every run. PREFECT_FLOWS_HEARTBEAT_FREQUENCY, where set, still turns them on.
    with temporary_settings(set_defaults={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        state = flow_fn(**params, return_state=True)
    if state.is_completed():
        return 0, state.result()
    outcome = state.result(raise_on_failure=False)
    reason = _one_line(outcome) if isinstance(outcome, BaseException) else state.message or state.name
    return _fail(reason, 1, state=state.name), None


def _find_local_server() -> None:
    from flows.local_server import use_background_server

    if url := use_background_server():
        print(f"using the local Prefect server at {url} (started with `prefect server start --background`; "
              "`prefect server stop` ends it)", file=sys.stderr)


def run(config: PipelineConfig) -> int:
    from flows.pipeline import cifar_pipeline

    code, summary = _run_flow(cifar_pipeline, config=config)
    if summary is not None:
        print(json.dumps({"status": "completed", **summary.model_dump()}))
    return code


def run_doctor(config: PipelineConfig) -> int:
    from flows.doctor import doctor

    code, summary = _run_flow(doctor, config=config)
    if summary is None:
        return code
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


def console() -> NoReturn:
    """The `cifar-pipeline` command (and `python -m flows`)."""
    exit_quickly(main())


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.command == "presets":
        for name, preset in PRESETS.items():
            print(f"{name:8} {preset.get('description', '')}")
        return 0
    if ns.command in ("run", "doctor", "sweep", "serve"):
        _find_local_server()
    if ns.command == "serve":
        return serve(ns.limit)
    if ns.command == "predict":
        return predict_command(ns)
    if ns.command == "export":
        return export_command(ns)
    if ns.command == "champion":
        return champion_command(ns)
    if ns.command == "gc":
        return gc_command(ns)
    if ns.command == "alerts":
        return alerts_command(ns)
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
        if ns.command == "sweep":
            return sweep(ns, config)
        return run_doctor(config) if ns.command == "doctor" else run(config)
    except KeyboardInterrupt:
        return _fail("interrupted; finished epochs are checkpointed and the next run resumes them", 130)
    except PipelineError as exc:
        return _fail(_one_line(exc), 1)


if __name__ == "__main__":
    sys.exit(main())
