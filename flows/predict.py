"""Batch scoring: plan (the version resolved once, the data checked against it) -> score -> record."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows.common import as_model
from tasks import tracking
from tasks.scoring.plan import digest, plan, start
from tasks.scoring.predict import record, score_data
from tasks.summaries import Prediction
from trainlib.config import PipelineConfig, override

DEFAULT_MODEL = "models:/digits-cnn@champion"


@flow(name="batch-predict", flow_run_name="predict {model}")
def batch_predict(model: str = DEFAULT_MODEL, data: str | None = None, config: PipelineConfig | str | None = None,
                  out: str | None = None, overrides: dict[str, Any] | None = None,
                  named: str | None = None) -> Prediction:
    """Score `data` (a folder of images, a CSV or Parquet file, an .npz or .npy of signals) or the data section of
    `config` with `model` (models:/NAME@ALIAS, /VERSION, or a run's: runs:/RUN_ID) into `out` (default: the project's
    predictions folder); `overrides` ({key: value}) change the config, e.g. predict.drift_threshold; `named`: the
    URI as the user gave it when `model` is the version it was resolved to already. Returns the scoring's
    summary."""
    cfg = override(as_model(config, PipelineConfig) if config is not None else PipelineConfig(), overrides or {})
    checked = plan(model, data, cfg, config is not None, out, named)
    what = checked.what
    run_id = start(what, data, cfg, digest(data, cfg), {"rows": checked.rows, "out": checked.out,
                                                        "predict.batch_size": cfg.predict.batch_size,
                                                        "predict.drift_threshold": cfg.predict.drift_threshold},
                   {"dataset.rows": checked.rows, "prefect.flow_run_id": str(flow_run.id),
                    "prefect.flow_run_name": str(flow_run.name), "prefect.flow_name": "batch-predict"})
    with tracking.finishing(run_id):
        return record(what, score_data(checked), run_id)
