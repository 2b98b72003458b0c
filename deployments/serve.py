"""`trainflow serve`: the deployments of deployments/prefect.yaml, with their schedules, served by this
process (Prefect's `serve`): no work pool, no worker."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from prefect.flows import load_flow_from_entrypoint
from prefect.runner import Runner
from prefect.schedules import Cron, Interval

from flows import SERVED_BY, processes
from trainlib.errors import ConfigError
from trainlib.overrides import read_yaml

PREFECT_FILE = Path(__file__).with_name("prefect.yaml")


def _schedule(spec: dict):
    if "cron" in spec:
        return Cron(spec["cron"], timezone=spec.get("timezone"))
    if "interval" in spec:
        return Interval(spec["interval"], timezone=spec.get("timezone"))
    raise ConfigError(f"deployment schedule {spec}: give cron or interval")


def deployments(prefect_file: str | Path = PREFECT_FILE, names: list[str] | None = None) -> list:
    """The runner deployments of `prefect_file` (all, or those `names`: FLOW/NAME as Prefect names them, or a
    bare NAME for every deployment of that name), entrypoints read from the project."""
    found = [(load_flow_from_entrypoint(d["entrypoint"]), d)
             for d in read_yaml(prefect_file, "prefect file").get("deployments") or []]
    full = {f"{flow.name}/{d['name']}": (flow, d) for flow, d in found}
    wanted = set(names or ())
    unknown = wanted - set(full) - {d["name"] for _, d in found}
    if unknown:
        raise ConfigError(f"no deployment {', '.join(sorted(unknown))} in {prefect_file}; there are: "
                          f"{', '.join(full)}")
    return [flow.to_deployment(name=d["name"], description=d.get("description"),
                               parameters=d.get("parameters") or {},
                               schedules=[_schedule(s) for s in d.get("schedules") or []])
            for key, (flow, d) in full.items() if not names or key in wanted or d["name"] in wanted]


def _check_no_worker_deployments(served: list) -> None:
    """A deployment of the same name already deployed to a work pool would be half-overwritten by serve."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for d in served:
            try:
                existing = client.read_deployment_by_name(f"{d.flow_name}/{d.name}")
            except ObjectNotFound:
                continue
            if existing.work_pool_name:
                raise ConfigError(f"deployment {d.flow_name}/{d.name} is deployed to work pool "
                                  f"{existing.work_pool_name!r}: run it with a worker, or remove it first "
                                  f"(prefect deployment delete {d.flow_name}/{d.name}) to serve it")


def run(prefect_file: str | Path = PREFECT_FILE, names: list[str] | None = None) -> None:
    """Serve until stopped: SIGINT, SIGTERM or SIGHUP (flows/processes.py `served_until_stopped`) take Prefect's
    graceful way out, which cancels the flow runs it started; then say which signal stopped it. Killed (SIGKILL, where
    nothing of this process runs), the flow-run processes it started end too: each finds this pid in SERVED_BY and
    asks the kernel for a SIGTERM when its parent ends (flows/__init__.py)."""
    os.environ[SERVED_BY] = str(os.getpid())
    served = deployments(prefect_file, names)
    _check_no_worker_deployments(served)
    runner = Runner()
    for deployment in served:
        runner.add_deployment(deployment)
    with processes.served_until_stopped(runner.handle_sigterm) as received:
        # the runner puts its SIGTERM handler in place when it starts: this one, which notes the signal first
        runner.handle_sigterm = signal.getsignal(signal.SIGTERM)
        print(f"serving {len(served)} deployment{'s' if len(served) != 1 else ''}, polling for their runs: "
              f"{', '.join(f'{d.flow_name}/{d.name}' for d in served)}  (a run now: prefect deployment run "
              "FLOW/NAME; Ctrl+C stops)", file=sys.stderr, flush=True)
        asyncio.run(runner.start())
    print(processes.stopped_line(received), file=sys.stderr)
