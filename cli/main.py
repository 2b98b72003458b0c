"""The `trainflow` command line: its parser, `main` and exit codes. Each group of commands is a module of this
package (training.py: the flow commands; models.py: after registration; ops.py: the stack, serving, the UI and
the config); options.py defines each option they share once; execute.py runs a flow command under its progress and
prints its summary (summaries.py) or its JSON.

Exit codes: 0 done, 1 failed while running, 2 bad input (one readable message; --debug shows the
traceback). With --json, stdout carries exactly one JSON object; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys

from cli import models, ops, training
from flows import processes, warm
from tasks import settings
from trainlib.errors import TrainflowError

EXAMPLES = {  # two per command, shown by --help
    "run": ["trainflow run --set training.epochs=5 --set optimizer.lr=0.01",
            "trainflow run --config configs/tabular-csv.yaml --json"],
    "tune": ["trainflow tune --search configs/search/bayesian.yaml",
             "trainflow tune --search configs/search/grid.yaml --set training.epochs=10"],
    "compare": ["trainflow compare --vary optimizer.name=sgd,adam,rmsprop",
                "trainflow compare --config configs/regimes/few-labels.yaml --vary model.dropout=0,0.3 "
                "--repeats auto:12"],
    "lr-find": ["trainflow lr-find", "trainflow lr-find --set optimizer.name=sgd --updates 300 --json"],
    "study": ["trainflow study --quick",
              "trainflow study --only dropout,l1 --repeats 5 --json"],
    "variance": ["trainflow variance --set model.name=mlp --repeats 5",
                 "trainflow variance --config configs/regimes/few-labels.yaml --sources split,init --json"],
    "ensemble": ["trainflow ensemble --method bagging --members 5",
                 "trainflow ensemble --method stacking --member model.name=mlp --member model.name=cnn"],
    "transfer": ["trainflow transfer --demo",
                 "trainflow transfer --source models:/digits-cnn@champion --strategy finetune --shots 10"],
    "predict": ["trainflow predict --model models:/digits-imagefolder@champion --data configs/data/digits-png/7",
                "trainflow predict --model models:/iris-mlp/1 --data configs/data/iris.csv --out scored.csv --json"],
    "rerun": ["trainflow rerun models:/digits-cnn@champion",
              "trainflow rerun 0123456789abcdef0123456789abcdef --set training.threads=1 --json"],
    "models": ["trainflow models", "trainflow models digits-cnn --history"],
    "card": ["trainflow card digits-cnn/2 --html card.html",
             "trainflow card digits-cnn@champion --json"],
    "promote": ["trainflow promote digits-cnn 3", "trainflow promote digits-cnn 4 --alias staging --reason trial"],
    "rollback": ["trainflow rollback digits-cnn", "trainflow rollback digits-cnn --alias staging --reason drift"],
    "config": ["trainflow config --config configs/augmentation.yaml --set augment.erasing=0.25",
               "trainflow config --keys"],
    "ui": ["trainflow ui", "trainflow ui --port 5050"],
    "cache": ["trainflow cache --older-than 30", "trainflow cache --prune --older-than 30"],
    "up": ["trainflow up", "trainflow up --postgres postgresql://trainer:secret@127.0.0.1:5432/trainflow"],
    "down": ["trainflow down", "trainflow down && trainflow status"],
    "status": ["trainflow status", "trainflow status && trainflow ui"],
    "serve": ["trainflow serve", "trainflow serve --only training-pipeline/nightly batch-predict/nightly"],
    "serve-model": ["trainflow serve-model models:/digits-cnn@champion",
                    "trainflow serve-model models:/digits-cnn/2 --port 5050"],
}
CONFIG_HINT = "Config keys, their defaults and meanings: trainflow config --keys"


class _Parser(argparse.ArgumentParser):
    """A command line argparse cannot read is bad input like any other: one `error:` line, exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (`{self.prog} --help` shows the options)\n")


class _Help(argparse.RawDescriptionHelpFormatter):
    """Keep the examples' lines as written; show an option's default where it has one its help does not say."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="trainflow", description="Deep-learning training techniques as a pipeline.",
                epilog="Run `trainflow COMMAND --help` for a command's options and examples.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and Prefect's info logs")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    training.add_commands(sub)
    models.add_commands(sub)
    ops.add_commands(sub)
    for name, command in sub.choices.items():
        command.formatter_class = _Help
        hint = f"\n\n{CONFIG_HINT}" if "--set" in command.format_usage() else ""
        command.epilog = "examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES[name]) + hint
    return p


def overview(p: argparse.ArgumentParser) -> str:
    """`trainflow` alone: each command with its one line of help."""
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    width = max(len(a.dest) for a in sub._choices_actions)
    lines = [f"  {a.dest:{width}}  {a.help}" for a in sub._choices_actions]
    return "\n".join(["usage: trainflow [--debug] COMMAND [options]", "", "commands:", *lines, "",
                      "`trainflow COMMAND --help` shows a command's options and examples."])


def environment(argv: list[str]) -> dict[str, str]:
    """The variables a command sets before anything loads: with --debug (only ever first), tracebacks and the
    libraries' info logs; else Prefect's and MLflow's info logs off (the progress bar and the summary say what
    happens); what the user set stays. A warm process's fork applies them before its libraries read their settings
    again (flows/warm_process.py)."""
    wanted = ({"TRAINFLOW_DEBUG": "1"} if argv[:1] == ["--debug"] else
              {"PREFECT_LOGGING_LEVEL": "WARNING", "MLFLOW_LOGGING_LEVEL": "WARNING"})
    # MLflow prints "View run ... at: URL" on stdout when a run ends on a server; the summary gives the URL
    wanted["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    return {k: v if k == "TRAINFLOW_DEBUG" else os.environ.get(k, v) for k, v in wanted.items()}


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command is None:
        print(overview(p))
        return 0
    os.environ.update(environment(["--debug"] if args.debug else []))
    try:
        return args.handler(args)
    except TrainflowError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # TrainingError and anything else that broke while running
        if args.debug:
            raise
        gone = settings.unreachable(exc) or settings.disk_full(exc)
        print(f"failed: {gone or f'{type(exc).__name__}: {exc}'}", file=sys.stderr)
        if gone and "Prefect" in gone:  # now: Prefect would try to send every event it queued, seconds each
            sys.stderr.flush()
            os._exit(1)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


_exit_code: int | None = None


def _leave() -> None:
    """The last exit handler (registered first): end the process now. The interpreter would otherwise
    finish with a garbage collection over every object torch, Prefect and MLflow created, 2-3 s here for
    nothing. Threads were joined and every other exit handler (stopping a temporary API, Prefect's
    flushes) has run; only the logs and streams remain to flush."""
    if _exit_code is None:  # main did not return: let the interpreter shut down as usual
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_code)


def run(argv: list[str] | None = None) -> int:
    """Run one command in this process -> its exit code; the process ends with it when its exit handlers run. Both
    the console script and a warm process's fork (flows/warm_process.py) run commands through here."""
    global _exit_code
    processes.stop_cleanly_on_signals()  # SIGTERM, SIGHUP: finally blocks and exit handlers run, children stop
    atexit.register(_leave)
    _exit_code = main(argv)
    return _exit_code


def entry() -> None:
    """The `trainflow` console script: the command runs as a fork of the project's warm process when there is
    one (flows/warm.py), else here."""
    forwarded = warm.forward(sys.argv[1:])
    sys.exit(forwarded if forwarded is not None else run())


if __name__ == "__main__":
    entry()
