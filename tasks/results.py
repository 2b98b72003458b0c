"""Typed results: what tasks return and flows, reports and summaries read, instead of dicts whose keys are
found out at run time (a renamed key fails in a report after the trainings have run). Each turns into JSON in
one place, its `json()`, for `--json` and the report writers, and comes back from it with `from_json`. Pure (no
Prefect or MLflow import): the CLI's summaries read them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tasks.wording import NOT_REGISTERED


@dataclass(frozen=True)
class Gate:
    """The registration gate's verdict on a new version (tasks/registry/register.py decide)."""

    passed: bool  # the alias moved to this version
    outcome: str  # one of tasks/registry/register.py OUTCOMES
    reason: str  # the sentence every summary prints
    test_accuracy: float
    threshold: float  # register.min_test_accuracy
    min_delta: float
    champion_version: int | None  # the alias holder this version was compared with
    champion_accuracy: float | None
    test: str = "delta"  # how it was compared with the holder: delta (accuracies), mcnemar (the same test samples)
    b: int | None = None  # mcnemar: test samples this version gets right and the holder wrong
    c: int | None = None  # ... and the other way
    p: float | None = None  # mcnemar: the one-sided exact p that this version is better


@dataclass(frozen=True)
class Registration:
    """What registering a model did: the model logged to the run (`model_uri`) and, unless register.enabled is
    false (--no-register), the version made, the alias it got and the gate's verdict."""

    model_uri: str
    registered_model: str | None = None
    version: int | None = None
    alias: str | None = None
    gate: Gate | None = None

    @property
    def outcome(self) -> str:
        """The gate's verdict in a word (tasks/registry/register.py OUTCOMES), or `not_registered`."""
        return self.gate.outcome if self.gate else "not_registered"

    def line(self) -> str:
        """The line every summary gives about the registration, e.g. `registered digits-cnn version 4: kept as
        challenger (not better than version 3's 1.0000 by 0.001)`, or why nothing was registered."""
        if self.gate is None:
            return f"{NOT_REGISTERED}; the model is logged to the run as {self.model_uri}"
        return f"registered {self.registered_model} version {self.version}: {self.gate.reason}"

    def json(self) -> dict[str, Any]:
        """The keys every command's summary carries (`--json`): model_uri, registered_model, version (an int),
        alias and gate, the last four None when nothing was registered."""
        return {"model_uri": self.model_uri, "registered_model": self.registered_model, "version": self.version,
                "alias": self.alias, "gate": asdict(self.gate) if self.gate else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Registration:
        """From a summary's keys (what `json()` wrote)."""
        gate = data.get("gate")
        return cls(data["model_uri"], data.get("registered_model"), data.get("version"), data.get("alias"),
                   Gate(**gate) if gate else None)


@dataclass(frozen=True)
class Retrained:
    """A tuning study's best trial trained again, tested and registered, in a run of its own."""

    run_id: str
    metrics: dict[str, float]  # its test metrics
    registered: Registration


@dataclass(frozen=True)
class VariantRun:
    """One repeat of one comparison variant, trained and tested in its nested run (tasks/fanout/runs.py `variant`)."""

    label: str  # the variant's label (trainlib.variants)
    repeat: int
    name: str  # the child run's name
    run_id: str
    overrides: dict[str, Any]  # what the variant changes in the base config
    metrics: dict[str, float]  # test, best-validation-epoch and derived measures, train_seconds
    epochs: int  # epochs run (early stopping may end sooner)
    best_epoch: int | None
    seconds: float  # wall seconds of its training and testing
    model: str  # its model file (the registered one, if it wins)
    curves: str  # a JSON file of its history and LR per update (the report's figures)


@dataclass(frozen=True)
class Repeated:
    """A repeat of a comparison as the comparison keeps it: trained (`run`), or failed with its `error`."""

    label: str
    repeat: int
    name: str
    split_seed: int  # the split it trained on (with resplit, each repeat its own)
    run: VariantRun | None = None
    error: str | None = None

    @property
    def state(self) -> str:
        return "complete" if self.run is not None else "failed"


@dataclass(frozen=True)
class Combined:
    """An ensemble's members made one model (tasks/ensembles/combine.py `combine`): its exported program, what it is
    made of, and how it scored."""

    program: str  # the torch.export program file (.pt2)
    about: str  # a JSON file: method, rule, classes, input shape, every member with its run and vote weight
    metrics: dict[str, float]  # the exported program's val_* and test_* metrics
    weights: list[float] | None  # the members' vote weights (boosting's), None for equal votes
    disagreement: list[list[float]]  # pairwise disagreement of the members' test predictions


@dataclass(frozen=True)
class BoostStep:
    """One SAMME step after a boosting round (tasks/ensembles/members.py `boost_weights`)."""

    alpha: float  # the member's vote weight (0 or less: no better than chance, left out)
    error: float  # its weighted error on the train split
    weights: str  # the next round's sample weights (a .npy file)
    stop: str | None  # why boosting stops after this round, if it does


@dataclass(frozen=True)
class MemberRun:
    """An ensemble member trained (or a registered model reused) and scored in its nested run
    (tasks/ensembles/members.py)."""

    label: str
    run_id: str
    model: str  # its model file (a trainlib model, or a registered model's exported program)
    probabilities: str  # an .npz of its class probabilities per split (and out of fold, for stacking)
    metrics: dict[str, float]
    epochs: int | None  # None for a registered model reused
    seconds: float
    source: str | None  # the registered model it reuses (models:/...), if any


@dataclass(frozen=True)
class MemberOutcome:
    """A member as the ensemble keeps it: complete, failed (`error`), or discarded by boosting (no better than
    chance: `error` says so)."""

    label: str
    state: str  # complete | failed | discarded
    run: MemberRun | None = None
    error: str | None = None
    boost_error: float | None = None  # boosting: its weighted train error


@dataclass(frozen=True)
class TrialRun:
    """A tuning trial trained and scored on validation in its nested run (tasks/fanout/runs.py `trial`)."""

    number: int
    run_id: str
    params: dict[str, Any]  # the values the search drew for it
    state: str  # complete | pruned
    value: float | None  # its best value of the search metric (None when pruned)
    epochs: int  # epochs run
    best_epoch: int | None
    seconds: float
    second: float | None = None  # its value of search.second_metric (a two-objective search)


@dataclass(frozen=True)
class SourceRun:
    """The transfer demo's source model: where it is registered (or its run) and its training's figures."""

    uri: str  # models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID
    run_id: str
    test_accuracy: float | None
    best_epoch: float | None
    train_seconds: float | None

    def json(self) -> dict[str, Any]:
        return asdict(self)
