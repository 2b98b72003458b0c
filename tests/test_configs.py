"""Every example config in configs/ is valid and trains (one epoch on 20 train samples per class, through
trainlib)."""

from pathlib import Path

import pytest

from trainlib import recipe
from trainlib.config import PipelineConfig, load_config, validate
from trainlib.overrides import read_yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_is_a_config_per_technique_family():
    names = {p.stem for p in CONFIGS}
    for family in ["augmentation", "augmentation-expand", "normalize-minmax", "normalize-symmetric", "normalize-none",
                   "gd-batch", "gd-stochastic", "early-stopping", "dropout", "regularization-l1",
                   "regularization-l2", "schedule-step", "schedule-exponential", "schedule-cyclical",
                   "schedule-onecycle", "schedule-cosine", "schedule-plateau", "optimizer-sgd", "optimizer-adamw",
                   "optimizer-rmsprop", "optimizer-adagrad", "tabular-csv", "imagefolder"]:
        assert family in names


def test_default_yaml_is_the_default_config():
    assert validate(read_yaml(ROOT / "configs" / "default.yaml")) == PipelineConfig()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_trains(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # data paths in configs are relative to the project
    cfg = load_config(path, ["training.epochs=1", "split.shots=20"])  # every stage runs, on 1/6 of digits' train
    out = recipe.run(cfg)
    assert out.evaluation.accuracy > 0 and len(out.fit.history) == 1


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
