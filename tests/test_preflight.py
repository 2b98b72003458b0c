"""flows/preflight.py without Prefect: it reads only stage references from cache records, finds bad data and
refuses a Dask address where nothing listens. (That it loads neither Prefect nor MLflow: tests/test_commands.py;
through the command line: tests/test_bad_inputs.py, test_cli.py.)"""

import base64
import json
import os
import pickle
import socket
from pathlib import Path

import pytest

from flows import preflight
from tasks.chain.refs import DatasetRef
from trainlib.config import load_config
from trainlib.errors import ConfigError


def _record(path: Path, value) -> None:
    """A result record as Prefect writes one for a cached task (JSON; the result cloudpickled, base64)."""
    path.write_text(json.dumps({"metadata": {"storage_key": str(path)},
                                "result": base64.b64encode(pickle.dumps(value)).decode()}))


class Reduced:
    """An object whose unpickling would call a function of the pickler's choosing."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_it_reads_a_stage_reference_from_a_cache_record_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_LOCAL_STORAGE_PATH", str(tmp_path))
    ref = DatasetRef("/x/dataset.pt", "d" * 64, 10, ("a", "b"), (1, 8, 8), "digits")
    _record(tmp_path / "ingest-1", ref)
    assert preflight._record("ingest-1") == ref
    _record(tmp_path / "ingest-2", Reduced())
    assert preflight._record("ingest-2") is None  # not a stage reference: not unpickled (the stage just runs)
    (tmp_path / "ingest-3").write_text("not json")
    assert preflight._record("ingest-3") is None
    assert preflight._record("ingest-4") is None


def test_bad_data_fails_before_anything_runs_naming_every_problem_in_a_file(tmp_path, csv_file):
    text, cells = tmp_path / "text.csv", {(4, "y"): "n/a?", (9, "x"): "", (13, "label"): "", (20, "y"): "inf"}
    rows = [[str(i), str(i), str(i % 2)] for i in range(120)]
    for (row, column), value in cells.items():
        rows[row]["xyz".index(column) if column != "label" else 2] = value
    text.write_text("x,y,label\n" + "".join(",".join(r) + "\n" for r in rows))
    config = load_config(None, ["data.source=csv", f"data.path={text}"])
    listed = tmp_path / "text.csv.errors.csv"
    with pytest.raises(ConfigError) as caught:
        preflight.check([config])
    assert str(caught.value) == (
        f"csv {text}: 4 rows cannot be used (fix them, or set data.skip_unreadable: true to train without them):\n"
        "  - data row 5, column y: 'n/a?' is not a number\n  - data row 10, column x: missing\n"
        "  - data row 14, column label: no class (missing)\n  - data row 21, column y: 'inf' is infinite or too large\n"
        f"  (listed in {listed})")
    assert listed.read_text().splitlines() == [
        "where,why", "\"data row 5, column y\",'n/a?' is not a number", "\"data row 10, column x\",missing",
        "\"data row 14, column label\",no class (missing)", "\"data row 21, column y\",'inf' is infinite or too large"]
    assert preflight.check([config.model_copy(update={"data": config.data.model_copy(
        update={"skip_unreadable": True})})]) is None and listed.exists()  # skipped: the list stays true
    listed.unlink()
    listed.mkdir()  # where the list would go, something it cannot replace: the error still names the problems
    with pytest.raises(ConfigError, match=r"- data row 5, column y: 'n/a\?' is not a number\n.*\n.*\n.*\n  \(the "
                                          f"full list could not be written to {listed}: "):
        preflight.check([config])
    listed.rmdir()
    text.write_text("x,y,label\n" + "".join(f"{i},{i},{i % 2}\n" for i in range(120)))
    preflight.check([config])
    assert not listed.exists()  # it listed problems the data no longer has
    config = load_config(None, ["data.source=csv", f"data.path={csv_file}", "model.name=mlp",
                                "training.batch_size=500"])
    with pytest.raises(ConfigError, match=r"training.batch_size \(500\) is larger than the train split \(84 "):
        preflight.check([config])


def test_a_dask_address_where_nothing_listens_is_refused_at_once():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(ConfigError, match=f"--runner dask://127.0.0.1:{port}: the Dask scheduler does not answer"):
        preflight.probe(f"dask://127.0.0.1:{port}", seconds=0.2)
