"""The `trainflow` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time

from trainlib.errors import TrainflowError, TrainingError


def _run(args: argparse.Namespace) -> int:
    from flows.progress import EpochProgress, console
    from trainlib import recipe
    from trainlib.config import load_config

    cfg = load_config(args.config, args.set or [])
    started = time.perf_counter()
    with EpochProgress(cfg.training.epochs, f"{cfg.model.name} / {cfg.optimizer.name}") as progress:
        outcome = recipe.run(cfg, callbacks=[progress])
    fit, evaluation = outcome.fit, outcome.evaluation
    metrics = evaluation.summary() if evaluation else {}
    if fit.best_epoch:
        metrics["best_val_" + fit.monitor.removeprefix("val_")] = fit.best_value
    metrics.update(best_epoch=fit.best_epoch, stopped_epoch=fit.stopped_epoch)
    summary = {"experiment": cfg.name, "metrics": metrics, "stop_reason": fit.stop_reason,
               "seconds": round(time.perf_counter() - started, 2)}
    if args.json:
        print(json.dumps(summary))
    else:
        console.print(f"[bold green]done[/] in {summary['seconds']} s: " +
                      ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trainflow", description="Deep-learning training techniques as a pipeline.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train one config (default: cnn on the embedded digits)")
    run.add_argument("--config", help="pipeline config YAML")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    run.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    run.set_defaults(handler=_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except TrainflowError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        if args.debug:
            raise
        print(f"training failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
