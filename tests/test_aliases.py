"""The alias history (tasks/registry/aliases.py) on a real MLflow SQLite store: every move one tag of its own,
promotions from two processes at once, rollbacks, manual promotions, and the tables the CLI prints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import Param

from cli import models as model_commands
from tasks.registry import aliases
from trainlib.errors import ConfigError
from trainlib.scoring import InputSpec

ROOT = Path(__file__).resolve().parents[1]
KEY = re.compile(r"^trainflow\.alias_history\.\d{13}\.[0-9a-f]{8}$")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A private MLflow SQLite store for this module; the session's store is the current one again afterwards."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('aliases')}/mlflow.db"
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(before)


def registered(versions: int = 3) -> str:
    """A new registered model with `versions` versions: a version needs only a source, no logged model."""
    name = f"m-{uuid.uuid4().hex[:8]}"
    client = MlflowClient()
    client.create_registered_model(name)
    for _ in range(versions):
        client.create_model_version(name, source="file:///nowhere", run_id=None)
    return name


def holder(name: str, alias: str = "champion") -> int:
    return int(MlflowClient().get_model_version_by_alias(name, alias).version)


def test_every_move_is_recorded_in_its_own_tag_in_order(store):
    name = registered(3)
    first = aliases.move(name, "champion", 1, "promoted to @champion (no version held it)", "gate")
    aliases.move(name, "challenger", 2, "kept as challenger (not better)", "gate")
    aliases.move(name, "champion", 3, "promoted to @champion (0.95 > version 1's 0.90)", "gate")
    assert aliases.move(name, "champion", 3, "the holder again", "gate") is None  # no move, nothing recorded

    moves = aliases.history(name)
    assert [(m.alias, m.from_version, m.to_version, m.reason, m.by) for m in moves] == [
        ("champion", None, 1, "promoted to @champion (no version held it)", "gate"),
        ("challenger", None, 2, "kept as challenger (not better)", "gate"),
        ("champion", 1, 3, "promoted to @champion (0.95 > version 1's 0.90)", "gate")]
    assert moves[0] == first and first.flow_run is None and first.when.endswith("+00:00")
    assert [m.to_version for m in aliases.history(name, "champion")] == [1, 3] and holder(name) == 3
    tags = {k: v for k, v in MlflowClient().get_registered_model(name).tags.items() if k.startswith(aliases.PREFIX)}
    assert sorted(tags) == sorted(m.key for m in moves) and all(KEY.match(key) for key in tags)
    assert all(aliases.Move.from_json(m.key, tags[m.key]) == m for m in moves)
    assert all(v == json.dumps(json.loads(v), separators=(",", ":"), ensure_ascii=False) for v in tags.values())


def test_a_reason_too_long_for_a_tag_is_shortened(store):
    name = registered(1)
    entry = aliases.move(name, "champion", 1, 'why "' * 3000, "promote")
    assert len(entry.to_json()) <= aliases.VALUE_LIMIT and entry.reason.endswith("…")
    assert aliases.history(name) == [entry]


PROMOTER = """
import sys, time
from pathlib import Path

from mlflow import MlflowClient

from tasks.registry import aliases


def answering_late(read):  # as a tracking server across a network does: tens of milliseconds
    def call(*args, **kwargs):
        answer = read(*args, **kwargs)
        time.sleep(0.02)
        return answer
    return call


for read in ("get_registered_model", "get_model_version", "get_model_version_by_alias"):
    setattr(MlflowClient, read, answering_late(getattr(MlflowClient, read)))
name, alias, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
(folder / f"ready-{alias}").touch()
while not (folder / "go").exists():  # both processes start promoting at the same moment
    time.sleep(0.002)
for version in (1, 2, 3, 1, 2, 3):
    aliases.promote(name, version, alias=alias, reason=f"{alias} to {version}")
"""


def test_promotions_from_two_processes_at_once_are_all_recorded(store, tmp_path):
    name = registered(3)
    env = os.environ | {"MLFLOW_TRACKING_URI": store, "PYTHONPATH": str(ROOT)}
    processes = [subprocess.Popen([sys.executable, "-c", PROMOTER, name, alias, str(tmp_path)], env=env, cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for alias in ("one", "two")]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{alias}").exists() for alias in ("one", "two")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), "a promoter did not start"
        time.sleep(0.01)
    (tmp_path / "go").touch()
    for process in processes:
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0, out

    for alias in ("one", "two"):
        moves = aliases.history(name, alias)
        assert [(m.from_version, m.to_version, m.by) for m in moves] == [
            (None, 1, "promote"), (1, 2, "promote"), (2, 3, "promote"), (3, 1, "promote"), (1, 2, "promote"),
            (2, 3, "promote")], moves
        assert [m.reason for m in moves] == [f"trainflow promote: {alias} to {v}" for v in (1, 2, 3, 1, 2, 3)]
    assert len(aliases.history(name)) == 12


def test_rollback_goes_back_one_move_at_a_time(store):
    name = registered(3)
    for version in (1, 2, 3):
        aliases.promote(name, version)
    back = aliases.rollback(name, reason="version 3 mislabels sevens")
    assert holder(name) == 2 and (back.from_version, back.to_version, back.by) == (3, 2, "rollback")
    assert back.undoes == aliases.history(name)[2].key
    assert re.fullmatch(r"trainflow rollback: undoes the move from version 2 to 3 \(promote, [-\d]+ [:\d]+ UTC\): "
                        "version 3 mislabels sevens", back.reason), back.reason
    assert aliases.rollback(name).to_version == 1 and holder(name) == 1  # two steps back, not back and forth
    with pytest.raises(ConfigError, match=f"^no earlier holder of @champion for {name}: version 1 was the first"):
        aliases.rollback(name)
    assert holder(name) == 1

    aliases.promote(name, 3)  # a new move after rollbacks is the one the next rollback undoes
    assert aliases.rollback(name).to_version == 1 and holder(name) == 1
    assert [(m.from_version, m.to_version, m.by) for m in aliases.history(name)] == [
        (None, 1, "promote"), (1, 2, "promote"), (2, 3, "promote"), (3, 2, "rollback"), (2, 1, "rollback"),
        (1, 3, "promote"), (3, 1, "rollback")]


ROLLBACK = """
import sys
from tasks.registry import aliases
print(aliases.rollback(sys.argv[1]).undoes)
"""


def _holds_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has the file `path` open."""
    try:
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # it ended, or closed a descriptor while we looked
        return False


def test_a_rollback_waits_for_a_gate_deciding_and_undoes_the_gates_move(store):
    """The race the registry lock closes: a rollback that looked while a gate was deciding would undo the move before
    the gate's and overwrite the gate's decision."""
    name = registered(3)
    aliases.promote(name, 1)
    aliases.promote(name, 2)
    env = os.environ | {"MLFLOW_TRACKING_URI": store, "PYTHONPATH": str(ROOT)}
    with aliases.locked(name):  # a gate deciding: it has read the holder (2) and will move the alias to 3
        rollback = subprocess.Popen([sys.executable, "-c", ROLLBACK, name], env=env, cwd=ROOT, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not _holds_open(rollback.pid, aliases.lock_path(name)):  # it waits for the lock
            assert rollback.poll() is None, f"the rollback did not wait for the gate: {rollback.communicate()[0]}"
            assert time.monotonic() < deadline, "the rollback never reached the lock"
            time.sleep(0.01)
        gate = aliases.move(name, "champion", 3, "promoted to @champion (better than version 2)", "gate")
    out, _ = rollback.communicate(timeout=120)
    assert rollback.returncode == 0, out
    assert out.split()[-1] == gate.key  # it undid the gate's move, the latest, not the promotion it saw before it
    assert holder(name) == 2
    assert [(m.from_version, m.to_version, m.by) for m in aliases.history(name)] == [
        (None, 1, "promote"), (1, 2, "promote"), (2, 3, "gate"), (3, 2, "rollback")]


def test_rollback_refuses_without_a_recorded_move_or_after_an_outside_one(store):
    name = registered(3)
    with pytest.raises(ConfigError, match=f"^{name} has no alias @champion; its aliases: none$"):
        aliases.rollback(name)
    aliases.promote(name, 1)
    with pytest.raises(ConfigError, match=fr"^{name} has no alias @champ; its aliases: @champion \(version 1\)$"):
        aliases.rollback(name, "champ")  # a typo is said as predict says it
    MlflowClient().set_registered_model_alias(name, "staging", "1")  # held, but by no recorded move
    with pytest.raises(ConfigError, match=f"^no earlier holder of @staging for {name}: trainflow has recorded no"):
        aliases.rollback(name, "staging")
    aliases.promote(name, 2)
    MlflowClient().set_registered_model_alias(name, "champion", "3")  # the MLflow UI, say
    with pytest.raises(ConfigError, match=f"^@champion of {name} is on version 3 but trainflow last moved it to "
                                          "version 2: it was moved outside trainflow"):
        aliases.rollback(name)
    assert holder(name) == 3 and len(aliases.history(name)) == 2
    with pytest.raises(ConfigError, match=r"^no registered model 'nowhere'; registered: .*" + name):
        aliases.rollback("nowhere")
    older = registered(2)  # an alias set before trainflow recorded moves: its first recorded move has a `from`
    MlflowClient().set_registered_model_alias(older, "champion", "1")
    aliases.promote(older, 2)
    assert aliases.rollback(older).to_version == 1
    with pytest.raises(ConfigError, match=f"^no earlier holder of @champion for {older}: every move of it trainflow "
                                          "recorded is rolled back already"):
        aliases.rollback(older)


def test_promoting_a_missing_version_names_those_that_exist(store):
    name = registered(2)
    with pytest.raises(ConfigError, match=f"^{name} has no version 7; its versions: 1, 2$"):
        aliases.promote(name, 7)
    assert aliases.history(name) == []
    assert aliases.promote(name, 2, alias="staging").to_version == 2 and holder(name, "staging") == 2
    assert aliases.promote(name, 2, alias="staging") is None  # already there: nothing moves


def test_the_tables_show_versions_aliases_and_moves(store):
    name = registered(3)
    client = MlflowClient()
    client.set_model_version_tag(name, "1", "test_accuracy", "0.912345")
    client.set_model_version_tag(name, "1", "gate", "promoted")
    aliases.promote(name, 1, reason="first")
    aliases.promote(name, 3, alias="challenger")

    [model] = aliases.overview(name)
    assert model.name == name and model.aliases == (("challenger", 3), ("champion", 1))
    assert [(v.version, v.test_accuracy, v.gate, v.aliases, v.run_id) for v in model.versions] == [
        (3, None, None, ("challenger",), None), (2, None, None, (), None), (1, 0.912345, "promoted", ("champion",),
                                                                                None)]
    assert name in [m.name for m in aliases.overview()]
    with pytest.raises(ConfigError, match=f"^no registered model 'nowhere'; registered: .*{name}"):
        aliases.overview("nowhere")

    table = model_commands.models_table([model]).splitlines()
    assert table[0] == f"{name}: @challenger -> version 3, @champion -> version 1"
    assert table[1].split() == ["version", "created", "(UTC)", "test_accuracy", "gate", "aliases", "source", "model",
                                "input", "run"]
    created = model.versions[2].created[:19].replace("T", " ")
    assert table[4].split() == ["1", *created.split(), "0.9123", "promoted", "@champion", "-", "-", "-", "-"]
    assert table[2].split()[3:] == ["-", "-", "@challenger", "-", "-", "-", "-"]
    assert table[1].index("aliases") == table[2].index("@challenger") == table[4].index("@champion")  # aligned
    assert model_commands.models_table([]) == "no registered models"

    lines = model_commands.history_table(aliases.history(name)).splitlines()
    assert lines[0].split() == ["when", "(UTC)", "alias", "from", "to", "by", "flow", "run", "reason"]
    assert lines[1].split()[2:] == ["@champion", "-", "1", "promote", "-", "trainflow", "promote:", "first"]
    assert lines[2].split()[2:] == ["@challenger", "-", "3", "promote", "-", "trainflow", "promote"]
    assert lines[1].index("promote") == lines[2].index("promote")  # columns aligned
    assert model_commands.history_table([]) == "no recorded alias moves"


def test_the_gate_records_its_moves_with_its_reason_and_flow_run(store, prefect_api):
    from prefect import flow
    from prefect.runtime import flow_run

    from tasks import tracking
    from tasks.registry.register import promote
    from tasks.results import Registration
    from trainlib.config import RegisterConfig

    name, client = f"gate-{uuid.uuid4().hex[:8]}", MlflowClient()
    experiment = tracking.experiment_id(name)

    @flow
    def register(accuracy: float) -> tuple[Registration, str]:
        run_id = client.create_run(experiment).info.run_id
        return promote(name, RegisterConfig(min_test_accuracy=0.5), "file:///nowhere", accuracy, run_id,
                       DIGITS), flow_run.id

    results = [register(accuracy) for accuracy in (0.9, 0.8, 0.95)]
    assert [r.alias for r, _ in results] == ["champion", "challenger", "champion"]
    assert [(m.alias, m.from_version, m.to_version, m.by, m.reason, m.flow_run) for m in aliases.history(name)] == [
        (r.alias, before, r.version, "gate", r.gate.reason, str(run))
        for (r, run), before in zip(results, (None, None, 1), strict=True)]


DIGITS = InputSpec([str(d) for d in range(10)], [1, 8, 8], True, [], 16.0, [4.9], [6.0])
WINE = InputSpec(["0", "1", "2"], [13], False, [f"f{i}" for i in range(13)], None, [0.0] * 13, [1.0] * 13)


def test_an_alias_never_moves_to_a_version_taking_another_input(store, prefect_api):
    from prefect import flow

    from tasks import tracking
    from tasks.registry.register import promote
    from trainlib.config import RegisterConfig

    name, client = f"sig-{uuid.uuid4().hex[:8]}", MlflowClient()
    experiment = tracking.experiment_id(name)

    @flow
    def register(spec: InputSpec, source: str, accuracy: float):
        run = client.create_run(experiment)
        client.log_batch(run.info.run_id, params=[Param("data.source", source), Param("data.path", f"/d/{source}.x"),
                                                  Param("model.name", "mlp")])
        return promote(name, RegisterConfig(min_test_accuracy=0.5), "file:///nowhere", accuracy, run.info.run_id, spec)

    digits, wine = register(DIGITS, "digits", 0.9), register(WINE, "csv", 1.0)  # wine: better, but another input
    assert (digits.alias, wine.alias, wine.gate.outcome, holder(name)) == ("champion", "challenger", "other_input", 1)
    assert wine.gate.reason == (
        "kept as challenger: version 2 takes a table of 13 feature columns (f0, f1, f2, f3, f4, f5, f6, f7, ...), "
        "3 classes (0, 1, 2), but @champion's version 1 takes grayscale images of 8x8 pixels, 10 "
        f"classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9): callers of models:/{name}@champion would break (give this data its "
        f"own --name, or move the alias anyway: trainflow promote {name} 2 --force)")
    with pytest.raises(ConfigError, match=r"^version 2 takes a table of 13 .* but @champion's version 1 takes "
                                          r"grayscale images .* would break; give --force to move it anyway$"):
        aliases.promote(name, 2)
    assert holder(name) == 1 and [m.to_version for m in aliases.history(name, "champion")] == [1]
    assert register(DIGITS, "digits", 0.95).alias == "champion"  # the same input: the gate decides as before
    assert aliases.promote(name, 2, force=True).reason == "trainflow promote, forced" and holder(name) == 2
    assert aliases.promote(name, 1, alias="staging").to_version == 1  # no holder: nothing to break

    [model] = aliases.overview(name)
    assert [(v.version, v.source, v.model, v.input_shape) for v in model.versions] == [
        (3, "digits digits.x", "mlp", "(1, 8, 8)"), (2, "csv csv.x", "mlp", "(13,)"),
        (1, "digits digits.x", "mlp", "(1, 8, 8)")]
