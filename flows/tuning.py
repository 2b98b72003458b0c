"""Hyperparameter tuning: validate -> ingest -> split -> normalize -> search (parallel trials) ->
retrain the best config -> evaluate -> register -> report."""

from __future__ import annotations

import optuna
import yaml
from prefect import flow
from prefect.runtime import flow_run

from flows import plans
from flows.common import as_model, parameter, prepare_data, run_bounded, train_and_register
from flows.runners import Submit, fan_out, in_other_processes
from tasks import tracking
from tasks.chain.normalize import normalize
from tasks.chain.refs import DatasetRef, ManifestRef, StatsRef
from tasks.chain.split import merge_val
from tasks.events import Finished
from tasks.fanout.runs import trial
from tasks.record import start_run
from tasks.results import Retrained, TrialRun
from tasks.settings import workspace
from tasks.summaries import Tuning
from tasks.tuning import storage
from tasks.tuning.report import tuning_report
from tasks.tuning.storage import create_study
from trainlib.config import PipelineConfig, flatten, override
from trainlib.tuning import SearchConfig, chosen, decode, retrain_epochs, trial_base


def run_name() -> str:
    return f"{parameter('config', PipelineConfig).name}: {parameter('search', SearchConfig).strategy} search"


@flow(name="tuning", flow_run_name=run_name)
def tuning_flow(config: PipelineConfig | str, search: SearchConfig | str, refresh: bool = False,
                runner: str | None = None, parent_run_id: str | None = None) -> Tuning:
    """Search `search.space` around `config`, scoring trials on `search.metric` (validation), then
    retrain the best config, test it and register it through the gate. Returns the study summary.
    Config and search may be given as YAML paths; `runner` says where trials run (flows/runners.py)."""
    plan = plans.tune(as_model(config, PipelineConfig), as_model(search, SearchConfig), runner)
    config, search, study_name = plan.config, plan.search, plan.name
    run_id = start_run(config, flatten(search, "search."), {"search.yaml": yaml.safe_dump(search.model_dump())},
                       parent_run_id=parent_run_id, kind="tuning")
    if search.storage is None and in_other_processes(plan.runner):  # trials in other processes report to a file
        search = search.model_copy(update={"storage": storage.journal_url(workspace(str(flow_run.id)) / "study.log")})
    with tracking.finishing(run_id):
        dataset, manifest, stats = prepare_data(config, run_id, refresh)
        study = create_study(search, study_name, config.training.epochs)
        try:
            with fan_out(plan.runner, plan.parallel, run_id) as submit:
                children = search_trials(plan.trial_base, search, study, study_name, dataset, manifest, stats, run_id,
                                         submit)
            retrain = retrain_best(config, search, study, dataset, manifest, run_id)
            return tuning_report(config.name, search, study_name, config.training.epochs, run_id, children, retrain)
        finally:
            storage.release(study_name)


def search_trials(config: PipelineConfig, search: SearchConfig, study: optuna.Study, study_name: str,
                  dataset: DatasetRef, manifest: ManifestRef, stats: StatsRef, run_id: str,
                  submit: Submit) -> list[str]:
    """Ask the study for trials and run them, `search.max_parallel` at a time, until the budget (trials
    the study should hold, with those of other processes sharing it) or the timeout is spent; returns the
    trials' MLflow run ids."""
    with storage.AskTell(study, search, study_name, config) as trials:

        def submit_next():
            if (t := trials.ask()) is None:
                return None
            return t, submit(trial, t.config, t.params, search, study_name, t.trial_id, t.number, dataset,
                             manifest, stats, run_id)

        def told(asked: storage.Asked, result: TrialRun | BaseException) -> Finished:
            trials.tell(asked, result)
            if isinstance(result, BaseException):
                return Finished(f"trial {asked.number}", state="failed")
            return Finished(f"trial {asked.number}", result.value, result.state)

        run_bounded(search.max_parallel, submit_next, told)
    trials.check_complete()
    return trials.run_ids


def retrain_best(config: PipelineConfig, search: SearchConfig, study: optuna.Study, dataset: DatasetRef,
                 manifest: ManifestRef, parent_run_id: str) -> Retrained:
    """Train the best trial's config again (on train, or train+val for its best number of epochs), test
    it and register it through the gate, in a child run."""
    best = chosen(study, search)
    best_config = override(trial_base(config, search, parallel=1), decode(best.params, search.space))
    if search.retrain == "train+val":
        manifest = merge_val(manifest)
        best_config = override(best_config, {"training.epochs": retrain_epochs(best),
                                             "training.early_stopping.enabled": False})
    stats = normalize(dataset, manifest, best_config.normalize, best_config.data.workers)
    run_id = start_run(best_config, {"search.best_trial": best.number}, parent_run_id=parent_run_id,
                       run_name=f"best: trial {best.number} on {search.retrain}", kind="retrain")
    ws = str(workspace(f"{flow_run.id}-best"))
    with tracking.finishing(run_id):
        _, metrics, registered = train_and_register(best_config, dataset, manifest, stats, ws, run_id)
    return Retrained(run_id, metrics, registered)
