"""trainlib's ensemble pieces: resampling and folds (trainlib.resample), SAMME (trainlib.boosting), the
meta-learner and combination rules (trainlib.combine), the exported ensemble (trainlib.export), and the ensemble
methods, settings and member plans (trainlib.ensemble)."""

from typing import get_args

import numpy as np
import pytest
import torch

from trainlib import models
from trainlib.boosting import samme
from trainlib.combine import RULES, Ensemble, disagreement, fit_meta, meta_features
from trainlib.config import PipelineConfig, load_config, validate
from trainlib.device import pinned
from trainlib.ensemble import DEFAULT_MEMBERS, META_SOURCES, METHODS, EnsembleConfig, plan
from trainlib.errors import ConfigError, DataError
from trainlib.export import Program, export, load_exported
from trainlib.overrides import parse_member
from trainlib.resample import RESAMPLERS, Resample, bootstrap, folds, weighted_resample

LABELS = np.repeat(np.arange(4), [30, 20, 10, 40])  # unbalanced classes
ROWS = np.arange(0, 100, 1)


def test_bootstrap_resamples_differ_and_keep_every_class_in_proportion():
    rows = ROWS[::2]  # the "train split": half the dataset
    a, b = bootstrap(LABELS, rows, [0, 0]), bootstrap(LABELS, rows, [0, 1])
    assert not np.array_equal(a, b) and np.array_equal(a, bootstrap(LABELS, rows, [0, 0]))
    for sample in (a, b):
        assert set(sample) <= set(rows) and len(np.unique(sample)) < len(sample)  # drawn with replacement
        assert np.array_equal(np.bincount(LABELS[sample], minlength=4), np.bincount(LABELS[rows], minlength=4))
    assert len(bootstrap(LABELS, rows, 0, fraction=0.5)) == pytest.approx(len(rows) / 2, abs=2)


@pytest.mark.parametrize("kind", list(RESAMPLERS))
def test_every_resampling_draws_seeded_train_rows_with_replacement(kind, tmp_path):
    rows = ROWS[::2]
    np.save(tmp_path / "w.npy", np.linspace(1, 2, len(rows)))
    a, again, b = (Resample(kind, (0, i), 1.0, str(tmp_path / "w.npy")).draw(LABELS, rows) for i in (0, 0, 1))
    assert set(a) <= set(rows) and len(a) == len(rows) and len(np.unique(a)) < len(a)
    assert np.array_equal(a, again) and not np.array_equal(a, b)
    assert len(Resample(kind, (0, 0), 0.5).draw(LABELS, rows)) == pytest.approx(len(rows) / 2, abs=2)


def test_weighted_resample_draws_by_weight():
    weights = np.zeros(len(ROWS))
    weights[:10] = 1
    drawn = weighted_resample(ROWS, weights, 0)
    assert len(drawn) == len(ROWS) and set(drawn) <= set(ROWS[:10])


def test_samme_raises_weights_on_misclassified_samples():
    weights = np.full(10, 0.1)
    correct = np.array([True] * 8 + [False] * 2)
    boost = samme(weights, correct, n_classes=4)
    assert boost.error == pytest.approx(0.2) and boost.stop is None
    assert boost.alpha == pytest.approx(np.log(0.8 / 0.2) + np.log(3))
    assert (boost.weights[~correct] > weights[~correct]).all() and (boost.weights[correct] < weights[correct]).all()
    assert boost.weights.sum() == pytest.approx(1)
    half = samme(weights, correct, n_classes=4, learning_rate=0.5)
    assert half.alpha == pytest.approx(boost.alpha / 2)


def test_samme_stops_on_a_perfect_or_a_useless_member():
    weights = np.full(10, 0.1)
    perfect = samme(weights, np.ones(10, bool), n_classes=3)
    # weighted as if it had made half a mistake: error 0.5 / 10 samples
    assert perfect.stop and perfect.alpha == pytest.approx(np.log(0.95 / 0.05) + np.log(2))
    useless = samme(weights, np.array([True] * 3 + [False] * 7), n_classes=3)
    assert useless.alpha == 0 and "no better than chance" in useless.stop


def test_folds_hold_out_every_row_once():
    rows = ROWS[::2]
    parts = folds(LABELS, rows, 3, seed=0)
    held = np.concatenate([h for _, h in parts])
    assert sorted(held) == sorted(rows)
    for fit, out in parts:
        assert not set(fit) & set(out) and set(fit) | set(out) == set(rows)
    with pytest.raises(DataError, match="fewer than the 6 folds"):
        folds(LABELS, rows, 6, seed=0)  # class 2 has 5 train rows


def test_meta_learner_learns_which_member_to_trust():
    torch.manual_seed(0)
    y = torch.randint(0, 3, (300,))
    good = torch.nn.functional.one_hot(y, 3).float() * 0.8 + 0.2 / 3
    noise = torch.softmax(torch.randn(300, 3) * 3, 1)
    features = meta_features(torch.stack([noise, good]))
    assert features.shape == (300, 6)
    meta = fit_meta(features, y, 3, l2=1e-3)
    assert (meta(features).argmax(1) == y).float().mean() == 1.0
    assert meta.weight[:, 3:].abs().sum() > meta.weight[:, :3].abs().sum()  # the good member counts more


def test_disagreement_matrix():
    predictions = np.array([[0, 1, 2, 3], [0, 1, 2, 0], [1, 1, 2, 0]])
    d = disagreement(predictions)
    assert np.allclose(np.diag(d), 0) and np.allclose(d, d.T)
    assert d[0, 1] == 0.25 and d[0, 2] == 0.5 and d[1, 2] == 0.25


class Fixed(torch.nn.Module):
    """A member that always gives the same logits."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def _plain_average(members: int, classes: int) -> torch.nn.Linear:
    """A meta-learner averaging the members' log-probabilities (where fit_meta starts from)."""
    meta = torch.nn.Linear(members * classes, classes)
    with torch.no_grad():
        meta.weight.copy_(torch.eye(classes).repeat(1, members) / members)
        meta.bias.zero_()
    return meta


@pytest.mark.parametrize("rule", list(RULES))
def test_every_rule_gives_log_probabilities(rule):
    members = [Fixed([2.0, 0.0, 0.0]), Fixed([0.0, 1.0, 0.0]), Fixed([0.0, 1.5, 0.0])]
    meta = _plain_average(3, 3) if RULES[rule].learned else None
    out = Ensemble(members, rule, meta=meta)(torch.zeros(5, 2))
    assert out.shape == (5, 3) and torch.allclose(out.exp().sum(1), torch.ones(5), atol=1e-4)
    assert (out.argmax(1) == 1).all()  # 2 of 3 votes; also the higher mean (log-)probability
    with pytest.raises(ValueError, match="a meta-learner goes with a learned rule, and only with it"):
        Ensemble(members, rule, meta=None if meta is not None else _plain_average(3, 3))


def test_stacking_rule_uses_the_meta_learner():
    meta = torch.nn.Linear(6, 3)
    members = [Fixed([2.0, 0.0, 0.0]), Fixed([0.0, 1.0, 0.0])]
    out = Ensemble(members, "stacking", meta=meta)(torch.zeros(4, 2))
    probs = torch.stack([torch.softmax(m.logits, 0).expand(4, -1) for m in members])
    assert torch.allclose(out, torch.log_softmax(meta(meta_features(probs)), 1))
    with pytest.raises(ValueError, match="meta-learner"):
        Ensemble(members, "soft", meta=meta)


def test_hard_vote_follows_member_weights_and_breaks_ties_by_probability():
    members = [Fixed([3.0, 0.0]), Fixed([0.0, 1.0])]
    assert Ensemble(members, "hard", weights=[1.0, 2.0])(torch.zeros(1, 1)).argmax(1).item() == 1
    assert Ensemble(members, "hard", weights=[2.0, 1.0])(torch.zeros(1, 1)).argmax(1).item() == 0
    assert Ensemble(members, "hard")(torch.zeros(1, 1)).argmax(1).item() == 0  # tie: member 1 is surer


def test_exported_ensemble_matches_and_takes_any_batch_size(tmp_path):
    torch.manual_seed(0)
    members = [models.build(n, (1, 8, 8), 10, None) for n in ("mlp", "cnn")]
    ensemble = Ensemble(members, "soft")
    export(ensemble, torch.rand(4, 1, 8, 8) * 16, tmp_path / "e.pt2")
    loaded = load_exported(tmp_path / "e.pt2")
    for n in (1, 7):
        x = torch.randint(0, 17, (n, 1, 8, 8), dtype=torch.uint8)  # raw digits are stored as uint8
        assert torch.allclose(loaded(x), ensemble(x), atol=1e-5)
    assert isinstance(loaded, Program) and loaded.eval() is loaded  # usable where modules get .eval()
    # as combine makes the registered one: members read back from their programs; it names no device either
    export(Ensemble([loaded, loaded], "hard"), torch.rand(4, 1, 8, 8), tmp_path / "again.pt2")
    assert pinned(torch.export.load(str(tmp_path / "again.pt2")).graph) == []


def test_programs_export_and_load_in_parallel_threads(tmp_path):
    # voting members from the registry are exported and loaded at once; torch.export alone is not thread-safe
    from concurrent.futures import ThreadPoolExecutor

    def round_trip(i: int) -> torch.Tensor:
        export(Ensemble([Fixed([2.0, 0.0, 3.0 * i]), Fixed([0.0, 1.0, 0.0])], "soft"), torch.zeros(4, 2),
               tmp_path / f"{i}.pt2")
        return load_exported(tmp_path / f"{i}.pt2")(torch.zeros(3, 2))

    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(round_trip, range(8)))
    assert [o.argmax(1).tolist() for o in outputs] == [[0] * 3] + [[2] * 3] * 7  # each its own program


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_has_a_plan_and_a_rule(method):
    entry = METHODS[method]
    ensemble = validate({"method": method}, EnsembleConfig)
    members = plan(PipelineConfig(), ensemble)
    assert len(members) == ensemble.size == entry.default_size >= 2 and ensemble.rule in RULES
    assert ensemble.combination is RULES[ensemble.rule] and ensemble.rule == (entry.rule or ensemble.vote)
    assert len({m.name for m in members}) == len(members)
    if entry.copies:  # copies of the config with their own seeds
        assert [m.config.training.seed for m in members] == list(range(entry.default_size))
    else:
        assert [m.config.model.name for m in members] == [d["model.name"] for d in DEFAULT_MEMBERS]


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_resamples_its_members_as_its_entry_says(method):
    entry = METHODS[method]
    ensemble = validate({"method": method}, EnsembleConfig)
    first, second = ensemble.resample(0), ensemble.resample(1, weights="w.npy")
    if entry.resample is None:  # every member trains on the whole train split
        assert first is second is None
    else:
        assert first.kind == second.kind == entry.resample and entry.resample in RESAMPLERS
        assert first.seed != second.seed and second.weights == "w.npy"
    assert not entry.sequential or entry.resample == "weighted"  # in sequence: each round on the last one's weights
    assert (ensemble.out_of_fold() is not None) == (ensemble.combination.learned and
                                                    META_SOURCES[ensemble.meta].out_of_fold)


@pytest.mark.parametrize("method", list(METHODS))
def test_only_methods_that_take_registered_models_accept_them(method):
    entry = METHODS[method]
    raw = {"method": method, "configs": ["models:/digits-cnn@champion", {"model.name": "mlp"}]}
    if entry.copies:
        with pytest.raises(ConfigError, match=f"configs: {method} trains copies"):
            validate(raw, EnsembleConfig, "ensemble")
    elif entry.registered:
        assert plan(PipelineConfig(), validate(raw, EnsembleConfig))[0].uri == "models:/digits-cnn@champion"
    else:
        with pytest.raises(ConfigError, match="can only join a voting ensemble"):
            validate(raw, EnsembleConfig, "ensemble")


@pytest.mark.parametrize("meta", list(META_SOURCES))
def test_every_meta_source_fits_the_meta_learner_off_the_test_split(meta):
    source = META_SOURCES[meta]
    stacking = validate({"method": "stacking", "meta": meta}, EnsembleConfig)
    assert source.split in ("train", "val") and (stacking.out_of_fold() is not None) == source.out_of_fold
    assert source.predictions == ("oof" if source.out_of_fold else source.split)
    assert set(META_SOURCES) == set(get_args(EnsembleConfig.model_fields["meta"].annotation))


def test_members_from_overrides_files_and_registered_models(tmp_path):
    file = tmp_path / "wide.yaml"
    file.write_text("model: {name: mlp, hidden: [512]}\n")
    ensemble = validate({"method": "voting", "configs": [{"optimizer.name": "sgd"}, str(file),
                                                         "models:/digits-cnn@champion"]}, EnsembleConfig)
    sgd, wide, registered = plan(PipelineConfig(), ensemble)
    assert sgd.config.optimizer.name == "sgd" and wide.config.model.hidden == [512] and wide.name.endswith("wide")
    assert registered.uri == "models:/digits-cnn@champion" and registered.config is None


@pytest.mark.parametrize("raw, message", [
    ({"method": "bagin"}, "unknown ensemble method 'bagin'; valid: bagging, boosting, stacking, voting"),
    ({"method": "bagging", "configs": [{}, {}]}, "configs: bagging trains copies of the base config"),
    ({"method": "stacking", "members": 3}, "members: stacking takes one member per entry of configs"),
    ({"method": "stacking", "configs": ["models:/a@b", {}]}, "can only join a voting ensemble"),
    ({"method": "voting", "configs": [{}]}, "needs at least 2 members"),
    ({"method": "bagging", "members": 3, "min_members": 4}, "4 is more than the 3 members"),
    ({"method": "bagging", "members": 1}, "members: Input should be greater than or equal to 2"),
    ({"method": "voting", "vote": "majority"}, "vote: Input should be 'soft' or 'hard'"),
])
def test_bad_ensemble_settings_are_one_readable_error(raw, message):
    with pytest.raises(ConfigError, match="invalid ensemble") as err:
        validate(raw, EnsembleConfig, "ensemble")
    assert message in str(err.value)


def test_members_must_share_data_and_split():
    ensemble = validate({"method": "stacking", "configs": [{"split.seed": 3}, {}]}, EnsembleConfig)
    with pytest.raises(ConfigError, match="member 1 .*split section differs"):
        plan(PipelineConfig(), ensemble)
    bad = validate({"method": "stacking", "configs": [{"model.name": "vgg"}, {}]}, EnsembleConfig)
    with pytest.raises(ConfigError, match="unknown model 'vgg'"):
        plan(PipelineConfig(), bad)
    val_meta = validate({"method": "stacking", "meta": "val"}, EnsembleConfig)
    no_val = load_config(None, ["split.val=0", "split.train=0.85", "training.early_stopping.enabled=false"])
    with pytest.raises(ConfigError, match="meta: val needs a validation split"):
        plan(no_val, val_meta)


def test_member_flags_parse_to_overrides_paths_and_uris():
    assert parse_member("model.name=cnn optimizer.lr=0.01 model.channels=[8,16]") == {
        "model.name": "cnn", "optimizer.lr": 0.01, "model.channels": [8, 16]}
    assert parse_member("models:/digits-cnn@champion") == "models:/digits-cnn@champion"
    assert parse_member("configs/optimizer-sgd.yaml") == "configs/optimizer-sgd.yaml"
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_member("model.name")
