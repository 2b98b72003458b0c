"""Search files, spaces, samplers and pruners (trainlib.tuning) on in-memory studies (tasks.tuning.storage), and
comparison grids (trainlib.variants), without Prefect or MLflow."""

import itertools
import re

import optuna
import pytest

from tasks.tuning.storage import create_study, tell
from trainlib import recipe
from trainlib.config import PipelineConfig, load_config, override, validate
from trainlib.device import cpu_quota
from trainlib.errors import ConfigError
from trainlib.monitor import MONITORS
from trainlib.overrides import parse_vary
from trainlib.tuning import (
    PRUNERS,
    SAMPLERS,
    PruningCallback,
    SearchConfig,
    check_space,
    front_choice,
    grid_values,
    suggest,
    trial_base,
)
from trainlib.variants import check_keys, needs_validation, share_cpus, variants

SPACE = {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
         "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
         "training.batch_size": {"type": "int", "low": 16, "high": 256, "log": True},
         "model.hidden": {"type": "categorical", "choices": [[64], [128, 64]]},
         "optimizer.name": {"type": "categorical", "choices": ["adam", "sgd", "rmsprop"]}}


def _search(**fields) -> SearchConfig:
    return validate({"space": SPACE, **fields}, SearchConfig, "search file")


def _draw(search: SearchConfig, n: int, name: str) -> list[dict]:
    study = create_study(search, name, epochs=5)
    out = []
    for _ in range(n):
        t = study.ask()
        params = suggest(t, search.space)
        tell(study, t, float(hash(str(params)) % 1000) / 1000)
        out.append(params)
    return out


def test_registries_cover_the_search_file_choices():
    assert set(SAMPLERS) == {"grid", "random", "bayesian", "gp"} and set(PRUNERS) == {"none", "median", "hyperband"}


@pytest.mark.parametrize("pruner", sorted(PRUNERS))
def test_no_pruner_stops_a_trial_within_its_first_epochs(pruner):
    search = _search(pruner=pruner, prune_after=2)
    study = create_study(search, f"warmup-{pruner}", epochs=6)
    for value in (0.9, 0.9, 0.9):  # three finished trials that did well
        t = study.ask()
        for epoch in range(1, 7):
            t.report(value, epoch)
        tell(study, t, value)
    hopeless = study.ask()
    callback = PruningCallback(hopeless, "val_accuracy")
    for epoch in (1, 2):  # the first prune_after epochs always run, whatever the pruner
        callback.on_epoch_end(epoch, {"val_accuracy": 0.0})
    if pruner == "median":  # then the median pruner stops it (hyperband compares within brackets of trials)
        with pytest.raises(optuna.TrialPruned):
            callback.on_epoch_end(3, {"val_accuracy": 0.0})


@pytest.mark.parametrize("metric", sorted(MONITORS))
def test_every_monitored_metric_can_be_searched_in_its_direction(metric):
    search = _search(metric=metric)
    assert search.goal == ("minimize" if metric == "val_loss" else "maximize")
    assert trial_base(PipelineConfig(), search, 1).training.early_stopping.monitor == metric


def test_grid_covers_every_combination_exactly_once_even_with_parallel_asks():
    search = validate({"strategy": "grid", "space": {
        "optimizer.name": {"type": "categorical", "choices": ["adam", "sgd", "rmsprop"]},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.25},
        "training.batch_size": {"type": "int", "low": 32, "high": 64, "step": 32}}}, SearchConfig)
    assert search.budget() == 3 * 3 * 2
    study = create_study(search, "grid-test", epochs=3)
    seen = []
    for _ in range(search.budget() // 2):  # two trials asked before either is told: as with max_parallel 2
        pair = [study.ask() for _ in range(2)]
        for t in pair:
            seen.append(tuple(suggest(t, search.space).values()))
        for t in pair:
            tell(study, t, 0.5)
    expected = set(itertools.product(["adam", "sgd", "rmsprop"], [0.0, 0.25, 0.5], [32, 64]))
    assert sorted(seen) == sorted(expected)


def test_random_stays_within_bounds():
    for p in _draw(_search(strategy="random", seed=3), 200, "random-test"):
        assert 1e-4 <= p["optimizer.lr"] <= 1e-1 and 0.0 <= p["model.dropout"] <= 0.5
        assert isinstance(p["training.batch_size"], int) and 16 <= p["training.batch_size"] <= 256
        assert p["optimizer.name"] in {"adam", "sgd", "rmsprop"} and p["model.hidden"] in ([64], [128, 64])
    lrs = sorted(p["optimizer.lr"] for p in _draw(_search(strategy="random"), 400, "random-log"))
    assert lrs[len(lrs) // 2] < 1e-2  # log scale: the median lies near 10^-2.5, not near 0.05


@pytest.mark.parametrize("strategy", ["bayesian", "gp", "random"])
def test_seeded_samplers_are_reproducible(strategy):
    n = 14 if strategy != "gp" else 8
    a = _draw(_search(strategy=strategy, seed=7), n, f"{strategy}-a")
    b = _draw(_search(strategy=strategy, seed=7), n, f"{strategy}-b")
    c = _draw(_search(strategy=strategy, seed=8), n, f"{strategy}-c")
    assert a == b and a != c


def test_a_small_bayesian_search_follows_its_model_after_half_its_trials():
    assert [_search(n_trials=n).startup() for n in (2, 8, 20, 50)] == [1, 4, 10, 10]  # Optuna's 10 at most
    assert _search(n_trials=8, startup_trials=6).startup() == 6 and _search(timeout=60).startup() == 10
    random, bayesian = (_draw(_search(strategy=s, n_trials=8, seed=5), 8, f"{s}-8") for s in ("random", "bayesian"))
    assert bayesian[:4] == random[:4] and bayesian[4:] != random[4:]  # at Optuna's default 10, all 8 were random


def test_median_pruner_stops_a_hopeless_trial(digits):
    cfg = load_config(None, ["model.name=mlp", "model.hidden=[64]", "training.epochs=6",
                             "training.early_stopping.enabled=false"])
    search = _search(pruner="median", prune_after=1, metric="val_accuracy")
    study = create_study(search, "prune-test", epochs=6)
    ds, manifest = digits, recipe.split(digits, cfg.split)
    norm = recipe.fit_normalizer(ds, manifest, cfg.normalize)

    def run(lr):
        t = study.ask()
        callback = PruningCallback(t, "val_accuracy")
        try:
            recipe.train(cfg.model_copy(update={"optimizer": cfg.optimizer.model_copy(update={"lr": lr})}), ds,
                         manifest, norm, callbacks=[callback])
        except optuna.TrialPruned:
            tell(study, t, state=optuna.trial.TrialState.PRUNED)
            return "pruned", callback.epoch
        tell(study, t, max(t.storage.get_trial(t._trial_id).intermediate_values.values()))
        return "complete", callback.epoch

    assert run(1e-3) == ("complete", 6) and run(1e-3) == ("complete", 6)
    state, epoch = run(1e-7)  # learns nothing
    assert state == "pruned" and epoch == 2  # epoch 1 always runs (prune_after=1); pruned at the next


@pytest.mark.parametrize("fields, message", [
    ({"space": {}}, "space: Dictionary should have at least 1 item"),
    ({"metric": "test_accuracy"}, "'test_accuracy' is not a validation metric"),
    ({"metric": "val_loss", "direction": "maximize"}, "val_loss should be minimized"),
    ({"strategy": "anneal"}, "unknown search strategy 'anneal'"),
    ({"pruner": "asha"}, "unknown pruner 'asha'; valid: hyperband, median, none"),
    ({"strategy": "grid"}, "grid search needs a step for a float"),
    ({"n_trials": None}, "give n_trials or timeout"),
    ({"space": {"optimizer.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}}, "a log scale needs low > 0"),
    ({"space": {"optimizer.lr": {"type": "float", "low": 1.0, "high": 0.1}}}, "low (1.0) must be below high (0.1)"),
    ({"sapce": {}}, "sapce: unknown key (did you mean 'space'?)"),
    ({"n_trials": 3, "min_complete": 4}, "search.min_complete: 4 is more than the 3 trials planned"),
    ({"min_complete": 0}, "min_complete: Input should be greater than or equal to 1"),
    ({"strategy": "random", "startup_trials": 3}, "startup_trials: only bayesian and gp search start with random"),
    ({"n_trials": 8, "startup_trials": 8}, "startup_trials: 8 random trials of 8 leave none to the model"),
])
def test_bad_search_files(fields, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate({"space": SPACE} | fields, SearchConfig, "search file")


@pytest.mark.parametrize("space, message", [
    ({"optimizer.lrr": {"type": "float", "low": 0.1, "high": 0.2}}, "unknown key (did you mean 'optimizer.lr'?)"),
    ({"model.dropout": {"type": "float", "low": 0.0, "high": 1.5}}, "model.dropout=1.5"),
    ({"split.seed": {"type": "int", "low": 0, "high": 3}}, "split.seed: cannot vary"),
    ({"data.source": {"type": "categorical", "choices": ["digits"]}}, "data.source: cannot vary"),
    ({"optimizer.name": {"type": "categorical", "choices": ["adam", "lion"]}}, "unknown optimizer 'lion'"),
])
def test_search_space_is_checked_against_the_config(space, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_space(PipelineConfig(), validate({"space": space}, SearchConfig))


def test_budget_follows_n_trials_timeout_and_grid():
    assert _search().budget() == 20 and _search(n_trials=5, timeout=60).budget() == 5
    assert _search(timeout=60).budget() is None  # only a timeout: as many trials as fit
    grid = {"model.dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.25}}
    assert _search(strategy="grid", space=grid).budget() == 3 and _search(strategy="grid", space=grid,
                                                                           n_trials=2).budget() == 2


def test_tuning_and_comparing_need_a_validation_split():
    no_val = load_config(None, ["split.val=0", "split.train=0.85", "training.early_stopping.enabled=false"])
    with pytest.raises(ConfigError, match="tuning scores on the validation split"):
        check_space(no_val, _search())
    with pytest.raises(ConfigError, match="compare scores on the validation split"):
        needs_validation(no_val, "compare")


def test_grid_values_and_variants():
    assert grid_values(validate({"space": {"model.dropout": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.1}}},
                                SearchConfig).space) == {"model.dropout": [0.1, 0.2, 0.3]}
    vary = dict([parse_vary("optimizer.name=sgd,adam"), parse_vary("augment.scale=[0.9,1.1],[1,1]")])
    assert variants(vary) == [{"optimizer.name": o, "augment.scale": s} for o in ("sgd", "adam")
                              for s in ([0.9, 1.1], [1, 1])]
    with pytest.raises(ConfigError, match="--vary split.train: cannot vary"):
        check_keys(PipelineConfig(), {"split.train": [0.5]}, "--vary")
    with pytest.raises(ConfigError, match="expected key=value1,value2"):
        parse_vary("optimizer.name")


def test_parallel_runs_share_the_cpus():
    assert share_cpus(PipelineConfig(), 2).training.threads == max(1, cpu_quota() // 2)
    assert share_cpus(PipelineConfig(), 1).training.threads is None
    assert share_cpus(load_config(None, ["training.threads=2"]), 2).training.threads == 2
    assert _search().budget() == 20


def test_the_recipe_techniques_are_search_space_keys():
    space = {"augment.mixup": {"type": "float", "low": 0.0, "high": 0.4},
             "augment.policy": {"type": "categorical", "choices": ["none", "trivialaugment", "randaugment"]},
             "training.ema.decay": {"type": "categorical", "choices": [0.0, 0.99, 0.999]},
             "training.accumulate": {"type": "int", "low": 1, "high": 4}}
    search = validate({"space": space, "strategy": "random", "seed": 1}, SearchConfig)
    check_space(PipelineConfig(), search)
    for params in _draw(search, 12, "recipe-keys"):
        config = override(PipelineConfig(), params)  # every draw makes a valid config with those values
        assert config.augment.mixup == params["augment.mixup"] <= 0.4 and config.augment.policy == params[
            "augment.policy"] and config.training.ema.decay == params["training.ema.decay"]
        assert config.training.accumulate == params["training.accumulate"] in (1, 2, 3, 4)
    with pytest.raises(ConfigError, match="unknown augmentation policy 'trivial'"):
        check_space(PipelineConfig(), validate({"space": {"augment.policy": {"type": "categorical",
                                                                             "choices": ["trivial"]}}}, SearchConfig))


def test_two_objectives_name_a_cost_and_leave_pruning_off():
    space = {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}
    two = validate({"second_metric": "train_seconds", "space": space}, SearchConfig)
    assert two.directions == ["maximize", "minimize"] and two.pruning == "none" and two.pruner == "median"
    with pytest.raises(ConfigError, match="second_metric: 'test_accuracy' is not a cost.*train_seconds"):
        validate({"second_metric": "test_accuracy", "space": space}, SearchConfig)
    with pytest.raises(ConfigError, match="single-objective searches only"):
        validate({"second_metric": "train_seconds", "pruner": "hyperband", "space": space}, SearchConfig)


def test_the_front_member_retrained_is_the_cheapest_near_the_best():
    def trial(number, accuracy, seconds):
        return optuna.trial.FrozenTrial(number, optuna.trial.TrialState.COMPLETE, None, None, None, {}, {}, {}, {},
                                        {}, number, values=[accuracy, seconds])

    front = [trial(0, 0.99, 9.0), trial(1, 0.985, 3.0), trial(2, 0.97, 1.0), trial(3, 0.982, 3.0)]
    space = {"optimizer.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}
    pick = front_choice(front, validate({"second_metric": "train_seconds", "space": space}, SearchConfig))
    assert pick.number == 1  # within 0.01 of 0.99: trials 0, 1, 3; the cheapest, ties to the better accuracy
    wide = validate({"second_metric": "train_seconds", "tolerance": 0.05, "space": space}, SearchConfig)
    assert front_choice(front, wide).number == 2
    assert front_choice(front, validate({"second_metric": "train_seconds", "tolerance": 0, "space": space},
                                        SearchConfig)).number == 0


def test_a_train_val_retrain_trains_for_the_best_epoch_and_refuses_a_trial_without_one():
    from trainlib.tuning import retrain_epochs

    def trial(attrs):
        return optuna.trial.FrozenTrial(7, optuna.trial.TrialState.COMPLETE, 0.9, None, None, {}, {}, attrs, {}, {}, 7)

    assert retrain_epochs(trial({"best_epoch": 3})) == 3  # not training.epochs
    with pytest.raises(ConfigError, match="trial 7 recorded none"):
        retrain_epochs(trial({}))
