"""Before a command starts anything: the inputs its plan names, read or asked for.

A plan (flows/plans.py) checks a command's config, and that the files it names exist, without reading them. Here
the CLI reads and asks what the flow would otherwise find wrong only after a Prefect API had started and an MLflow
run had opened:

- the data, read and split as the flow's ingest and split stages will (a missing column, a single class, a class
  too small to split, a batch larger than the train split; every text, missing or infinite cell and every image
  that does not decode, named together and listed in `<data.path>.errors.csv`). Data ingested before,
  unchanged (its ingest stage's cache record exists), is not read again: its classes, shape and split come from
  the stage cache. Image folders are decoded into the decoded-image cache the flow's ingest then reads;
- each transfer source: found in the registry, in a file or in the local torch cache, and fitted into the model it
  starts (its architecture and shapes);
- each registered model an ensemble votes with: it exists and is one trained model;
- a Dask scheduler's address: something answers there.

Nothing here starts a Prefect API or opens an MLflow run, and a project's MLflow store is only read when it exists.
The flows do not call this: run as deployments, their own stages find the same problems.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import socket
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trainlib.errors import ConfigError

if TYPE_CHECKING:  # imported by the command line's module: what it needs is imported when a check runs
    from trainlib.config import PipelineConfig

PROBE_SECONDS = 1.0  # how long a Dask scheduler's address may take to accept a connection


@dataclass(frozen=True)
class Read:
    """What the flow will train on: one sample's shape, the classes, the samples per split."""

    shape: tuple[int, ...]
    classes: tuple[str, ...]
    counts: dict[str, int]


def check(configs: Iterable[PipelineConfig], registered: Iterable[str] = ()) -> None:
    """Every distinct data read of `configs`, their transfer sources and the `registered` models. (A runner's
    address is probed by `probe`, before the plan: it needs nothing loaded.)"""
    from flows.plans import SOURCE_TO_BE_TRAINED

    reads: dict[str, Read] = {}
    for config in configs:
        key = json.dumps([config.data.model_dump(mode="json"), config.split.model_dump(mode="json"),
                          config.data_dims], sort_keys=True)
        if key not in reads:
            reads[key] = readable(config)
        batches(config, reads[key])
        if config.transfer.source and config.transfer.source != SOURCE_TO_BE_TRAINED:
            source(config, reads[key])
    for uri in dict.fromkeys(registered):
        _with_store(lambda uri=uri: _member(uri), uri, "ensemble member")


def study(plan) -> None:
    """Every configuration a technique study (flows/plans.py `TechniqueStudy`) trains, and its runner."""
    configs = []
    for claim in plan.claims:
        configs += [claim.config, *([claim.source] if claim.source else [])]
        if claim.comparison is not None:
            configs += [r.config for r in claim.comparison.runs]
        if claim.ensemble is not None:
            configs += [m.config for m in claim.ensemble.members if m.config]
        configs += [s.trial_base for s in (claim.searches or {}).values()]
    check(configs)


ERRORS_HEADER = "where,why"  # the first line of an errors file this module wrote


def errors_file(config: PipelineConfig) -> Path:
    """Where every unusable row or file of the config's data is listed: `<data.path>.errors.csv`, beside the data
    (as `trainflow predict` writes `<out>.errors.csv`)."""
    return Path(str(Path(config.data.path)) + ".errors.csv")


def readable(config: PipelineConfig) -> Read:
    """`data(config)`, its unusable rows or files (all of them) written to `errors_file` and named in one error; an
    errors file written before for this data is removed once the data reads clean (kept while they are skipped)."""
    import logging

    from trainlib.errors import Unreadable

    listed = errors_file(config) if config.data.path else None
    said = logging.getLogger("trainlib.data.sources")
    level = said.level
    said.setLevel(logging.ERROR)  # rows skipped are said once: by the flow's ingest, on its run
    try:
        read = data(config)
    except Unreadable as exc:
        if listed is None:
            raise
        from trainlib.checkpoint import atomic_path

        try:
            with atomic_path(listed) as tmp:
                _csv(tmp, exc.problems)
        except OSError as why:  # a read-only data folder, say: the message still names the first problems
            raise ConfigError(exc.describe() + f"\n  (the full list could not be written to {listed}: "
                              f"{why.strerror or why})") from None
        raise ConfigError(exc.describe(listed_in=str(listed))) from None
    finally:
        said.setLevel(level)
    clean = listed is not None and not config.data.skip_unreadable  # skipping: the rows it lists are the ones left out
    if clean and listed.is_file() and _ours(listed):
        listed.unlink(missing_ok=True)  # it listed problems this data no longer has
    return read


def _ours(path: Path) -> bool:
    with path.open(errors="replace") as f:
        return f.readline().strip() == ERRORS_HEADER


def _csv(path, problems: list[tuple[str, str]]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(ERRORS_HEADER.split(","))
        writer.writerows(problems)


def data(config: PipelineConfig) -> Read:
    """The data, read and split as the flow will (or as it was, when its ingest is cached) -> what it holds."""
    from tasks.chain.stages import ingest_key, split_key
    from tasks.settings import HOME
    from trainlib import recipe

    signal = config.data_dims == 2
    known = None
    if (HOME / "cache" / "generation").exists():  # else nothing was cached (and no key is made: it would write)
        known = _record(ingest_key(config.data, signal))
    if known is not None:
        split = _record(split_key(known.digest, config.split, config.data.label_noise))
        if split is not None:
            return Read(tuple(known.shape), tuple(known.classes), dict(split.counts))
        ds = known.load()
    else:  # streamed: decoded into the cache without being held here; the flow reads it in its own mode
        ds = recipe.ingest(config.data.model_copy(update={"stream": True}) if config.data.source == "imagefolder"
                           else config.data, cache_dir=HOME / "cache" / "decoded", signal=signal)  # made if used
    manifest = recipe.split(ds, config.split, config.data.label_noise)
    return Read(tuple(ds.sample_shape), tuple(ds.classes), {str(k): int(v) for k, v in
                                                            manifest["split"].value_counts().items()})


def digest(config: PipelineConfig) -> str:
    """The digest the flow's ingest would give the config's data now (from the stage cache when it is unchanged)."""
    from tasks.chain.stages import ingest_key
    from tasks.settings import HOME
    from trainlib import recipe

    signal = config.data_dims == 2
    if (HOME / "cache" / "generation").exists() and (known := _record(ingest_key(config.data, signal))) is not None:
        return known.digest
    return recipe.ingest(config.data, cache_dir=HOME / "cache" / "decoded", signal=signal).digest


def batches(config: PipelineConfig, read: Read) -> None:
    """A batch no larger than the train split (minibatch mode), as the engine requires."""
    from trainlib.engine import check_batch

    check_batch(config.training.mode, config.training.batch_size, read.counts.get("train", 0))


def source(config: PipelineConfig, read: Read) -> None:
    """The transfer source exists and its weights fit the model it starts on this data."""
    from trainlib import models
    from trainlib.transfer import STRATEGIES, load_source, transplant

    uri = config.transfer.source
    with tempfile.TemporaryDirectory(prefix="trainflow-source-") as folder:
        if uri.startswith(("models:/", "runs:/")):
            path = _with_store(lambda: _download(uri, Path(folder)), uri, "transfer.source")
        else:
            path = uri
        loaded = load_source(path)
        if not STRATEGIES[config.transfer.strategy].copies_weights:
            return
        options = {k: v for k, v in loaded.spec["options"].items() if k != "dropout"}
        model = models.build(loaded.spec["name"], read.shape, len(read.classes), None,
                             **(config.model.model_dump(exclude={"name"}) | options))
        transplant(model, loaded)


def probe(runner: str | None, seconds: float = PROBE_SECONDS) -> None:
    """A Dask scheduler named by address (dask://host:port) accepts a connection within `seconds` (one that is
    still starting has that long), or the command stops now."""
    from flows import runners

    runner = runners.check(runner)
    if not runner.startswith("dask://"):
        return
    host, _, port = runner.removeprefix("dask://").rpartition(":")
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=max(0.1, deadline - time.monotonic())).close()
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ConfigError(f"--runner {runner}: {runners.unreachable(runner, exc)}") from None
            time.sleep(0.1)


def _download(uri: str, folder: Path) -> str:
    from tasks.registry.model_ref import download_source  # MLflow: loaded only for a model the project's store has

    return download_source(uri, folder)[0]


def _member(uri: str) -> None:
    from tasks.registry.model_ref import check_member

    check_member(uri)


def _with_store(lookup, uri: str, what: str):
    """`lookup()` against the registry (through MLflow), unless the project's local store says at once that `uri` is
    not there: it does not exist yet (asking MLflow would create it), or it has no such model, alias or version (a
    typo is then told without loading MLflow, a second here)."""
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if tracking_uri.startswith("sqlite:///") and not os.environ.get("MLFLOW_REGISTRY_URI"):
        store = Path(tracking_uri.removeprefix("sqlite:///"))
        if not store.exists():
            raise ConfigError(f"{what} {uri}: not found (nothing is registered in this project yet: {store} does "
                              "not exist)")
        if missing := _not_in_local_registry(store, uri):
            raise ConfigError(f"{what} {uri}: not found ({missing})")
    return lookup()


def _not_in_local_registry(store: Path, uri: str) -> str | None:
    """Why the SQLite store `store` (MLflow's tables, read only) has no model `uri` names, or None when it may have
    it (or the question is not one to answer here): MLflow then looks it up."""
    import re
    import sqlite3

    named = re.match(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$", uri)
    if not named:
        return None
    name, alias, version = named["name"], named["alias"], named["version"]
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as db:
            if not db.execute("SELECT 1 FROM registered_models WHERE name = ?", (name,)).fetchone():
                return f"no registered model {name!r} in this project"
            if alias and not db.execute("SELECT 1 FROM registered_model_aliases WHERE name = ? AND alias = ?",
                                        (name, alias)).fetchone():
                return f"{name} has no alias @{alias}"
            if version and not db.execute("SELECT 1 FROM model_versions WHERE name = ? AND version = ?",
                                          (name, int(version))).fetchone():
                return f"{name} has no version {version}"
    except sqlite3.Error:
        return None
    return None


def _record(key: str):
    """What a cached stage returned (a typed reference, tasks/chain/refs.py), or None when it is not cached or its
    record cannot be read (the stage then runs as it would have)."""
    folder = os.environ.get("PREFECT_LOCAL_STORAGE_PATH")
    if not folder:
        return None
    try:  # Prefect's result record: JSON metadata, the result pickled (cloudpickle) and base64-encoded
        record = json.loads((Path(folder) / key).read_text())
        return _Refs(io.BytesIO(base64.b64decode(record["result"]))).load()
    except (OSError, ValueError, KeyError, TypeError, pickle.UnpicklingError, AttributeError, ImportError):
        return None


class _Refs(pickle.Unpickler):
    """Unpickles the stages' typed references (tasks/chain/refs.py) and the plain values in them, nothing else."""

    def find_class(self, module: str, name: str):
        if module == "tasks.chain.refs" or (module == "builtins" and name in ("tuple", "dict", "list", "str", "int")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a stage reference")
