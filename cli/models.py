"""The commands after registration: `predict` (batch scoring with a registered version), `models` (versions and
who holds each alias, with --history every alias move), `card` (a version's model card), `promote` and `rollback`
(move an alias by hand)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from cli import options
from cli.execute import execute

if TYPE_CHECKING:  # the commands import tasks (MLflow) when they run, not when the parser is built
    from tasks.registry.aliases import ModelSummary, Move
    from tasks.summaries import Prediction


def prediction_summary(s: Prediction) -> None:
    """What was scored, how it went against the labels (if any), the drift verdict, where the predictions are."""
    from cli.progress import summary_console as out

    m, drift = s.model, s.drift
    scored = f"[bold green]done[/]: {s.rows} rows scored with {m.describe()}"
    if "accuracy" in s.metrics:
        scored += (f"; against their labels: accuracy {s.metrics['accuracy']:.4f}, macro F1 "
                   f"{s.metrics['f1']:.4f}")
    out.print(scored)
    if s.metrics.get("unknown_labels"):
        out.print(f"[yellow]{int(s.metrics['unknown_labels'])} labels are none of the model's classes[/]: those "
                  "rows are scored, and left out of accuracy and F1")
    if s.errors:
        out.print(f"[yellow]{s.errors} unreadable rows skipped[/]: listed with the reason in {s.errors_file}")
    if drift and drift.drifted:
        out.print(f"[bold red]drift[/]: the inputs differ from the training data's (score {drift.score:.2f} > "
                  f"predict.drift_threshold {drift.threshold:g}); most: {drift.worst()}. The run is tagged drift.")
    elif drift:
        out.print(f"no drift: score {drift.score:.2f} <= predict.drift_threshold {drift.threshold:g}")
    out.print(f"predictions: {s.out}", markup=False, highlight=False)
    out.print(f"MLflow run {s.run_id}: {s.mlflow_url}", markup=False, highlight=False)


def _predict(args: argparse.Namespace) -> int:
    from cli.progress import RowProgress
    from tasks.scoring.plan import plan
    from trainlib.config import PipelineConfig, load_config

    cfg = load_config(args.config, args.set or []) if args.config or args.set else PipelineConfig()
    checked = plan(args.model, args.data, cfg, args.config is not None, args.out)  # bad input fails here

    def start():
        from flows.predict import batch_predict

        # the version resolved above, pinned: an alias that moves meanwhile does not change what is scored
        return batch_predict(checked.what.model.pinned, args.data, cfg if args.config else None, args.out,
                             overrides=_set(args.set), named=args.model)

    what = checked.what
    title = (f"{what.model.describe()} scores {args.data or f'data.source {cfg.data.source}'} "
             f"({checked.rows} rows; {what.spec.describe()})")
    return execute(args, title, start, prediction_summary, RowProgress(checked.rows))


def _set(items: list[str] | None) -> dict:
    from trainlib.overrides import parse_set

    return dict(parse_set(item) for item in items or [])


NONE = "-"  # how the tables show a missing value


def _table(header: list[str], rows: list[list[str]], indent: str = "") -> list[str]:
    """Columns left-aligned two spaces apart; the last column runs free (a reason can be long)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [(indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))).rstrip()
            for row in [header, *rows]]


def models_table(models: list[ModelSummary]) -> str:
    """`trainflow models`: per model a line with its aliases, then a table of its versions, newest first."""
    from tasks.registry.aliases import shown_time

    if not models:
        return "no registered models"
    lines = []
    for model in models:
        held = ", ".join(f"@{alias} -> version {version}" for alias, version in model.aliases) or "no aliases"
        lines.append(f"{model.name}: {held}")
        rows = [[str(v.version), shown_time(v.created),
                 f"{v.test_accuracy:.4f}" if v.test_accuracy is not None else NONE, v.gate or NONE,
                 " ".join(f"@{a}" for a in v.aliases) or NONE, v.source or NONE, v.model or NONE,
                 v.input_shape or NONE, v.run_id or NONE] for v in model.versions]
        lines += (_table(["version", "created (UTC)", "test_accuracy", "gate", "aliases", "source", "model", "input",
                          "run"], rows, "  ")
                  if rows else ["  no versions"])
    return "\n".join(lines)


def history_table(moves: list[Move]) -> str:
    """An alias history (as tasks.registry.aliases.history gives it): one line per move, in the order given."""
    from tasks.registry.aliases import shown_time

    if not moves:
        return "no recorded alias moves"
    rows = [[shown_time(m.when), f"@{m.alias}", str(m.from_version) if m.from_version is not None else NONE,
             str(m.to_version), m.by, m.flow_run or NONE, " ".join(m.reason.split())]  # one line each
            for m in moves]
    return "\n".join(_table(["when (UTC)", "alias", "from", "to", "by", "flow run", "reason"], rows))


def _moved(entry, name: str, alias: str, version: int | None = None) -> str:
    """One line about a move (or none made)."""
    if entry is None:
        return f"@{alias} of {name} already on version {version}: nothing moved"
    before = f"version {entry.from_version}" if entry.from_version is not None else "no version"
    return (f"@{alias} of {name}: {before} -> version {entry.to_version} (recorded in the alias history; a running "
            "serve-model keeps the version it loaded until restarted)")


def _print_move(args: argparse.Namespace, entry, version: int | None = None) -> int:
    import json
    from dataclasses import asdict

    if args.json:
        print(json.dumps(asdict(entry) if entry else {"moved": False, "alias": args.alias, "version": version}))
    else:
        print(_moved(entry, args.name, args.alias, version))
    return 0


def _promote(args: argparse.Namespace) -> int:
    import tasks  # noqa: F401  the project's stores, before MLflow is imported
    from tasks.registry import aliases

    return _print_move(args, aliases.promote(args.name, args.version, args.alias, args.reason, args.force),
                       args.version)


def _rollback(args: argparse.Namespace) -> int:
    import tasks  # noqa: F401
    from tasks.registry import aliases

    return _print_move(args, aliases.rollback(args.name, args.alias, args.reason))


def _models(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    import tasks  # noqa: F401
    from tasks.registry import aliases

    models = aliases.overview(args.name)
    if args.history:
        moves = {m.name: aliases.history(m.name, args.alias) for m in models}
        if args.json:
            print(json.dumps({name: [asdict(m) for m in found] for name, found in moves.items()}))
        else:
            print("\n\n".join(f"{name}\n{history_table(found)}" for name, found in moves.items())
                  or "no registered models")
    elif args.json:
        print(json.dumps([asdict(m) for m in models]))
    else:
        print(models_table(models))
    return 0


def _card(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import tasks  # noqa: F401
    from tasks.registry import card
    from tasks.registry.model_ref import resolve
    from trainlib.errors import ConfigError

    if args.html and not Path(args.html).resolve().parent.is_dir():
        raise ConfigError(f"--html {args.html}: no folder {Path(args.html).resolve().parent} to write it in")
    named = args.model.removeprefix("models:/")
    if named.startswith(("runs:/", "m-")):
        raise ConfigError(f"{args.model}: a model card is made for a registered version; give NAME, NAME@ALIAS or "
                          "NAME/VERSION")
    named = named if ("@" in named or "/" in named) else f"{named}@champion"
    ref = resolve(f"models:/{named}")
    if args.intended_use is not None or args.limitations is not None:
        card.write(ref.name, args.intended_use, args.limitations)
        made = card.publish(ref)  # the version's description says it too
    else:
        made = card.gather(ref)
    if args.html:
        Path(args.html).write_text(made.html(card.reliability_png(made)))
    if args.json:
        print(json.dumps(made.json()))
    elif not args.html:
        print(made.markdown())
    else:
        print(f"{ref.describe()}: model card written to {args.html}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add predict, models, card, promote and rollback to the `trainflow` parser's subcommands."""
    p = sub.add_parser("predict", help="score new data with a registered model: predictions file, drift check, "
                       "an MLflow run")
    p.add_argument("--model", required=True, metavar="URI", help="models:/NAME@ALIAS, models:/NAME/VERSION or "
                   "runs:/RUN_ID (a run's model, registered or not)")
    p.add_argument("--data", metavar="PATH", help="a folder of images (flat, or one folder per class: labelled), "
                   "a CSV or Parquet table (with the target column: labelled), an .npz (with a labels array: labelled) "
                   "or .npy of signals")
    options.add(p, "--config", "--set", config={"help": "score the data section of this config instead of --data (any "
                                                    "training source)"},
                set={"help": "override a config key, e.g. predict.drift_threshold=1 (repeatable)"})
    p.add_argument("--out", metavar="FILE", help="predictions file, .parquet or .csv (default: "
                   ".trainflow/predictions/NAME-vVERSION-TIME.parquet)")
    options.add(p, "--json")
    p.set_defaults(handler=_predict)
    m = sub.add_parser("models", help="registered models: versions, test accuracy, gate, aliases (--history: every "
                       "alias move)")
    m.add_argument("name", nargs="?", metavar="NAME", help="one registered model (default: all)")
    m.add_argument("--history", action="store_true", help="the alias history: when, which alias, from which "
                   "version to which, by what, why")
    options.add(m, "--alias", "--json", alias={"help": "--history of this alias only"},
                json={"help": "print JSON on stdout, nothing else"})
    m.set_defaults(handler=_models)
    c = sub.add_parser("card", help="a registered version's model card: data, changes from the defaults, test "
                       "metrics with intervals, calibration, cost, lineage")
    c.add_argument("model", metavar="NAME[@ALIAS|/VERSION]", help="the version (default NAME@champion)")
    c.add_argument("--html", metavar="FILE", help="write the card as one HTML page (reliability diagram inline)")
    c.add_argument("--intended-use", metavar="TEXT", help="set the card's intended use, for every version of NAME")
    c.add_argument("--limitations", metavar="TEXT", help="set the card's limitations, for every version of NAME")
    options.add(c, "--json", json={"help": "print the card as JSON on stdout, nothing else"})
    c.set_defaults(handler=_card)
    pr = sub.add_parser("promote", help="move an alias to a version by hand (recorded in the alias history)")
    pr.add_argument("name", metavar="NAME", help="registered model")
    pr.add_argument("version", type=options.positive, metavar="VERSION")
    pr.add_argument("--force", action="store_true", help="move it even when the version takes another input (shape, "
                                                         "features, classes) than the alias's holder")
    rb = sub.add_parser("rollback", help="move an alias back to the version that held it before its last move")
    rb.add_argument("name", metavar="NAME", help="registered model")
    for sp, handler in ((pr, _promote), (rb, _rollback)):
        options.add(sp, "--alias", "--reason", "--json", alias={"default": "champion", "help": "the alias to move"},
                    json={"help": "print the move as JSON on stdout"})
        sp.set_defaults(handler=handler)
