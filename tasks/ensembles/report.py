"""The report of an ensemble: every member's and the ensemble's val/test metrics (table and plot) and the
members' pairwise disagreement."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks import tracking, wording
from tasks.chain.report import artifact_key, link, run_url, summary
from tasks.results import Combined, MemberOutcome, MemberRun, Registration
from tasks.summaries import Ensemble, EnsembleRepeats
from tasks.wording import markdown_row, rounded_row, shown
from trainlib import evidence, plots
from trainlib.ensemble import EnsembleConfig

COLUMNS = ["val_accuracy", "test_accuracy", "test_f1", "test_loss"]


def _member_row(x: MemberOutcome, weight: float | None) -> dict[str, Any]:
    """A member's row of the report's table, column -> cell: the report's JSON, made here (a failed member: its
    error, no scores)."""
    run = x.run
    return {"member": x.label, "state": x.state, **rounded_row(run.metrics if run else {}, COLUMNS),
            **rounded_row({"weight": weight, "epochs": run.epochs if run else None,
                           "seconds": run.seconds if run else None, "run_id": run.run_id if run else None,
                           "source": run.source if run else None, "error": x.error})}


@task(name="ensemble-report")
def ensemble_report(name: str, run_id: str, ensemble: EnsembleConfig, members: list[MemberOutcome], combined: Combined,
                    registered: Registration, workspace: str) -> Ensemble:
    """-> the ensemble's summary (`trainflow ensemble`)."""
    done = [x.run for x in members if x.state == "complete" and x.run is not None]
    weights = {} if ensemble.combination.learned else dict(  # a meta-learner weighs the members itself
        zip((x.label for x in done), combined.weights or [1.0] * len(done), strict=True))
    rows = [_member_row(x, weights.get(x.label)) for x in members]
    ensemble_row = {"member": f"ensemble ({ensemble.method})", "state": "complete",
                    **rounded_row(combined.metrics, COLUMNS), "run_id": run_id}
    best = max(done, key=lambda x: (x.metrics["test_accuracy"], -x.metrics["test_loss"]))
    log = tracking.RunLogger(run_id)
    log.log_metrics({"best_member_test_accuracy": best.metrics["test_accuracy"],
                     "mean_disagreement": _mean_off_diagonal(combined.disagreement)}, step=0)
    log.log_figure(plots.ensemble_scores({r["member"]: r for r in [*rows, ensemble_row] if r["state"] == "complete"}),
                   "ensemble_scores.png")
    log.log_figure(plots.disagreement(np.array(combined.disagreement), [x.label for x in done]),
                   "member_disagreement.png")
    table = f"{workspace}/ensemble.csv"
    pd.DataFrame([*rows, ensemble_row]).to_csv(table, index=False)
    log.log_artifact(table)
    log.log_dict({"members": [x.label for x in done], "disagreement": combined.disagreement},
                 "member_disagreement.json")
    create_table_artifact([*rows, ensemble_row], key=artifact_key(name, "ensemble"),
                          description="every member and the ensemble, val and test")
    lines = [f"# {name}: {ensemble.method} of {len(done)} members (of {len(members)})", "",
             "| member | weight | val acc | test acc | epochs | seconds |", "|---|---|---|---|---|---|",
             *[markdown_row(r, ("member", "weight", "val_accuracy", "test_accuracy", "epochs", "seconds"))
               for r in rows],
             f"| **ensemble** | | {shown(ensemble_row['val_accuracy'])} | **{shown(ensemble_row['test_accuracy'])}** "
             "| | |", "",
             f"Mean pairwise disagreement on test: {_mean_off_diagonal(combined.disagreement):.4f}.", "",
             registered.line() + ".", "", link("ensemble run", run_id)]
    create_markdown_artifact("\n".join(lines), key=artifact_key(name, "ensemble-summary"), description="ensemble")
    metrics = combined.metrics | {"best_member_test_accuracy": best.metrics["test_accuracy"]}
    return Ensemble(summary(name, run_id, metrics, registered), ensemble.method, best.label, members, rows,
                    combined.disagreement, [x.run.run_id for x in members if x.run is not None])


def _mean_off_diagonal(matrix: list[list[float]]) -> float:
    m = np.array(matrix)
    return float(m[~np.eye(len(m), dtype=bool)].mean()) if len(m) > 1 else 0.0


REPEAT_MEASURES = ("test_accuracy", "test_loss")


def repeat_groups(repeats: list[Ensemble]) -> dict[str, evidence.Repeats]:
    """The repeats' test scores, paired by repeat: the ensemble's, its best member's (chosen on validation: what a
    user without the test split would pick) and its members' mean."""
    groups: dict[str, evidence.Repeats] = {"ensemble": [], "best member": [], "mean member": []}
    for s in repeats:
        done, best = _best_on_validation(s)
        groups["ensemble"].append({k: s.run.metrics[k] for k in REPEAT_MEASURES})
        groups["best member"].append({k: best.metrics[k] for k in REPEAT_MEASURES})
        groups["mean member"].append({k: float(np.mean([m.metrics[k] for m in done])) for k in REPEAT_MEASURES})
    return groups


def _best_on_validation(s: Ensemble) -> tuple[list[MemberRun], MemberRun]:
    """A repeat's complete members, and the best of them on validation."""
    done = [x.run for x in s.outcomes if x.state == "complete" and x.run is not None]
    return done, max(done, key=lambda m: m.metrics.get("val_accuracy", -1.0))


@task(name="ensemble-repeats-report")
def ensemble_repeats_report(name: str, run_id: str, method: str, summaries: list[Ensemble],
                            workspace: str) -> Ensemble:
    """-> repeat 0's summary (the registered ensemble) with `repeats`: every repeat's scores, the means with
    their 95% intervals, and the ensemble against its best and its mean member, paired by repeat."""
    groups = repeat_groups(summaries)
    rows = [{"repeat": i, "run_id": s.run.run_id, "members": len(_best_on_validation(s)[0]),
             "best_member": _best_on_validation(s)[1].label,
             **{f"{who.replace(' ', '_')}_{k}": groups[who][i][k] for who in groups for k in REPEAT_MEASURES}}
            for i, s in enumerate(summaries)]
    estimates = evidence.summarize(groups, REPEAT_MEASURES)
    versus = [c for k in REPEAT_MEASURES for c in evidence.contrasts(
        {f"ensemble vs {base}": ([g[k] for g in groups["ensemble"]], [g[k] for g in groups[base]])
         for base in ("best member", "mean member")}, k)]
    log = tracking.RunLogger(run_id)
    for file, table in (("repeats.csv", [rounded_row(r) for r in rows]),
                        ("versus_members.csv", [wording.rounded_contrast(v) for v in versus])):
        pd.DataFrame(table).to_csv(f"{workspace}/{file}", index=False)
        log.log_artifact(f"{workspace}/{file}")
    log.log_figure(plots.compare_means(estimates, REPEAT_MEASURES), "ensemble_vs_members.png")
    log.log_figure(plots.forest([(v.label, v.diff, v.ci_low, v.ci_high, v.verdict) for v in versus
                                 if v.metric == "test_accuracy"], "test_accuracy", evidence.margin_of("test_accuracy"),
                                "its members"), "ensemble_versus_members.png")
    verdicts = {v.label: v.verdict for v in versus if v.metric == "test_accuracy"}
    log.set_tags({f"verdict.{k.replace(' ', '_')}": v for k, v in verdicts.items()})
    lines = [f"# {name}: {method} ensemble x {len(rows)} repeats", "",
             "| | " + " | ".join(REPEAT_MEASURES) + " |", "|---|" + "---|" * len(REPEAT_MEASURES),
             *[f"| {e.label} | " + " | ".join(wording.with_interval(e.estimates[k], k) for k in REPEAT_MEASURES)
               + " |" for e in estimates], "", "| comparison | metric | difference [95% CI] | verdict |",
             "|---|---|---|---|", *[f"| {v.label} | {v.metric} | {wording.difference(v)} | {v.verdict} |"
                                    for v in versus], "",
             "The best member is chosen on validation accuracy, repeat by repeat; differences are paired by repeat.",
             "", link("run", run_id)]
    create_markdown_artifact("\n".join(lines), key=artifact_key(name, "ensemble-repeats"),
                             description="the ensemble against its members over repeats")
    first = summaries[0]
    return replace(first, run=replace(first.run, run_id=run_id, mlflow_url=run_url(run_id)),
                   repeats=EnsembleRepeats(len(rows), [rounded_row(r) for r in rows], groups, estimates, versus,
                                           [s.run.run_id for s in summaries]))
