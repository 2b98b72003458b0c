"""The report of a technique comparison: every variant's mean and 95% interval over its repeats, each against the
baseline (paired difference, interval, verdict), the learning curves as bands, the LR schedules, every run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks import tracking, wording
from tasks.chain.report import artifact_key, link, summary
from tasks.results import Registration, Repeated
from tasks.summaries import Comparison, Rounds
from tasks.wording import chance, difference, markdown_row, power, rounded, rounded_row, with_interval
from trainlib import plots
from trainlib.evidence import NO_DIFFERENCE, Contrast, Group
from trainlib.measures import MEASURES as DERIVED
from trainlib.measures import RUN_MEASURES

# What every repeat is measured by (trainlib.evidence summarizes them): its test scores, the best validation
# epoch's scores, how many epochs it ran (early stopping), how long its epochs took, and the derived measures
# (trainlib/measures.py: overfitting gap, weight norm and sparsity, time to a validation target).
MEASURES = RUN_MEASURES
BETTER = {name: m.better for name, m in DERIVED.items()}  # their good direction (trainlib.evidence.versus)
COLUMNS = ["best_val_loss", "best_val_accuracy", "test_accuracy", "test_f1", "test_loss"]
NOT_IN_KEYS = re.compile(r"[^\w.:/ -]")  # what MLflow refuses in a metric's name (a label's `=` and `,`)
SHOWN = ("best_val_accuracy", "test_accuracy", "test_loss", "epochs", "train_seconds", "train_cpu_seconds",
         "test_accuracy_per_cpu_minute")  # in the markdown table


def measures(result: Repeated) -> dict[str, float | None] | None:
    """A repeat's value of each of MEASURES (what trainlib.evidence summarizes), or None when it failed."""
    if result.run is None:
        return None
    return {m: result.run.epochs if m == "epochs" else result.run.metrics.get(m) for m in MEASURES}


def _run_row(r: Repeated) -> dict[str, Any]:
    """A repeat as a row of runs.csv and of the summary's `runs`, column -> cell: the report's JSON, made here (a
    failed repeat: its error, no scores)."""
    run = r.run
    return {"variant": r.label, "repeat": r.repeat, "state": r.state,
            **rounded_row(run.metrics if run else {}, COLUMNS),
            "epochs": run.epochs if run else None, "best_epoch": run.best_epoch if run else None,
            "seconds": rounded(run.seconds, "seconds") if run else None, "run_id": run.run_id if run else None,
            "error": r.error}


def flat(group: Group) -> dict[str, Any]:
    """A variant's summary as one flat table row: `test_accuracy_mean`, `test_accuracy_ci_low`, ..."""
    out = {"variant": group.label, "n": group.n, "failed": group.failed}
    for m in MEASURES:
        e = group.estimates.get(m)
        for stat in ("mean", "std", "ci_low", "ci_high"):
            out[f"{m}_{stat}"] = rounded(getattr(e, stat) if e else None, m)
    return out


@task(name="compare-report")
def compare_report(name: str, parent_run_id: str, results: list[Repeated], summary_rows: list[Group],
                   versus: list[Contrast], baseline: str, best: Repeated, registered: Registration,
                   variants: dict[str, dict[str, Any]], workspace: str, rounds: Rounds | None = None) -> Comparison:
    """-> the comparison's summary (`trainflow compare`); `rounds`: a sequential design's, whose contrasts
    (`versus`) were each judged where its variant stopped."""
    log = tracking.RunLogger(parent_run_id)
    done = [r for r in results if r.run is not None]
    curves = {r.name: json.loads(Path(r.run.curves).read_text()) for r in done}
    bands: dict[str, list] = {}
    for r in done:
        bands.setdefault(r.label, []).append(curves[r.name]["history"])
    log.log_figure(plots.compare_curves(bands), "compare_val_curves.png")
    log.log_figure(plots.compare_means(summary_rows, ("best_val_accuracy", "test_accuracy")), "compare_means.png")
    for m in ("best_val_accuracy", "test_accuracy"):  # what each verdict is on: the paired differences
        if mine := [v for v in versus if v.metric == m]:
            log.log_figure(plots.forest([(v.label, v.diff, v.ci_low, v.ci_high, v.verdict) for v in mine], m,
                                        mine[0].margin, baseline), f"compare_versus_{m}.png")
    first = {}  # one LR schedule per variant: the repeats share it
    for r in done:
        first.setdefault(r.label, curves[r.name])
    log.log_figure(plots.compare_lrs({k: (c["lrs"], c["updates_per_epoch"]) for k, c in first.items()}),
                   "compare_lr_curves.png")
    runs = [_run_row(r) for r in results]
    table = [flat(s) for s in summary_rows]
    for file, rows in (("comparison.csv", table), ("runs.csv", runs),
                       ("versus_baseline.csv", [wording.rounded_contrast(v) for v in versus])):
        pd.DataFrame(rows).to_csv(f"{workspace}/{file}", index=False)
        log.log_artifact(f"{workspace}/{file}")
    log.log_metrics({f"versus/{NOT_IN_KEYS.sub(':', v.label)}/{v.metric}/{stat}": value
                     for v in versus if v.metric in ("best_val_accuracy", "test_accuracy")
                     for stat, value in (("diff", v.diff), ("p_better", v.p_better), ("p_holm", v.p_holm))
                     if value is not None}, step=0)
    log.set_tags({"best_variant": best.label, "baseline": baseline, "gate": registered.outcome})
    create_table_artifact(table, key=artifact_key(name, "comparison"),
                          description="every variant: mean, standard deviation and 95% interval over its repeats")
    repeats = max(r.repeat for r in results) + 1
    lines = [f"# {name}: {len(summary_rows)} variants x {repeats} repeats ({len(done)} of {len(results)} trained); "
             f"best: {best.label}", "", *([f"Repeats in rounds (`--repeats auto:{rounds.most}`): {rounds.line()}.", ""]
                                          if rounds else []),
             "| variant | n | " + " | ".join(SHOWN) + " |", "|---|---|" + "---|" * len(SHOWN),
             *[f"| {s.label} | {s.n} | " + " | ".join(with_interval(s.estimates[m], m) for m in SHOWN) + " |"
               for s in summary_rows], "",
             "Mean ± half-width of its 95% t interval over the repeats."]
    if versus:
        lines += ["", f"## Against the baseline, {baseline} (paired repeats, 95% interval of the difference)", "",
                  "| variant | metric | difference | P(better) | verdict | what more repeats would tell |",
                  "|---|---|---|---|---|---|",
                  *[f"| {v.label} | {v.metric} | {difference(v)} | {chance(v)} | {v.verdict} | "
                    f"{power(v) if v.verdict == NO_DIFFERENCE else ''} |" for v in versus], "",
                  *(["Each variant judged at the look where it stopped, at that look's level (spent as 0.05 x (n / "
                     f"{rounds.most})^2, trainlib/sequential.py): " + ", ".join(
                         f"{n} repeats at {a:.4f}" for n, a in rounds.looks) + ".", ""] if rounds else []),
                  "Verdicts: paired t-tests, Holm-corrected over the variants facing the baseline on each measure; "
                  "`equivalent`: the 90% interval of the difference inside ±the measure's margin (two one-sided "
                  "tests). P(better): the share of paired repeats in which the variant is better, with Wilson's "
                  "95% interval."]
    per_run = ("run_id", "variant", "repeat", "best_val_accuracy", "test_accuracy", "epochs", "seconds")
    lines += ["", "| " + " | ".join(per_run) + " |", "|---" * len(per_run) + "|",
              *[markdown_row(r, per_run) for r in runs],
              "", f"Best variant (mean validation accuracy): {best.label}; registered its repeat {best.repeat}: "
              f"{registered.line()}.", "", link("comparison run", parent_run_id)]
    create_markdown_artifact("\n".join(lines), key=artifact_key(name, "compare"), description="comparison summary")
    return Comparison(summary(name, parent_run_id, best.run.metrics, registered), best.label, best.repeat, baseline,
                      repeats, [r.run.run_id for r in results if r.run], runs, summary_rows, versus, variants, rounds)
