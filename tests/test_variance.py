"""The sources of variance (trainlib/variance.py, training.seeds): a seed per source, the design that moves one at
a time, each source's spread and share."""

import math

import pytest
import torch
from scipy import stats

from flows import plans
from trainlib import variance
from trainlib.config import load_config
from trainlib.errors import ConfigError
from trainlib.streams import Streams


def test_a_source_without_its_own_seed_draws_what_training_seed_gives():
    same = Streams.seeded(7, torch.device("cpu"))
    explicit = Streams.seeded(7, torch.device("cpu"), sources={"order": 7, "augment": 7, "dropout": 7})
    moved = Streams.seeded(7, torch.device("cpu"), sources={"order": 8})
    for name in ("shuffle", "augment", "dropout", "mix"):
        assert torch.equal(getattr(same, name).get_state(), getattr(explicit, name).get_state()), name
    assert not torch.equal(same.shuffle.get_state(), moved.shuffle.get_state())  # only the order moved
    assert all(torch.equal(getattr(same, n).get_state(), getattr(moved, n).get_state())
               for n in ("augment", "dropout", "mix"))


def test_a_seed_set_for_a_source_stays_fixed_across_a_comparisons_repeats():
    cfg = load_config(None, ["training.seeds.init=3"])
    repeat = plans.seeded(cfg, 2, resplit=False)
    assert repeat.training.seed == 2 and repeat.training.seeds.of(repeat.training.seed) == {
        "init": 3, "order": 2, "augment": 2, "dropout": 2}


def test_the_design_moves_one_seed_per_group_and_shares_repeat_zero():
    cfg = load_config(None, ["training.seed=4", "split.seed=9"])
    planned = variance.design(cfg, ["split", "order", "all"], 3)
    assert [(g, i) for g, i, _ in planned] == [("base", 0), ("split", 1), ("order", 1), ("all", 1), ("split", 2),
                                               ("order", 2), ("all", 2)]
    configs = dict(zip([(g, i) for g, i, _ in planned], variance.configs(cfg, planned), strict=True))
    seeds = {k: (c.split.seed, c.training.seeds.of(c.training.seed)) for k, c in configs.items()}
    held = {"init": 4, "order": 4, "augment": 4, "dropout": 4}
    assert seeds[("base", 0)] == (9, held)
    assert seeds[("split", 2)] == (11, held)
    assert seeds[("order", 2)] == (9, held | {"order": 6})
    assert seeds[("all", 1)] == (10, {k: 5 for k in held})


@pytest.mark.parametrize(("sources", "repeats", "message"), [
    (["split", "weather"], 3, "--sources split,weather: give some of split, init, order, augment, dropout"),
    ([], 3, "--sources : give some of"),
    (["split"], 2, "--repeats 2: a spread with an interval needs at least 3 repeats")])
def test_a_bad_design_is_refused(sources, repeats, message):
    with pytest.raises(ConfigError, match=message):
        variance.design(load_config(None, []), sources, repeats)


def test_each_sources_spread_has_the_chi_square_interval_and_the_shares_sum_to_one():
    groups = {"split": [0.90, 0.92, 0.95, 0.91], "init": [0.90, 0.905, 0.91, 0.90], "order": [0.9] * 4,
              "all": [0.90, 0.93, 0.96, 0.90]}
    found = {s.source: s for s in variance.shares(groups)}
    var = stats.tvar(groups["split"])
    low, high = (math.sqrt(3 * var / stats.chi2.ppf(q, 3)) for q in (0.975, 0.025))
    assert (found["split"].sd_low, found["split"].sd_high) == pytest.approx((low, high))
    assert sum(found[s].share for s in ("split", "init", "order")) == pytest.approx(1.0)
    assert found["order"].share == found["order"].sd == 0.0  # a source that moved nothing
    assert found["split"].share_low < found["split"].share < found["split"].share_high
    assert found["all"].share is None and found["all"].sd == pytest.approx(stats.tstd(groups["all"]))
