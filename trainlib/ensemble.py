"""Ensembles: the `trainflow ensemble` settings, member plans, resampling (bootstrap, boosting weights,
k folds), SAMME member weights, the stacking meta-learner, and how often members disagree."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from trainlib.config import PipelineConfig, Section, override, validate
from trainlib.errors import ConfigError, DataError
from trainlib.overrides import parse_set, read_yaml
from trainlib.registry import Registry

# method -> how its members are combined (trainlib.combine.RULES); voting's comes from `vote`.
METHODS = Registry("ensemble method", {
    "bagging": "soft",  # copies of the config on bootstrap resamples of the train split; averaged probabilities
    "boosting": "hard",  # copies trained in sequence on re-weighted resamples; SAMME-weighted votes
    "stacking": "stacking",  # different configs; a meta-learner on their out-of-fold (or validation) predictions
    "voting": None,  # different configs or registered models; soft or hard vote
})
URI_PREFIXES = ("models:/", "runs:/")
# Stacking and voting members when none are given: three different learners of the base config's data.
DEFAULT_MEMBERS: tuple[dict[str, Any], ...] = (
    {"model.name": "mlp"},
    {"model.name": "cnn"},
    {"model.name": "cnn", "optimizer.name": "sgd", "optimizer.lr": 0.05, "schedule.name": "cosine"},
)
Count = Annotated[int, Field(ge=1)]
Seed = int | Sequence[int]  # numpy seed: e.g. [ensemble seed, member index]


class EnsembleConfig(Section):
    """What `trainflow ensemble` builds (its flags, or an --ensemble file)."""

    method: Annotated[str, Field(description="bagging | boosting | stacking | voting")] = "bagging"
    members: Annotated[int, Field(ge=2)] | None = Field(
        None, description="bagging: members (default 5); boosting: most rounds (default 5); stacking, voting: "
                          "one per entry of `configs`")
    configs: list[str | dict[str, Any]] | None = Field(
        None, description="stacking, voting: one per member: config overrides {key: value}, a config YAML "
                          "path, or (voting) a registered model URI models:/name@alias")
    vote: Literal["soft", "hard"] = Field("soft", description="voting: average probabilities, or count votes")
    meta: Literal["oof", "val"] = Field("oof", description="stacking: fit the meta-learner on out-of-fold "
                                                          "predictions over the train split, or on validation")
    folds: Annotated[int, Field(ge=2)] = Field(5, description="stacking with meta oof: k of the k-fold")
    meta_l2: Annotated[float, Field(ge=0)] = Field(1e-3, description="stacking: L2 weight of the meta-learner")
    learning_rate: Annotated[float, Field(gt=0)] = Field(1.0, description="boosting: shrinkage of member weights")
    sample_fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        1.0, description="bagging, boosting: resample size as a fraction of the train split")
    max_parallel: Count = Field(2, description="members trained at once (boosting trains in sequence)")
    min_members: Count = Field(2, description="fail when fewer members than this train successfully")
    seed: Annotated[int, Field(ge=0)] = Field(0, description="seed of the resamples and folds")

    @model_validator(mode="after")
    def _check(self):
        METHODS.check(self.method)
        resampled = self.method in ("bagging", "boosting")
        if resampled and self.configs is not None:
            raise ConfigError(f"configs: {self.method} trains copies of the base config on resamples; "
                              "change them with --set, or use stacking or voting for different configs")
        if not resampled and self.members is not None:
            raise ConfigError(f"members: {self.method} takes one member per entry of configs "
                              "(--member); leave members unset")
        if self.method != "voting" and any(isinstance(c, str) and c.startswith(URI_PREFIXES)
                                           for c in self.configs or ()):
            raise ConfigError("configs: registered models (models:/...) can only join a voting ensemble; "
                              "the other methods train their members")
        if self.configs is not None and len(self.configs) < 2:
            raise ConfigError("configs: an ensemble needs at least 2 members")
        if self.min_members > self.size:
            raise ConfigError(f"min_members: {self.min_members} is more than the {self.size} members")
        return self

    @property
    def rule(self) -> str:
        """The combination rule (trainlib.combine.RULES) of this method."""
        return METHODS[self.method] or self.vote

    @property
    def size(self) -> int:
        """How many members (for boosting: at most)."""
        if self.method in ("stacking", "voting"):
            return len(self.configs or DEFAULT_MEMBERS)
        return self.members or 5


def registered_name(name: str) -> str:
    """Ensembles register apart from single models (`<name>-ensemble`): a different interface (pyfunc,
    log-probabilities) behind one name would surprise code that loads `<name>@champion` as a torch model."""
    return f"{name}-ensemble"


def load_ensemble(path: str | Path) -> EnsembleConfig:
    """An ensemble file (the settings of `trainflow ensemble --ensemble F`)."""
    return validate(read_yaml(path, "ensemble file"), EnsembleConfig, "ensemble file")


def short_label(overrides: dict[str, Any]) -> str:
    """A member's name from its overrides: registry names bare, other keys by their last part,
    e.g. `cnn sgd lr=0.05`."""
    return " ".join(str(v) if k.endswith(".name") else f"{k.rsplit('.', 1)[-1]}={v}" for k, v in overrides.items())


def parse_member(text: str) -> str | dict[str, Any]:
    """A `--member` value: a registered model URI or a config YAML path (kept as given), or space-separated
    `key=value` overrides of the base config, e.g. `model.name=cnn optimizer.name=sgd`."""
    if text.startswith(URI_PREFIXES) or text.endswith((".yaml", ".yml")):
        return text
    try:
        items = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"--member {text!r}: {exc}") from None
    if not items:
        raise ConfigError("--member: empty; give key=value overrides, a config YAML or models:/name@alias")
    return dict(parse_set(item) for item in items)


@dataclass(frozen=True)
class Member:
    """One planned member: a config to train, or a registered model to reuse (`uri`)."""

    name: str
    config: PipelineConfig | None
    overrides: dict[str, Any]
    uri: str | None = None


SHARED = ("data", "split")  # every member sees the same data and split: their predictions line up row by row


def plan(config: PipelineConfig, ensemble: EnsembleConfig) -> list[Member]:
    """Every member's config, validated up front (bad overrides fail before anything trains)."""
    if ensemble.method in ("bagging", "boosting"):
        return [Member(f"member {i + 1}", override(config, {"training.seed": config.training.seed + i}),
                       {"training.seed": config.training.seed + i}) for i in range(ensemble.size)]
    members = []
    for i, spec in enumerate(ensemble.configs or DEFAULT_MEMBERS):
        if isinstance(spec, str) and spec.startswith(URI_PREFIXES):
            members.append(Member(f"member {i + 1}: {spec}", None, {}, uri=spec))
            continue
        if isinstance(spec, str):
            member = validate(read_yaml(spec, f"ensemble member {i + 1} config"), what=f"member {i + 1} config")
            overrides, name = {"config": spec}, Path(spec).stem
        else:
            member, overrides, name = override(config, spec), spec, short_label(spec) or "base config"
        for section in SHARED:
            if getattr(member, section) != getattr(config, section):
                raise ConfigError(f"ensemble member {i + 1} ({name}): its {section} section differs from the base "
                                  f"config's; every member must see the same {'/'.join(SHARED)}")
        members.append(Member(f"member {i + 1}: {name}", member, overrides))
    if ensemble.method == "stacking" and ensemble.meta == "val" and config.split.val == 0:
        raise ConfigError("ensemble.meta: val needs a validation split (split.val > 0); use meta: oof")
    return members


def bootstrap(labels: np.ndarray, rows: np.ndarray, seed: Seed, fraction: float = 1.0) -> np.ndarray:
    """A stratified bootstrap of `rows` (dataset indices): each class drawn with replacement on its own, so
    every class of the split stays, in its proportion."""
    rng = np.random.default_rng(seed)
    parts = [rng.choice(c, max(1, round(fraction * len(c)))) for c in
             (rows[labels[rows] == k] for k in np.unique(labels[rows]))]
    return np.sort(np.concatenate(parts))


def weighted_resample(rows: np.ndarray, weights: np.ndarray, seed: Seed, fraction: float = 1.0) -> np.ndarray:
    """`rows` drawn with replacement in proportion to `weights` (boosting by resampling)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, max(1, round(fraction * len(rows))), p=weights / weights.sum()))


@dataclass(frozen=True)
class Boost:
    alpha: float  # the member's weight in the vote
    error: float  # its weighted error on the train split
    weights: np.ndarray  # the next round's sample weights (sum 1)
    stop: str | None  # why boosting ends after this member, if it does


def samme(weights: np.ndarray, correct: np.ndarray, n_classes: int, learning_rate: float = 1.0) -> Boost:
    """One round of multi-class AdaBoost (SAMME): the member's weight from its weighted error, and sample
    weights raised on the samples it got wrong. A member no better than chance gets weight 0 and ends
    boosting; a perfect one ends it too, weighted as if it had made half a mistake."""
    w = weights / weights.sum()
    error = float(w[~correct].sum())
    if error >= 1 - 1 / n_classes:
        return Boost(0.0, error, w, f"weighted error {error:.4f} is no better than chance ({1 - 1 / n_classes:.4f})")
    clipped = max(error, 0.5 / len(w))
    alpha = learning_rate * (np.log((1 - clipped) / clipped) + np.log(n_classes - 1))
    raised = w * np.exp(alpha * ~correct)
    return Boost(float(alpha), error, raised / raised.sum(), "a perfect fit of the train split" if error == 0 else None)


def folds(labels: np.ndarray, rows: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k folds of `rows`: (rows to fit, held-out rows) per fold; every row is held out once."""
    counts = np.bincount(labels[rows])
    if counts[counts > 0].min() < k:
        raise DataError(f"ensemble.folds: a class has only {counts[counts > 0].min()} train samples, fewer than "
                        f"the {k} folds; lower ensemble.folds or use meta: val")
    from sklearn.model_selection import StratifiedKFold  # here: importing sklearn costs most of a second

    splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
    return [(rows[a], rows[b]) for a, b in splitter.split(rows, labels[rows])]


def fit_meta(features: torch.Tensor, labels: torch.Tensor, n_classes: int, l2: float = 1e-3,
             steps: int = 200) -> torch.nn.Linear:
    """Multinomial logistic regression (full-batch L-BFGS, L2 on the weights) from the members' stacked
    log-probabilities to the class."""
    torch.manual_seed(0)
    meta = torch.nn.Linear(features.shape[1], n_classes)
    with torch.no_grad():  # start from the members' plain average: the sum of their log-probabilities
        meta.weight.copy_(torch.eye(n_classes).repeat(1, features.shape[1] // n_classes) /
                          (features.shape[1] // n_classes))
        meta.bias.zero_()
    opt = torch.optim.LBFGS(meta.parameters(), lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(meta(features), labels) + l2 * meta.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return meta.requires_grad_(False)


def disagreement(predictions: np.ndarray) -> np.ndarray:
    """(M, M) share of samples on which members i and j predict different classes, from (M, N) predictions."""
    return (predictions[:, None, :] != predictions[None, :, :]).mean(2)
