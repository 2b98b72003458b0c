"""Technique comparison: validate -> ingest -> split -> normalize -> train every variant (parallel,
same split and seed) -> register the best -> report."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from flows.common import as_model, no_transfer, prepare_data, run_bounded, tracked
from flows.runners import Submit, check, fan_out
from tasks.comparison import compare_report
from tasks.fanout import variant
from tasks.record import start_run
from tasks.register import register
from tasks.settings import workspace
from trainlib.config import PipelineConfig, override
from trainlib.errors import TrainingError
from trainlib.tuning import check_keys, label, needs_validation, share_cpus, variants


def run_name() -> str:
    vary = flow_run.parameters["vary"]
    return "compare: " + " x ".join(f"{k}={','.join(map(str, v))}" for k, v in vary.items())


@flow(name="compare", flow_run_name=run_name)
def compare_flow(config: PipelineConfig | str, vary: dict[str, list], max_parallel: int = 2,
                 refresh: bool = False, runner: str | None = None) -> dict:
    """Train every combination of the `vary` values (config key -> values) on the same data, split and
    seed, `max_parallel` at a time (on `runner`: flows/runners.py); register the variant with the best
    validation accuracy. The config may be given as a YAML path."""
    config, runner = as_model(config, PipelineConfig), check(runner)
    no_transfer(config, "compare")
    needs_validation(config, "compare")
    check_keys(config, vary, "--vary")
    combos = variants(vary)
    base = share_cpus(config, min(max_parallel, len(combos)))
    jobs = [(label(o), o, override(base, o)) for o in combos]  # every combination validated up front
    run_id = start_run(config, {f"vary.{k}": v for k, v in vary.items()}, kind="comparison")
    ws = str(workspace(str(flow_run.id)))
    with tracked(run_id):
        data, parts, stats = prepare_data(config, run_id, refresh)
        with fan_out(runner, min(max_parallel, len(jobs))) as submit:
            results = train_variants(jobs, max_parallel, data, parts, stats, run_id, ws, submit)
        best = max((r for r in results if r["state"] == "complete"),
                   key=lambda r: (r["metrics"]["best_val_accuracy"], -r["metrics"]["best_val_loss"]))
        registered = register(config.name, config.register, best, best["metrics"], data, best["run_id"])
        return compare_report(config.name, run_id, results, best, registered, ws)


def train_variants(jobs: list, max_parallel: int, data: dict, parts: dict, stats: dict, run_id: str,
                   ws: str, submit: Submit) -> list[dict]:
    """Run every (label, overrides, config) job, `max_parallel` at a time; failed ones are kept as such."""
    queue, results = list(jobs), {}

    def submit_next():
        if not queue:
            return None
        name, overrides, cfg = queue.pop(0)
        return name, submit(variant, cfg, name, overrides, data, parts, stats, run_id, ws)

    def on_done(name: str, result) -> dict:
        failed = isinstance(result, BaseException)
        results[name] = ({"label": name, "state": "failed", "error": f"{type(result).__name__}: {result}"}
                         if failed else result | {"state": "complete"})
        return results[name]

    run_bounded(max_parallel, submit_next, on_done)
    if not any(r["state"] == "complete" for r in results.values()):
        raise TrainingError("no variant trained; see the failed variants' runs")
    return [results[name] for name, _, _ in jobs]
