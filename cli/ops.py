"""The operations commands: `up`, `down` and `status` (the project's stack and warm processes), `serve` (the
deployments with their schedules), `serve-model` (a registered version over HTTP), `ui` (the MLflow UI of the
local store), `config` (the effective config, or every key) and `cache` (the stage cache, listed or pruned)."""

from __future__ import annotations

import argparse
import os
import sys

from cli import options
from flows import warm

ENV_HINT = ("trainflow commands in this project use the stack while it runs; for other tools (prefect, mlflow, "
            "workers): source {env}")


def _up(args: argparse.Namespace) -> int:
    from deployments import stack
    from tasks import settings
    from trainlib.errors import ConfigError

    servers = {"host": args.host, "prefect_port": args.prefect_port, "mlflow_port": args.mlflow_port,
               "prefect_database": args.prefect_database, "mlflow_backend": args.mlflow_backend}
    if args.postgres or args.prefect_database or args.mlflow_backend:
        if running := [r.name for r in stack.status() if r.pid]:
            raise ConfigError(f"up: {' and '.join(running)} already running on their databases; a database given "
                              "now would be ignored: run `trainflow down` first")
    if args.postgres:
        if args.prefect_database or args.mlflow_backend:
            raise ConfigError("up: --postgres sets both servers' databases; leave out --prefect-database and "
                              "--mlflow-backend")
        servers |= stack.postgres_databases(args.postgres)
    print("starting the Prefect and MLflow servers ...", file=sys.stderr)
    urls = stack.up(timeout=args.timeout, **servers)
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
        state = ("healthy" if r.healthy else "not answering") if r.pid else "stopped"
        print(f"{r.name:8s} {state:14s} {r.url or '-':32s} pid {r.pid or '-'}  log {r.log}")
    for line in _warm_lines(warm.status(), warm.minutes()):
        print(line)
    up = any(r.pid for r in rows)
    if not up:  # no failure: commands run without a stack, on the project's store, and say where below
        print("no stack is running (`trainflow up` starts one); commands here record where `tracking` says:")
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
    return 0 if not up or all(r.healthy for r in rows) else 1  # 1: a stack half up, or not answering


def _cache(args: argparse.Namespace) -> int:
    import time

    from tasks import cache, settings
    from trainlib.data.folders import size_text
    from trainlib.errors import ConfigError

    if args.older_than is not None and args.older_than < 0:
        raise ConfigError(f"--older-than {args.older_than:g}: give a number of days, 0 or more")
    chosen = cache.older_than(cache.entries(), args.older_than)
    now, which = time.time(), "" if args.older_than is None else f" older than {args.older_than:g} days"
    for e in chosen:
        where = e.path.relative_to(settings.HOME)
        print(f"{size_text(e.bytes):>10s}  {e.age_days(now):7.1f} days  {e.kind:15s} {where}")
    total = size_text(sum(e.bytes for e in chosen))
    if not chosen:
        print(f"nothing{which} in the cache ({settings.HOME / 'cache'})")
    elif args.prune:
        cache.prune(chosen)
        print(f"removed {len(chosen)} entries{which}, {total}; the next run recomputes its stages (decoded images "
              "that were kept are reused)")
    else:
        print(f"{len(chosen)} entries{which}, {total} (trainflow cache --prune removes them)")
    return 0


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


def _serve_model(args: argparse.Namespace) -> int:
    import tasks  # noqa: F401  the project's settings (its MLflow store), before mlflow is imported
    from deployments import serve_model

    serve_model.run(args.uri, args.host, args.port, args.device)
    return 0


def _ui(args: argparse.Namespace) -> int:
    uri = os.environ["MLFLOW_TRACKING_URI"]
    if uri.startswith(("http://", "https://")):
        print(f"runs are tracked on the MLflow server at {uri}: open it in a browser")
        return 0
    from flows import ui

    print(f"MLflow UI for {uri} on http://{args.host}:{args.port} (Ctrl+C or kill {os.getpid()} stops it)",
          file=sys.stderr)
    ui.serve(uri, args.host, args.port)
    return 0


def _config(args: argparse.Namespace) -> int:
    from trainlib.config import load_config, reference, to_yaml

    if args.keys:
        rows = [(key, "null" if default is None else str(default), text) for key, default, text in reference()]
        width = max(len(k) for k, _, _ in rows), max(len(d) for _, d, _ in rows)
        print("\n".join(f"{k:{width[0]}}  {d:{width[1]}}  {t}" for k, d, t in rows))
    else:
        print(to_yaml(load_config(args.config, options.overrides(args))), end="")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add up, down, status, serve, serve-model, ui, config and cache to the `trainflow` parser's subcommands."""
    up = sub.add_parser("up", help="Prefect and MLflow servers on 127.0.0.1 serving the project's stores")
    options.add(up, "--host")
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
    model.add_argument("uri", metavar="URI", help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID (a "
                       "run's model, registered or not); an alias is resolved once, at start")
    options.add(model, "--host", "--port", port={"default": 5002})
    model.add_argument("--device", default="auto", help="where the model runs: auto (CUDA when present), cpu, cuda or "
                       "cuda:N (default auto)")
    model.set_defaults(handler=_serve_model)
    ui = sub.add_parser("ui", help="the MLflow UI for the local store")
    options.add(ui, "--host", "--port", port={"default": 5000})
    ui.set_defaults(handler=_ui)
    config = sub.add_parser("config", help="print the effective config as YAML (or every key with --keys)")
    options.add(config, "--config", "--set", "--name")
    config.add_argument("--keys", action="store_true", help="list every config key, its default and its meaning")
    config.set_defaults(handler=_config)
    kept = sub.add_parser("cache", help="the stage cache (.trainflow/cache): what it holds, or --prune it")
    kept.add_argument("--prune", action="store_true", help="remove the entries listed (prune when no run is going)")
    kept.add_argument("--older-than", type=float, metavar="DAYS",
                      help="only the entries whose newest file is older than DAYS days")
    kept.set_defaults(handler=_cache)
