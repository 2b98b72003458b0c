"""The LR range test: validate -> ingest -> split -> normalize -> sweep the LR on a fresh model -> suggest."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from flows import plans
from flows.common import as_model, prepare_data
from tasks import tracking
from tasks.chain.lr_find import lr_range_test
from tasks.record import start_run
from tasks.settings import workspace
from tasks.summaries import RangeTest
from trainlib import lr_finder
from trainlib.config import PipelineConfig


@flow(name="lr-find", flow_run_name=lambda: f"lr-find: {flow_run.parameters.get('updates', lr_finder.UPDATES)} updates")
def lr_find_flow(config: PipelineConfig | str, updates: int = lr_finder.UPDATES, start: float = lr_finder.START,
                 end: float = lr_finder.END, refresh: bool = False) -> RangeTest:
    """Sweep the LR of `config`'s optimizer exponentially from `start` to `end` over `updates` minibatches of a
    fresh model and suggest the LR where the smoothed loss falls fastest; one MLflow run (kind lr-find) records
    it. -> the suggestion and how the sweep ended."""
    config = plans.lr_find(as_model(config, PipelineConfig), updates, start, end)
    run_id = start_run(config, {"lr_find.updates": updates, "lr_find.start": start, "lr_find.end": end},
                       kind="lr-find")
    with tracking.finishing(run_id):
        dataset, manifest, stats = prepare_data(config, run_id, refresh)
        return lr_range_test(config, dataset, manifest, stats, run_id, str(workspace(str(flow_run.id))), updates,
                             start, end)
