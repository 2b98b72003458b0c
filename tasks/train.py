"""Train: fit the configured model, logging every epoch to MLflow; continues from its checkpoint on retry, and
after a killed process when the same training runs again (tasks/resume.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from prefect import task
from prefect.runtime import flow_run

from tasks import resume
from tasks.tracking import RunLogger
from trainlib import plots, recipe
from trainlib.config import PipelineConfig
from trainlib.data.batches import TensorData
from trainlib.data.normalize import NormStats
from trainlib.data.sources import load_dataset
from trainlib.data.split import load_manifest
from trainlib.errors import TrainflowError, TrainingError
from trainlib.models import save_model

# Epoch callbacks of this process (the CLI's progress bar); a worker process has none.
LISTENERS: list = []


def _retry_unexpected(task, task_run, state) -> bool:
    """Retry only unexpected failures: bad input and a diverging loss fail the same way every time."""
    try:
        state.result()
    except (TrainflowError, TrainingError):
        return False
    except Exception:
        return True
    return True


@task(name="train", retries=2, retry_delay_seconds=2, retry_condition_fn=_retry_unexpected)
def train(config: PipelineConfig, dataset: dict, manifest: dict, norm: dict, augmented: dict, workspace: str,
          run_id: str, source: dict | None = None) -> dict:
    """-> {model, history (files), best_epoch, stopped_epoch, stop_reason}. A retry continues from the last
    epoch's checkpoint. With a transfer `source` (from fetch-source), training starts from its weights."""
    ws, log = Path(workspace), RunLogger(run_id)
    ds, m = load_dataset(dataset["path"]), load_manifest(manifest["path"])
    expanded = augmented.get("expanded")
    train_data = TensorData(**torch.load(expanded, weights_only=True)) if expanded else None
    key = resume.training_key(config, dataset, manifest, norm, augmented, source)
    with resume.slot(key, ws, run_id, str(flow_run.id)) as held:
        if held.previous:  # the same training was killed in another run: continue it
            resume.adopt(held.previous, held.checkpoint, run_id)
        model, fit = recipe.train(config, ds, m, NormStats.load(norm["path"]), train_data=train_data,
                                  callbacks=list(LISTENERS), logger=log, checkpoint=held.checkpoint, resume=True,
                                  source=source["path"] if source else None)
        if held.checkpoint != ws / "checkpoint.pt":
            shutil.copyfile(held.checkpoint, ws / "checkpoint.pt")
    save_model(ws / "model.pt", model, classes=ds.classes, config=config.model_dump(mode="json"))
    summary = {"best_epoch": fit.best_epoch or fit.stopped_epoch, "stopped_epoch": fit.stopped_epoch,
               "train_seconds": sum(h["epoch_seconds"] for h in fit.history)}
    log.log_metrics(summary, step=fit.stopped_epoch)
    log.set_tags({"stop_reason": fit.stop_reason, "updates_per_epoch": fit.updates_per_epoch})
    log.log_figure(plots.learning_curves(fit.history, fit.best_epoch), "learning_curves.png")
    log.log_figure(plots.lr_schedule(fit.lrs, fit.updates_per_epoch), "lr_schedule.png")
    log.log_artifact(str(ws / "checkpoint.pt"), "checkpoints")
    log.log_artifact(str(ws / "model.pt"), "checkpoints")  # architecture + weights: a transfer-learning source
    (ws / "history.json").write_text(json.dumps(fit.history))
    return {"model": str(ws / "model.pt"), "history": str(ws / "history.json"), "stop_reason": fit.stop_reason,
            **summary}
