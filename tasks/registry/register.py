"""Register: log the model to MLflow (normalization inside, takes raw inputs), create a version, and
apply the gate: the alias moves only to a version good enough and strictly better than its holder.
With register.enabled false (--no-register) the model is logged to the run and nothing is registered."""

from __future__ import annotations

import sys
import urllib.request

import numpy as np
from mlflow.exceptions import MlflowException
from prefect import task

from tasks import settings, tracking
from tasks.chain.refs import DatasetRef, StatsRef
from tasks.registry import aliases, card, outcomes, signature
from tasks.registry.model_ref import ModelRef
from tasks.results import Gate, Registration
from tasks.wording import NOT_REGISTERED
from trainlib import inference
from trainlib.config import RegisterConfig
from trainlib.data.batches import subset
from trainlib.data.normalize import Moments
from trainlib.data.sources import Dataset
from trainlib.models import load_model
from trainlib.scoring import InputSpec, input_spec

CHALLENGER = "challenger"
EXAMPLE_ROWS = 4  # the input example needs batch > 1, or the exported model's batch size is frozen
OUTCOMES = ("promoted", "not_better", "below_minimum", "other_input")  # the gate's verdicts; only the first moves
# the alias (other_input: the version takes another input than the holder's, tasks/registry/signature.py)


def decide(accuracy: float, register: RegisterConfig, champion_version: int | None,
           champion_accuracy: float | None, paired: tuple[int, int, int] | None = None,
           unpaired: tuple[int, int, int, int] | None = None) -> Gate:
    """Promote when accuracy reaches register.min_test_accuracy and beats the holder's (if any): with
    register.gate delta by more than register.min_delta; with mcnemar, on the test samples both were scored on
    (`paired`: b right here and wrong there, c the other way, n shared), by McNemar's exact test at
    register.alpha; where they share no test sample (`unpaired`: right and scored here, right and scored there),
    by a bootstrap of the two test sets at register.alpha; by min_delta where the holder logged no outcomes.
    Anything else, a tie included, stays challenger."""
    alias, threshold, delta = register.alias, register.min_test_accuracy, register.min_delta
    tested = register.gate == "mcnemar" and champion_accuracy is not None and paired is not None
    b, c, n = paired if tested else (None, None, None)
    p = inference.mcnemar(b, c) if tested else None
    booted = register.gate == "mcnemar" and champion_accuracy is not None and not tested and unpaired is not None
    if booted:
        p = inference.bootstrap_better(*unpaired)
    if accuracy < threshold:
        outcome = "below_minimum"
        reason = f"kept as challenger: below the gate ({accuracy:.4f} < register.min_test_accuracy {threshold:g})"
    elif booted:
        passed = unpaired[0] / unpaired[1] > unpaired[2] / unpaired[3] and p < register.alpha
        outcome = "promoted" if passed else "not_better"
        reason = ((f"promoted to @{alias} (better" if passed else "kept as challenger (not better") +
                  f" than version {champion_version} on other test samples: {unpaired[0]}/{unpaired[1]} right "
                  f"against {unpaired[2]}/{unpaired[3]}; bootstrap p {p:.3g} {'<' if passed else '>='} "
                  f"{register.alpha:g})")
    elif tested and not (b > c and p < register.alpha):
        outcome = "not_better"
        reason = (f"kept as challenger (not better than version {champion_version} on the same {n} test samples: "
                  f"{b} right where it was wrong, {c} the other way; McNemar p {p:.3g} >= {register.alpha:g})")
    elif tested:
        outcome = "promoted"
        reason = (f"promoted to @{alias} (better than version {champion_version} on the same {n} test samples: "
                  f"{b} right where it was wrong, {c} the other way; McNemar p {p:.3g} < {register.alpha:g})")
    # to 6 places, as the holder's accuracy is kept (its version tag): float noise never turns a tie into a gain
    elif champion_accuracy is not None and not round(accuracy - champion_accuracy, 6) > delta:
        outcome = "not_better"
        reason = (f"kept as challenger (not better than version {champion_version}'s {champion_accuracy:.4f} "
                  f"by {delta:g}{_untested(register)})")
    elif champion_accuracy is not None:
        outcome = "promoted"
        reason = (f"promoted to @{alias} ({accuracy:.4f} > version {champion_version}'s {champion_accuracy:.4f}"
                  f"{_untested(register)})")
    else:
        outcome = "promoted"
        reason = (f"promoted to @{alias} ({accuracy:.4f} >= register.min_test_accuracy {threshold:g}; no version "
                  f"held @{alias})")
    return Gate(outcome == "promoted", outcome, reason, accuracy, threshold, delta, champion_version,
                champion_accuracy, "mcnemar" if tested else "bootstrap" if booted else "delta", b, c, p)


def _untested(register: RegisterConfig) -> str:
    """What a gate asked for McNemar's test says when it compared accuracies instead."""
    return ("; by min_delta: the holder logged no test outcomes" if register.gate == "mcnemar"
            else "")


def _holder(name: str, alias: str) -> tuple[int | None, float | None, str | None]:
    """The version holding `alias`, its test accuracy and its run. Versions are ints here whatever the store:
    MLflow's client returns an int from SQLite and a string from a server."""
    try:
        version = tracking.client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, None, None
    accuracy = version.tags.get("test_accuracy")
    if accuracy is None and version.run_id:
        accuracy = tracking.client().get_run(version.run_id).data.metrics.get("test_accuracy")
    return int(version.version), float(accuracy) if accuracy is not None else None, version.run_id


def _new_version(name: str, model_uri: str) -> int:
    """A new version of `name` (created on first use) from `model_uri` (a logged model's `models:/<model id>`):
    mlflow.register_model's two steps without the lines it prints on stderr ("Successfully registered model",
    "Registered model ... already exists. Creating a new version", "Created version"), which break into the
    progress lines and a worker's log; the summary says what was registered."""
    client = tracking.client()
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):  # another flow's, or an earlier run's
            raise
    logged = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None  # its model id
    return int(client.create_model_version(name, model_uri, model_id=logged).version)


def promote(name: str, register: RegisterConfig, model_uri: str, test_accuracy: float, run_id: str,
            spec: InputSpec) -> Registration:
    """Register `model_uri` (a model trained with `spec`) as a new version of `name` and apply the gate: the alias if
    it passes, else `challenger`; with register.enabled false, nothing is registered (only model_uri is set)."""
    if not register.enabled:
        tracking.RunLogger(run_id).set_tags({"gate": "not_registered", "gate_reason": NOT_REGISTERED})
        return Registration(model_uri)
    _prefect_answers()  # a version is the one thing a failed run must not leave: its server gone, fail first
    version = _new_version(name, model_uri)
    try:
        takes = signature.tag(name, version, spec, run_id)  # what it takes and was trained on
        gate, alias = _gate(name, register, version, test_accuracy, run_id, takes)
    except BaseException:  # nothing half-registered: a version without its gate's decision is withdrawn
        _withdraw(name, version)
        raise
    card.publish_or_say(ModelRef(f"models:/{name}/{version}", name, version, None, (alias,), run_id))
    return Registration(model_uri, name, version, alias, gate)


def _gate(name: str, register: RegisterConfig, version: int, test_accuracy: float, run_id: str,
          takes: signature.Signature) -> tuple[Gate, str]:
    """The gate's decision on the new `version` (which `takes` that input), recorded on it, its alias and its run.
    -> (the gate, the alias)."""
    client = tracking.client()
    with aliases.locked(name):  # flows finishing together each compare with the holder the one before left
        held, held_accuracy, held_run = _holder(name, register.alias)
        if other := signature.refusal(name, register.alias, version, held, takes):
            gate = Gate(False, "other_input", f"kept as challenger: {other} (give this data its own --name, or move "
                        f"the alias anyway: trainflow promote {name} {version} --force)", float(test_accuracy),
                        register.min_test_accuracy, register.min_delta, held, held_accuracy)
        else:
            paired, unpaired = _paired(run_id, held_run) if register.gate == "mcnemar" and held_run else (None, None)
            gate = decide(float(test_accuracy), register, held, held_accuracy, paired, unpaired)
        tags = {"test_accuracy": f"{gate.test_accuracy:.6f}", "gate": gate.outcome, "gate_reason": gate.reason,
                **_tested(gate)}
        for key, value in tags.items():  # the accuracy first: the next flow reads it from the holder
            client.set_model_version_tag(name, str(version), key, value)
        alias = register.alias if gate.passed else CHALLENGER
        aliases.move(name, alias, version, gate.reason, by="gate")  # recorded in the alias history
    tracking.RunLogger(run_id).set_tags({"gate": gate.outcome, "gate_reason": gate.reason, "registered_model": name,
                                         "registered_version": version, "registered_alias": alias, **_tested(gate)})
    return gate, alias


def _prefect_answers() -> None:
    """Raise ServerGone when the Prefect API this flow reports to is a server that no longer answers (the flow would
    fail after registering: Prefect runs tasks client-side, so a training goes on without it)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value() or ""
    if not url.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"{url.rstrip('/')}/health",
                                                                                timeout=5):
            pass
    except OSError:
        raise settings.ServerGone(settings.gone("Prefect", url)) from None


def _withdraw(name: str, version: int) -> None:
    try:
        tracking.client().delete_model_version(name, str(version))
    except Exception as exc:  # the tracking server gone too
        print(f"{name} version {version} could not be withdrawn (it has no gate decision): {exc}", file=sys.stderr)


def _paired(run_id: str, held_run: str) -> tuple[tuple[int, int, int] | None, tuple[int, int, int, int] | None]:
    """This run's test outcomes against the holder's run's, when both logged theirs: (b, c, n) on their shared
    rows, else (right, scored) of each for a bootstrap; (None, None) when either logged none."""
    new, old = outcomes.of_run(run_id), outcomes.of_run(held_run)
    if not (new and old):
        return None, None
    shared = outcomes.disagreements(new, old)
    return (shared, None) if shared else (None, (*outcomes.counts(new), *outcomes.counts(old)))


def _tested(gate: Gate) -> dict[str, str]:
    """McNemar's counts and p (or the bootstrap's p) as tags, when the gate tested."""
    if gate.test == "bootstrap":
        return {"gate_test": "bootstrap", "bootstrap_p": f"{gate.p:.6g}"}
    if gate.test != "mcnemar":
        return {}
    return {"gate_test": "mcnemar", "mcnemar_b": str(gate.b), "mcnemar_c": str(gate.c), "mcnemar_p": f"{gate.p:.6g}"}


def example_inputs(dataset: DatasetRef | Dataset) -> np.ndarray:
    """A few raw training inputs: the logged model's input example (it normalizes them itself)."""
    ds = dataset.load() if isinstance(dataset, DatasetRef) else dataset
    raw, _ = next(subset(ds, np.arange(EXAMPLE_ROWS), workers=0).batches(EXAMPLE_ROWS))
    return raw.float().numpy()


def described(dataset: DatasetRef, moments: Moments) -> tuple[np.ndarray, dict]:
    """The logged model's input example, and its metadata: what it takes and its train split's statistics
    (trainlib.scoring.InputSpec), which scoring reads to prepare new data and measure its drift."""
    ds = dataset.load()
    return example_inputs(ds), {"trainflow": input_spec(ds, moments).to_dict()}


@task(name="register")
def register(name: str, register: RegisterConfig, model: str, metrics: dict[str, float], dataset: DatasetRef,
             stats: StatsRef, run_id: str) -> Registration:
    """Log the trained `model` (a trainlib model file) to the run, then register it through the gate (unless
    register.enabled is false: the logged model stays usable by its model_uri)."""
    classifier = load_model(model)[0]
    example, metadata = described(dataset, stats.load().moments)
    model_uri = tracking.log_model(run_id, classifier, example, metadata)
    return promote(name, register, model_uri, metrics["test_accuracy"], run_id,
                   InputSpec.from_dict(metadata["trainflow"]))
