"""What each command prints when it is done (without --json): the summary of its result, on stdout. Numbers are
rounded by the one rule of every table (tasks/wording.py)."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from rich.table import Table

from cli.progress import summary_console as console
from tasks.summaries import (
    Comparison,
    Ensemble,
    RangeTest,
    Rerun,
    RunSummary,
    Study,
    Transfer,
    TransferDemo,
    Tuning,
    Variance,
)
from tasks.wording import cells, chance, difference, power, shown, spread, with_interval

if TYPE_CHECKING:
    from trainlib.evidence import Contrast

VERDICTS = {"better": "green", "worse": "red", "no detectable difference": "default", "too few repeats": "yellow",
            "equivalent": "cyan",
            "higher": "default", "lower": "default"}
STYLES = {"promoted": "green", "not_better": "yellow", "below_minimum": "yellow", "other_input": "yellow",
          "not_registered": "default"}


def run(s: RunSummary) -> None:
    """Three lines: the result, the registration (or why there is none), the run's URL."""
    m = s.metrics
    epochs = (f" (best epoch {shown(m['best_epoch'], 'best_epoch')}, stopped at "
              f"{shown(m.get('stopped_epoch'), 'stopped_epoch')})" if "best_epoch" in m else "")
    cost = (f"; trained in {m['train_wall_seconds']:.1f} s ({m['train_cpu_seconds']:.1f} CPU s, peak memory "
            f"{m['train_peak_memory_mb']:.0f} MB)" if "train_cpu_seconds" in m else "")
    console.print(f"[bold green]done[/]: test accuracy {shown(m.get('test_accuracy'))}, macro F1 "
                  f"{shown(m.get('test_f1'))}, test loss {shown(m.get('test_loss'))}{epochs}{cost}")
    console.print(s.registered.line(), style=STYLES[s.registered.outcome], markup=False, highlight=False)
    local = not os.environ.get("MLFLOW_TRACKING_URI", "").startswith("http")
    console.print(f"MLflow run {s.run_id}: {s.mlflow_url}" + (" (browse: .venv/bin/trainflow ui)" if local else ""),
                  markup=False, highlight=False)


def tuning(s: Tuning) -> None:
    best, t = s.best_trial, s.trials
    params = ", ".join(f"{k}={shown(v, k)}" for k, v in best.params.items())
    if s.front:
        table = Table("trial", "value", s.second_metric, "parameters", title=f"the Pareto front ({len(s.front)} of "
                      f"{t.complete} complete trials): no other trial is better on both")
        for m in s.front:
            table.add_row(f"{m.number}{' (retrained)' if m.number == best.number else ''}", shown(m.value),
                          f"{m.second:.4g}", ", ".join(f"{k}={shown(v, k)}" for k, v in m.params.items()))
        console.print(table)
        console.print(s.rule, markup=False, highlight=False)
    console.print(f"[bold]{t.complete} complete, {t.pruned} pruned, {t.fail} failed trials[/]; "
                  f"{'retrained' if s.front else 'best'} trial {best.number} ({shown(best.value)}): {params}")
    run(s.run)


def _versus(title: str, contrasts: list[Contrast]) -> Table:
    table = Table("variant", "metric", "difference [95% CI]", "P(better) [95% CI]", "verdict", title=title,
                  caption="verdicts: paired t-tests, Holm-corrected over the treatments; equivalent: the 90% interval "
                          "inside ±margin")
    table.columns[0].overflow = "fold"
    for column in table.columns[2:]:  # numbers and verdicts whole: the variant's label folds instead
        column.no_wrap = True
    for v in contrasts:
        table.add_row(v.label, v.metric, difference(v), chance(v), f"[{VERDICTS[v.verdict]}]{v.verdict}[/]")
    return table


def _undecided(contrasts: list[Contrast]) -> None:
    """Under the verdicts: what more repeats would tell, for each difference the repeats could not decide."""
    for v in contrasts:
        if v.verdict == "no detectable difference" and power(v):
            console.print(f"  {v.label}, {v.metric}: {power(v)}", style="dim", markup=False, highlight=False)


def comparison(s: Comparison) -> None:
    """Every variant's means with their intervals, each against the baseline with a verdict, then the winner."""
    n = s.repeats
    shown_measures = ("best_val_accuracy", "test_accuracy", "test_loss", "epochs", "train_cpu_seconds",
                      "test_accuracy_per_cpu_minute")
    table = Table("variant", "n", "val acc", "test acc", "test loss", "epochs", "CPU s", "test acc per CPU-min",
                  caption="CPU s: per training; trainings running at once in this process share its CPU time equally "
                          "(trainlib/cost.py)",
                  title=f"best epoch of each variant, mean ± 95% interval over {'its' if s.rounds else n} repeats"
                  if n > 1
                  else "best epoch of each variant (one repeat: no interval)")
    table.columns[0].overflow = "fold"
    for g in s.summary:
        table.add_row(g.label, f"{g.n}" + (f" ({g.failed} failed)" if g.failed else ""),
                      *[with_interval(g.estimates.get(m), m) for m in shown_measures])
    console.print(table)
    against = [v for v in s.versus if v.metric in ("test_accuracy", "best_val_accuracy", "test_loss")]
    if against and n > 1:
        console.print(_versus(f"against the baseline {s.baseline} (paired repeats"
                              f"{', each where it stopped' if s.rounds else ''})", against))
        _undecided(against)
        if s.rounds:
            console.print(f"repeats in rounds: {s.rounds.line()}", markup=False, highlight=False)
    elif against:
        console.print("one repeat: no verdict (a single seed is an anecdote; give --repeats 3 or more)",
                      style="yellow")
    console.print(f"best (mean on validation): [bold]{s.best_variant}[/]"
                  + (f"; its best repeat on validation, {s.best_repeat}, is the model below" if n > 1 else ""))
    run(s.run)


def ensemble(s: Ensemble) -> None:
    table = Table("member", "weight", "val acc", "test acc", "epochs", "seconds", "state",
                  title=f"{s.method}: members and ensemble")
    table.columns[0].overflow = "fold"
    for r in s.members:
        table.add_row(*cells(r, ("member", "weight", "val_accuracy", "test_accuracy", "epochs", "seconds", "state")))
    m = s.run.metrics
    table.add_row("[bold]ensemble[/]", "", shown(m.get("val_accuracy")), f"[bold]{shown(m.get('test_accuracy'))}[/]",
                  "", "", "")
    console.print(table)
    console.print(f"best member on test: {s.best_member} ({shown(m.get('best_member_test_accuracy'))})")
    if s.repeats:
        console.print(_versus(f"the ensemble against its members over {s.repeats.n} repeats (the table above: "
                              "repeat 0, registered; best member chosen on validation)", s.repeats.versus))
        _undecided(s.repeats.versus)
    run(s.run)


def transfer(s: Transfer) -> None:
    t = s.transfer
    console.print(f"{t.strategy} from [bold]{t.source}[/] ({t.weights_copied} weight tensors reused)")
    run(s.run)


def demo(s: TransferDemo) -> None:
    table = Table("run", "test acc", "best epoch", "epochs to scratch's best val acc", "train s",
                  title=f"digits 0-4 -> digits 5-9 with {s.shots} labeled examples per class")
    for r in s.runs:
        table.add_row(*cells(r, ("run", "test_accuracy", "best_epoch", "epochs_to_scratch_best_val",
                                  "train_seconds")))
    console.print(table)
    transfer(s.finetune)
    console.print(f"MLflow run of the demo {s.run_id}: {s.mlflow_url}", markup=False, highlight=False)


def short(label: str) -> str:
    """A variant's label without key prefixes and the LR a study chose: `name=adam` for
    `optimizer.name=adam, optimizer.lr=0.001`."""
    parts = [p.partition("=") for p in re.split(r", (?=[\w.]+=)", label) if not p.startswith("optimizer.lr=")]
    return ", ".join(f"{key.rsplit('.', 1)[-1]}={value}" if sep else key for key, sep, value in parts) or label


CLAIM_STYLES = {"supported": "green", "contradicted": "red", "inconclusive": "default", "failed": "yellow"}


def technique_study(s: Study) -> None:
    """One row per claim: the measure, baseline and treatment with intervals, the difference, P(treatment better),
    the verdict (Holm-corrected over the entry's treatments). The report adds the CPU seconds of each arm."""
    from tasks.technique_study.report import as_estimate, signed

    table = Table("entry", "measure", "baseline", "treatment", "difference [95% CI]", "P(better)", "verdict",
                  title="technique study: mean ± 95% interval over paired repeats (the report names the variants)")
    for r in s.rows:
        if r.judgement is None:
            table.add_row(r.name, r.measure, "-", "-", "-", "-", f"[yellow]failed[/]: {r.error}")
            continue
        m, j = r.measure, r.judgement
        table.add_row(f"{r.name} ({short(j.worst.arm.label)})", m, with_interval(as_estimate(j.baseline.estimate), m),
                      with_interval(as_estimate(j.worst.arm.estimate), m), signed(j.worst.diff, m),
                      f"{j.worst.better.mean:.2f}" if j.worst.better else "-",
                      f"[{CLAIM_STYLES[r.verdict]}]{r.verdict}[/]")
    console.print(table)
    console.print(", ".join(f"{n} {v}" for v, n in s.counts.items() if n) + f" in {s.wall_seconds / 60:.1f} minutes")
    console.print(f"report: {s.report} (one page: {s.html})", markup=False, highlight=False)
    console.print(f"MLflow run {s.run_id}: {s.mlflow_url}", markup=False, highlight=False)


def variance(s: Variance) -> None:
    """Each source's spread and share of the variance, then what the split alone means for a comparison."""
    table = Table("source", "repeats", "mean", "sd [95% CI]", "share [95% CI]",
                  title=f"where the spread of {s.measure} comes from (each source's seed moved alone; all: every seed)")
    for x in s.sources:
        table.add_row(x.source, str(x.n), f"{x.mean:.4f}", *spread(x))
    console.print(table)
    console.print(s.reading(), markup=False, highlight=False)
    if s.failed:
        console.print(f"failed: {', '.join(s.failed)}", style="yellow", markup=False, highlight=False)
    console.print(f"MLflow run {s.run_id}: {s.mlflow_url} (variance.csv)", markup=False, highlight=False)


def lr_find(s: RangeTest) -> None:
    """The suggestion (or why there is none), what the sweep ran (how far, when it stopped early), the run's URL."""
    what = (f"suggested LR [bold]{shown(s.suggested_lr, 'lr')}[/] (steepest descent of the smoothed loss)"
            if s.suggested_lr is not None else "[yellow]no suggestion[/]: the loss diverged too soon; lower --start")
    ran = (f"{s.updates} updates from {s.start:g} to {s.end:g}" if s.stopped == "completed" else
           f"{s.updates} of {s.planned} updates, from {s.start:g} to {s.reached:.2g}, stopped early: the loss diverged")
    console.print(f"[bold green]done[/]: {what}; {ran}")
    console.print(f"MLflow run {s.run_id}: {s.mlflow_url} (lr_find.png)", markup=False, highlight=False)


def rerun(s: Rerun) -> None:
    """The metrics side by side, whether they are the original's exactly, what changed, the new run's URL."""
    table = Table("metric", "original", "rerun", "difference", title=f"rerun of {s.original} ({s.kind})")
    for metric, a, b in s.metrics:
        table.add_row(metric, shown(a, metric), shown(b, metric), f"{b - a:+.6g}")
    console.print(table)
    if s.exact:
        console.print(f"[bold green]reproduced exactly[/]: {len(s.metrics)} metrics equal to the original's")
    else:
        differ = [m for m, a, b in s.metrics if a != b]
        console.print(f"[yellow]not exactly[/]: {len(differ)} of {len(s.metrics)} metrics differ ({', '.join(differ)})")
    for line in s.changes:
        console.print(f"changed since: {line}", markup=False, highlight=False)
    if s.data_changed:
        console.print(f"data changed: digest {s.data_changed[0]} then, {s.data_changed[1]} now (--allow-data-change)",
                      style="yellow", markup=False, highlight=False)
    console.print(f"MLflow run {s.run_id} (tagged trainflow.rerun_of): {s.mlflow_url}", markup=False, highlight=False)
