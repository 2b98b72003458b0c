"""Sources of variance: validate -> ingest -> split (one per split seed) -> normalize -> train one config once per
source and repeat, only that source's seed moving (trainlib/variance.py), `max_parallel` at a time -> report each
source's spread of test accuracy and its share of the variance, with intervals."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from flows import plans
from flows.common import as_model, prepare_data
from flows.compare import train_repeats
from flows.runners import fan_out
from tasks import tracking
from tasks.fanout.comparison import measures
from tasks.fanout.variance import variance_report
from tasks.record import start_run
from tasks.settings import workspace
from tasks.summaries import Variance
from trainlib.config import PipelineConfig, override
from trainlib.variance import ALL, SOURCES


@flow(name="variance", flow_run_name="variance: {sources} x {repeats} repeats")
def variance_flow(config: PipelineConfig | str, sources: list[str] | None = None, repeats: int = 5,
                  max_parallel: int = 2, refresh: bool = False, runner: str | None = None) -> Variance:
    """Train `config` `repeats` times per source of randomness in `sources` (default every source and `all`,
    every seed at once), repeat i moving only that source's seed by i, and report how much each source spreads the
    test accuracy: its standard deviation and its share of the sources' variance, with 95% intervals. The config may
    be given as a YAML path."""
    sources = list(sources or [*SOURCES, ALL])
    plan = plans.variance(as_model(config, PipelineConfig), sources, repeats, max_parallel, runner)
    run_id = start_run(plan.config, {"sources": sources, "repeats": repeats}, kind="variance")
    ws = str(workspace(str(flow_run.id)))
    with tracking.finishing(run_id):
        seeds = dict.fromkeys(r.config.split.seed for r in plan.runs)
        data = {seed: prepare_data(override(plan.config, {"split.seed": seed}), run_id if i == 0 else None, refresh)
                for i, seed in enumerate(seeds)}
        with fan_out(plan.runner, plan.parallel, run_id) as submit:
            results = train_repeats(plan.runs, plan.parallel, data, run_id, ws, submit)
        base = measures(results[0])
        groups = {s: [base] + [measures(r) for r in results if r.label == s] for s in sources}
        return variance_report(plan.config.name, run_id, groups, results, ws)
