"""The `trainflow` command line: its parser and `main`. The flow commands (run, tune, compare, ensemble,
transfer, ui) are in flows/commands.py; the operations commands (up, down, status, serve, serve-model) are here.

Exit codes: 0 done, 1 failed while running, 2 bad input (one readable message; --debug shows the
traceback). With --json, stdout carries exactly one JSON object; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys

from flows import commands, model_commands, processes, warm
from trainlib.errors import TrainflowError

ENV_HINT = ("trainflow commands in this project use the stack while it runs; for other tools (prefect, mlflow, "
            "workers): source {env}")


def _up(args: argparse.Namespace) -> int:
    from deployments import stack
    from tasks import settings
    from trainlib.errors import ConfigError

    options = {"host": args.host, "prefect_port": args.prefect_port, "mlflow_port": args.mlflow_port,
               "prefect_database": args.prefect_database, "mlflow_backend": args.mlflow_backend}
    if args.postgres or args.prefect_database or args.mlflow_backend:
        if running := [r["name"] for r in stack.status() if r["pid"]]:
            raise ConfigError(f"up: {' and '.join(running)} already running on their databases; a database given "
                              "now would be ignored: run `trainflow down` first")
    if args.postgres:
        if args.prefect_database or args.mlflow_backend:
            raise ConfigError("up: --postgres sets both servers' databases; leave out --prefect-database and "
                              "--mlflow-backend")
        options |= stack.postgres_databases(args.postgres)
    print("starting the Prefect and MLflow servers ...", file=sys.stderr)
    urls = stack.up(timeout=args.timeout, **options)
    for old in stack.older_stores():
        print(f"note: {old} holds what the stack recorded before it served the project's stores; it is kept as "
              "it was (browse it with its own server if you need it)", file=sys.stderr)
    print(f"project {settings.HOME.parent}: its stores in {settings.HOME}")
    print(f"Prefect UI and API: {urls['prefect'].removesuffix('/api')}  (PREFECT_API_URL={urls['prefect']})")
    print(f"MLflow UI and tracking: {urls['mlflow']}  (MLFLOW_TRACKING_URI={urls['mlflow']})")
    print(ENV_HINT.format(env=stack.env_file()))
    return 0


def _down(args: argparse.Namespace) -> int:
    from deployments import stack

    warmed = warm.stop()
    stopped = stack.down() + ([f"{warmed} warm process{'es' if warmed > 1 else ''}"] if warmed else [])
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def _status(args: argparse.Namespace) -> int:
    from deployments import stack
    from tasks import settings
    from trainlib.redact import redact

    rows = stack.status()
    for r in rows:
        state = ("healthy" if r["healthy"] else "not answering") if r["pid"] else "stopped"
        print(f"{r['name']:8s} {state:14s} {r['url'] or '-':32s} pid {r['pid'] or '-'}  log {r['log']}")
    for line in _warm_lines(warm.status(), warm.minutes()):
        print(line)
    # what a command run here uses (tasks/settings.py), so what a script or a notebook should point at
    api = os.environ.get("PREFECT_API_URL")
    print(f"project  {settings.HOME.parent}  (its store: {settings.HOME})")
    print(f"tracking MLFLOW_TRACKING_URI={redact(os.environ['MLFLOW_TRACKING_URI'])}")
    local = ("the warm process's API (started by the next flow command if it is not running)" if warm.minutes() else
             "a temporary API per command")
    print(f"prefect  {f'PREFECT_API_URL={redact(api)}' if api else local}")
    env = stack.env_file()
    if env.exists():
        print(ENV_HINT.format(env=env))
    return 0 if all(r["healthy"] for r in rows) else 1


def _warm_lines(states: list[warm.State], minutes: float) -> list[str]:
    """`trainflow status`'s lines on the project's warm processes (flows/warm.py)."""
    if not minutes:
        return ["warm     off            (TRAINFLOW_WARM_MINUTES=0: each command starts a temporary Prefect API)"]
    if not states:
        return ["warm     stopped        (the next flow command starts it)"]
    lines = []
    for state in states:
        what = "ready" if state.ready else "loading"  # None: not answering now, which loading is
        left = max(0.0, state.minutes * 60 - state.idle_seconds)
        busy = (f"{state.forks} command{'s' if state.forks != 1 else ''} running" if state.forks else
                f"ends after {left / 60:.0f} more idle minutes" if left >= 60 else
                f"ends after {left:.0f} more idle seconds")
        lines.append(f"warm     {what:14s} {state.api or '-':32s} pid {state.pid}  {busy}  log {state.folder / 'log'}")
    return lines


def _serve(args: argparse.Namespace) -> int:
    import tasks  # noqa: F401  the project's settings: a running stack's Prefect API among them
    from trainlib.errors import ConfigError

    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigError("serve needs a Prefect server (the ephemeral API has no scheduler): start the project's "
                          "stack with `trainflow up` first, or set PREFECT_API_URL")
    from deployments import serve

    serve.run(args.prefect_file, args.only)
    return 0


def _port(text: str) -> int:
    """argparse type of a port to listen on: 1 to 65535 (0 would be any port, and the printed URL wrong)."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text!r}")
    return int(text)


def _serve_model(args: argparse.Namespace) -> int:
    import tasks  # noqa: F401  the project's settings (its MLflow store), before mlflow is imported
    from deployments import serve_model

    serve_model.run(args.uri, args.host, args.port)
    return 0


def operations(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="Prefect and MLflow servers on 127.0.0.1 serving the project's stores")
    up.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    up.add_argument("--prefect-port", type=int, default=4200)
    up.add_argument("--mlflow-port", type=int, default=5001)
    up.add_argument("--prefect-database", metavar="URL", help="Prefect's database, e.g. "
                    "postgresql+asyncpg://user:pw@host/db (default: the project's, .trainflow/prefect/prefect.db)")
    up.add_argument("--mlflow-backend", metavar="URL", help="MLflow's backend store, e.g. "
                    "postgresql://user:pw@host/db (default: the project's store, .trainflow/mlflow.db)")
    up.add_argument("--postgres", metavar="URL", help="both servers on PostgreSQL: postgresql://user:pw@host/db "
                    "(Prefect in database <db>_prefect, MLflow in <db>_mlflow, created when missing; <db> itself "
                    "can hold shared tuning studies)")
    up.add_argument("--timeout", type=float, default=120, help="seconds to wait for both to be healthy")
    up.set_defaults(handler=_up)
    sub.add_parser("down", help="stop the local stack").set_defaults(handler=_down)
    sub.add_parser("status", help="the project, its tracking URI, the stack's servers").set_defaults(handler=_status)
    serve = sub.add_parser("serve", help="serve the deployments of deployments/prefect.yaml with their schedules")
    serve.add_argument("--prefect-file", default="deployments/prefect.yaml")
    serve.add_argument("--only", nargs="+", metavar="NAME", help="serve only these deployments: FLOW/NAME (e.g. "
                       "training-pipeline/nightly), or a NAME for every deployment of that name")
    serve.set_defaults(handler=_serve)
    model = sub.add_parser("serve-model", help="serve a registered model version over HTTP (MLflow's scoring API)")
    model.add_argument("uri", metavar="URI", help="models:/NAME@ALIAS or models:/NAME/VERSION; an alias is "
                       "resolved once, at start")
    model.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    model.add_argument("--port", type=_port, default=5002, help="port to listen on")
    model.set_defaults(handler=_serve_model)


def _config(args: argparse.Namespace) -> int:
    from trainlib.config import load_config, reference, to_yaml

    if args.keys:
        rows = [(key, "null" if default is None else str(default), text) for key, default, text in reference()]
        width = max(len(k) for k, _, _ in rows), max(len(d) for _, d, _ in rows)
        print("\n".join(f"{k:{width[0]}}  {d:{width[1]}}  {t}" for k, d, t in rows))
    else:
        print(to_yaml(load_config(args.config, args.set or [])), end="")
    return 0


EXAMPLES = {  # two per command, shown by --help
    "run": ["trainflow run --set training.epochs=5 --set optimizer.lr=0.01",
            "trainflow run --config configs/tabular-csv.yaml --json"],
    "tune": ["trainflow tune --search configs/search/bayesian.yaml",
             "trainflow tune --search configs/search/grid.yaml --set training.epochs=10"],
    "compare": ["trainflow compare --vary optimizer.name=sgd,adam,rmsprop",
                "trainflow compare --config configs/regimes/few-labels.yaml --vary model.dropout=0,0.3 --repeats 5"],
    "lr-find": ["trainflow lr-find", "trainflow lr-find --set optimizer.name=sgd --updates 300 --json"],
    "study": ["trainflow study --quick",
              "trainflow study --only dropout,l1 --repeats 5 --json"],
    "ensemble": ["trainflow ensemble --method bagging --members 5",
                 "trainflow ensemble --method stacking --member model.name=mlp --member model.name=cnn"],
    "transfer": ["trainflow transfer --demo",
                 "trainflow transfer --source models:/digits-cnn@champion --strategy finetune --shots 10"],
    "predict": ["trainflow predict --model models:/digits-imagefolder@champion --data configs/data/digits-png/7",
                "trainflow predict --model models:/iris-mlp/1 --data configs/data/iris.csv --out scored.csv --json"],
    "models": ["trainflow models", "trainflow models digits-cnn --history"],
    "promote": ["trainflow promote digits-cnn 3", "trainflow promote digits-cnn 4 --alias staging --reason trial"],
    "rollback": ["trainflow rollback digits-cnn", "trainflow rollback digits-cnn --alias staging --reason drift"],
    "config": ["trainflow config --config configs/augmentation.yaml --set augment.erasing=0.25",
               "trainflow config --keys"],
    "ui": ["trainflow ui", "trainflow ui --port 5050"],
    "up": ["trainflow up", "trainflow up --postgres postgresql://trainer:secret@127.0.0.1:5432/trainflow"],
    "down": ["trainflow down", "trainflow down && trainflow status"],
    "status": ["trainflow status", "trainflow status || trainflow up"],
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
    commands.add_commands(sub)
    model_commands.add_commands(sub)
    config = sub.add_parser("config", help="print the effective config as YAML (or every key with --keys)")
    config.add_argument("--config", help="pipeline config YAML")
    config.add_argument("--set", action="append", type=commands.key_value, metavar="KEY=VALUE",
                        help="override a config key (repeatable)")
    config.add_argument("--keys", action="store_true", help="list every config key, its default and its meaning")
    config.set_defaults(handler=_config)
    operations(sub)
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
        print(f"failed: {type(exc).__name__}: {exc}", file=sys.stderr)
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
