"""How a flow command runs once its plan is built: the project's Prefect API started, the live progress listening,
the flow run in this process, then its summary printed, or with --json exactly one JSON object on stdout and
everything else on stderr."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys


@contextlib.contextmanager
def stdout_reserved():
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


def backends() -> str:
    """The project folder and where this command records: the project's running stack, the local stores with a
    temporary Prefect API, or the servers the environment names."""
    from flows import local_api
    from tasks import settings
    from trainlib.redact import redact

    mlflow, api = os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("PREFECT_API_URL")
    ours = local_api.current()
    prefect = ours.describe() if ours else f"Prefect {api or '(ephemeral API)'}"
    where = ("stack" if settings.using_stack else
             "local" if mlflow == settings.local_tracking_uri() else "from the environment")
    return redact(f"project {settings.HOME.parent}; {where}: {prefect}, MLflow {mlflow}")


def execute(args: argparse.Namespace, title: str, start, show, progress=None) -> int:
    """Run `start()` while `progress` (a live bar listening to tasks/events.py), if any, shows what happens;
    print the summary with `show`, or as the one JSON object on stdout with --json. Called once the command's
    plan is built: bad input has failed by then, with no API started and nothing written."""
    from flows import local_api

    local_api.start()  # before the heavy imports (torch, Prefect, MLflow), which run while the API starts
    import flows.common  # noqa: F401
    from cli.progress import console
    from tasks import events
    from tasks.settings import one_message_for_input_errors

    one_message_for_input_errors()
    local_api.ready()
    console.print(f"[bold]{title}[/] [dim]({backends()})[/]")
    with contextlib.ExitStack() as watching:
        watching.enter_context(local_api.flow_settings())
        if progress is not None:
            watching.enter_context(progress)
            watching.enter_context(events.listening(progress))
        if not args.json:
            result = start()
        else:
            with stdout_reserved() as stdout:
                stdout.write(json.dumps(start().json(), default=str) + "\n")
            return 0
    show(result)
    return 0
