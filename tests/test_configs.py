"""Every example config in configs/ is valid and trains (one epoch on 20 train samples per class, through
trainlib)."""

from pathlib import Path

import pytest

from trainlib import recipe
from trainlib.config import PipelineConfig, flatten, load_config, validate
from trainlib.overrides import read_yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_is_a_config_per_technique_family():
    names = {p.stem for p in CONFIGS}
    for family in ["augmentation", "augmentation-expand", "normalize-minmax", "normalize-symmetric", "normalize-none",
                   "gd-batch", "gd-stochastic", "early-stopping", "dropout", "regularization-l1",
                   "regularization-l2", "schedule-step", "schedule-exponential", "schedule-cyclical",
                   "schedule-onecycle", "schedule-cosine", "schedule-plateau", "optimizer-sgd", "optimizer-adamw",
                   "optimizer-rmsprop", "optimizer-adagrad", "tabular-csv", "imagefolder", "mixup-cutmix", "ema", "swa",
                   "augmentation-policy", "recipe-knobs"]:
        assert family in names


def test_default_yaml_is_the_default_config_every_key_written_out():
    raw = read_yaml(ROOT / "configs" / "default.yaml")
    assert validate(raw) == PipelineConfig()
    assert sorted(flatten(raw)) == sorted(flatten(PipelineConfig()))  # as its first line says


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_trains(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # data paths in configs are relative to the project
    cfg = load_config(path, ["training.epochs=1", "split.shots=20"])  # every stage runs, on 1/6 of digits' train
    out = recipe.run(cfg)
    assert out.evaluation.accuracy > 0 and len(out.fit.history) == 1


REGIMES = sorted((ROOT / "configs" / "regimes").glob("*.yaml"))


def test_every_regime_says_what_it_makes_hard():
    assert {p.stem for p in REGIMES} >= {"few-labels", "label-noise", "imbalance"}
    for path in REGIMES:
        words = " ".join(line.lstrip("# ") for line in path.read_text().splitlines() if line.startswith("#"))
        assert "What it makes hard:" in words and "Default cnn: test accuracy" in words, path


@pytest.mark.parametrize("path", REGIMES, ids=[p.stem for p in REGIMES])
def test_regime_trains(path):
    out = recipe.run(load_config(path, ["training.epochs=1"]))
    assert out.evaluation.accuracy > 0 and len(out.fit.history) == 1


@pytest.mark.parametrize("path", REGIMES, ids=[p.stem for p in REGIMES])
def test_each_regime_leaves_the_default_cnn_room_below_perfect(path):
    """The regime's promise: the default cnn, trained in full, scores clearly below 1.0 (it reaches 0.99-1.00 on
    the full clean split), and well above chance (0.1): techniques can differ in both directions."""
    accuracy = recipe.run(load_config(path, [])).evaluation.accuracy
    assert 0.6 < accuracy < 0.985, accuracy


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "search").glob("*.yaml")), ids=lambda p: p.stem)
def test_search_files_are_valid_for_the_default_config(path):
    from trainlib.tuning import check_space, load_search

    search = load_search(path)
    check_space(PipelineConfig(), search)
    assert search.budget() is None or search.budget() >= 1


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "ensemble").glob("*.yaml")), ids=lambda p: p.stem)
def test_ensemble_files_plan_members_for_the_default_config(path):
    from trainlib.ensemble import METHODS, load_ensemble, plan

    ensemble = load_ensemble(path)
    assert ensemble.method == path.stem and path.stem in METHODS
    assert len(plan(PipelineConfig(), ensemble)) == ensemble.size
