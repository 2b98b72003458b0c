"""What an ensemble is made of: its methods (a registry of what each does), the `trainflow ensemble`
settings, and the plan of its members (every member's config, or a registered model to reuse).

The pieces each method uses live apart: trainlib.resample (bootstrap, weighted draws, folds),
trainlib.boosting (SAMME), trainlib.combine (combination rules, the meta-learner, the ensemble module).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from trainlib.combine import RULES, Rule
from trainlib.config import PipelineConfig, Section, override, validate
from trainlib.errors import ConfigError
from trainlib.overrides import URI_PREFIXES, read_yaml
from trainlib.registry import Registry
from trainlib.resample import Resample

# Stacking and voting members when none are given: three different learners of the base config's data.
DEFAULT_MEMBERS: tuple[dict[str, Any], ...] = (
    {"model.name": "mlp"},
    {"model.name": "cnn"},
    {"model.name": "cnn", "optimizer.name": "sgd", "optimizer.lr": 0.05, "schedule.name": "cosine"},
)


@dataclass(frozen=True)
class Method:
    """What an ensemble method does, for the code that plans, trains and combines its members to ask."""

    rule: str | None  # how members are combined (trainlib.combine.RULES); None: the `vote` setting says
    copies: bool  # True: copies of the base config with their own seeds; False: one member per entry of `configs`
    default_size: int  # members when neither `members` nor `configs` is given
    resample: str | None = None  # how each member draws its train rows (trainlib.resample.RESAMPLERS); None: all
    sequential: bool = False  # members train one after another, each on the sample weights its predecessors left
    registered: bool = False  # members may be registered models (models:/...), reused rather than trained


METHODS = Registry("ensemble method", {
    # copies of the config on bootstrap resamples of the train split; averaged probabilities
    "bagging": Method("soft", copies=True, default_size=5, resample="bootstrap"),
    # copies trained in sequence on re-weighted resamples; SAMME-weighted votes
    "boosting": Method("hard", copies=True, default_size=5, resample="weighted", sequential=True),
    # different configs; a meta-learner on their out-of-fold (or validation) predictions
    "stacking": Method("stacking", copies=False, default_size=len(DEFAULT_MEMBERS)),
    # different configs or registered models; soft or hard vote
    "voting": Method(None, copies=False, default_size=len(DEFAULT_MEMBERS), registered=True),
})


@dataclass(frozen=True)
class MetaSource:
    """What a learned combination (stacking's meta-learner) is fitted on; never the test split."""

    split: str  # the dataset rows: those of this split
    predictions: str  # the members' predictions over them: this entry of each member's probabilities
    out_of_fold: bool  # members first predict the train split out of fold (k more fits each)


META_SOURCES = Registry("meta-learner source", {
    "oof": MetaSource("train", "oof", out_of_fold=True),
    "val": MetaSource("val", "val", out_of_fold=False),
})
Count = Annotated[int, Field(ge=1)]


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
        method = METHODS[self.method]
        if method.copies and self.configs is not None:
            raise ConfigError(f"configs: {self.method} trains copies of the base config on resamples; "
                              "change them with --set, or use stacking or voting for different configs")
        if not method.copies and self.members is not None:
            raise ConfigError(f"members: {self.method} takes one member per entry of configs "
                              "(--member); leave members unset")
        if not method.registered and any(isinstance(c, str) and c.startswith(URI_PREFIXES)
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
        return METHODS[self.method].rule or self.vote

    @property
    def combination(self) -> Rule:
        """How the members are combined: a fixed rule, or a learned one (a meta-learner)."""
        return RULES[self.rule]

    @property
    def size(self) -> int:
        """How many members (for boosting: at most)."""
        return len(self.configs or ()) or self.members or METHODS[self.method].default_size

    def resample(self, member: int, weights: str | None = None) -> Resample | None:
        """How member `member` (from 0) draws its train rows, with the sample `weights` (a file) its
        predecessors left when members train in sequence; None: it trains on the whole train split."""
        kind = METHODS[self.method].resample
        return Resample(kind, (self.seed, member), self.sample_fraction, weights) if kind else None

    def out_of_fold(self) -> dict | None:
        """{folds, seed} when every member first predicts the train split out of fold for the meta-learner."""
        if self.combination.learned and META_SOURCES[self.meta].out_of_fold:
            return {"folds": self.folds, "seed": self.seed}
        return None


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
    if METHODS[ensemble.method].copies:
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
    if ensemble.combination.learned and META_SOURCES[ensemble.meta].split == "val" and config.split.val == 0:
        raise ConfigError("ensemble.meta: val needs a validation split (split.val > 0); use meta: oof")
    return members
