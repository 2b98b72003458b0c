"""The alias history of registered models, and the moves that write it.

MLflow keeps only where an alias points now. Every alias move trainflow makes (the gate after a training run, a
manual promotion, a rollback) goes through `move`, which sets the alias and records the move as a registered-model
tag of its own: key `trainflow.alias_history.<13-digit epoch ms>.<8 hex>`, value the compact JSON of a `Move`.
A tag rather than an artifact: an artifact needs a run and a move belongs to no run, while a registered model's
tags are on the model itself, so the history shows on the model's page in the MLflow UI (its Tags) and lives in
whatever tracking store holds the model. One tag per move, never a shared value read, changed and written back:
two flows moving aliases at the same moment each add a key of their own, and neither can overwrite the other's.

Every decision to move an alias reads where it is and then moves it: the gate (is the new version better than
the holder?), a rollback (is the alias where trainflow last moved it?), a promotion. `locked` makes each such
read-then-move one step against all others on the model: a file lock in the project's home, which every process
that writes this registry shares (workers elsewhere share TRAINFLOW_HOME, flows/runners.py), needs no Prefect API,
and is released by the kernel when its holder dies.

A move to the version that already holds the alias sets nothing and records nothing (`move` returns None): the
history lists changes, and a rollback never steps back to where the alias already is. Moves made outside trainflow
(the MLflow UI, another client) are not recorded; `rollback` notices one and refuses rather than guess.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import secrets
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from mlflow.entities.model_registry import RegisteredModel
from mlflow.exceptions import MlflowException

from tasks import settings, tracking
from tasks.registry import signature
from tasks.registry.model_ref import no_alias, registered
from trainlib.errors import ConfigError

PREFIX = "trainflow.alias_history."  # + 13-digit epoch ms + "." + 8 hex: 45 characters, MLflow allows 250
VALUE_LIMIT = 5000  # characters in a registered-model tag value (MLflow's database column)
CHAMPION = "champion"
LOCK_SECONDS = 600  # the longest a move waits for another's decision on the same model
_held: dict[str, threading.Thread] = {}  # model name -> the thread of this process holding its lock
_in_process = threading.RLock()  # one thread of this process at a time waits for or holds these locks


def lock_path(name: str) -> Path:
    """The file whose lock is `name`'s registry lock."""
    return settings.HOME / "locks" / f"registry-{hashlib.sha256(name.encode()).hexdigest()[:16]}.lock"


@contextlib.contextmanager
def locked(name: str):
    """For the block, the only holder of `name`'s registry lock among every process and thread (re-entrant within a
    thread: a gate's decision holds it around its move)."""
    if _held.get(name) is threading.current_thread():  # a block inside the one holding it
        yield
        return
    path = lock_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + LOCK_SECONDS
    with _in_process, open(path, "a") as file:
        while True:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConfigError(f"another trainflow process has been deciding on an alias of {name} for "
                                      f"{LOCK_SECONDS} s (the lock {path}); try again when it has ended") from None
                time.sleep(0.05)
        _held[name] = threading.current_thread()
        try:
            yield
        finally:
            del _held[name]


@dataclass(frozen=True)
class Move:
    """One alias move, as recorded."""

    when: str  # UTC ISO 8601 time, to the microsecond
    alias: str
    from_version: int | None  # None: the alias was free
    to_version: int
    reason: str  # the gate's reason, or the command and the user's reason
    by: str  # gate | promote | rollback
    flow_run: str | None  # the Prefect flow run that moved it, if one did
    key: str  # the registered-model tag holding this entry
    undoes: str | None = None  # a rollback's: the key of the move it undid

    def to_json(self) -> str:
        """The tag value: every field but the key (the tag's own name)."""
        fields = asdict(self)
        del fields["key"]
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, key: str, value: str) -> Move:
        return cls(**json.loads(value), key=key)


def _holder(name: str, alias: str) -> int | None:
    """The version holding `alias` now (an int whatever the store), None when it is free."""
    try:
        return int(tracking.client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _flow_run() -> str | None:
    """The Prefect flow run this process is in, if any. Without Prefect imported no flow can be running, so a command
    outside a flow does not pay for importing it."""
    if "prefect" not in sys.modules:
        return None
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else None


def _fit(entry: Move) -> Move:
    """`entry` with its reason shortened (ending in an ellipsis) until its JSON fits one tag value."""
    while len(value := entry.to_json()) > VALUE_LIMIT and len(entry.reason) > 1:
        entry = replace(entry, reason=entry.reason[:max(0, len(entry.reason) - (len(value) - VALUE_LIMIT) - 1)] + "…")
    return entry


def _record(name: str, alias: str, before: int | None, version: int, reason: str, by: str,
            undoes: str | None = None) -> Move:
    """Point `alias` at `version` and add the entry for it: the alias first, so the history never claims a move
    that did not happen."""
    client = tracking.client()
    try:
        client.set_registered_model_alias(name, alias, str(version))
    except MlflowException as error:
        if error.error_code != "INVALID_PARAMETER_VALUE":
            raise
        raise ConfigError(f"cannot set alias @{alias} of {name}: {error.message}") from None
    now = datetime.now(UTC)  # microseconds: moves made one after another in a process sort in their order
    key = f"{PREFIX}{int(now.timestamp() * 1000):013d}.{secrets.token_hex(4)}"
    entry = _fit(Move(now.isoformat(timespec="microseconds"), alias, before, version, reason, by, _flow_run(), key,
                      undoes))
    client.set_registered_model_tag(name, key, entry.to_json())
    return entry


def move(name: str, alias: str, version: int, reason: str, by: str) -> Move | None:
    """Point `alias` of `name` at `version` and record the move; None (nothing set or recorded) when `version`
    already holds it."""
    with locked(name):
        version, before = int(version), _holder(name, alias)
        return None if before == version else _record(name, alias, before, version, reason, by)


def _order(entry: Move) -> tuple[datetime, str]:
    return datetime.fromisoformat(entry.when), entry.key


def history(name: str, alias: str | None = None) -> list[Move]:
    """The recorded moves of `alias` (of every alias when None) of `name`, oldest first."""
    moves = []
    for key, value in registered(name).tags.items():
        if not key.startswith(PREFIX):
            continue
        try:
            moves.append(Move.from_json(key, value))
        except (ValueError, TypeError):
            raise ConfigError(f"the tag {key} of {name} is not an alias move as trainflow writes them (edited by "
                              "hand?): restore or delete it in the MLflow UI") from None
    return sorted((m for m in moves if alias in (None, m.alias)), key=_order)


def rollback(name: str, alias: str = CHAMPION, reason: str | None = None) -> Move:
    """Move `alias` back to the version that held it before its latest move not yet undone. A rollback undoes a
    move (its entry names it), so two rollbacks in a row go two moves back, not back and forth."""
    with locked(name):  # what it undoes is the latest move, not one a gate made while it looked
        return _rollback(name, alias, reason)


def _rollback(name: str, alias: str, reason: str | None) -> Move:
    moves = history(name, alias)
    if not moves and _holder(name, alias) is None:  # no such alias: a typo, most likely; said as predict says it
        raise ConfigError(no_alias(registered(name), alias))
    undone = {m.undoes for m in moves if m.undoes}
    standing = [m for m in moves if not m.undoes and m.key not in undone]
    if not standing or standing[-1].from_version is None:
        detail = (f"version {standing[-1].to_version} was the first to hold it" if standing
                  else "every move of it trainflow recorded is rolled back already" if moves
                  else "trainflow has recorded no move of it")
        raise ConfigError(f"no earlier holder of @{alias} for {name}: {detail}")
    last, now = standing[-1], _holder(name, alias)
    if now != last.to_version:
        held = f"version {now}" if now is not None else "no version"
        raise ConfigError(f"@{alias} of {name} is on {held} but trainflow last moved it to version "
                          f"{last.to_version}: it was moved outside trainflow, so there is no recorded move to undo; "
                          "promote the version you want instead")
    why = (f"trainflow rollback: undoes the move from version {last.from_version} to {last.to_version} ({last.by}, "
           f"{shown_time(last.when)} UTC)" + (f": {reason}" if reason else ""))
    return _record(name, alias, now, last.from_version, why, "rollback", undoes=last.key)


def _versions(name: str) -> list:
    """Every version of `name`, page after page."""
    client, found, token = tracking.client(), [], None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=token)
        found.extend(page)
        if not (token := page.token):
            return found


def promote(name: str, version: int, alias: str = CHAMPION, reason: str | None = None,
            force: bool = False) -> Move | None:
    """A manual promotion: `alias` of `name` moves to `version`, recorded with the user's reason; None when that
    version already holds it. A version taking another input than the holder's is refused unless `force`."""
    registered(name)
    try:
        tracking.client().get_model_version(name, str(int(version)))
    except MlflowException:
        have = sorted(int(v.version) for v in _versions(name))
        raise ConfigError(f"{name} has no version {version}; its versions: "
                          f"{', '.join(map(str, have)) or 'none'}") from None
    if not force and (other := signature.refusal(name, alias, int(version), _holder(name, alias))):
        raise ConfigError(f"{other}; give --force to move it anyway")
    return move(name, alias, version, "trainflow promote" + (", forced" if force else "") +
                (f": {reason}" if reason else ""), "promote")


@dataclass(frozen=True)
class VersionSummary:
    version: int
    created: str  # UTC ISO 8601 time, to the second
    run_id: str | None  # the run that logged it
    test_accuracy: float | None  # the version tag tasks/registry/register.py sets (None: registered otherwise)
    gate: str | None  # the gate's verdict, as tagged (register.OUTCOMES)
    aliases: tuple[str, ...]  # the aliases it holds
    source: str | None = None  # what it was trained on (`csv wine.csv`) and how (`mlp`), and one sample's shape, as
    model: str | None = None  # tagged at registration (tasks/registry/signature.py); None: registered otherwise
    input_shape: str | None = None


@dataclass(frozen=True)
class ModelSummary:
    name: str
    aliases: tuple[tuple[str, int], ...]  # (alias, version holding it), by alias
    versions: tuple[VersionSummary, ...]  # newest first


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:  # a tag edited by hand
        return None


def _summary(model: RegisteredModel) -> ModelSummary:
    aliases = tuple(sorted((alias, int(version)) for alias, version in (model.aliases or {}).items()))
    versions = []
    for v in sorted(_versions(model.name), key=lambda v: -int(v.version)):
        number = int(v.version)
        created = datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).isoformat(timespec="seconds")
        versions.append(VersionSummary(number, created, v.run_id or None, _float(v.tags.get("test_accuracy")),
                                       v.tags.get("gate"), tuple(a for a, held in aliases if held == number),
                                       v.tags.get("source"), v.tags.get("model"), v.tags.get("input_shape")))
    return ModelSummary(model.name, aliases, tuple(versions))


def overview(name: str | None = None) -> list[ModelSummary]:
    """Every registered model (or the one named), its versions and its aliases, by name."""
    if name is not None:
        return [_summary(registered(name))]
    client, models, token = tracking.client(), [], None
    while True:
        page = client.search_registered_models(max_results=1000, page_token=token)
        models.extend(page)
        if not (token := page.token):
            return [_summary(m) for m in sorted(models, key=lambda m: m.name)]


def shown_time(iso: str) -> str:
    """A move's time as the tables and reasons show it: `2026-12-02 17:06:45` (UTC)."""
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")
