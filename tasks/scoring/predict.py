"""Batch scoring: a registered version scores new data into a predictions file, and the scoring is recorded as a
`prediction` run in the model's experiment (tagged with the model, its version and aliases at scoring time, the
data's digest and row count; the predictions, the unreadable rows and a summary as artifacts)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks import events, tracking
from tasks.chain.report import artifact_key, link, run_url
from tasks.registry.model_ref import load_pyfunc
from tasks.scoring.plan import Scoring, ScoringPlan, reader
from tasks.summaries import Prediction, ScoredModel
from trainlib import plots
from trainlib.checkpoint import atomic_path
from trainlib.device import resolve_device
from trainlib.scoring import DriftReport, PredictionWriter, output_format, score


@dataclass(frozen=True)
class PredictionsRef:
    """The predictions file, the unreadable rows' file (if any) and what the scoring measured."""

    path: str
    errors_path: str | None
    rows: int
    errors: int
    metrics: dict[str, float] = field(hash=False)
    drift: DriftReport | None = field(hash=False)  # None when no row was scored
    confusion: list[list[int]] | None = field(hash=False)  # (K, K) over the labelled rows, if any

    def load(self) -> pd.DataFrame:
        """The predictions, one row per scored row."""
        return pd.read_csv(self.path) if self.path.lower().endswith(".csv") else pd.read_parquet(self.path)


@task(name="score")
def score_data(plan: ScoringPlan) -> PredictionsRef:
    """Score every readable row into plan.out (Parquet or CSV); unreadable rows go to `<out>.errors.csv`."""
    what, cfg = plan.what, plan.config
    source = reader(what, plan.data, None if plan.data else cfg)
    total = len(source)
    model = load_pyfunc(what.model, resolve_device(cfg.predict.device, "predict.device"), what.flavor)
    out, done = plan.out, [0]

    def progress(rows: int) -> None:
        done[0] += rows
        events.emit(events.RowsRead(done[0] + len(source.errors), total))  # read: scored or skipped

    with atomic_path(out) as tmp:  # a scoring that fails leaves no half-written predictions behind
        writer = PredictionWriter(tmp, what.spec.classes, source.labelled, output_format(out))
        result = score(model.predict, source.batches(cfg.predict.batch_size), what.spec, writer, source.errors,
                       cfg.predict.drift_threshold, progress)
    errors_path = None
    if result.errors:
        errors_path = f"{out}.errors.csv"
        with atomic_path(errors_path) as tmp:
            pd.DataFrame(result.errors, columns=["id", "reason"]).to_csv(tmp, index=False)
    return PredictionsRef(out, errors_path, result.rows, len(result.errors), result.metrics, result.drift,
                          result.confusion.tolist() if result.confusion is not None else None)


@task(name="record-prediction")
def record(what: Scoring, predictions: PredictionsRef, run_id: str) -> Prediction:
    """Metrics, tags, the files and a drift plot on the prediction run; a Prefect summary. -> the summary."""
    log, ref, drift = tracking.RunLogger(run_id), what.model, predictions.drift
    log.log_metrics(predictions.metrics | (_per_channel(drift) if drift else {}), step=0)
    log.set_tags({"drift": str(bool(drift and drift.drifted)).lower(), "scored_rows": predictions.rows,
                  "unreadable_rows": predictions.errors})
    log.log_artifact(predictions.path)
    if predictions.errors_path:
        log.log_artifact(predictions.errors_path)
    if drift:
        log.log_figure(plots.drift(drift.names, what.spec.mean, what.spec.std, drift.mean, drift.std), "drift.png")
    if predictions.confusion is not None:
        log.log_figure(plots.confusion(np.array(predictions.confusion), what.spec.classes), "confusion_matrix.png")
    out = Prediction(run_id, what.experiment, ScoredModel(ref.name, ref.version, ref.alias, list(ref.aliases), ref.uri),
                     predictions.rows, predictions.errors, predictions.path, predictions.errors_path,
                     predictions.metrics, drift, run_url(run_id))
    log.log_dict(out.json() | {"confusion": predictions.confusion}, "summary.json")
    create_markdown_artifact(_markdown(out), key=artifact_key(ref.name, "predictions"),
                             description="batch scoring summary")
    return out


def _per_channel(drift: DriftReport) -> dict[str, float]:
    """The scored inputs' mean and spread per channel or feature, and their drift, as metrics (`input_mean.NAME`,
    `input_std.NAME`, `drift_shift.NAME`, `drift_spread.NAME`; characters MLflow refuses in a name become _)."""
    out = {}
    for i, name in enumerate(drift.names):
        key = re.sub(r"[^A-Za-z0-9_.\- /]", "_", name).replace(" ", "_")
        out |= {f"input_mean.{key}": drift.mean[i], f"input_std.{key}": drift.std[i],
                f"drift_shift.{key}": drift.shift[i], f"drift_spread.{key}": drift.spread[i]}
    return out


def _markdown(out: Prediction) -> str:
    m, drift = out.model, out.drift
    lines = [f"# {m.describe()}: {out.rows} rows scored", "",
             "| | |", "|---|---|", f"| model | {m.uri} ({m.describe()}) |",
             f"| rows scored | {out.rows} |", f"| unreadable rows | {out.errors} |",
             f"| predictions | {out.out} |"]
    lines += [f"| {key} | {out.metrics[key]:.4f} |" for key in ("accuracy", "f1") if key in out.metrics]
    if drift:
        lines.append(f"| drift | {'DRIFT' if drift.drifted else 'none'} (score {drift.score:.2f}, threshold "
                     f"{drift.threshold:g}) |")
    return "\n".join([*lines, "", link("run", out.run_id)])
