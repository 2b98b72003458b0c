"""The report of an ensemble: every member's and the ensemble's val/test metrics (table and plot) and the
members' pairwise disagreement."""

from __future__ import annotations

import numpy as np
import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks import tracking
from tasks.report import artifact_key, link, summary
from tasks.wording import markdown_row, registration, rounded_row, shown
from trainlib import plots
from trainlib.ensemble import EnsembleConfig

COLUMNS = ["val_accuracy", "test_accuracy", "test_f1", "test_loss"]


def _row(name: str, state: str, metrics: dict, **extra) -> dict:
    return {"member": name, "state": state, **rounded_row(metrics, COLUMNS), **rounded_row(extra)}


@task(name="ensemble-report")
def ensemble_report(name: str, run_id: str, ensemble: EnsembleConfig, members: list[dict], combined: dict,
                    registered: dict, workspace: str) -> dict:
    """-> the ensemble's summary (as `trainflow ensemble --json` prints it)."""
    done = [x for x in members if x["state"] == "complete"]
    weights = {} if ensemble.combination.learned else dict(  # a meta-learner weighs the members itself
        zip((x["label"] for x in done), combined["weights"] or [1.0] * len(done), strict=True))
    rows = [_row(x["label"], x["state"], x.get("metrics", {}), weight=weights.get(x["label"]),
                 epochs=x.get("epochs"), seconds=x.get("seconds"),
                 run_id=x.get("run_id"), source=x.get("source"), error=x.get("error")) for x in members]
    ensemble_row = _row(f"ensemble ({ensemble.method})", "complete", combined["metrics"], run_id=run_id)
    best = max(done, key=lambda x: (x["metrics"]["test_accuracy"], -x["metrics"]["test_loss"]))
    log = tracking.RunLogger(run_id)
    log.log_metrics({"best_member_test_accuracy": best["metrics"]["test_accuracy"],
                     "mean_disagreement": _mean_off_diagonal(combined["disagreement"])}, step=0)
    log.log_figure(plots.ensemble_scores({r["member"]: r for r in [*rows, ensemble_row] if r["state"] == "complete"}),
                   "ensemble_scores.png")
    log.log_figure(plots.disagreement(np.array(combined["disagreement"]), [x["label"] for x in done]),
                   "member_disagreement.png")
    table = f"{workspace}/ensemble.csv"
    pd.DataFrame([*rows, ensemble_row]).to_csv(table, index=False)
    log.log_artifact(table)
    log.log_dict({"members": [x["label"] for x in done], "disagreement": combined["disagreement"]},
                 "member_disagreement.json")
    create_table_artifact([*rows, ensemble_row], key=artifact_key(name, "ensemble"),
                          description="every member and the ensemble, val and test")
    lines = [f"# {name}: {ensemble.method} of {len(done)} members (of {len(members)})", "",
             "| member | weight | val acc | test acc | epochs | seconds |", "|---|---|---|---|---|---|",
             *[markdown_row(r, ("member", "weight", "val_accuracy", "test_accuracy", "epochs", "seconds"))
               for r in rows],
             f"| **ensemble** | | {shown(ensemble_row['val_accuracy'])} | **{shown(ensemble_row['test_accuracy'])}** "
             "| | |", "",
             f"Mean pairwise disagreement on test: {_mean_off_diagonal(combined['disagreement']):.4f}.", "",
             registration(registered) + ".", "", link("ensemble run", run_id)]
    create_markdown_artifact("\n".join(lines), key=artifact_key(name, "ensemble-summary"), description="ensemble")
    metrics = combined["metrics"] | {"best_member_test_accuracy": best["metrics"]["test_accuracy"]}
    return summary(name, run_id, metrics, registered, method=ensemble.method, best_member=best["label"],
                   members=rows, disagreement=combined["disagreement"],
                   children=[x["run_id"] for x in members if x.get("run_id")])


def _mean_off_diagonal(matrix: list[list[float]]) -> float:
    m = np.array(matrix)
    return float(m[~np.eye(len(m), dtype=bool)].mean()) if len(m) > 1 else 0.0
