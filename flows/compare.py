"""Technique comparison: validate -> ingest -> split -> normalize -> train every variant `repeats` times
(parallel; repeat i of every variant with the same seeds) -> register the best -> report means, intervals and
verdicts against the baseline."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows import plans
from flows.common import as_model, prepare_data, run_bounded
from flows.runners import Submit, fan_out
from flows.transfer import with_source_architecture
from tasks import tracking
from tasks.chain.evaluate import evaluate
from tasks.chain.refs import DatasetRef, ManifestRef, SourceRef, StatsRef, TrainedRef
from tasks.events import Finished
from tasks.fanout.comparison import BETTER, MEASURES, compare_report, measures
from tasks.fanout.runs import variant
from tasks.record import record_data, start_run
from tasks.registry.register import register
from tasks.results import Repeated, VariantRun
from tasks.settings import workspace
from tasks.summaries import Comparison, Rounds
from tasks.transfer.source import fetch_source
from trainlib import evidence, sequential
from trainlib.config import PipelineConfig, override
from trainlib.errors import TrainingError
from trainlib.variants import label

Prepared = tuple[DatasetRef, ManifestRef, StatsRef]


def run_name() -> str:
    vary, repeats = flow_run.parameters["vary"], str(flow_run.parameters.get("repeats", 1))
    chosen = flow_run.parameters.get("variants")
    what = (" | ".join(label(v) for v in chosen) if chosen else
            " x ".join(f"{k}={','.join(map(str, v))}" for k, v in vary.items()))
    return f"compare: {what}" + (f" x {repeats} repeats" if repeats != "1" else "")


@flow(name="compare", flow_run_name=run_name)
def compare_flow(config: PipelineConfig | str, vary: dict[str, list], max_parallel: int = 2,
                 refresh: bool = False, runner: str | None = None, repeats: int | str = 1, resplit: bool = False,
                 baseline: str | None = None, variants: list[dict[str, Any]] | None = None,
                 parent_run_id: str | None = None, margins: dict[str, float] | None = None) -> Comparison:
    """Train every combination of the `vary` values (config key -> values) on the same data, `repeats` times
    each (repeat i: training.seed + i, and split.seed + i with `resplit`; `auto` or `auto:MAX`: in rounds until
    every verdict is decided, trainlib/sequential.py), `max_parallel` at a time (on `runner`:
    flows/runners.py). The variant with the best mean validation accuracy wins; its repeat with the best
    validation accuracy is registered. Every variant is compared with `baseline` (a label; default the first)
    on paired repeats, the variants one family per measure (Holm), `margins` (measure -> absolute difference)
    replacing the default equivalence margins. `variants` (dicts of overrides), when given, are the variants
    instead of the grid of
    `vary`; `parent_run_id` nests the comparison's run under another (a technique study's). The config may be
    given as a YAML path."""
    plan = plans.compare(as_model(config, PipelineConfig), vary, max_parallel, runner, repeats, resplit, baseline,
                         variants, margins)
    config = plan.config
    params = {f"vary.{k}": v for k, v in vary.items()} | {"repeats": repeats, "resplit": resplit,
                                                          "baseline": plan.baseline} | {
        f"margin.{k}": v for k, v in plan.margins.items()}
    if variants:
        params["variants"] = [v.label for v in plan.variants]
    run_id = start_run(config, params, kind="comparison", parent_run_id=parent_run_id)
    ws = str(workspace(str(flow_run.id)))
    with tracking.finishing(run_id):
        source = fetch_source(config.transfer.source, ws) if config.transfer.source else None
        data: dict[int, Prepared] = {}
        with fan_out(plan.runner, plan.parallel, run_id) as submit:
            results, stops = train_rounds(plan, data, run_id, ws, submit, refresh, source)
        groups = {v.label: [measures(r) for r in results if r.label == v.label] for v in plan.variants}
        summary = evidence.summarize(groups, MEASURES)
        winner = max((s for s in summary if s.n),
                     key=lambda s: (s.estimates["best_val_accuracy"].mean, -s.estimates["best_val_loss"].mean))
        best = max((r for r in results if r.label == winner.label and r.run is not None),
                   key=lambda r: (r.run.metrics["best_val_accuracy"], -r.run.metrics["best_val_loss"]))
        dataset, manifest, stats = data[best.split_seed]
        # the registered variant's run gets what a training run records of its data and test (split manifest, class
        # report, per-sample outcomes): its model card's counts and intervals, the gate's McNemar test
        record_data(best.run.run_id, dataset, manifest, stats)
        evaluate(config, dataset, manifest, TrainedRef(best.run.model, best.run.curves, best.run.best_epoch or
                                                       best.run.epochs, best.run.epochs, "", 0.0), best.run.run_id)
        registered = register(config.name, config.register, best.run.model, best.run.metrics, dataset, stats,
                              best.run.run_id)
        versus = [c for s in stops for c in s.contrasts]
        return compare_report(config.name, run_id, results, summary, versus, plan.baseline, best, registered,
                              {v.label: v.overrides for v in plan.variants}, ws,
                              rounds(plan, results, stops) if plan.sequential else None)


def rounds(plan: plans.Comparison, results: list[Repeated], stops: list[sequential.Stop]) -> Rounds:
    """A sequential design's looks, repeats spent per variant, and the variants left undecided."""
    spent = {v.label: sum(r.label == v.label for r in results) for v in plan.variants}
    return Rounds(plan.repeats, [(look.n, look.level) for look in plan.looks], spent,
                  [s.label for s in stops if not s.decided])


def train_rounds(plan: plans.Comparison, data: dict[int, Prepared], run_id: str, ws: str, submit: Submit,
                 refresh: bool, source: SourceRef | None) -> tuple[list[Repeated], list[sequential.Stop]]:
    """Train the repeats look by look (one look, after all repeats, unless the design is sequential): after each,
    the variants whose verdict is decided stop, the others and the baseline train the next round's repeats ->
    every repeat trained, and where each variant stopped with its contrasts. Each split's data is prepared when a
    repeat first needs it (the first one's recorded on the comparison's run)."""
    results: list[Repeated] = []
    stops: list[sequential.Stop] = []
    open_ = [v.label for v in plan.variants if v.label != plan.baseline]
    done, looks = 0, plan.looks
    for k, look in enumerate(looks):
        jobs = [r for r in plan.runs if done <= r.repeat < look.n and r.label in (plan.baseline, *open_)]
        for seed in dict.fromkeys(r.config.split.seed for r in jobs):
            if seed not in data:
                data[seed] = prepare_data(override(plan.config, {"split.seed": seed}), None if data else run_id,
                                          refresh)
        results += train_repeats(jobs, plan.parallel, data, run_id, ws, submit, source)
        done = look.n
        groups = {v.label: [measures(r) for r in results if r.label == v.label] for v in plan.variants}
        stopped = sequential.judge(groups, plan.baseline, open_, look, k == len(looks) - 1, MEASURES, BETTER,
                                   plan.margins)
        stops += stopped
        open_ = [label for label in open_ if label not in {s.label for s in stopped}]
        if not open_:
            break
    order = {v.label: i for i, v in enumerate(plan.variants)}
    return results, sorted(stops, key=lambda s: order[s.label])


def train_repeats(jobs: list[plans.Repeat], max_parallel: int, data: dict[int, Prepared], run_id: str, ws: str,
                  submit: Submit, source: SourceRef | None = None) -> list[Repeated]:
    """Train every repeat of every variant, `max_parallel` at a time, each on its split's data (and from the
    transfer `source`, if any, in its architecture); failed ones are kept as such."""
    queue, results = list(jobs), {}

    def submit_next():
        if not queue:
            return None
        r = queue.pop(0)
        dataset, manifest, stats = data[r.config.split.seed]
        config = with_source_architecture(r.config, source) if source else r.config
        return r, submit(variant, config, r.label, r.repeat, r.name, r.overrides, dataset, manifest, stats,
                         run_id, ws, source)

    def on_done(r: plans.Repeat, result: VariantRun | BaseException) -> Finished:
        failed = isinstance(result, BaseException)
        results[r.name] = Repeated(r.label, r.repeat, r.name, r.config.split.seed, None if failed else result,
                                   f"{type(result).__name__}: {result}" if failed else None)
        return Finished(r.name, None if failed else result.metrics.get("best_val_accuracy"), results[r.name].state)

    run_bounded(max_parallel, submit_next, on_done)
    if not any(r.run is not None for r in results.values()):
        raise TrainingError("no variant trained; see the failed variants' runs")
    return [results[r.name] for r in jobs]
