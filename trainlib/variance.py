"""Where a training's randomness comes from (`trainflow variance`): how much of the spread of a score each source
of variance makes, one source at a time (Bouthillier et al. 2021).

The sources are the data split (split.seed) and a training's four random streams: initial weights, batch order,
augmentation and mixing draws, dropout masks (training.seeds, trainlib/streams.py). Source s's group trains the
config `repeats` times moving only s's seed (repeat i: s's seed + i, every other seed held where repeat 0 has it);
the group `all` moves every seed at once, as `compare --resplit` does. Repeat 0 is the same training in every
group, trained once. The spread of a group is its sample standard deviation with the chi-square 95% interval;
a source's share is its variance over the sum of the sources' variances, with a 95% interval from the sampling
distribution of each variance (s^2 (n-1) / chi^2(n-1), drawn independently per source: a parametric bootstrap).
The sum of the sources' variances need not equal the variance of `all` (the sources interact); both are reported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import chdtri  # the chi-square upper-tail quantile

from trainlib.config import PipelineConfig, override
from trainlib.errors import ConfigError

SOURCES = ("split", "init", "order", "augment", "dropout")
ALL = "all"
DRAWS = 4000  # of the parametric bootstrap of the shares


def changes(config: PipelineConfig, source: str, repeat: int) -> dict[str, Any]:
    """The overrides of `source`'s group's repeat `repeat`: only that source's seed moved by `repeat`."""
    t, split = config.training, config.split.seed
    held = {f"training.seeds.{k}": v for k, v in t.seeds.of(t.seed).items()}
    if source == ALL:
        return {k: v + repeat for k, v in held.items()} | {"split.seed": split + repeat}
    if source == "split":
        return held | {"split.seed": split + repeat}
    return held | {f"training.seeds.{source}": held[f"training.seeds.{source}"] + repeat}


def check(sources: list[str], repeats: int) -> None:
    unknown = [s for s in sources if s not in (*SOURCES, ALL)]
    if unknown or not sources:
        raise ConfigError(f"--sources {','.join(sources)}: give some of {', '.join(SOURCES)} (and {ALL}: every "
                          "seed at once)")
    if repeats < 3:
        raise ConfigError(f"--repeats {repeats}: a spread with an interval needs at least 3 repeats per source")


def design(config: PipelineConfig, sources: list[str], repeats: int) -> list[tuple[str, int, dict[str, Any]]]:
    """Every training of the design as (group, repeat, overrides of `config`), repeat 0 once (group `base`)."""
    check(sources, repeats)
    return [("base", 0, {})] + [(s, i, changes(config, s, i)) for i in range(1, repeats) for s in sources]


def configs(config: PipelineConfig, planned: list[tuple[str, int, dict[str, Any]]]) -> list[PipelineConfig]:
    return [override(config, o) if o else config for _, _, o in planned]


@dataclass(frozen=True)
class Share:
    """One group's spread of a measure: `n` repeats, the standard deviation with its 95% interval, and (a source,
    not `all`) its share of the sources' summed variance with a 95% interval."""

    source: str
    n: int
    mean: float
    sd: float
    sd_low: float
    sd_high: float
    share: float | None = None
    share_low: float | None = None
    share_high: float | None = None

    def json(self) -> dict[str, Any]:
        return asdict(self)


def _sd_interval(var: float, n: int) -> tuple[float, float]:
    return math.sqrt(var * (n - 1) / chdtri(n - 1, 0.025)), math.sqrt(var * (n - 1) / chdtri(n - 1, 0.975))


def shares(groups: dict[str, list[float]], seed: int = 0) -> list[Share]:
    """Each group's spread (group -> the measure's values over its repeats, at least 2) and each source's share of
    the summed variance of the sources (every group but `all`)."""
    rng = np.random.default_rng(seed)
    stats = {}
    for g, values in groups.items():
        xs = np.asarray(values, dtype=float)
        if len(xs) < 2:
            raise ValueError(f"{g}: a spread needs 2 repeats, got {len(xs)}")
        stats[g] = (len(xs), float(xs.mean()), float(xs.var(ddof=1)))
    sources = [g for g in groups if g != ALL]
    draws = {g: stats[g][2] * (stats[g][0] - 1) / rng.chisquare(stats[g][0] - 1, DRAWS) for g in sources}
    total, drawn_total = sum(stats[g][2] for g in sources), sum(draws.values())
    out = []
    for g, (n, mean, var) in stats.items():
        low, high = _sd_interval(var, n)
        if g == ALL or total == 0:
            out.append(Share(g, n, mean, math.sqrt(var), low, high))
            continue
        drawn = draws[g] / np.where(drawn_total > 0, drawn_total, 1.0)
        out.append(Share(g, n, mean, math.sqrt(var), low, high, var / total,
                         float(np.quantile(drawn, 0.025)), float(np.quantile(drawn, 0.975))))
    return out
