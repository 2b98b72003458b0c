"""The LR range test as a task: the sweep (trainlib.lr_finder through recipe.lr_find) logged to its MLflow run."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from prefect import task

from tasks.chain.refs import DatasetRef, ManifestRef, StatsRef
from tasks.chain.report import run_url
from tasks.fanout.runs import load_data
from tasks.summaries import RangeTest
from tasks.tracking import RunLogger
from trainlib import plots, recipe
from trainlib.config import PipelineConfig


@task(name="lr-range-test")
def lr_range_test(config: PipelineConfig, dataset: DatasetRef, manifest: ManifestRef, stats: StatsRef, run_id: str,
                  workspace: str, updates: int, start: float, end: float) -> RangeTest:
    """-> the suggestion and how the sweep ended; the run gets the curve (metrics sweep_lr, sweep_loss,
    sweep_raw_loss per update), suggested_lr, lr_find.png and lr_find.csv."""
    ds, m, norm = load_data(config, dataset, manifest, stats)
    sweep = recipe.lr_find(config, ds, m, norm, updates=updates, start=start, end=end)
    table = pd.DataFrame({"lr": sweep.lrs, "loss": sweep.losses, "raw_loss": sweep.raw})
    path = Path(workspace) / run_id / "lr_find.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index_label="update")
    with RunLogger(run_id, every=math.inf) as log:  # the curve's rows in a few calls, not one per update
        for i, row in enumerate(table.itertuples()):
            log.log_metrics({"sweep_lr": row.lr, "sweep_loss": row.loss, "sweep_raw_loss": row.raw_loss}, step=i)
        if sweep.suggestion is not None:
            log.log_metrics({"suggested_lr": sweep.suggestion}, step=len(table))
        log.set_tags({"lr_find.rule": sweep.rule, "lr_find.stopped": sweep.stopped})
        log.log_figure(plots.lr_sweep(sweep.lrs, sweep.losses, sweep.raw, sweep.suggestion), "lr_find.png")
        log.log_artifact(str(path))
    return RangeTest(run_id, run_url(run_id), sweep.suggestion, sweep.rule, sweep.stopped, len(table), start, end,
                     updates, sweep.lrs[-1] if sweep.lrs else start)
