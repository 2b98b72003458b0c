"""The report of a technique comparison: overlaid validation and LR curves, a table of every variant."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks import tracking
from tasks.report import artifact_key, link, summary
from tasks.wording import markdown_row, outcome, registration, rounded, rounded_row
from trainlib import plots

COLUMNS = ["best_val_loss", "best_val_accuracy", "test_accuracy", "test_f1", "test_loss"]


@task(name="compare-report")
def compare_report(name: str, parent_run_id: str, variants: list[dict], best: dict, registered: dict,
                   workspace: str) -> dict:
    """-> the comparison's summary (as `trainflow compare --json` prints it)."""
    log = tracking.RunLogger(parent_run_id)
    done = [v for v in variants if v["state"] == "complete"]
    curves = {v["label"]: json.loads(Path(v["curves"]).read_text()) for v in done}
    log.log_figure(plots.compare_curves({k: c["history"] for k, c in curves.items()}), "compare_val_curves.png")
    log.log_figure(plots.compare_lrs({k: (c["lrs"], c["updates_per_epoch"]) for k, c in curves.items()}),
                   "compare_lr_curves.png")
    rows = [{"variant": v["label"], "state": v["state"],
             **rounded_row(v.get("metrics", {}), COLUMNS),
             "epochs": v.get("epochs"), "best_epoch": v.get("best_epoch"),
             "seconds": rounded(v.get("seconds"), "seconds"), "run_id": v.get("run_id"),
             "error": v.get("error")} for v in variants]
    table = f"{workspace}/comparison.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    log.log_artifact(table)
    log.set_tags({"best_variant": best["label"], "gate": outcome(registered)})
    create_table_artifact(rows, key=artifact_key(name, "comparison"), description="every variant, side by side")
    lines = [f"# {name}: {len(done)} of {len(variants)} variants trained; best: {best['label']}", "",
             "| variant | best val acc | test acc | epochs | seconds |", "|---|---|---|---|---|",
             *[markdown_row(r, ("variant", "best_val_accuracy", "test_accuracy", "epochs", "seconds")) for r in rows],
             "",
             f"Best variant: {best['label']}; {registration(registered)}.", "", link("comparison run", parent_run_id)]
    create_markdown_artifact("\n".join(lines), key=artifact_key(name, "compare"), description="comparison summary")
    return summary(name, parent_run_id, best["metrics"], registered, best_variant=best["label"],
                   children=[v["run_id"] for v in variants if v.get("run_id")], variants=rows)
