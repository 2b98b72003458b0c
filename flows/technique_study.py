"""The technique study: every entry of configs/study (a claim about one technique) run as a comparison with
repeats, one after another, each judged on the paired interval of its measure; one report for all of them.

A failed entry is reported as failed and the study goes on. With an entry's lr_grid, each variant first gets
its own learning rate: one comparison over the grid per variant (lr_repeats repeats each; chosen: the best mean
validation accuracy of the model as it is tested, which is the last epoch's when early stopping does not restore
the best), recorded in the report; then the comparison the claim is judged on, with those learning rates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from prefect import flow
from prefect.runtime import flow_run

from flows import plans
from flows.compare import compare_flow
from flows.ensemble import ensemble_pipeline
from flows.training import training_pipeline
from flows.tuning import tuning_flow
from tasks import events, tracking
from tasks.record import start_run
from tasks.settings import workspace
from tasks.summaries import ClaimResult, Study
from tasks.technique_study.report import study_report
from trainlib import evidence
from trainlib.claims import choose_lr, judge
from trainlib.config import override


def run_name() -> str:
    p = flow_run.parameters
    return "technique study" + (" (quick)" if p.get("quick") else "") + (f": {', '.join(p['only'])}"
                                                                        if p.get("only") else "")


@flow(name="technique-study", flow_run_name=run_name)
def study_flow(config: str | None = None, overrides: list[str] | None = None, only: list[str] | None = None,
               repeats: int | None = None, quick: bool = False, max_parallel: int = 2, runner: str | None = None,
               entries: str | None = None) -> Study:
    """Run the study's entries (all of `entries`, default configs/study, or those in `only`) from the config file
    `config` (where an entry names no base) with the `overrides` (key=value) over every entry; `repeats` replaces
    each entry's. -> the study's summary (as `trainflow study --json` prints it)."""
    plan = plans.study(config, overrides or [], entries, only, repeats, quick, max_parallel, runner)
    started = time.perf_counter()
    run_id = start_run(plan.config, {"study.entries": [c.entry.name for c in plan.claims],
                                               "study.quick": quick, "study.repeats": repeats},
                       run_name=run_name(), kind="technique-study")
    ws = str(workspace(str(flow_run.id)))
    rows = []
    with tracking.finishing(run_id):
        for claim in plan.claims:
            t0, e = time.perf_counter(), claim.entry
            row = ClaimResult(e.name, e.technique, e.claim, e.measure, e.direction, e.fair, claim.repeats, 0.0)
            try:
                result, chosen = RUNS[e.kind](claim, plan, run_id)
                row = replace(row, judgement=judge(e, result.summary, result.versus, result.baseline),
                              learning_rates=chosen, run_id=result.run_id, summary=result.summary)
            except Exception as exc:  # noqa: BLE001 - a failed entry is reported; the others still run
                row = replace(row, error=f"{type(exc).__name__}: {exc}")
            rows.append(replace(row, seconds=time.perf_counter() - t0))
            events.emit(events.Claimed(rows[-1]))
        return study_report(run_id, rows, ws, quick, time.perf_counter() - started)


def run_claim(claim: plans.Claim, plan: plans.TechniqueStudy,
              parent_run_id: str) -> tuple[Judged, dict[str, float] | None]:
    """The entry's comparison (after choosing each variant's LR, with lr_grid) -> (its summary, chosen LRs)."""
    entry, cfg, chosen = claim.entry, claim.config, None
    run = {"max_parallel": plan.parallel, "runner": plan.runner, "parent_run_id": parent_run_id}
    if claim.source is not None:  # transfer: the source model first, then every variant starts from it
        trained = training_pipeline(claim.source, parent_run_id=parent_run_id)
        cfg = override(cfg, {"transfer.source": trained.uri})
    if entry.lr_grid:
        chosen = {}
        for v in claim.comparison.variants:
            grid = {"optimizer.lr": entry.lr_grid}
            out = compare_flow(override(cfg, v.overrides), grid, repeats=plans.lr_repeats(claim), resplit=entry.resplit,
                               **run)
            chosen[v.label] = choose_lr(out.summary, out.variants)
        variants = [v.overrides | {"optimizer.lr": chosen[v.label]} for v in claim.comparison.variants]
        out = compare_flow(cfg, entry.vary, repeats=claim.repeats, resplit=entry.resplit, variants=variants, **run)
    else:
        out = compare_flow(cfg, entry.vary, repeats=claim.repeats, resplit=entry.resplit, variants=entry.variants,
                           **run)
    return Judged(out.summary, out.versus, out.baseline, out.run.run_id), chosen


def run_ensemble(claim: plans.Claim, plan: plans.TechniqueStudy, parent_run_id: str) -> tuple[Judged, None]:
    """An ensemble entry: the ensemble with repeats, against its best (on validation) or mean member, paired by
    repeat."""
    p = claim.ensemble
    out = ensemble_pipeline(p.config, p.ensemble, runner=p.runner, repeats=p.repeats, resplit=p.resplit,
                            parent_run_id=parent_run_id)
    groups, against = out.repeats.groups, claim.entry.against
    return as_comparison({who: groups[who] for who in (against, "ensemble")}, against, out.run.run_id), None


def run_searches(claim: plans.Claim, plan: plans.TechniqueStudy, parent_run_id: str) -> tuple[Judged, None]:
    """A search entry: every search, repeat i with every seed moved by i (search, training, and split with
    resplit); measured by the best trial's validation accuracy and the retrained model's test accuracy."""
    groups: dict[str, evidence.Repeats] = {name: [] for name in claim.searches}
    for i in range(claim.repeats):
        cfg = plans.seeded(claim.config, i, claim.entry.resplit)
        for name, study in claim.searches.items():
            search = study.search.model_copy(update={"seed": study.search.seed + i})
            out = tuning_flow(cfg, search, runner=study.runner, parent_run_id=parent_run_id)
            groups[name].append({"test_accuracy": out.run.metrics["test_accuracy"],
                                 "best_val_accuracy": out.best_trial.value})
    return as_comparison(groups, next(iter(claim.searches)), parent_run_id), None


@dataclass(frozen=True)
class Judged:
    """What a claim is judged on: a comparison's groups and contrasts against its baseline, and its run."""

    summary: list[evidence.Group]
    versus: list[evidence.Contrast]
    baseline: str
    run_id: str


def as_comparison(groups: dict[str, evidence.Repeats], baseline: str, run_id: str) -> Judged:
    """Paired repeats of named groups as a comparison's summary and contrasts (trainlib.evidence)."""
    measures = list(next(iter(groups.values()))[0])
    return Judged(evidence.summarize(groups, measures), evidence.versus(groups, baseline, measures), baseline,
                  run_id)


RUNS = {"comparison": run_claim, "ensemble": run_ensemble, "search": run_searches}  # by trainlib.claims Entry.kind
