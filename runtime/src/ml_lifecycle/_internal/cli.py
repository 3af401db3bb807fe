"""Command line: `python -m <package> train | serve | monitor | promote | rollback | predict | export-onnx |
deploy | demo | bench`."""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import sys
from pathlib import Path

from .config import PACKAGE, Settings, SettingsError, get_settings
from .registry.aliases import AliasRecordError
from .storage import StorageError
from .tables import DataError
from .training.lock import TrainingBusy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {PACKAGE}", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="tune, train, score and register a model")
    train.add_argument("--n-trials", type=int, default=None, help="Optuna trials (default: tuning.n_trials)")
    serve = commands.add_parser("serve", help="serve the production model with BentoML")
    serve.add_argument("--host", default=None, help="default: serving.host")
    serve.add_argument("--port", type=int, default=None, help="default: serving.port")
    monitor = commands.add_parser(
        "monitor", help="check the served traffic (or a file) for drift against the training reference"
    )
    monitor.add_argument(
        "--current",
        default=None,
        help="CSV or Parquet batch (default: the request log's last monitoring.window_hours)",
    )
    promote = commands.add_parser(
        "promote", help="put a registered model through the gate against production"
    )
    promote.add_argument("--tag", default=None, help="model tag (default: the newest registered model)")
    promote.add_argument(
        "--accept-schema-change",
        action="store_true",
        help="promote even though the model's feature columns differ from production's (the API changes)",
    )
    promote.add_argument(
        "--allow-rolled-back",
        action="store_true",
        help="promote a model that a rollback took out of production (the gate refuses it on its own)",
    )
    commands.add_parser("rollback", help="make the previous production model production again")
    predict = commands.add_parser("predict", help="score a CSV or Parquet file with the production model")
    predict.add_argument("--input", required=True, help="CSV or Parquet file with the feature columns")
    predict.add_argument("--output", required=True, help="CSV or Parquet file to write (replaced atomically)")
    predict.add_argument("--tag", default=None, help="model tag (default: the production model)")
    export = commands.add_parser(
        "export-onnx", help="export the production pipeline to ONNX, checked against scikit-learn"
    )
    export.add_argument(
        "--output", default=None, help="ONNX file (default: onnx.output_dir/<model>-<version>.onnx)"
    )
    export.add_argument("--tag", default=None, help="model tag (default: the production model)")
    deploy = commands.add_parser(
        "deploy",
        help="build the production model's Bento and (re)start local serving, rolling back on failure",
    )
    deploy.add_argument("--stop", action="store_true", help="only stop the server the last deploy started")
    commands.add_parser("demo", help="run the whole lifecycle once on a local Prefect server")
    bench = commands.add_parser(
        "bench", help="measure the production model's serving throughput and latency under load (needs hey)"
    )
    from .bench.serving import add_arguments as bench_arguments

    bench_arguments(bench)
    return parser


def serve(host: str | None, port: int | None) -> int:
    """Run `bentoml serve` in this process (BentoML's own command line, so its signals and exit codes):
    the settings, the project and BentoML are imported once, not again in a second interpreter before
    the worker starts (docs/decisions.md#service-start-up)."""
    from bentoml_cli.cli import cli as bentoml_cli

    from .registry.aliases import production_tag

    settings = get_settings()
    host, port = host or settings.serving.host, port or settings.serving.port
    print(f"Serving production model {production_tag(settings)} on http://{host}:{port}", flush=True)
    arguments = ["serve", f"{PACKAGE}.service:Predictor"]
    arguments += ["--host", host, "--port", str(port), "--working-dir", str(settings.root)]
    return bentoml_cli.main(args=arguments, prog_name="bentoml")


def export_onnx(output: str | None, tag: str | None) -> int:
    from .serving import onnx_export

    try:
        result = onnx_export.export(get_settings(), tag=tag, output=output)
    except (onnx_export.NotConvertible, onnx_export.NotEquivalent) as exc:
        print(f"error: cannot export to ONNX: {exc}", file=sys.stderr)
        return 1
    print(
        f"Exported {result.tag} to {result.path} ({result.size_bytes} bytes); ONNX Runtime agrees with "
        f"scikit-learn on {result.rows_checked} rows ({result.checked_on}), largest difference "
        f"{result.max_difference:.2e} (tolerance {result.tolerance})"
    )
    return 0


def deploy(stop_only: bool) -> int:
    from .serving import bento

    if stop_only:
        stopped = bento.stop(get_settings())
        print(f"stopped {stopped.bento} (pid {stopped.pid})" if stopped else "nothing was serving")
        return 0
    from .flows.deploy import deploy as deploy_flow

    try:
        deploy_flow()
    except bento.DeployError as exc:
        print(f"error: deploy failed: {exc}", file=sys.stderr)
        return 1
    return 0


def keep_prefect_state_in_the_project(settings: Settings) -> None:
    """Prefect's files for runs started here (the temporary server's database when no server is set, results,
    memos) go to .state/prefect, not ~/.prefect, which every project would share. The user's Prefect profiles
    (the server they chose) are still read from their usual place; an exported PREFECT_HOME wins."""
    if os.environ.get("PREFECT_HOME"):
        return
    os.environ.setdefault("PREFECT_PROFILES_PATH", str(Path.home() / ".prefect" / "profiles.toml"))
    home = settings.state_dir / "prefect"
    home.mkdir(parents=True, exist_ok=True)  # Prefect creates the folder, not its parents
    os.environ["PREFECT_HOME"] = str(home)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # At exit, after the handlers registered later (Prefect stopping its temporary server): the interpreter's
    # last garbage collections would walk every object the run made; frozen, they are skipped. Every exit
    # handler and flush still runs (docs/decisions.md#train-start-up).
    atexit.register(gc.freeze)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    try:
        # Before any flow starts: a bad setting is one line per problem, not a failed run.
        keep_prefect_state_in_the_project(get_settings())
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        if args.command == "train":
            from .flows.train import train
            from .flows.workers import WorkersUnavailable

            try:
                train(n_trials=args.n_trials, reason="cli")
            except WorkersUnavailable as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        elif args.command == "serve":
            return serve(args.host, args.port)
        elif args.command == "monitor":
            from .flows.monitor import SignalLost, monitor

            try:
                verdict = monitor(current_path=args.current)
            except SignalLost as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            covered = ""
            if window := verdict["window"]:  # None for a file; the flow's log warns when it is short
                covered = f" covered_hours={window['covered_hours']:g}/{window['requested_hours']:g}"
            print(
                f"rows={verdict['n_current']} drift_share={verdict['drift_share']:.3f}"
                f" drifted={verdict['drifted']} event={verdict['event_emitted']} report={verdict['report']}"
                f" skipped_lines={verdict['skipped_lines']}{covered}"
            )
        elif args.command == "promote":
            from .flows.promote import promote_model

            result = promote_model(
                tag=args.tag,
                accept_schema_change=args.accept_schema_change,
                allow_rolled_back=args.allow_rolled_back,
            )
            return 0 if result["passed"] else 1
        elif args.command == "rollback":
            from .flows.promote import rollback_model

            print(f"production is now {rollback_model()}")
        elif args.command == "predict":
            from .flows.predict import predict

            predict(input_path=args.input, output_path=args.output, tag=args.tag)
        elif args.command == "export-onnx":
            return export_onnx(args.output, args.tag)
        elif args.command == "deploy":
            return deploy(args.stop)
        elif args.command == "demo":
            from .local.demo import run_demo

            run_demo()
        elif args.command == "bench":
            from .bench.serving import bench

            return bench(args)
    except (DataError, LookupError, TrainingBusy, StorageError, AliasRecordError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
