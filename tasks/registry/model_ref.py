"""A registered model version as the commands after registration name it: `models:/NAME@ALIAS` or
`models:/NAME/VERSION`, resolved once to the version it is now, so scoring, serving and the alias history all
speak of one fixed version even when the alias moves meanwhile."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from mlflow.exceptions import MlflowException

from tasks import tracking
from trainlib.errors import ConfigError

FORMS = "models:/NAME@ALIAS or models:/NAME/VERSION"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class ModelRef:
    """One registered model version, as resolved when a command started."""

    uri: str  # as the user gave it
    name: str
    version: int
    alias: str | None  # the alias it was named by (None when named by its version)
    aliases: tuple[str, ...]  # every alias the version held when resolved
    run_id: str | None  # the run that logged it

    @property
    def pinned(self) -> str:
        """The URI of this very version (what an alias pointed at when resolved)."""
        return f"models:/{self.name}/{self.version}"

    def describe(self) -> str:
        """e.g. `digits-cnn version 3 (@champion)`."""
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


def resolve(uri: str) -> ModelRef:
    """The version `uri` names now; one readable error for a malformed URI, an unknown model, alias or version."""
    match = _URI.match(uri.strip())
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
            held = ", ".join(f"@{a} (version {v})" for a, v in sorted(model.aliases.items())) or "none"
            raise ConfigError(f"{name} has no alias @{alias}; its aliases: {held}") from None
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        raise ConfigError(f"{name} has no version {number}; its versions: "
                          f"{', '.join(map(str, versions)) or 'none'}") from None
    return ModelRef(uri, name, int(version.version), alias, tuple(sorted(version.aliases or ())), version.run_id)


def as_named(ref: ModelRef, uri: str) -> ModelRef:
    """`ref` (resolved from its pinned URI) as the user named it at first, by `uri`: a command that resolved an
    alias once hands the version on pinned and keeps saying which alias it was named by."""
    match = _URI.match(uri.strip())
    return replace(ref, uri=uri, alias=match["alias"] if match else None)


WEIGHTS = "checkpoints/model.pt"  # the trained model file every training run logs (architecture + weights)
SOURCE_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
RUN_URI = re.compile(r"^runs:/(?P<run_id>[0-9a-f]{32})/?$")  # a run's model, registered or not (--no-register)


def download_source(uri: str, folder: Path) -> tuple[str, dict]:
    """A transfer source's weights file (a registered model's, or a run's), downloaded into `folder`. -> (local path,
    lineage)."""
    match, run = SOURCE_URI.match(uri), RUN_URI.match(uri)
    if not match and not run:
        raise ConfigError(f"transfer.source: {uri!r} is not models:/name@alias, models:/name/version or runs:/RUN_ID")
    client = tracking.client()
    try:
        if run:
            run_id, version = client.get_run(run["run_id"]).info.run_id, None
        else:
            found = client.get_model_version_by_alias(match["name"], match["alias"]) if match["alias"] else \
                client.get_model_version(match["name"], match["version"])
            run_id, version = found.run_id, str(found.version)
    except MlflowException as exc:
        raise ConfigError(f"transfer.source {uri}: not found ({str(exc).splitlines()[0]})") from None
    try:
        path = client.download_artifacts(run_id, WEIGHTS, str(folder))
    except (MlflowException, OSError):
        raise ConfigError(f"transfer.source {uri}: run {run_id} has no {WEIGHTS} (ensembles and models trained "
                          "elsewhere cannot be a source; give a model file)") from None
    return path, {"source_run_id": run_id, "source_version": version}


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
