"""Every kind of bad input, through the real `trainflow` command: exit code 2, the problem said once in one
`error:` line, no traceback (unless --debug), and nothing registered or left looking finished in MLflow."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import TRAINFLOW, cli_env, write_images
from mlflow import MlflowClient
from PIL import Image

IRIS = str(Path("configs/data/iris.csv").resolve())
MLP = ["--set", "model.name=mlp", "--set", "training.epochs=1"]


def _csv(path: Path, rows: list[str], header: str = "x,y,label") -> str:
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    """A working folder with one broken input of each kind."""
    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    write_images(root / "empty-class", per_class=4, classes=("a",))
    (root / "empty-class" / "b").mkdir()
    for name, payload in (("corrupt", b"not an image at all"), ("truncated", None)):
        write_images(root / name, per_class=10, classes=("a", "b"))
        if payload is None:  # a PNG cut off half-way
            Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(root / name / "b" / "3.png")
            payload = (root / name / "b" / "3.png").read_bytes()[:120]
        (root / name / "b" / "3.png").write_bytes(payload)
    (root / "truncated" / "a" / "1.png").write_bytes(b"GIF89a")  # a second unreadable file: both are named
    _csv(root / "no-target.csv", [f"{i},{i}" for i in range(30)], header="x,y")
    _csv(root / "text.csv", [f"{i},v{i},{i % 2}" for i in range(30)])
    _csv(root / "nan.csv", [f"{i},{'' if i == 5 else i},{i % 2}" for i in range(30)])
    _csv(root / "one-class.csv", [f"{i},{i},0" for i in range(30)])
    _csv(root / "few.csv", [f"{i},{i},{int(i >= 28)}" for i in range(30)])
    _csv(root / "odd.csv", [f"{i},{i},{i},{i % 2}" for i in range(30)], header="x,y,z,label")
    np.savez(root / "unlabelled.npz", x=np.zeros((30, 16)))
    np.save(root / "signals.npy", np.zeros((30, 16)))
    from trainlib.models import build, save_model

    save_model(root / "digits-mlp.pt", build("mlp", (1, 8, 8), 10, None, hidden=[32]), classes=list("0123456789"))
    return root


def _imagefolder(path: str) -> list[str]:
    return ["--set", "data.source=imagefolder", "--set", f"data.path={path}", "--set", "data.image_size=[8,8]",
            "--set", "training.epochs=1"]


def _table(path: str) -> list[str]:
    return ["--set", "data.source=csv", "--set", f"data.path={path}", *MLP]


CASES = {
    "unknown key": (["run", "--set", "training.epoch=3"],
                    "training.epoch: unknown key (did you mean 'training.epochs'?)"),
    "wrong type": (["run", "--set", "training.epochs=many"], "training.epochs: Input should be a valid integer"),
    "negative lr": (["run", "--set", "optimizer.lr=-0.1"], "optimizer.lr: Input should be greater than 0 (got -0.1)"),
    "split ratios": (["run", "--set", "split.train=0.5"], "split: train + val + test must sum to 1 (got 0.5 + 0.15 "
                                                          "+ 0.15 = 0.8)"),
    "dropout >= 1": (["run", "--set", "model.dropout=1"], "model.dropout: Input should be less than 1 (got 1)"),
    "batch larger than train split": (["run", "--set", "training.batch_size=2000", *MLP],
                                      "training.batch_size (2000) is larger than the train split (1259 samples) in "
                                      "minibatch mode; lower it or use training.mode: batch"),
    "unknown optimizer": (["run", "--set", "optimizer.name=adamm"], "unknown optimizer 'adamm'; valid: adagrad, adam, "
                                                                    "adamw, rmsprop, sgd (did you mean 'adam'?)"),
    "unknown schedule": (["run", "--set", "schedule.name=cosin"], "unknown LR schedule 'cosin'"),
    "unknown normalizer": (["run", "--set", "normalize.method=zscore"],
                           "unknown normalization method 'zscore'; valid: minmax, none, standardize, symmetric"),
    "unknown source": (["run", "--set", "data.source=hdf5"], "unknown data source 'hdf5'"),
    "unknown registered model": (["transfer", "--source", "models:/nothing@champion"],
                                 "transfer.source models:/nothing@champion: not found"),
    "missing dataset path": (["run", *_imagefolder("no-such-folder")],
                             "/no-such-folder (relative paths in a config file are read against its folder"),
    "missing table": (["run", *_table("missing.csv")],
                      "/missing.csv (relative paths in a config file are read against its folder"),
    "empty ImageFolder": (["run", *_imagefolder("empty")], "/empty: Couldn't find any class folder"),
    "empty class folder": (["run", *_imagefolder("empty-class")], "/empty-class: Found no valid file for "
                                                                  "the classes b"),
    "corrupt image": (["run", *_imagefolder("corrupt")], "/corrupt: 1 file cannot be used (fix them, or set "
                      "data.skip_unreadable: true to train without them):\n  - b/3.png: cannot identify image file\n"
                      "  (listed in "),
    "truncated images": (["run", *_imagefolder("truncated")], "/truncated: 2 files cannot be used (fix them, or set "
                         "data.skip_unreadable: true to train without them):\n  - a/1.png: cannot identify image "
                         "file\n  - b/3.png: image file is truncated\n  (listed in "),
    "images too big for memory": (["run", *_imagefolder("corrupt"), "--set", "data.memory_budget=0.000005"],
                                  "data: 20 images of 3x8x8 decoded in memory need about 7.5 KiB (twice their 3.8 "
                                  "KiB, a margin for the copies made while reading them), over the memory budget of "
                                  "5.2 KiB (data.memory_budget); set data.stream: true to decode them per batch "
                                  "instead"),
    "CSV without target": (["run", *_table("no-target.csv")], "csv: no class column: none named label, nor a lone "
                                                              "target or class column; set data.target to one of the "
                                                              "columns: x, y"),
    "non-numeric features": (["run", *_table("text.csv")], "csv: feature columns must be numeric; y holds no number "
                                                           "(e.g. 'v0'); leave them out with data.features"),
    "NaN features": (["run", *_table("nan.csv")], "/nan.csv: 1 row cannot be used (fix them, or set "
                     "data.skip_unreadable: true to train without them):\n  - data row 6, column y: missing\n"),
    "single class": (["run", *_table("one-class.csv")], "the dataset has a single class ('0'): classification needs "
                                                        "at least two"),
    "too few per class": (["run", *_table("few.csv")], "class '1' has 2 samples: too few for a stratified split"),
    "image model on signals": (["run", "--set", "data.source=waveforms", "--set", "model.name=cnn"],
                               "model.name: cnn takes images (C, H, W); data.source waveforms is signals (C, L) (use "
                               "cnn1d, gru, lstm, mlp)"),
    "columns that do not fold into channels": (["run", *_table("odd.csv"), "--set", "model.name=cnn1d", "--set",
                                                "data.channels=2"],
                                               "csv: 3 feature columns (x .. z) do not fold into data.channels=2 "
                                               "channels of equal length"),
    "signals without labels": (["run", "--set", "data.source=numpy", "--set", "data.path=unlabelled.npz", *MLP],
                               "has no labels array named 'label' (data.target) or y, labels, label; its arrays: x"),
    "signal labels file missing": (["run", "--set", "data.source=numpy", "--set", "data.path=signals.npy", "--set",
                                    "data.labels=no-labels.npy", *MLP], "data.labels: no such file: "),
    "transfer source not found": (["transfer", "--source", "nothing.pt"], "/nothing.pt (give models:/name@alias"),
    "incompatible checkpoint": (["transfer", "--source", "digits-mlp.pt", "--set", "data.source=csv", "--set",
                                 f"data.path={IRIS}", "--set", "data.target=species", *MLP],
                                "/digits-mlp.pt: net.1.weight is (32, 64) in the source but (32, 4) here"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_message_exit_2_and_nothing_registered(case, place):
    args, message = CASES[case]
    out = subprocess.run([TRAINFLOW, *args, "--json"], capture_output=True, text=True, timeout=300,
                         env=cli_env(place), cwd=place)
    assert out.returncode == 2, out.stderr
    assert out.stdout == "" and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    said = next(i for i in reversed(range(len(lines))) if lines[i].startswith("error: "))
    assert all(line.startswith("  ") for line in lines[said + 1:]), out.stderr  # its list of problems, if any
    last = "\n".join(lines[said:])
    assert message in last, out.stderr
    assert out.stderr.count(message) == 1, out.stderr  # said once: Prefect's own error lines are not echoed
    store = place / ".trainflow" / "mlflow.db"
    if "(listed in " in message:  # every problem in a file beside the data, as the message lists them
        listed = Path(last.rsplit("(listed in ", 1)[1].rstrip(")"))
        assert listed.read_text().splitlines()[1:] == [line[4:].replace(": ", ",", 1) for line in lines[said + 1:-1]]
    if store.exists():  # a transfer source read from the registry: nothing was written to it
        client = MlflowClient(f"sqlite:///{store}")
        assert client.search_registered_models() == []
        assert [e.name for e in client.search_experiments()] == ["Default"]  # no experiment of failures either
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_debug_shows_the_traceback(place):
    out = subprocess.run([TRAINFLOW, "--debug", "run", *_table("text.csv")], capture_output=True, text=True,
                         timeout=300, env=cli_env(place), cwd=place)
    assert out.returncode != 0 and "Traceback" in out.stderr and "DataError: csv: feature columns" in out.stderr
