"""Register: log the model to MLflow (normalization inside, takes raw inputs), create a version, and
apply the gate: promote to the alias only if good enough and not worse than the current holder."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from prefect import task
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from tasks import tracking
from tasks.refs import DatasetRef
from trainlib.config import RegisterConfig
from trainlib.data.batches import subset
from trainlib.models import load_model

CHALLENGER = "challenger"
EXAMPLE_ROWS = 4  # the input example needs batch > 1, or the exported model's batch size is frozen


@dataclass(frozen=True)
class Gate:
    passed: bool
    reason: str
    test_accuracy: float
    threshold: float
    champion_version: str | None
    champion_accuracy: float | None


def decide(accuracy: float, threshold: float, champion_version: str | None, champion_accuracy: float | None) -> Gate:
    """Pass when accuracy >= threshold and >= the current alias holder's accuracy (if any)."""
    if accuracy < threshold:
        reason = f"test accuracy {accuracy:.4f} is below the minimum {threshold:.4f}"
    elif champion_accuracy is not None and accuracy < champion_accuracy:
        reason = f"test accuracy {accuracy:.4f} is below version {champion_version}'s {champion_accuracy:.4f}"
    else:
        reason = f"test accuracy {accuracy:.4f} >= minimum {threshold:.4f}" + (
            f" and >= version {champion_version}'s {champion_accuracy:.4f}" if champion_accuracy is not None else "")
        return Gate(True, reason, accuracy, threshold, champion_version, champion_accuracy)
    return Gate(False, reason, accuracy, threshold, champion_version, champion_accuracy)


def _holder(name: str, alias: str) -> tuple[str | None, float | None]:
    try:
        version = tracking.client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, None
    accuracy = version.tags.get("test_accuracy")
    if accuracy is None and version.run_id:
        accuracy = tracking.client().get_run(version.run_id).data.metrics.get("test_accuracy")
    return version.version, float(accuracy) if accuracy is not None else None


LOCK = "trainflow-registry"  # a Prefect global concurrency limit of 1: a lock every flow on the API shares


@contextlib.contextmanager
def one_at_a_time():
    """Hold the registry lock: only one flow (of any process or machine on this Prefect API) moves aliases."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(LOCK)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # created by a flow at the same moment
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=LOCK, limit=1))
    with concurrency(LOCK, occupy=1, timeout_seconds=600, strict=True):
        yield


def promote(name: str, register: RegisterConfig, model_uri: str, test_accuracy: float, run_id: str) -> dict:
    """Register `model_uri` as a new version of `name` and apply the gate: the alias if it passes, else
    `challenger`. -> {model_uri, registered_model, version, alias, gate}."""
    client = tracking.client()
    version = mlflow.register_model(model_uri, name)  # creates the registered model on first use
    with one_at_a_time():  # flows finishing together each compare with the holder the one before left
        gate = decide(test_accuracy, register.min_test_accuracy, *_holder(name, register.alias))
        tags = {"test_accuracy": f"{gate.test_accuracy:.6f}", "gate": "passed" if gate.passed else "failed",
                "gate_reason": gate.reason}
        for key, value in tags.items():  # the accuracy first: the next flow reads it from the holder
            client.set_model_version_tag(name, version.version, key, value)
        alias = register.alias if gate.passed else CHALLENGER
        client.set_registered_model_alias(name, alias, version.version)
    tracking.RunLogger(run_id).set_tags({"gate": tags["gate"], "gate_reason": gate.reason,
                                         "registered_model": name, "registered_version": version.version,
                                         "registered_alias": alias})
    return {"model_uri": model_uri, "registered_model": name, "version": version.version, "alias": alias,
            "gate": asdict(gate)}


def example_inputs(dataset: DatasetRef) -> np.ndarray:
    """A few raw training inputs: the logged model's input example (it normalizes them itself)."""
    raw, _ = next(subset(dataset.load(), np.arange(EXAMPLE_ROWS), workers=0).batches(EXAMPLE_ROWS))
    return raw.float().numpy()


@task(name="register")
def register(name: str, register: RegisterConfig, model: str, metrics: dict, dataset: DatasetRef,
             run_id: str) -> dict:
    """Log the trained `model` (a trainlib model file) to the run, then register it through the gate.
    -> {model_uri, registered_model, version, alias, gate}."""
    model_uri = tracking.log_model(run_id, load_model(model)[0], example_inputs(dataset))
    return promote(name, register, model_uri, metrics["test_accuracy"], run_id)
