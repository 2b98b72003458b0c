"""Train: fit the configured model, logging every epoch to MLflow; continues from its checkpoint on retry, and
after a killed process when the same training runs again (tasks/chain/resume.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prefect import task
from prefect.runtime import flow_run

from tasks.chain import resume
from tasks.chain.refs import AugmentedRef, DatasetRef, ManifestRef, SourceRef, StatsRef, TrainedRef
from tasks.events import EpochEvents
from tasks.tracking import RunLogger
from trainlib import plots, recipe
from trainlib.config import PipelineConfig
from trainlib.errors import TrainflowError, TrainingError
from trainlib.models import parameter_count, save_model


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
def train(config: PipelineConfig, dataset: DatasetRef, manifest: ManifestRef, stats: StatsRef,
          augmented: AugmentedRef, workspace: str, run_id: str, source: SourceRef | None = None) -> TrainedRef:
    """-> the trained model file and how training went. A retry continues from the last epoch's checkpoint.
    With a transfer `source` (from fetch-source), training starts from its weights. Emits an `epoch` event
    (tasks/events.py) after every epoch."""
    ws, log = Path(workspace), RunLogger(run_id)
    ds = dataset.load()
    key = resume.training_key(config, dataset, manifest, stats, augmented, source)
    with resume.slot(key, ws, run_id, str(flow_run.id)) as held:
        if held.previous:  # the same training was killed in another run: continue it
            resume.adopt(held.previous, held.checkpoint, run_id)
        model, fit = recipe.train(config, ds, manifest.load(), stats.load(), train_data=augmented.load(),
                                  callbacks=[EpochEvents(run_id)], logger=log, checkpoint=held.checkpoint,
                                  resume=True, source=source.path if source else None)
        if held.checkpoint != ws / "checkpoint.pt":
            shutil.copyfile(held.checkpoint, ws / "checkpoint.pt")
    save_model(ws / "model.pt", model, classes=ds.classes, config=config.model_dump(mode="json"))
    trained = TrainedRef(str(ws / "model.pt"), str(ws / "history.json"), fit.best_epoch or fit.stopped_epoch,
                         fit.stopped_epoch, fit.stop_reason, fit.train_seconds, fit.cost)
    size = {"model_parameters": parameter_count(model),
            "model_bytes": (ws / "model.pt").stat().st_size}  # the model card's
    log.log_metrics({"best_epoch": trained.best_epoch, "stopped_epoch": trained.stopped_epoch,
                     "train_seconds": trained.train_seconds} | size | fit.cost.metrics() | fit.averaged
                    | (fit.calibration.metrics() if fit.calibration else {}),
                    step=fit.stopped_epoch)
    log.set_tags({"stop_reason": fit.stop_reason, "updates_per_epoch": fit.updates_per_epoch})
    log.log_figure(plots.learning_curves(fit.history, fit.best_epoch), "learning_curves.png")
    log.log_figure(plots.lr_schedule(fit.lrs, fit.updates_per_epoch), "lr_schedule.png")
    log.log_artifact(str(ws / "checkpoint.pt"), "checkpoints")
    log.log_artifact(str(ws / "model.pt"), "checkpoints")  # architecture + weights: a transfer-learning source
    Path(trained.history).write_text(json.dumps(fit.history))
    return trained
