"""The MLflow runs of a pipeline: start one (params, tags, config), and record its data. Every trainflow run
starts through `open_run` (a flow's own run, a trial, a variant, a member) and ends through
tasks.tracking.finishing."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from prefect import task
from prefect.runtime import flow_run

from tasks import tracking
from tasks.chain.refs import DatasetRef, ManifestRef, StatsRef
from trainlib.config import PipelineConfig, flatten, to_yaml
from trainlib.errors import ConfigError


def open_run(config: PipelineConfig, run_name: str, kind: str, parent_run_id: str | None = None,
             params: dict | None = None, tags: dict | None = None, files: dict[str, str] | None = None) -> str:
    """A run in the experiment named after the config (nested under `parent_run_id`, if given) recording the
    whole config (flattened params and config.yaml), `params`, `tags` and text `files`; `kind` (training,
    tuning, retrain, comparison, trial, variant, member, ...) is its `trainflow.kind` tag. -> its id."""
    run_id = tracking.start_run(config.name, run_name, flatten(config) | (params or {}),
                                {"trainflow.kind": kind, **(tags or {})}, parent_run_id)
    log = tracking.RunLogger(run_id)
    with tracking.failed_if_interrupted(run_id):
        for name, text in {"config.yaml": to_yaml(config), **(files or {})}.items():
            log.log_text(text, name)
    return run_id


@task(name="start-run")
def start_run(config: PipelineConfig, extra_params: dict[str, Any] | None = None,
              extra_text: dict[str, str] | None = None, parent_run_id: str | None = None,
              run_name: str | None = None, kind: str = "training") -> str:
    """The MLflow run of this flow run (or a child of `parent_run_id`), tagged with the flow run; returns its
    id. `extra_params` (e.g. the search file, flattened) and `extra_text` files are recorded with it."""
    tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name),
            "prefect.flow_name": str(flow_run.flow_name)}
    return open_run(config, run_name or flow_run.name or config.name, kind, parent_run_id, extra_params, tags,
                    extra_text)


@task(name="record-data")
def record_data(run_id: str, dataset: DatasetRef, manifest: ManifestRef, stats: StatsRef) -> None:
    """Dataset digest tag, the split manifests as dataset inputs, the manifest and statistics files; with label
    noise, how many train labels were flipped."""
    log, rows = tracking.RunLogger(run_id), manifest.load()
    tags = {"dataset.digest": dataset.digest, "dataset.samples": dataset.samples, "dataset.skipped": dataset.skipped}
    if "clean_label" in rows.columns:
        tags["train_labels_flipped"] = int((rows["label"] != rows["clean_label"]).sum())
    log.set_tags(tags)
    source = Path(manifest.path).resolve().as_uri()  # the manifest file these datasets are rows of
    tracking.log_manifests(run_id, rows, source, dataset.digest)
    log.log_artifact(manifest.path)
    log.log_artifact(stats.path)


@dataclass(frozen=True)
class Recorded:
    """A run as recorded: what `trainflow rerun` replays and compares with."""

    run_id: str
    kind: str  # its trainflow.kind: training, variant, ...
    config: str  # its config.yaml
    digest: str | None  # its dataset's
    metrics: dict[str, float]
    tags: dict[str, str]


def recorded(run_id: str) -> Recorded:
    """The run `run_id` as it was recorded; one readable error for an unknown run or one without its config."""
    try:
        run = tracking.client().get_run(run_id)
    except MlflowException:
        raise ConfigError(f"no MLflow run {run_id!r} in this project's store ({tracking.client().tracking_uri})"
                          ) from None
    with tempfile.TemporaryDirectory() as folder:
        try:
            config = Path(tracking.client().download_artifacts(run_id, "config.yaml", folder)).read_text()
        except (MlflowException, OSError):
            raise ConfigError(f"run {run_id} recorded no config.yaml: it was not made by trainflow") from None
    tags = run.data.tags
    return Recorded(run_id, tags.get("trainflow.kind", "unknown"), config, tags.get("dataset.digest"),
                    dict(run.data.metrics), dict(tags))
