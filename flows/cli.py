"""The `trainflow` command line: the flow commands (run, tune, compare, ensemble, transfer, ui). The entry
point is deployments/cli.py, which adds the operations commands (up, down, status, serve) to this parser.

Exit codes: 0 done, 1 failed while running, 2 bad input (one readable message; --debug shows the
traceback). With --json, stdout carries exactly one JSON object; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable

from flows import runners
from trainlib.errors import TrainflowError


@contextlib.contextmanager
def _stdout_reserved():
    """Send everything written to stdout (by libraries and subprocesses too) to stderr; yield a
    writer for the real stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with os.fdopen(os.dup(saved), "w") as real, contextlib.redirect_stdout(sys.stderr):
            yield real
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _backends() -> str:
    from flows import local_api
    from trainlib.redact import redact

    temporary = local_api.current()
    api = f"temporary API {temporary.url}" if temporary else os.environ.get("PREFECT_API_URL") or "ephemeral API"
    return redact(f"Prefect: {api}; MLflow: {os.environ.get('MLFLOW_TRACKING_URI')}")


def _watched(progress, listeners: list, start):
    """Run `start()` with `progress` (a live bar) listening to the tasks of this process."""
    with progress:
        listeners.append(progress)
        try:
            return start()
        finally:
            listeners.remove(progress)


def _train(args: argparse.Namespace, cfg) -> dict:
    from flows.progress import EpochProgress
    from flows.training import training_pipeline
    from tasks import train as train_task

    return _watched(EpochProgress(cfg.training.epochs, "training"), train_task.LISTENERS,
                    lambda: training_pipeline(cfg, refresh=args.refresh))


def _fan_out(flow, total: int | None, what: str, *params, **options) -> dict:
    from flows import common
    from flows.progress import RunProgress

    return _watched(RunProgress(total, what), common.LISTENERS, lambda: flow(*params, **options))


def _print_run(s: dict) -> None:
    from flows.progress import console

    m, gate = s["metrics"], s["gate"]
    console.print(f"[bold green]done[/]: test accuracy {m['test_accuracy']:.4f}, macro F1 {m['test_f1']:.4f}, "
                  f"test loss {m['test_loss']:.4f}" + (f" (best epoch {m['best_epoch']}, stopped at "
                                                       f"{m['stopped_epoch']})" if "best_epoch" in m else ""))
    verdict = "[green]passed[/]" if gate["passed"] else "[yellow]failed[/]"
    console.print(f"registered [bold]{s['registered_model']}[/] version {s['version']} as @{s['alias']} "
                  f"(gate {verdict}: {gate['reason']})")
    console.print(f"MLflow run {s['run_id']}: {s['mlflow_url']}")
    if not os.environ.get("MLFLOW_TRACKING_URI", "").startswith("http"):
        console.print("browse it with: [bold].venv/bin/trainflow ui[/]")


def _print_study(s: dict) -> None:
    from flows.progress import console

    best, t = s["best_trial"], s["trials"]
    params = ", ".join(f"{k}={v}" for k, v in best["params"].items())
    console.print(f"[bold]{t['complete']} complete, {t['pruned']} pruned, {t['fail']} failed trials[/]; "
                  f"best trial {best['number']} ({best['value']:.4f}): {params}")
    _print_run(s)


def _print_comparison(s: dict) -> None:
    from rich.table import Table

    from flows.progress import console

    table = Table("variant", "val acc", "val loss", "test acc", "epochs", "seconds", "state",
                  title="best epoch of each variant")
    table.columns[0].overflow = "fold"
    for v in s["variants"]:
        table.add_row(v["variant"], *(str(v[k]) for k in ("best_val_accuracy", "best_val_loss", "test_accuracy",
                                                          "epochs", "seconds", "state")))
    console.print(table)
    console.print(f"best (on validation): [bold]{s['best_variant']}[/]")
    _print_run(s)


def _execute(args: argparse.Namespace, title: str, start, show) -> int:
    """Run `start()`; print its summary with `show`, or as the one JSON object on stdout with --json."""
    import flows.common  # noqa: F401  the heavy imports (torch, Prefect, MLflow), while a temporary API starts
    from flows import local_api
    from flows.progress import console
    from tasks.settings import one_message_for_input_errors

    one_message_for_input_errors()
    local_api.ready()
    console.print(f"[bold]{title}[/] [dim]({_backends()})[/]")
    if not args.json:
        show(start())
        return 0
    with _stdout_reserved() as stdout:
        stdout.write(json.dumps(start(), default=str) + "\n")
    return 0


def _fresh_weights(cfg, command: str) -> None:
    """Refuse a set transfer.source before anything starts (the flows refuse it too)."""
    from flows.common import no_transfer

    no_transfer(cfg, command)


def _run(args: argparse.Namespace) -> int:
    from trainlib.config import load_config

    cfg = load_config(args.config, args.set or [])  # bad config fails here, before anything starts
    _fresh_weights(cfg, "run")
    title = f"{cfg.name}: {cfg.model.name} / {cfg.optimizer.name} / {cfg.schedule.name} on {cfg.data.source}"
    return _execute(args, title, lambda: _train(args, cfg), _print_run)


def _tune(args: argparse.Namespace) -> int:
    from trainlib.config import load_config
    from trainlib.tuning import check_space, load_search

    cfg, search = load_config(args.config, args.set or []), load_search(args.search)
    _fresh_weights(cfg, "tune")
    check_space(cfg, search)
    runner = runners.check(args.runner)

    def start():
        from flows.tuning import tuning_flow

        return _fan_out(tuning_flow, search.budget(), f"{search.strategy} search", cfg, search, refresh=args.refresh,
                        runner=runner)

    return _execute(args, f"{cfg.name}: {search.strategy} search over {', '.join(search.space)}", start,
                    _print_study)


def _compare(args: argparse.Namespace) -> int:
    from trainlib.config import load_config, override
    from trainlib.overrides import parse_vary
    from trainlib.tuning import check_keys, needs_validation, variants

    cfg = load_config(args.config, args.set or [])
    vary = dict(parse_vary(item) for item in args.vary)
    _fresh_weights(cfg, "compare")
    needs_validation(cfg, "compare")
    check_keys(cfg, vary, "--vary")
    combos = variants(vary)
    for combo in combos:
        override(cfg, combo)
    runner = runners.check(args.runner)

    def start():
        from flows.compare import compare_flow

        return _fan_out(compare_flow, len(combos), "variants", cfg, vary, max_parallel=args.max_parallel,
                        refresh=args.refresh, runner=runner)

    return _execute(args, f"{cfg.name}: {len(combos)} variants of {', '.join(vary)}", start, _print_comparison)


def _print_ensemble(s: dict) -> None:
    from rich.table import Table

    from flows.progress import console

    table = Table("member", "weight", "val acc", "test acc", "epochs", "seconds", "state",
                  title=f"{s['method']}: members and ensemble")
    table.columns[0].overflow = "fold"
    for r in s["members"]:
        weight = f"{r['weight']:.3f}" if isinstance(r["weight"], float) else "-"
        table.add_row(r["member"], weight, *(str(r[k]) for k in ("val_accuracy", "test_accuracy", "epochs",
                                                                  "seconds", "state")))
    m = s["metrics"]
    table.add_row("[bold]ensemble[/]", "", f"{m.get('val_accuracy', float('nan')):.4f}",
                  f"[bold]{m['test_accuracy']:.4f}[/]", "", "", "")
    console.print(table)
    console.print(f"best member on test: {s['best_member']} ({m['best_member_test_accuracy']:.4f})")
    _print_run(s)


def _ensemble(args: argparse.Namespace) -> int:
    from trainlib.config import load_config, validate
    from trainlib.ensemble import EnsembleConfig, parse_member, plan
    from trainlib.overrides import read_yaml

    cfg = load_config(args.config, args.set or [])
    raw = read_yaml(args.ensemble, "ensemble file") if args.ensemble else {}
    flags = {"method": args.method, "members": args.members, "vote": args.vote, "meta": args.meta,
             "folds": args.folds, "max_parallel": args.max_parallel,
             "configs": [parse_member(m) for m in args.member] if args.member else None}
    raw |= {k: v for k, v in flags.items() if v is not None}
    if "method" not in raw:
        raise TrainflowError("ensemble: give --method bagging|boosting|stacking|voting (or an --ensemble file)")
    ensemble = validate(raw, EnsembleConfig, "ensemble")
    _fresh_weights(cfg, "ensemble")
    plan(cfg, ensemble)  # every member's config is checked before anything starts
    runner = runners.check(args.runner)

    def start():
        from flows.ensemble import ensemble_pipeline

        return _fan_out(ensemble_pipeline, ensemble.size, f"{ensemble.method} members", cfg, ensemble,
                        refresh=args.refresh, runner=runner)

    return _execute(args, f"{cfg.name}: {ensemble.method} ensemble of {ensemble.size}", start, _print_ensemble)


def _print_transfer(s: dict) -> None:
    from flows.progress import console

    t = s["transfer"]
    console.print(f"{t['strategy']} from [bold]{t['source']}[/] ({t['weights_copied']} weight tensors reused)")
    _print_run(s)


def _print_demo(s: dict) -> None:
    from rich.table import Table

    from flows.progress import console

    table = Table("run", "test acc", "best epoch", "epochs to scratch's best val acc", "train s",
                  title=f"digits 0-4 -> digits 5-9 with {s['shots']} labeled examples per class")
    for r in s["runs"]:
        table.add_row(*(str(r[k]) if r[k] is not None else "-" for k in
                        ("run", "test_accuracy", "best_epoch", "epochs_to_scratch_best_val", "train_seconds")))
    console.print(table)
    _print_transfer(s)


def _transfer(args: argparse.Namespace) -> int:
    from trainlib.config import load_config, override

    cfg = load_config(args.config, args.set or [])
    if args.demo:
        if args.source or args.strategy:
            raise TrainflowError("transfer --demo: it trains its own source and runs every strategy; leave out "
                                 "--source and --strategy")
        shots = args.shots or 10

        def demo():
            from flows.transfer import transfer_demo

            return transfer_demo(cfg, shots, refresh=args.refresh)

        return _execute(args, f"transfer demo: digits 0-4 -> 5-9, {shots} shots per class", demo, _print_demo)
    if not args.source:
        raise TrainflowError("transfer: give --source models:/name@alias | FILE | torchvision:resnet18 (or --demo)")
    changes = {"transfer.source": args.source} | ({"transfer.strategy": args.strategy} if args.strategy else {})
    cfg = override(cfg, changes | ({"split.shots": args.shots} if args.shots else {}))

    def start():
        from flows.progress import EpochProgress
        from flows.transfer import transfer_pipeline
        from tasks import train as train_task

        return _watched(EpochProgress(cfg.training.epochs, cfg.transfer.strategy), train_task.LISTENERS,
                        lambda: transfer_pipeline(cfg, refresh=args.refresh))

    return _execute(args, f"{cfg.name}: {cfg.transfer.strategy} from {args.source}", start, _print_transfer)


def _ui(args: argparse.Namespace) -> int:
    uri = os.environ["MLFLOW_TRACKING_URI"]
    if uri.startswith(("http://", "https://")):
        print(f"runs are tracked on the MLflow server at {uri}: open it in a browser")
        return 0
    print(f"MLflow UI for {uri} on http://{args.host}:{args.port} (Ctrl+C stops it)", file=sys.stderr)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1"]
    with contextlib.suppress(KeyboardInterrupt):
        return subprocess.run(cmd).returncode
    return 0


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def parser(extend: Callable[[argparse._SubParsersAction], None] | None = None) -> argparse.ArgumentParser:
    """The flow commands; `extend(subparsers)` adds more (deployments/cli.py: the operations commands)."""
    p = argparse.ArgumentParser(prog="trainflow", description="Deep-learning training techniques as a pipeline.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and Prefect's info logs")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train one config through the pipeline (default: cnn on the embedded digits)")
    tune = sub.add_parser("tune", help="search hyperparameters (grid, random, bayesian), retrain and register the best")
    tune.add_argument("--search", required=True, help="search file YAML (strategy, metric, budget, space)")
    compare = sub.add_parser("compare", help="train variants side by side on the same split and seed")
    compare.add_argument("--vary", action="append", required=True, metavar="KEY=V1,V2",
                         help="a config key and its values (repeat for a full grid of combinations)")
    compare.add_argument("--max-parallel", type=_positive, default=2, help="variants trained at once (default 2)")
    ens = sub.add_parser("ensemble", help="combine several networks into one registered model")
    ens.add_argument("--method", help="bagging | boosting | stacking | voting")
    ens.add_argument("--members", type=_positive, help="bagging: members (default 5); boosting: most rounds")
    ens.add_argument("--member", action="append", metavar="SPEC",
                     help="stacking, voting (repeat per member): 'key=value ...' overrides of the base config, a "
                          "config YAML, or (voting) a registered model models:/name@alias")
    ens.add_argument("--vote", help="voting: soft (average probabilities, default) | hard (count votes)")
    ens.add_argument("--meta", help="stacking: oof (meta-learner on k-fold predictions, default) | val")
    ens.add_argument("--folds", type=_positive, help="stacking with --meta oof: k (default 5)")
    ens.add_argument("--max-parallel", type=_positive, help="members trained at once (default 2)")
    ens.add_argument("--ensemble", metavar="F", help="ensemble file YAML (any of these settings; flags win)")
    for sp in (tune, compare, ens):
        sp.add_argument("--runner", metavar="R", help=f"where trials, variants or members run: {runners.CHOICES} "
                        "(default thread: this process's threads; dask: a local Dask cluster)")
    tr = sub.add_parser("transfer", help="start from a trained model: feature extraction, fine-tuning, or scratch")
    tr.add_argument("--source", help="models:/name@alias (or /version), a trainflow model file, torchvision:resnet18")
    tr.add_argument("--strategy", help="feature_extraction | finetune (default) | scratch")
    tr.add_argument("--shots", type=_positive, help="few-shot: labeled train samples kept per class (demo: 10)")
    tr.add_argument("--demo", action="store_true", help="digits 0-4 -> digits 5-9: transfer against scratch")
    for sp, handler in ((run, _run), (tune, _tune), (compare, _compare), (ens, _ensemble), (tr, _transfer)):
        sp.add_argument("--config", help="pipeline config YAML (tune, compare: the base every trial changes)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
        sp.add_argument("--refresh", action="store_true", help="recompute ingest/split/normalize (skip their cache)")
        sp.add_argument("--json", action="store_true", help="print one JSON summary on stdout, nothing else")
        sp.set_defaults(handler=handler, flow_command=True)
    ui = sub.add_parser("ui", help="the MLflow UI for the local store")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(handler=_ui)
    if extend:
        extend(sub)
    return p


def main(argv: list[str] | None = None, build: Callable[[], argparse.ArgumentParser] = parser) -> int:
    args = build().parse_args(argv)
    if args.debug:
        os.environ["TRAINFLOW_DEBUG"] = "1"
    else:  # the progress bar and the summary say what happens; Prefect's and MLflow's info logs are noise
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    try:
        if getattr(args, "flow_command", False):
            from flows import local_api

            local_api.start()  # now, so that it starts while the config and the libraries load
        return args.handler(args)
    except TrainflowError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # TrainingError and anything else that broke while running
        if args.debug:
            raise
        print(f"failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
