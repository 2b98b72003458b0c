"""The report of a tuning study: Optuna's plots on the parent run, a Prefect table of every trial."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict

import matplotlib.pyplot as plt
import optuna
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks import tracking
from tasks.chain.report import artifact_key, link, summary
from tasks.results import Retrained
from tasks.summaries import BestTrial, TrialCounts, Tuning
from tasks.tuning.storage import open_study
from tasks.wording import rounded_row, shown
from trainlib.tuning import SearchConfig, chosen, decode

PLOTS = {
    "optimization_history.png": optuna.visualization.matplotlib.plot_optimization_history,
    "param_importances.png": optuna.visualization.matplotlib.plot_param_importances,
    "parallel_coordinate.png": optuna.visualization.matplotlib.plot_parallel_coordinate,
}


def _log_plots(log: tracking.RunLogger, study: optuna.Study) -> list[str]:
    """Log each plot Optuna can draw for this study; returns the names of those it could not."""
    skipped = []
    for name, draw in PLOTS.items():
        try:
            with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
                warnings.simplefilter("ignore")
                ax = draw(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. importances need 2+ completed trials
            skipped.append(name)
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(9, 5)
        log.log_figure(fig, name)
        plt.close(fig)
    return skipped


def _rows(study: optuna.Study, search: SearchConfig) -> list[dict]:
    second = [search.second_metric] if search.second_metric else []
    return [rounded_row({"trial": t.number, "state": t.state.name.lower(),
                         **dict(zip([search.metric, *second], t.values or [None] * (1 + len(second)), strict=True)),
                         "epochs": max(t.intermediate_values, default=None),
                         "seconds": t.duration.total_seconds() if t.duration else None,
                         **{k: t.params.get(k) for k in search.space}, "run_id": t.user_attrs.get("run_id")})
            for t in study.get_trials(deepcopy=False)]


@task(name="tuning-report")
def tuning_report(name: str, search: SearchConfig, study_name: str, epochs: int, parent_run_id: str,
                  children: list[str], retrain: Retrained) -> Tuning:
    """-> the tuning's summary (`trainflow tune`)."""
    study = open_study(search, study_name, epochs)
    best = chosen(study, search)
    best_params = decode(best.params, search.space)
    log = tracking.RunLogger(parent_run_id)
    skipped = _log_plots(log, study)
    front, rule = _front(log, study, search) if search.second_metric else ([], None)
    # the study's best metric: the best trial's, or the front's best (the member retrained may be up to tolerance below)
    top = (max if search.goal == "maximize" else min)(t.value for t in front) if front else best.values[0]
    rows = _rows(study, search)
    counts = TrialCounts(*(sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail")))
    log.log_metrics({f"best_{search.metric}": top, **{f"trials_{k}": v for k, v in asdict(counts).items()},
                     "front_size": len(front)}, 0)
    log.set_tags({"best_trial": best.number, "best_params": json.dumps(best_params, default=str),
                  "study_name": study_name})
    create_table_artifact(rows, key=artifact_key(name, "trials"), description=f"every trial of {study_name}")
    lines = [f"# {study_name}: best trial {best.number}", "",
             f"{search.strategy} search: {len(rows)} trials ({counts.complete} complete, {counts.pruned} "
             f"pruned, {counts.fail} failed); best {search.metric} {shown(top)}",
             *([f"Pareto front of {search.metric} and {search.second_metric}: {len(front)} trials "
                f"({', '.join(f'#{t.number}' for t in front)}); {rule}"] if front else []),
             "", "| parameter | value |", "|---|---|", *[f"| {k} | {shown(v, k)} |" for k, v in best_params.items()],
             "", f"Retrained on {search.retrain}: test accuracy {shown(retrain.metrics['test_accuracy'])}; "
             f"{retrain.registered.line()}.", "", link("study run", parent_run_id)]
    create_markdown_artifact("\n".join(lines), key=artifact_key(name, "tuning"), description="tuning summary")
    picked = BestTrial(best.number, best_params, best.values[0], best.values[1] if front else None)
    return Tuning(summary(name, parent_run_id, {**retrain.metrics, f"best_{search.metric}": top},
                          retrain.registered), picked, counts, [*children, retrain.run_id], skipped, front, rule,
                  search.second_metric)


def _front(log: tracking.RunLogger, study: optuna.Study, search: SearchConfig) -> tuple[list[BestTrial], str]:
    """A two-objective study's Pareto front (lowest cost first), drawn on the run as pareto_front.png, and the rule
    that picked the member retrained."""
    front = sorted(study.best_trials, key=lambda t: (t.values[1], t.number))
    with warnings.catch_warnings():  # experimental, as Optuna's other matplotlib plots
        warnings.simplefilter("ignore")
        ax = optuna.visualization.matplotlib.plot_pareto_front(study, target_names=[search.metric,
                                                                                    search.second_metric])
    ax.figure.set_size_inches(7, 5)
    log.log_figure(ax.figure, "pareto_front.png")
    plt.close(ax.figure)
    rule = (f"retrained: the lowest {search.second_metric} of the members within {search.tolerance:g} of the front's "
            f"best {search.metric} (search.tolerance)")
    return [BestTrial(t.number, decode(t.params, search.space), t.values[0], t.values[1]) for t in front], rule
