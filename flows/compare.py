"""Technique comparison: validate -> ingest -> split -> normalize -> train every variant (parallel,
same split and seed) -> register the best -> report."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from flows import plans
from flows.common import as_model, prepare_data, run_bounded
from flows.runners import Submit, fan_out
from tasks import tracking
from tasks.comparison import compare_report
from tasks.fanout import variant
from tasks.record import start_run
from tasks.refs import DatasetRef, ManifestRef, StatsRef
from tasks.register import register
from tasks.settings import workspace
from trainlib.config import PipelineConfig
from trainlib.errors import TrainingError


def run_name() -> str:
    vary = flow_run.parameters["vary"]
    return "compare: " + " x ".join(f"{k}={','.join(map(str, v))}" for k, v in vary.items())


@flow(name="compare", flow_run_name=run_name)
def compare_flow(config: PipelineConfig | str, vary: dict[str, list], max_parallel: int = 2,
                 refresh: bool = False, runner: str | None = None) -> dict:
    """Train every combination of the `vary` values (config key -> values) on the same data, split and
    seed, `max_parallel` at a time (on `runner`: flows/runners.py); register the variant with the best
    validation accuracy. The config may be given as a YAML path."""
    plan = plans.compare(as_model(config, PipelineConfig), vary, max_parallel, runner)
    config = plan.config
    run_id = start_run(config, {f"vary.{k}": v for k, v in vary.items()}, kind="comparison")
    ws = str(workspace(str(flow_run.id)))
    with tracking.finishing(run_id):
        dataset, manifest, stats = prepare_data(config, run_id, refresh)
        with fan_out(plan.runner, plan.parallel) as submit:
            results = train_variants(plan.variants, plan.parallel, dataset, manifest, stats, run_id, ws, submit)
        best = max((r for r in results if r["state"] == "complete"),
                   key=lambda r: (r["metrics"]["best_val_accuracy"], -r["metrics"]["best_val_loss"]))
        registered = register(config.name, config.register, best["model"], best["metrics"], dataset, best["run_id"])
        return compare_report(config.name, run_id, results, best, registered, ws)


def train_variants(jobs: list[plans.Variant], max_parallel: int, dataset: DatasetRef, manifest: ManifestRef,
                   stats: StatsRef, run_id: str, ws: str, submit: Submit) -> list[dict]:
    """Train every variant, `max_parallel` at a time; failed ones are kept as such."""
    queue, results = list(jobs), {}

    def submit_next():
        if not queue:
            return None
        v = queue.pop(0)
        return v.label, submit(variant, v.config, v.label, v.overrides, dataset, manifest, stats, run_id, ws)

    def on_done(name: str, result) -> dict:
        failed = isinstance(result, BaseException)
        results[name] = ({"label": name, "state": "failed", "error": f"{type(result).__name__}: {result}"}
                         if failed else result | {"state": "complete"})
        return results[name]

    run_bounded(max_parallel, submit_next, on_done)
    if not any(r["state"] == "complete" for r in results.values()):
        raise TrainingError("no variant trained; see the failed variants' runs")
    return [results[v.label] for v in jobs]
