"""The sections of the pipeline config (trainlib.config): pydantic models, frozen, unknown keys, infinities and NaN
refused. Field names are public (CLI --set, YAML files, MLflow params, docs); every field has a default and a
description giving its meaning or unit. Checks that span sections are PipelineConfig's (trainlib.config).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from trainlib.calibration import METHODS
from trainlib.data.normalize import NORMALIZERS
from trainlib.data.policies import POLICIES
from trainlib.data.sources import SOURCES, TORCHVISION_DATASETS
from trainlib.engine import GD_MODES, check_accumulate
from trainlib.errors import ConfigError
from trainlib.models import MODELS
from trainlib.monitor import MONITORS
from trainlib.optim import OPTIMIZERS
from trainlib.schedules import CYCLE_MODES, SCHEDULES
from trainlib.transfer import STRATEGIES


def _one_of(registry):
    return AfterValidator(registry.check)


Probability = Annotated[float, Field(ge=0, le=1)]
NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]
Count = Annotated[int, Field(ge=1)]
ClassName = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) else v)]  # YAML reads 5 as int


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # .inf, 1e400, .nan: refused


class DataConfig(Section):
    source: Annotated[str, _one_of(SOURCES)] = Field(
        "digits", description="digits (embedded 8x8 digits) | imagefolder | csv | parquet | torchvision | numpy "
                              "(signals in .npz/.npy) | waveforms (generated 1-D signals)")
    path: str | None = Field(None, description="imagefolder: class-per-folder root; csv/parquet: the file; "
                                               "torchvision: the dataset root; numpy: the .npz or .npy (relative: "
                                               "to the config file's folder, or with --set to the current one)")
    labels: str | None = Field(None, description="numpy .npy of signals: the .npy of their labels (an .npz holds "
                                                 "both)")
    dataset: str | None = Field(None, description="torchvision: " + " | ".join(TORCHVISION_DATASETS))
    target: str | None = Field(None, description="csv/parquet: name of the target (class) column (default: label, "
                                                     "else a lone target or class column); numpy .npz: of the labels "
                                                     "array (default: label, else y, labels)")
    features: list[str] | str | None = Field(None, description="csv/parquet: feature columns, in input order: a "
                                                               "list, or a pattern such as t* (in the table's order; "
                                                               "default: all but target)")
    download: bool = Field(False, description="torchvision: download into path when missing (needs internet)")
    image_size: tuple[Count, Count] = Field((32, 32), description="imagefolder: resize to (height, width) pixels")
    channels: Count | None = Field(None, description="imagefolder: 1 = grayscale, 3 = RGB (default); csv/parquet "
                                                     "read as signals: channels the feature columns fold into, "
                                                     "each a run of equal length (default 1)")
    stream: bool = Field(False, description="imagefolder: decode images per batch instead of holding all in memory")
    skip_unreadable: bool = Field(False, description="imagefolder, csv/parquet: train without undecodable files and "
                                                     "rows with a text, missing or infinite cell (counted: the run's "
                                                     "dataset.skipped tag); default: name them all and stop")
    workers: Annotated[int, Field(ge=0)] = Field(2, description="imagefolder: processes that decode the images "
                                                                  "(at ingest; streamed: for every batch)")
    cache: bool = Field(True, description="imagefolder: keep the decoded images in the stage cache by content (a file "
                                          "is decoded once; streamed batches read decoded rows)")
    memory_budget: Annotated[float, Field(gt=0)] | None = Field(
        None, description="imagefolder in memory: most GiB the decoded images may need (counted twice, a margin for "
                          "copies while reading them), checked before decoding; default: half of this machine's memory")
    classes: list[ClassName] | None = Field(None, description="keep only these classes, in order (e.g. [5, 6, 7])")
    label_noise: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0, description="regime: this fraction of the train labels flipped to another class, drawn by split.seed "
                         "(val and test labels never)")

    @model_validator(mode="after")
    def _needs(self):
        if SOURCES[self.source].needs_path and not self.path:
            raise ConfigError(f"data.path: data.source {self.source} needs a path")
        if self.source == "torchvision" and self.dataset not in TORCHVISION_DATASETS:
            raise ConfigError(f"data.dataset: {self.dataset!r} is not one of {', '.join(TORCHVISION_DATASETS)}")
        if self.source == "imagefolder" and self.channels not in (None, 1, 3):
            raise ConfigError(f"data.channels: imagefolder reads 1 (grayscale) or 3 (RGB) channels, not "
                              f"{self.channels}")
        return self


class SplitConfig(Section):
    train: Probability = Field(0.7, description="fraction of samples for training")
    val: Probability = Field(0.15, description="fraction for validation (early stopping, plateau, tuning)")
    test: Probability = Field(0.15, description="fraction held out for the final test metrics")
    stratify: bool = Field(True, description="keep class proportions equal in every split")
    seed: Annotated[int, Field(ge=0)] = Field(0, description="seed of the random assignment")
    shots: Count | None = Field(None, description="few-shot: train samples kept per class (val, test unchanged)")
    imbalance: Annotated[float, Field(ge=1)] | None = Field(None, description=(
        "regime, long tail: class i of K keeps imbalance^(-i/(K-1)) of its train samples; val, test balanced"))

    @model_validator(mode="after")
    def _ratios(self):
        total = self.train + self.val + self.test
        if abs(total - 1) > 1e-6:
            raise ConfigError(f"split: train + val + test must sum to 1 (got {self.train} + {self.val} + "
                              f"{self.test} = {total:g})")
        if self.train == 0:
            raise ConfigError("split.train: must be above 0")
        if self.test == 0:
            raise ConfigError("split.test: must be above 0 (test metrics and the registration gate need it)")
        if self.shots and self.imbalance:
            raise ConfigError("split.shots and split.imbalance: give one (shots keeps the same number per class)")
        return self


class NormalizeConfig(Section):
    method: Annotated[str, _one_of(NORMALIZERS)] = Field(
        "standardize", description="none | minmax ([0,1]) | symmetric ([-1,1]) | standardize (mean 0, std 1); "
                                   "per channel (images, signals) or feature (tabular), fitted on train only")


class AugmentConfig(Section):
    rotation: Annotated[float, Field(ge=0, le=180)] = Field(0, description="max rotation, degrees (+-)")
    scale: tuple[Positive, Positive] = Field((1, 1), description="zoom factor range (low, high); signals: time "
                                                                 "stretch")
    translate: Annotated[float, Field(ge=0, lt=1)] = Field(0, description="max shift, fraction of size (+-); "
                                                                          "signals: of the length")
    wrap: bool = Field(False, description="signals: shift circularly (what leaves one end comes back at the other) "
                                          "instead of padding with zeros")
    hflip: Probability = Field(0, description="probability of a horizontal flip; signals: of reversing time")
    vflip: Probability = Field(0, description="probability of a vertical flip")
    brightness: NonNegative = Field(0, description="brightness factor drawn from [1-b, 1+b]")
    contrast: NonNegative = Field(0, description="contrast factor drawn from [1-c, 1+c]")
    saturation: NonNegative = Field(0, description="saturation factor from [1-s, 1+s] (RGB only)")
    hue: Annotated[float, Field(ge=0, le=0.5)] = Field(0, description="hue shift, fraction of a turn (+-, RGB only)")
    amplitude: Annotated[float, Field(ge=0, le=1)] = Field(0, description="signals: amplitude factor drawn from "
                                                                          "[1-a, 1+a]")
    noise: NonNegative = Field(0, description="std of Gaussian noise, in units of the pixel range; signals: of the "
                                              "sample's own std")
    erasing: Probability = Field(0, description="probability of erasing a random rectangle; signals: a span of "
                                                "2-33% of the length")
    policy: Annotated[str, _one_of(POLICIES)] = Field(
        "none", description="none | autoaugment (ImageNet policy) | randaugment | trivialaugment (wide) | augmix: "
                            "drawn per sample, after the transforms above, before erasing")
    policy_ops: Count = Field(2, description="randaugment: operations in a row per sample")
    policy_magnitude: Annotated[int, Field(ge=0, le=30)] = Field(9, description="randaugment: magnitude bin (of 31)")
    expand: Annotated[int, Field(ge=0)] = Field(0, description="offline: add N augmented copies of the train split "
                                                                "(then no online augmentation)")
    mixup: NonNegative = Field(0, description="mixup: alpha of the Beta(alpha, alpha) mixing ratio, per sample with "
                                              "a partner in the batch, soft targets (0: off; recipes: 0.2-0.8)")
    cutmix: NonNegative = Field(0, description="cutmix: alpha of the Beta ratio of the pasted box (0: off; recipes: "
                                               "1.0; images only)")
    mix_prob: Probability = Field(1, description="mixup, cutmix: probability that a sample is mixed")
    mix_switch: Probability = Field(0.5, description="mixup and cutmix both on: probability of cutmix for a sample")

    @model_validator(mode="after")
    def _scale(self):
        if self.scale[0] > self.scale[1]:
            raise ConfigError(f"augment.scale: low {self.scale[0]} is above high {self.scale[1]}")
        if self.expand and not self.active:
            raise ConfigError("augment.expand: needs at least one augmentation switched on")
        return self

    @property
    def active(self) -> bool:
        knobs = {"scale", "policy", "policy_ops", "policy_magnitude", "wrap"}
        return (any(v for k, v in self.transforms().items() if k not in knobs) or tuple(self.scale) != (1, 1)
                or self.policy != "none")

    def transforms(self) -> dict[str, Any]:
        """The transforms (the keywords of trainlib.data.augment.Augmenter and signal_augment.SignalAugmenter)."""
        return self.model_dump(exclude={"expand", *MIXING})

    def changed(self) -> list[str]:
        """The keys set to other than their defaults."""
        return sorted(self.model_dump(exclude_defaults=True))

    @property
    def mixes(self) -> bool:
        return bool(self.mixup or self.cutmix)


MIXING = ("mixup", "cutmix", "mix_prob", "mix_switch")  # batch mixing (trainlib.data.mix), not a transform


def _learning_rate(value: Any) -> float | str:
    """A learning rate above 0, or "find": one readable message either way (not one per member of the union)."""
    if value == "find":
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"Input should be a valid number or find (got {value!r})")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"Input should be a valid number or find (got {value!r})") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"Input should be greater than 0 (got {value!r})")
    return number


class ModelConfig(Section):
    name: Annotated[str, _one_of(MODELS)] | None = Field(
        None, description="mlp | cnn | resnet18 (images) | cnn1d | gru | lstm (signals, or a table's columns read as "
                          "one); default: cnn for images, mlp for a table, cnn1d for signals")
    dropout: Annotated[float, Field(ge=0, lt=1)] = Field(0.25, description="dropout probability before the head "
                                                                            "(and after each mlp layer)")
    hidden: list[Count] = Field([256, 128], description="mlp: hidden layer sizes")
    channels: list[Count] = Field([32, 64], description="cnn, cnn1d: widths of the conv blocks (each halves the size)")
    kernel_size: Annotated[int, Field(ge=1)] = Field(5, description="cnn1d: time steps each convolution spans (odd: "
                                                                    "the length is kept)")
    hidden_size: Count = Field(64, description="gru, lstm: units of the recurrent state")
    layers: Count = Field(1, description="gru, lstm: recurrent layers stacked")
    bidirectional: bool = Field(False, description="gru, lstm: read the signal in both directions")


class OptimizerConfig(Section):
    name: Annotated[str, _one_of(OPTIMIZERS)] = Field("adam", description="sgd | adam | adamw | rmsprop | adagrad")
    lr: Annotated[float | Literal["find"], BeforeValidator(_learning_rate)] = Field(
        0.001, description="base learning rate; find: the LR range test's suggestion (trainflow lr-find) before "
                           "training")
    momentum: Annotated[float, Field(ge=0, lt=1)] = Field(0.9, description="sgd, rmsprop: momentum")
    nesterov: bool = Field(False, description="sgd: Nesterov momentum")
    weight_decay: NonNegative = Field(0, description="optimizer weight decay (decoupled for adamw)")
    norm_weight_decay: NonNegative | None = Field(None, description="weight decay of norm layers' scales and shifts "
                                                                    "(default: weight_decay; recipes: 0)")
    bias_weight_decay: NonNegative | None = Field(None, description="weight decay of the other biases (default: "
                                                                    "weight_decay; recipes: 0)")
    betas: tuple[Probability, Probability] = Field((0.9, 0.999), description="adam, adamw: moment decay rates")
    alpha: Fraction = Field(0.99, description="rmsprop: smoothing of the squared-gradient average")
    eps: Positive = Field(1e-8, description="adam, adamw, rmsprop, adagrad: denominator epsilon")

    @model_validator(mode="after")
    def _nesterov(self):
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ConfigError("optimizer.nesterov: needs optimizer.name sgd and optimizer.momentum above 0")
        return self


class RegularizationConfig(Section):
    l1: NonNegative = Field(0, description="L1 penalty weight: l1 * sum|w| over weights (not biases/norms)")
    l2: NonNegative = Field(0, description="L2 penalty weight: l2 * sum w^2 over weights (not biases/norms)")


class ScheduleConfig(Section):
    name: Annotated[str, _one_of(SCHEDULES)] = Field(
        "none", description="none | step | exponential | cyclical | onecycle | cosine | plateau")
    warmup_epochs: NonNegative = Field(0, description="linear warmup over this many epochs (per update)")
    step_size: Count = Field(10, description="step: epochs between decays")
    gamma: Fraction = Field(0.1, description="step: LR factor at each decay")
    decay: Fraction = Field(0.95, description="exponential: LR factor per epoch")
    min_lr: NonNegative = Field(0, description="cosine: final LR; plateau: lowest LR")
    max_lr: Positive | None = Field(None, description="cyclical: upper LR; onecycle: peak LR (default 10 x lr)")
    cycle_epochs: Positive = Field(4, description="cyclical: epochs per full cycle (up and down)")
    cycle_mode: Annotated[str, _one_of(CYCLE_MODES)] = Field("triangular", description=" | ".join(CYCLE_MODES))
    cycle_gamma: Fraction = Field(0.9, description="cyclical exp_range: amplitude factor per epoch")
    pct_start: Annotated[float, Field(gt=0, lt=1)] = Field(0.3, description="onecycle: fraction of updates rising")
    div_factor: Positive = Field(25, description="onecycle: start LR = max_lr / div_factor")
    final_div_factor: Positive = Field(1e4, description="onecycle: final LR = start LR / final_div_factor")
    plateau_factor: Annotated[float, Field(gt=0, lt=1)] = Field(0.1, description="plateau: LR factor on a plateau")
    plateau_patience: Annotated[int, Field(ge=0)] = Field(5, description="plateau: epochs without improvement")
    plateau_monitor: Annotated[str, _one_of(MONITORS)] = Field("val_loss", description="plateau: watched metric")


class EarlyStoppingConfig(Section):
    enabled: bool = Field(True, description="stop when the monitored metric stops improving")
    monitor: Annotated[str, _one_of(MONITORS)] = Field("val_loss", description="val_loss | val_accuracy")
    patience: Count = Field(5, description="epochs without improvement before stopping")
    min_delta: NonNegative = Field(0, description="smallest change that counts as improvement")
    restore_best: bool = Field(True, description="end with the best epoch's weights (when enabled)")


def _device(name: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise ConfigError(f"{name!r} is not a device; use auto, cpu, cuda or cuda:N")
    return name


class EmaConfig(Section):
    decay: Annotated[float, Field(ge=0, lt=1)] = Field(
        0, description="an exponential moving average of the weights, updated after every step with this decay "
                       "(0: off; recipes: 0.999-0.9999 for long runs); validation, early stopping, test and the "
                       "registered model use it")
    warmup: bool = Field(True, description="the decay ramps up as min(decay, (1 + n) / (10 + n)) at update n (timm)")


class SwaConfig(Section):
    start: NonNegative = Field(0, description="stochastic weight averaging from this epoch on (1, 2, ...; or a "
                                              "fraction of training.epochs below 1, 0.75: the last quarter; 0: off); "
                                              "every epoch's end from it counts equally")
    lr: Positive | None = Field(None, description="the LR from the start epoch on (default: the schedule's there)")
    anneal_epochs: NonNegative = Field(2, description="epochs of cosine annealing from the schedule's LR to swa.lr")

    @model_validator(mode="after")
    def _start(self):
        if self.start > 1 and self.start != int(self.start):
            raise ConfigError(f"training.swa.start: {self.start} is neither an epoch (1, 2, ...) nor a fraction "
                              "below 1")
        return self

    def first_epoch(self, epochs: int) -> int:
        """The first epoch averaged (1-based), 0 when off."""
        return int(self.start) if self.start >= 1 else math.ceil(self.start * epochs)


Seed = Annotated[int, Field(ge=0)]


class SeedsConfig(Section):
    """A seed per source of a training's randomness; unset, each follows training.seed (so a comparison's repeat,
    training.seed + i, moves it), set, it stays where it is in every repeat (held fixed). The split's is split.seed."""

    init: Seed | None = Field(None, description="the initial weights (default: training.seed)")
    order: Seed | None = Field(None, description="the order of the batches (default: training.seed)")
    augment: Seed | None = Field(None, description="augmentation and batch mixing draws (default: training.seed)")
    dropout: Seed | None = Field(None, description="dropout's masks (default: training.seed)")

    def of(self, seed: int) -> dict[str, int]:
        """Each source's seed under training.seed `seed`: its own where set."""
        return {k: seed if v is None else v for k, v in self.model_dump().items()}


class TrainingConfig(Section):
    mode: Annotated[str, _one_of(GD_MODES)] = Field(
        "minibatch", description="batch (full-batch GD: 1 update/epoch) | minibatch | stochastic (batch of 1)")
    batch_size: Count = Field(64, description="samples per update (minibatch); memory chunk size (batch)")
    accumulate: Count = Field(1, description="minibatch: batches whose gradients make one update (gradient "
                                             "accumulation: an effective batch of batch_size x accumulate)")
    epochs: Count = Field(30, description="maximum epochs")
    seed: Seed = Field(0, description="seed of weights, shuffling, dropout, augmentation (each source's own: "
                                      "training.seeds)")
    seeds: SeedsConfig = SeedsConfig()
    device: Annotated[str, AfterValidator(_device)] = Field("auto", description="auto (CUDA when present) | cpu | "
                                                                              "cuda | cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16 autocast on CUDA, fp32 on CPU; fp16: autocast with a gradient scaler (GPUs "
                            "without bf16; on a CPU it runs emulated, about 20x slower than fp32)")
    compile: bool = Field(False, description="train through torch.compile (inductor: a C++ compiler on CPU; the "
                                             "first epoch pays the compilation)")
    threads: Count | None = Field(None, description="CPU threads for torch (default: the CPU quota)")
    devices: Count = Field(1, description="data-parallel processes (DDP), one per device: GPUs on CUDA, CPU "
                                          "processes sharing the threads on CPU")
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = Field(0, description="cross-entropy label smoothing")
    grad_clip: Positive | None = Field(None, description="clip the gradient norm to this value")
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    ema: EmaConfig = EmaConfig()
    swa: SwaConfig = SwaConfig()

    @model_validator(mode="after")
    def _accumulate(self):
        check_accumulate(self.mode, self.accumulate)
        return self


class TransferConfig(Section):
    source: str | None = Field(None, description="models:/name@alias (or /version), runs:/RUN_ID, a trainflow "
                                                 "model file, or torchvision:resnet18 (local cache); gives the "
                                                 "architecture")
    strategy: Annotated[str, _one_of(STRATEGIES)] = Field(
        "finetune", description="feature_extraction (frozen backbone, new head) | finetune (head first, then all) "
                                "| scratch (the source's architecture, fresh weights)")
    head_epochs: Annotated[int, Field(ge=0)] = Field(3, description="finetune: epochs training only the new head")
    backbone_lr: Fraction = Field(0.1, description="finetune: backbone LR as a fraction of optimizer.lr")
    gradual: Annotated[int, Field(ge=0)] = Field(0, description="finetune: unfreeze a block every N epochs (0: all)")
    freeze_norm: bool = Field(True, description="batch norms keep the source's statistics (few-shot batches err)")


class RegisterConfig(Section):
    enabled: bool = Field(True, description="register a new version of `name` and apply the gate (false, as "
                          "--no-register: the run and its logged model only, no version, no alias moved)")
    min_test_accuracy: Probability = Field(0.9, description="gate: lowest test accuracy that may be promoted")
    # 0.001: above float noise, below one test sample on digits (1/270 = 0.0037), so a tie never moves the alias
    # but one more correct test sample there does; on 10,000 test samples it takes 11 more.
    min_delta: float = Field(0.001, ge=0, lt=1, description="gate delta (and mcnemar where the holder logged no test "
                             "outcomes): the alias moves only when test accuracy beats its holder's by more than this")
    alias: str = Field("champion", pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$", description="alias moved to a passing model")
    # mcnemar by default: in 40 A/A pairs (bench/gates.py) delta promoted a model no better than the holder 19 times
    # (a coin toss moving the alias), mcnemar 3 times; the price is power: on digits' 270 test samples it promoted
    # a +0.018 gain 16 times in 40 (delta 38)
    gate: Literal["delta", "mcnemar"] = Field("mcnemar", description="gate: mcnemar (better on the same test samples "
                                              "by McNemar's exact test at register.alpha, on other test samples by a "
                                              "bootstrap; by min_delta where the holder logged none) or delta (beat "
                                              "the holder's test accuracy by min_delta)")
    alpha: float = Field(0.05, gt=0, lt=1, description="gate mcnemar: the test's level (one-sided)")


class CalibrateConfig(Section):
    method: Annotated[str, _one_of(METHODS)] = Field("none", description="after training: none | temperature (one "
                                                     "scalar dividing the logits, fitted on the validation split)")


class PredictConfig(Section):
    batch_size: Count = Field(512, description="rows scored at a time by `trainflow predict` (memory grows with it)")
    device: Annotated[str, AfterValidator(_device)] = Field("auto", description="where `trainflow predict` runs the "
                                                            "model: auto (CUDA when present) | cpu | cuda | cuda:N")
    # 0.5: half a training standard deviation of a channel's mean, or its spread x1.65 (or /1.65); the embedded
    # digits score about 0.002 against their own train split, the same digits as PNG files (0..255) about 12
    drift_threshold: Positive = Field(0.5, description="predict: the run is tagged drift when a channel's (images) "
                                      "or feature's mean moves by more than this many training standard "
                                      "deviations, or |ln(std new / std training)| of its spread exceeds it")
