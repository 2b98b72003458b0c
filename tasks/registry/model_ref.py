"""A model as the commands after training name it, resolved once to what it is now, so scoring, serving, transfer and
the alias history all speak of one fixed model even when an alias moves meanwhile: a registered version
(`models:/NAME@ALIAS`, `models:/NAME/VERSION`) or a run's own logged model, registered or not (`runs:/RUN_ID`, or
MLflow's id of the logged model, `models:/m-...`, as `--no-register` and `--json`'s `model_uri` print it). One parser
for every command that takes one: predict, serve-model, transfer.source, card and rerun."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from mlflow.exceptions import MlflowException

from tasks import tracking
from trainlib.errors import ConfigError

FORMS = "models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")
_RUN = re.compile(r"^runs:/(?P<run_id>[0-9a-f]{32})(?:/model)?/?$")  # a run's model, registered or not
_LOGGED = re.compile(r"^models:/(?P<model_id>m-[0-9a-f]{32})$")  # MLflow's id of a logged model (what it prints)


@dataclass(frozen=True)
class ModelRef:
    """One model, as resolved when a command started: a registered version, or a run's logged model."""

    uri: str  # as the user gave it
    name: str  # the registered model's; of a run's model, the `name` its run was trained under
    version: int | None  # None: a run's model, named by its run (or its logged model's id), not by a version
    alias: str | None  # the alias it was named by (None when named by its version or its run)
    aliases: tuple[str, ...]  # every alias the version held when resolved
    run_id: str | None  # the run that logged it
    model_id: str | None = None  # a run's model: its logged model's id (None for a version, or a run that logged none)

    @property
    def pinned(self) -> str:
        """The URI of this very model (what an alias pointed at when resolved; a run's logged model by its id)."""
        if self.version is not None:
            return f"models:/{self.name}/{self.version}"
        if self.model_id is None:
            raise ConfigError(f"run {self.run_id} logged no model (only a run that trained and tested one logs it): "
                              f"give {FORMS} of one that did")
        return f"models:/{self.model_id}"

    @property
    def short(self) -> str:
        """A name for files: `digits-cnn-v3`, or of a run's model `digits-cnn-run-0973746325b5`."""
        return f"{self.name}-v{self.version}" if self.version is not None else f"{self.name}-run-{self.run_id[:12]}"

    def describe(self) -> str:
        """e.g. `digits-cnn version 3 (@champion)`, or `the model of run 0973...2235 (digits-cnn)`."""
        if self.version is None:
            return f"the model of run {self.run_id} ({self.name})"
        held = f" (@{', @'.join(self.aliases)})" if self.aliases else ""
        return f"{self.name} version {self.version}{held}"


def registered(name: str):
    """The registered model `name` (an MLflow RegisteredModel), or one readable error naming those that are."""
    client = tracking.client()
    try:
        return client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models(max_results=1000))
        raise ConfigError(f"no registered model {name!r}; registered: {', '.join(names) or 'none yet'}") from None


def no_alias(model, alias: str) -> str:
    """What is said of an alias the registered `model` does not have: the aliases it has."""
    held = ", ".join(f"@{a} (version {v})" for a, v in sorted(model.aliases.items())) or "none"
    return f"{model.name} has no alias @{alias}; its aliases: {held}"


def is_model_uri(uri: str) -> bool:
    """Whether `uri` has one of the forms a model is named by (FORMS, or a logged model's models:/m-...)."""
    return any(form.match(uri.strip()) for form in (_URI, _RUN, _LOGGED))


def resolve(uri: str) -> ModelRef:
    """The model `uri` names now; one readable error for a malformed URI, an unknown model, alias, version or run."""
    text = uri.strip()
    if run := _RUN.match(text):
        return _of_run(uri, run["run_id"], None)
    if logged := _LOGGED.match(text):
        try:
            found = tracking.client().get_logged_model(logged["model_id"])
        except MlflowException:
            raise ConfigError(f"no logged model {logged['model_id']} in this project's MLflow store") from None
        return _of_run(uri, found.source_run_id, found.model_id)
    match = _URI.match(text)
    if not match:
        raise ConfigError(f"model {uri!r}: give {FORMS}")
    name, alias, number = match["name"], match["alias"], match["version"]
    registered(name)
    client = tracking.client()
    try:
        version = (client.get_model_version_by_alias(name, alias) if alias
                   else client.get_model_version(name, number))
    except MlflowException:
        model = client.get_registered_model(name)
        if alias:
            raise ConfigError(no_alias(model, alias)) from None
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        raise ConfigError(f"{name} has no version {number}; its versions: "
                          f"{', '.join(map(str, versions)) or 'none'}") from None
    return ModelRef(uri, name, int(version.version), alias, tuple(sorted(version.aliases or ())), version.run_id)


def _of_run(uri: str, run_id: str | None, model_id: str | None) -> ModelRef:
    """The model run `run_id` logged (`model_id`, else the last it logged), named after the run's `name`."""
    if run_id is None:  # a model logged outside a run: trainflow logs none, and has no config to score it by
        raise ConfigError(f"logged model {model_id} was logged by no run: give {FORMS}")
    client = tracking.client()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"no run {run_id} in this project's MLflow store") from None
    if model_id is None:
        outputs = run.outputs.model_outputs if run.outputs else []
        model_id = outputs[-1].model_id if outputs else None
    name = run.data.params.get("name") or client.get_experiment(run.info.experiment_id).name
    return ModelRef(uri, name, None, None, (), run_id, model_id)


def as_named(ref: ModelRef, uri: str) -> ModelRef:
    """`ref` (resolved from its pinned URI) as the user named it at first, by `uri`: a command that resolved an
    alias once hands the version on pinned and keeps saying which alias it was named by."""
    match = _URI.match(uri.strip())
    return replace(ref, uri=uri, alias=match["alias"] if match else None)


WEIGHTS = "checkpoints/model.pt"  # the trained model file every training run logs (architecture + weights)


def download_source(uri: str, folder: Path) -> tuple[str, dict]:
    """A transfer source's weights file (a registered model's, or a run's), downloaded into `folder`. -> (local path,
    lineage)."""
    if not is_model_uri(uri):
        raise ConfigError(f"transfer.source: {uri!r} is not {FORMS}")
    try:
        ref = resolve(uri)
    except ConfigError as exc:
        raise ConfigError(f"transfer.source {uri}: not found ({exc})") from None
    try:
        path = tracking.client().download_artifacts(ref.run_id, WEIGHTS, str(folder))
    except (MlflowException, OSError):
        raise ConfigError(f"transfer.source {uri}: run {ref.run_id} has no {WEIGHTS} (ensembles and models trained "
                          "elsewhere cannot be a source; give a model file)") from None
    version = str(ref.version) if ref.version is not None else None
    return path, {"source_run_id": ref.run_id, "source_version": version}


def check_member(uri: str) -> None:
    """A registered model an ensemble votes with exists and is a single trained model."""
    import mlflow

    try:
        flavors = mlflow.models.get_model_info(uri).flavors
    except (MlflowException, OSError) as exc:
        raise ConfigError(f"ensemble member {uri}: not found ({str(exc).splitlines()[0]})") from None
    if "pytorch" not in flavors:
        raise ConfigError(f"ensemble member {uri}: not a single trained model (it has no pytorch flavor, only "
                          f"{', '.join(flavors)}); give one registered by `trainflow run`")


def load_pyfunc(ref: ModelRef, device, flavor: str | None = None):
    """The version as an MLflow pyfunc model scoring on `device` (a torch.device); `flavor` (pytorch or
    python_function) when the caller has read it already. A network is logged as a torch.export program on the CPU,
    which MLflow loads only onto the device its weights are on: it loads there and then moves (the program names no
    device: trainlib/export.py). An ensemble's program moves itself (tasks/ensembles/logged_model.py)."""
    import mlflow.pyfunc
    import pandas as pd
    import torch

    from trainlib.device import to_device

    if flavor is None:
        flavor = "pytorch" if "pytorch" in mlflow.models.get_model_info(ref.pinned).flavors else "python_function"
    if flavor != "pytorch":
        return mlflow.pyfunc.load_model(ref.pinned, model_config={"device": str(device)})
    model = mlflow.pyfunc.load_model(ref.pinned, model_config={"device": "cpu"})
    program = to_device(model.get_raw_model(), device)

    class OnDevice:  # what MLflow's own wrapper does on its device, for a program moved after loading (on a CPU too:
        # one way to score, which every scoring and serving test takes)
        def get_raw_model(self):
            return program

        def predict(self, data, params=None):
            rows = data.to_numpy(dtype="float32") if isinstance(data, pd.DataFrame) else data
            with torch.no_grad():
                out = program(torch.from_numpy(rows).to(device)).cpu().numpy()
            return pd.DataFrame(out, index=data.index) if isinstance(data, pd.DataFrame) else out

    return mlflow.pyfunc.PyFuncModel(model.metadata, OnDevice())
