"""What each flow returns: a command's summary, typed. Its `json()` is what `--json` prints (and a deployment's
result); cli/summaries.py prints it. Pure (no Prefect or MLflow import), like tasks/results.py, whose task results
these carry."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tasks.results import MemberOutcome, Registration, SourceRun
from tasks.wording import rounded_contrast, rounded_group

if TYPE_CHECKING:
    from trainlib.claims import Judgement
    from trainlib.evidence import Contrast, Group, Repeats
    from trainlib.scoring import DriftReport
    from trainlib.variance import Share


@dataclass(frozen=True)
class RunSummary:
    """A run that trained and registered (or would have): its id, experiment, metrics and registration."""

    run_id: str
    experiment: str
    metrics: dict[str, float]
    registered: Registration
    mlflow_url: str

    def json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "experiment": self.experiment, "metrics": self.metrics,
                **self.registered.json(), "mlflow_url": self.mlflow_url}

    @property
    def uri(self) -> str:
        """Where its model is found: the alias it took, else its version (challenger), else its run
        (--no-register: nothing was registered)."""
        r = self.registered
        if r.gate is None:
            return f"runs:/{self.run_id}"
        return f"models:/{r.registered_model}{f'@{r.alias}' if r.gate.passed else f'/{r.version}'}"


@dataclass(frozen=True)
class Rounds:
    """`compare --repeats auto:MAX` (trainlib/sequential.py): the looks of the design, the repeats each variant
    trained before its verdict was decided (the baseline: as many as the last variant needed) and the variants
    still undecided at MAX."""

    most: int
    looks: list[tuple[int, float]]  # (repeats, level) of each look planned
    spent: dict[str, int]  # variant -> repeats trained
    undecided: list[str]

    def line(self) -> str:
        """Why it stopped, in words."""
        spent = ", ".join(f"{label} {n}" for label, n in self.spent.items())
        if self.undecided:
            return (f"stopped at the most repeats, {self.most}, with {len(self.undecided)} undecided "
                    f"({', '.join(self.undecided)}); repeats spent: {spent}")
        return f"every verdict decided; repeats spent: {spent} (of at most {self.most})"

    def json(self) -> dict[str, Any]:
        return {"most": self.most, "looks": [{"repeats": n, "level": round(a, 5)} for n, a in self.looks],
                "spent": self.spent, "undecided": self.undecided, "stopped": self.line()}


@dataclass(frozen=True)
class Comparison:
    """`trainflow compare`: the best variant's registered repeat (`run`), every variant's estimates and each
    against the baseline."""

    run: RunSummary
    best_variant: str
    best_repeat: int
    baseline: str
    repeats: int
    children: list[str]  # the repeats' runs
    runs: list[dict[str, Any]]  # every repeat as a row of the report (runs.csv), column -> cell
    summary: list[Group]
    versus: list[Contrast]
    variants: dict[str, dict[str, Any]]  # what each variant (a group of `summary`) changes in the base config
    rounds: Rounds | None = None  # a sequential design's (`--repeats auto`)

    def json(self) -> dict[str, Any]:
        return self.run.json() | {
            "best_variant": self.best_variant, "best_repeat": self.best_repeat, "baseline": self.baseline,
            "repeats": self.repeats, "children": self.children, "runs": self.runs,
            "summary": [rounded_group(g) for g in self.summary],
            "versus_baseline": [rounded_contrast(c) for c in self.versus],
            "rounds": self.rounds.json() if self.rounds else None}


@dataclass(frozen=True)
class Variance:
    """`trainflow variance`: each source's spread of `measure` and its share of the variance (trainlib/variance.py),
    the runs trained and those that failed."""

    run_id: str
    measure: str
    sources: list[Share]
    children: list[str]
    failed: list[str]
    mlflow_url: str

    def reading(self) -> str:
        """What the spreads mean for a comparison, in words: the largest source, and the split's."""
        sources = [x for x in self.sources if x.share is not None]
        if not sources:
            return "no source moved the score: every training gave the same"
        top = max(sources, key=lambda x: x.sd)
        split = next((x for x in sources if x.source == "split"), None)
        text = f"the largest source is {top.source} (sd {top.sd:.4f})"
        if split:
            text += (f"; drawing another split alone moves {self.measure} by sd {split.sd:.4f}, so a gain under that "
                     "is within what the split does")
        return text

    def json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "measure": self.measure,
                "sources": [{k: round(v, 5) if isinstance(v, float) else v for k, v in s.json().items()}
                            for s in self.sources],
                "children": self.children, "failed": self.failed, "mlflow_url": self.mlflow_url}


@dataclass(frozen=True)
class TrialCounts:
    complete: int
    pruned: int
    fail: int


@dataclass(frozen=True)
class BestTrial:
    number: int
    params: dict[str, Any]
    value: float
    second: float | None = None  # its search.second_metric (a two-objective search)


@dataclass(frozen=True)
class Tuning:
    """`trainflow tune`: the best trial retrained and registered (`run`), and how the search went."""

    run: RunSummary
    best_trial: BestTrial
    trials: TrialCounts
    children: list[str]  # the trials' runs and the retraining's
    plots_skipped: list[str]  # Optuna plots the search could not draw
    front: list[BestTrial] = field(default_factory=list)  # two objectives: the Pareto front, lowest cost first
    rule: str | None = None  # two objectives: how best_trial was picked from the front, in words
    second_metric: str | None = None

    def json(self) -> dict[str, Any]:
        return self.run.json() | {"children": self.children, "trials": asdict(self.trials),
                                  "plots_skipped": self.plots_skipped, "best_trial": asdict(self.best_trial),
                                  "front": [asdict(t) for t in self.front], "rule": self.rule,
                                  "second_metric": self.second_metric}


@dataclass(frozen=True)
class EnsembleRepeats:
    """An ensemble trained `n` times: each repeat's scores, the estimates, the ensemble against its members."""

    n: int
    runs: list[dict[str, Any]]  # every repeat as a row of repeats.csv, column -> cell
    groups: dict[str, Repeats]  # the ensemble's, its best member's, its mean member's test scores, by repeat
    summary: list[Group]
    versus: list[Contrast]
    repeat_runs: list[str]

    def json(self) -> dict[str, Any]:
        return {"n": self.n, "runs": self.runs, "summary": [rounded_group(g) for g in self.summary],
                "versus": [rounded_contrast(c) for c in self.versus]}


@dataclass(frozen=True)
class Ensemble:
    """`trainflow ensemble`: the combined model's run and registration, its members, and with repeats the
    ensemble against its members (the members and `run` are repeat 0's, the registered one)."""

    run: RunSummary
    method: str
    best_member: str
    outcomes: list[MemberOutcome]
    members: list[dict[str, Any]]  # every member as a row of the report, column -> cell
    disagreement: list[list[float]]
    children: list[str]
    repeats: EnsembleRepeats | None = None

    def json(self) -> dict[str, Any]:
        out = self.run.json() | {"method": self.method, "best_member": self.best_member, "members": self.members,
                                 "disagreement": self.disagreement, "children": self.children}
        if self.repeats:
            out |= {"repeat_runs": self.repeats.repeat_runs, "repeats": self.repeats.json()}
        return out


@dataclass(frozen=True)
class Lineage:
    """Where a transferred model came from."""

    source: str  # models:/..., a file, torchvision:NAME
    strategy: str
    history: str  # the transferred model's per-epoch metrics (a JSON file)
    source_run_id: str | None
    weights_copied: int


@dataclass(frozen=True)
class Transfer:
    """`trainflow transfer`: the run, and the transfer's lineage."""

    run: RunSummary
    transfer: Lineage

    def json(self) -> dict[str, Any]:
        return self.run.json() | {"transfer": asdict(self.transfer)}


@dataclass(frozen=True)
class TransferDemo:
    """`trainflow transfer --demo`: the demo's run, fine-tuning's result (`finetune`) and every strategy's row."""

    run_id: str
    mlflow_url: str
    finetune: Transfer
    shots: int
    runs: list[dict[str, Any]]  # the source and every strategy as a row of the report, column -> cell
    source: SourceRun
    children: list[str]

    def json(self) -> dict[str, Any]:
        return self.finetune.json() | {"run_id": self.run_id, "mlflow_url": self.mlflow_url, "shots": self.shots,
                                       "runs": self.runs, "source": self.source.json(), "children": self.children}


@dataclass(frozen=True)
class RangeTest:
    """`trainflow lr-find`: the LR range test's suggestion (None: the loss diverged too soon) and its sweep: what
    was asked (`planned` updates from `start` to `end`) and what ran (`updates` made, the last at LR `reached`;
    fewer, and short of `end`, when it stopped early: `stopped` "diverged")."""

    run_id: str
    mlflow_url: str
    suggested_lr: float | None
    rule: str
    stopped: str  # completed | diverged
    updates: int  # made
    start: float
    end: float  # planned
    planned: int  # updates asked for
    reached: float  # the LR of the last update made

    def json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScoredModel:
    """The model a batch scoring used (resolved once, at start): a registered version, or a run's model."""

    name: str
    version: int | None  # None: a run's model, named by its run (runs:/RUN_ID) or its logged model's id
    alias: str | None  # the alias it was named by, if any
    aliases: list[str]  # every alias it held
    uri: str  # as named

    def describe(self) -> str:
        """e.g. `digits-cnn version 3 (@champion)`, or `digits-cnn's model runs:/RUN_ID`."""
        if self.version is None:
            return f"{self.name}'s model {self.uri}"
        return f"{self.name} version {self.version}" + (f" (@{', @'.join(self.aliases)})" if self.aliases else "")


@dataclass(frozen=True)
class Prediction:
    """`trainflow predict`: what was scored with which version, how it went against the labels (if any), the
    drift verdict, where the predictions are."""

    run_id: str
    experiment: str
    model: ScoredModel
    rows: int
    errors: int  # unreadable rows, skipped
    out: str  # the predictions file
    errors_file: str | None  # the unreadable rows with their reasons
    metrics: dict[str, float]  # accuracy, f1, unknown_labels when labelled
    drift: DriftReport | None
    mlflow_url: str

    def json(self) -> dict[str, Any]:
        drift = self.drift
        return {"run_id": self.run_id, "experiment": self.experiment, "model": asdict(self.model),
                "rows": self.rows, "errors": self.errors, "out": self.out, "errors_file": self.errors_file,
                "metrics": self.metrics, "mlflow_url": self.mlflow_url,
                "drift": asdict(drift) | {"drifted": drift.drifted, "worst": drift.worst()} if drift else None}


@dataclass(frozen=True)
class ClaimResult:
    """An entry of the technique study run and judged (`judgement`), or failed (`error`)."""

    name: str  # the entry's file name
    technique: str
    claim: str
    measure: str
    direction: str  # the measure as the claim predicts it: higher | lower
    fair: str  # why the comparison is fair
    repeats: int
    seconds: float
    judgement: Judgement | None = None
    error: str | None = None
    learning_rates: dict[str, float] | None = None  # chosen per variant on validation (an entry's lr_grid)
    run_id: str | None = None  # the comparison's run
    summary: list[Group] | None = None  # the comparison's groups (the report's figure)

    @property
    def verdict(self) -> str:
        """supported | contradicted | inconclusive (trainlib.claims) | failed."""
        return self.judgement.worst.verdict if self.judgement else "failed"

    def json(self) -> dict[str, Any]:
        return {"name": self.name, "technique": self.technique, "claim": self.claim, "measure": self.measure,
                "direction": self.direction, "fair": self.fair, "repeats": self.repeats,
                **(self.judgement.json() if self.judgement else {"verdict": self.verdict}),
                "learning_rates": self.learning_rates, "run_id": self.run_id, "error": self.error,
                "seconds": self.seconds}


@dataclass(frozen=True)
class Study:
    """`trainflow study`: the technique study's verdicts, its report, its run."""

    run_id: str
    report: str  # report.md
    html: str  # report.html, one self-contained page
    wall_seconds: float
    counts: dict[str, int]  # verdict -> claims
    rows: list[ClaimResult]
    mlflow_url: str

    def json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "report": self.report, "html": self.html, "wall_seconds": self.wall_seconds,
                "counts": self.counts, "rows": [r.json() for r in self.rows], "mlflow_url": self.mlflow_url}


@dataclass(frozen=True)
class Rerun:
    """`trainflow rerun`: the original run, the new one, and their metrics side by side."""

    original: str
    run_id: str
    kind: str
    mlflow_url: str
    metrics: list[tuple[str, float, float]]  # (metric, original, rerun)
    changes: list[str]  # code and packages that differ from the original's
    data_changed: tuple[str | None, str] | None  # (digest then, digest now) when --allow-data-change let it train

    @property
    def exact(self) -> bool:
        """Every metric compared (one at least) is equal to the original's."""
        return bool(self.metrics) and all(a == b for _, a, b in self.metrics)

    def json(self) -> dict[str, Any]:
        return {"original": self.original, "run_id": self.run_id, "kind": self.kind, "mlflow_url": self.mlflow_url,
                "exact": self.exact, "metrics": [{"metric": k, "original": a, "rerun": b, "difference": b - a}
                                                 for k, a, b in self.metrics],
                "changes": self.changes,
                "data_changed": {"then": self.data_changed[0], "now": self.data_changed[1]} if self.data_changed
                else None}
