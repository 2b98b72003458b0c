"""Ensembles: validate -> ingest -> split -> normalize -> train the members (in parallel, or in sequence
for boosting) -> combine -> register -> report."""

from __future__ import annotations

import yaml
from prefect import flow
from prefect.runtime import flow_run

from flows import plans
from flows.common import as_model, finished, parameter, prepare_data, run_bounded
from flows.runners import Submit, fan_out
from tasks import tracking
from tasks.chain.refs import DatasetRef, ManifestRef, StatsRef
from tasks.ensembles.combine import combine, register_ensemble
from tasks.ensembles.members import boost_weights, check_registered, member, registered_member
from tasks.ensembles.report import ensemble_repeats_report, ensemble_report
from tasks.events import Finished
from tasks.record import start_run
from tasks.results import MemberOutcome, MemberRun
from tasks.settings import workspace
from tasks.summaries import Ensemble
from trainlib.config import PipelineConfig, flatten
from trainlib.ensemble import METHODS, EnsembleConfig, Member, registered_name
from trainlib.errors import TrainingError


def run_name() -> str:
    return f"{parameter('config', PipelineConfig).name}: {parameter('ensemble', EnsembleConfig).method} ensemble"


@flow(name="ensemble", flow_run_name=run_name)
def ensemble_pipeline(config: PipelineConfig | str, ensemble: EnsembleConfig | str, refresh: bool = False,
                      runner: str | None = None, repeats: int = 1, resplit: bool = False,
                      parent_run_id: str | None = None) -> Ensemble:
    """Train (or, for voting, reuse) the members of `ensemble` on the same data and split, combine them
    into one model, test it and register it through the gate. Returns the ensemble's summary.
    Config and ensemble may be given as YAML paths; `runner` says where members train (flows/runners.py).
    With `repeats` > 1 the whole ensemble is trained that many times (plans.Ensemble.repeat: new seeds, and a new
    split with `resplit`), each a child run, and the summary adds `repeats`: the ensemble against its best member
    (on validation) and its mean member, repeat by repeat, with 95% intervals and verdicts."""
    plan = plans.ensemble(as_model(config, PipelineConfig), as_model(ensemble, EnsembleConfig), runner, repeats,
                          resplit)
    if plan.repeats > 1:
        return repeated(plan, refresh, parent_run_id)
    config, ensemble, members = plan.config, plan.ensemble, plan.members
    if uris := [m.uri for m in members if m.uri]:
        check_registered(uris)
    run_id = start_run(config, flatten(ensemble, "ensemble."),
                       {"ensemble.yaml": yaml.safe_dump(ensemble.model_dump(mode="json"), sort_keys=False)},
                       parent_run_id=parent_run_id, kind="ensemble")
    ws = str(workspace(str(flow_run.id)))
    with tracking.finishing(run_id):
        dataset, manifest, stats = prepare_data(config, run_id, refresh)
        train = boost if METHODS[ensemble.method].sequential else train_members
        with fan_out(plan.runner, plan.parallel, run_id) as submit:
            trained, weights = train(config, ensemble, members, dataset, manifest, stats, run_id, ws, submit)
        done = [t.run for t in trained if t.state == "complete" and t.run is not None]
        combined = combine(config, ensemble, done, weights, dataset, manifest, run_id, ws)
        registered = register_ensemble(registered_name(config.name), config.register, combined, dataset, stats,
                                       run_id)
        return ensemble_report(config.name, run_id, ensemble, trained, combined, registered, ws)


def repeated(plan: plans.Ensemble, refresh: bool, parent_run_id: str | None = None) -> Ensemble:
    """The ensemble trained plan.repeats times under one parent run; repeat 0 is registered, the others are
    evidence. -> repeat 0's summary with `repeats` (ensemble_repeats_report)."""
    run_id = start_run(plan.config, flatten(plan.ensemble, "ensemble.") | {"repeats": plan.repeats,
                                                                         "resplit": plan.resplit},
                       parent_run_id=parent_run_id, kind="ensemble-repeats",
                       run_name=f"{run_name()} x {plan.repeats} repeats")
    ws = str(workspace(str(flow_run.id)))
    with tracking.finishing(run_id):
        summaries = []
        for i in range(plan.repeats):
            config, settings = plan.repeat(i)
            summaries.append(ensemble_pipeline(config, settings, refresh, plan.runner, parent_run_id=run_id))
        return ensemble_repeats_report(config.name, run_id, plan.ensemble.method, summaries, ws)


def _outcome(result: MemberRun | BaseException, name: str) -> MemberOutcome:
    if isinstance(result, BaseException):
        return MemberOutcome(name, "failed", error=f"{type(result).__name__}: {result}")
    return MemberOutcome(name, "complete", result)


def _done(member: MemberOutcome) -> Finished:
    """What progress shows of a member: its best validation accuracy (a registered one's validation accuracy)."""
    metrics = member.run.metrics if member.run else {}
    return Finished(member.label, metrics.get("best_val_accuracy", metrics.get("val_accuracy")), member.state)


def _enough(ensemble: EnsembleConfig, trained: list[MemberOutcome]) -> None:
    """Fail unless at least min_members (of those attempted) trained: a failed member is recorded, not fatal."""
    complete = sum(t.state == "complete" for t in trained)
    if complete < min(ensemble.min_members, len(trained)) or not complete:
        raise TrainingError(f"only {complete} of {len(trained)} ensemble members trained, fewer than "
                            f"ensemble.min_members ({ensemble.min_members}); see the failed members' runs")


def train_members(config: PipelineConfig, ensemble: EnsembleConfig, members: list[Member], dataset: DatasetRef,
                  manifest: ManifestRef, stats: StatsRef, run_id: str, ws: str,
                  submit: Submit) -> tuple[list[MemberOutcome], None]:
    """Bagging, stacking, voting: every member at once, up to max_parallel at a time. -> (results, no weights)."""
    queue, results, oof = list(enumerate(members)), {}, ensemble.out_of_fold()

    def submit_next():
        if not queue:
            return None
        i, m = queue.pop(0)
        if m.uri:
            return i, submit(registered_member, config, m.name, m.uri, dataset, manifest, run_id, ws)
        return i, submit(member, m.config, m.name, m.overrides, ensemble.resample(i), oof, dataset, manifest, stats,
                         run_id, ws)

    def on_done(i: int, result: MemberRun | BaseException) -> Finished:
        results[i] = _outcome(result, members[i].name)
        return _done(results[i])

    run_bounded(ensemble.max_parallel, submit_next, on_done)
    trained = [results[i] for i in range(len(members))]
    _enough(ensemble, trained)
    return trained, None


def boost(config: PipelineConfig, ensemble: EnsembleConfig, members: list[Member], dataset: DatasetRef,
          manifest: ManifestRef, stats: StatsRef, run_id: str, ws: str,
          submit: Submit) -> tuple[list[MemberOutcome], list[float]]:
    """Boosting (SAMME): members in sequence, each on a resample drawn by the sample weights its predecessors
    left. -> (results, vote weights of the complete members)."""
    weights, trained, alphas = None, [], []
    for i, m in enumerate(members):
        future = submit(member, m.config, m.name, m.overrides, ensemble.resample(i, weights), None, dataset, manifest,
                        stats, run_id, ws)
        result = future.result(raise_on_failure=False)
        outcome = _outcome(result, m.name)
        finished(_done(outcome))
        if outcome.run is None:  # failed: the next round draws from the same weights
            trained.append(outcome)
            continue
        step = boost_weights(weights, outcome.run, dataset, manifest, ensemble.learning_rate, ws, i)
        if step.alpha > 0:
            trained.append(MemberOutcome(m.name, "complete", outcome.run, boost_error=step.error))
            alphas.append(step.alpha)
        else:  # no better than chance: SAMME leaves it out
            trained.append(MemberOutcome(m.name, "discarded", outcome.run, error=step.stop))
        weights = step.weights
        if step.stop:
            break
    _enough(ensemble, trained)
    return trained, alphas
