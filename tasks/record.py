"""The MLflow run of a pipeline: start it (params, tags, config), record its data, finish it."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.runtime import flow_run

from tasks import tracking
from tasks.refs import DatasetRef, ManifestRef, StatsRef
from trainlib.config import PipelineConfig, flatten, to_yaml


@task(name="start-run")
def start_run(config: PipelineConfig, extra_params: dict | None = None, extra_text: dict[str, str] | None = None,
              parent_run_id: str | None = None, run_name: str | None = None, kind: str = "training") -> str:
    """The MLflow run of this flow run (or a child of `parent_run_id`), in the experiment named after the
    config; returns its id. `extra_params` (e.g. the search file, flattened) and `extra_text` files are
    recorded with it; `kind` (training, study, retrain, comparison) is its `trainflow.kind` tag."""
    tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name),
            "prefect.flow_name": str(flow_run.flow_name), "trainflow.kind": kind}
    run_id = tracking.start_run(config.name, run_name or flow_run.name or config.name,
                                flatten(config) | (extra_params or {}), tags, parent_run_id)
    log = tracking.RunLogger(run_id)
    for name, text in {"config.yaml": to_yaml(config), **(extra_text or {})}.items():
        log.log_text(text, name)
    return run_id


@task(name="record-data")
def record_data(run_id: str, dataset: DatasetRef, manifest: ManifestRef, stats: StatsRef) -> None:
    """Dataset digest tag, the split manifests as dataset inputs, the manifest and statistics files."""
    log = tracking.RunLogger(run_id)
    log.set_tags({"dataset.digest": dataset.digest, "dataset.samples": dataset.samples})
    source = Path(manifest.path).resolve().as_uri()  # the manifest file these datasets are rows of
    tracking.log_manifests(run_id, manifest.load(), source, dataset.digest)
    log.log_artifact(manifest.path)
    log.log_artifact(stats.path)


@task(name="finish-run")
def finish_run(run_id: str, failure: str | None = None) -> None:
    """Mark the run FINISHED, or FAILED with `failure` as the reason."""
    tracking.finish_run(run_id, failure)
