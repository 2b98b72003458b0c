"""Config slices -> library calls, one function per pipeline stage.

The library's building blocks take plain arguments; this module is the one place that maps the
config's sections onto them, so Prefect tasks (and fan-out trials, ensemble members) stay thin and
never repeat that mapping. `run` chains every stage in memory.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from trainlib import calibration, cost, distributed, engine, lr_finder, models, optim, transfer
from trainlib.averaging import averaging
from trainlib.checkpoint import load_checkpoint
from trainlib.config import AugmentConfig, DataConfig, NormalizeConfig, PipelineConfig, SplitConfig, override
from trainlib.data import normalize, sources
from trainlib.data.augment import Augmenter
from trainlib.data.batches import Data, TensorData, input_chunks, subset
from trainlib.data.kinds import kind
from trainlib.data.mix import Mixer
from trainlib.data.signal_augment import SignalAugmenter
from trainlib.data.split import flip_labels, indices, split_manifest
from trainlib.device import configure_threads, cpu_quota, resolve_device
from trainlib.earlystop import EarlyStopping
from trainlib.engine import Checkpointing, predict_logits
from trainlib.errors import ConfigError, TrainingError
from trainlib.loop import Runtime, Step
from trainlib.metrics import Evaluation, evaluate
from trainlib.schedules import LRSchedule


def _read_options(data: DataConfig) -> dict:
    return data.model_dump(exclude={"source", "classes", "label_noise"})


def check_memory(data: DataConfig) -> None:
    """DataError when the configured data would not fit the memory budget (data.memory_budget), before reading it."""
    fits = sources.SOURCES[data.source].fits
    if fits is not None:
        fits(**_read_options(data))


def ingest(data: DataConfig, cache_dir: str | Path | None = None, signal: bool = False) -> sources.Dataset:
    """The configured data; image folders keep their decoded images under `cache_dir` when given (data.cache); with
    `signal` (PipelineConfig.data_dims 2), a table's feature columns are read as signals (C, L)."""
    ds = sources.load(data.source, **_read_options(data), cache_dir=cache_dir, signal=signal)
    return sources.keep_classes(ds, data.classes) if data.classes else ds


def split(ds: sources.Dataset, cfg: SplitConfig, label_noise: float = 0.0) -> pd.DataFrame:
    """The split manifest; with `label_noise` (data.label_noise), that fraction of its train labels flipped."""
    manifest = split_manifest(ds.labels.numpy(), **cfg.model_dump(), classes=ds.classes)
    return flip_labels(manifest, label_noise, cfg.seed, len(ds.classes))


def labelled(ds: sources.Dataset, manifest: pd.DataFrame) -> sources.Dataset:
    """The dataset with the labels its manifest trains on: the same dataset unless label noise flipped some
    (trainlib.data.split.flip_labels; only train rows differ). Every path to training labels goes through here."""
    if "clean_label" not in manifest.columns:
        return ds
    labels = torch.tensor(manifest.sort_values("index")["label"].to_numpy(dtype=np.int64))  # a copy
    if len(labels) != len(ds):
        raise ConfigError(f"the split manifest has {len(labels)} rows for a dataset of {len(ds)}")
    inputs = ds.inputs
    if ds.streamed:
        inputs = inputs.relabelled(labels.numpy())
    return dataclasses.replace(ds, inputs=inputs, labels=labels)


def part(ds: sources.Dataset, manifest: pd.DataFrame, name: str, workers: int = 2) -> Data:
    """One split of the dataset ("train", "val" or "test"), with the labels the manifest gives it."""
    return subset(labelled(ds, manifest), indices(manifest, name), workers)


def fit_normalizer(ds: sources.Dataset, manifest: pd.DataFrame, cfg: NormalizeConfig,
                   workers: int = 2) -> normalize.NormStats:
    """Normalization statistics from the train split only (`workers` decode streamed images)."""
    return normalize.fit(cfg.method, input_chunks(part(ds, manifest, "train", workers)), ds.dims)


def augmenter(cfg: AugmentConfig, ds: sources.Dataset) -> Augmenter | SignalAugmenter | None:
    """The configured augmentation for this kind of data, or None when every transform is off."""
    build = kind(ds.dims).augmenter
    return build(**cfg.transforms(), value_max=ds.value_max) if cfg.active and build is not None else None


def mixer(cfg: AugmentConfig, classes: int) -> Mixer | None:
    """The configured batch mixing (mixup, cutmix), or None when both are off."""
    return Mixer(classes, mixup=cfg.mixup, cutmix=cfg.cutmix, prob=cfg.mix_prob, switch=cfg.mix_switch) \
        if cfg.mixes else None


def expand(train: Data, aug: Augmenter | SignalAugmenter, copies: int, seed: int) -> TensorData:
    """Offline augmentation: the train split plus `copies` augmented copies of it."""
    if not isinstance(train, TensorData):
        raise ConfigError("augment.expand: needs in-memory data (data.stream: false)")
    x, y = aug.expand(train.inputs, train.labels, copies, torch.Generator().manual_seed(seed))
    return TensorData(x, y)


_INIT = threading.Lock()  # weight initialization draws from torch's global RNG, shared by threads


def build_model(cfg: PipelineConfig, ds: sources.Dataset, norm: normalize.NormStats | None) -> models.Classifier:
    """The configured model; the same seed gives the same initial weights, also with runs in parallel threads
    (nothing else in training draws from the global RNG: data order, augmentation and dropout have their own)."""
    with _INIT, torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.training.seeds.of(cfg.training.seed)["init"])
        return models.build(cfg.model.name, ds.sample_shape, len(ds.classes), norm,
                            **cfg.model.model_dump(exclude={"name"}))


def transfer_setup(cfg: PipelineConfig, model: models.Classifier, source: str | Path | None):
    """The optimizer's parameters (the backbone in its own group at a lower LR where the strategy says so) and
    the freezing callback, with the source's weights put into `model` unless the strategy starts from fresh
    weights; plain parameters and None without a source."""
    t, strategy = cfg.transfer, transfer.STRATEGIES[cfg.transfer.strategy]
    if source is None:
        return model.parameters(), None
    if strategy.copies_weights:
        transfer.transplant(model, transfer.load_source(source))
    params = model.parameters()
    if strategy.backbone_group:
        top = set(transfer.head(model).parameters())
        params = [{"params": list(top)},  # first group: the head, at optimizer.lr (the LR the engine records)
                  {"params": [p for p in model.parameters() if p not in top], "lr": cfg.optimizer.lr * t.backbone_lr}]
    return params, transfer.Freezer(model, t.strategy, t.head_epochs, t.gradual,
                                    freeze_norm=t.freeze_norm and strategy.copies_weights)


def train(cfg: PipelineConfig, ds: sources.Dataset, manifest: pd.DataFrame, norm: normalize.NormStats | None,
          *, rows: np.ndarray | None = None, train_data: Data | None = None, callbacks=(), logger=None,
          checkpoint: str | Path | None = None, resume: bool = False, source: str | Path | None = None,
          shard: distributed.Shard | None = None) -> tuple[models.Classifier, engine.FitResult]:
    """Build the model, optimizer and schedule from `cfg` and fit on the train split (or on the dataset
    `rows` given, e.g. a bootstrap resample; or on `train_data`, e.g. an expanded train split), validating
    on the val split. With a transfer `source` (model file or torchvision:name), start from its weights as
    `cfg.transfer.strategy` says. With training.devices > 1, in that many new processes (data-parallel).
    Then calibrated as `cfg.calibrate` says, on the val split (trainlib.calibration; not in a data-parallel
    rank: the model they return is). The result carries what it cost (trainlib.cost: wall and CPU seconds,
    peak memory) and the calibration."""
    with cost.measured(resolve_device(cfg.training.device)) as meter:
        model, result = _train(cfg, ds, manifest, norm, rows=rows, train_data=train_data, callbacks=callbacks,
                               logger=logger, checkpoint=checkpoint, resume=resume, source=source, shard=shard)
        fitted = calibrate(cfg, model, ds, manifest) if shard is None else None
    return model, dataclasses.replace(result, cost=meter.cost, calibration=fitted)


def calibrate(cfg: PipelineConfig, model: models.Classifier, ds: sources.Dataset,
              manifest: pd.DataFrame) -> calibration.Calibration | None:
    """Fit cfg.calibrate.method on the val split's logits (labels as trained on) and put its temperature in
    `model`; None where the method is none."""
    if calibration.METHODS[cfg.calibrate.method] is None:
        return None
    if not (manifest["split"] == "val").any():  # e.g. a search's retrain on train+val
        raise ConfigError(f"calibrate.method: {cfg.calibrate.method} is fitted on the validation split, and this "
                          "training has none")
    val = part(ds, manifest, "val", cfg.data.workers)  # the model was just trained: its temperature is 1
    logits, labels = predict_logits(model, val, resolve_device(cfg.training.device), cfg.training.precision)
    fitted = calibration.calibrate(cfg.calibrate.method, logits.float(), labels)
    model.calibrated(fitted.temperature)
    return fitted


def _train(cfg: PipelineConfig, ds: sources.Dataset, manifest: pd.DataFrame, norm: normalize.NormStats | None,
           *, rows, train_data, callbacks, logger, checkpoint, resume, source,
           shard) -> tuple[models.Classifier, engine.FitResult]:
    if cfg.optimizer.lr == "find":  # the range test's suggestion, recorded as found_lr
        found = lr_find(cfg, ds, manifest, norm, rows=rows, train_data=train_data).suggestion
        if found is None:
            raise TrainingError("optimizer.lr=find: the LR range test stopped before it could suggest an LR (its "
                                "loss diverged at once); give optimizer.lr, or run trainflow lr-find to see the curve")
        cfg = override(cfg, {"optimizer.lr": found})
        if logger is not None:
            logger.log_metrics({"found_lr": found}, step=0)
    t = cfg.training
    if t.devices > 1 and shard is None:
        return _data_parallel(cfg, ds, manifest, norm, rows, train_data, callbacks, logger, checkpoint, resume)
    shard = shard or distributed.SINGLE
    ds = labelled(ds, manifest)
    configure_threads(max(1, (t.threads or cpu_quota()) // shard.world))  # ranks share the CPUs
    device = shard.device if shard.parallel else resolve_device(t.device)
    model = build_model(cfg, ds, norm)
    aug = augmenter(cfg.augment, ds)
    if train_data is None:
        rows = indices(manifest, "train") if rows is None else rows
        train_data = subset(ds, rows, cfg.data.workers)
        if aug and cfg.augment.expand:
            train_data = expand(train_data, aug, cfg.augment.expand, t.seeds.of(t.seed)["augment"])
    online = None if cfg.augment.expand else aug  # expanded data is not augmented again
    val = part(ds, manifest, "val", cfg.data.workers) if (manifest["split"] == "val").any() else None
    params, freezer = transfer_setup(cfg, model, source)
    if freezer is not None:  # a resumed run continues with the epoch's frozen parts
        callbacks = [*callbacks, freezer]
        if resume and checkpoint and Path(checkpoint).exists():
            freezer.apply(load_checkpoint(checkpoint)["epoch"])
    optimizer = build_optimizer(cfg, model, params)
    upe = engine.updates_per_epoch(t.mode, len(train_data), t.batch_size, shard.world, t.accumulate)
    schedule = LRSchedule(optimizer, cfg.schedule.name, epochs=t.epochs, updates_per_epoch=upe,
                          swa_start=t.swa.first_epoch(t.epochs), swa_lr=t.swa.lr, swa_anneal=t.swa.anneal_epochs,
                          **cfg.schedule.model_dump(exclude={"name"}))
    step = Step(optimizer, schedule, mode=t.mode, batch_size=t.batch_size, accumulate=t.accumulate,
                l1=cfg.regularization.l1, l2=cfg.regularization.l2, label_smoothing=t.label_smoothing,
                grad_clip=t.grad_clip, augment=online, mix=mixer(cfg.augment, len(ds.classes)))
    result = engine.fit(
        model, train_data, val, epochs=t.epochs, step=step,
        runtime=Runtime(device, t.precision, compile=t.compile, seed=t.seed, shard=shard, seeds=t.seeds.of(t.seed)),
        averaging=averaging(t.ema.decay, t.ema.warmup, t.swa.first_epoch(t.epochs)),
        early_stopping=EarlyStopping(**t.early_stopping.model_dump()), callbacks=callbacks, logger=logger,
        checkpoint=Checkpointing(checkpoint, resume, {"config": cfg.model_dump(mode="json")}) if checkpoint else None)
    return model, result


def build_optimizer(cfg: PipelineConfig, model: torch.nn.Module, params, lr: float | None = None):
    """The configured optimizer over `params` (parameters or groups), with weight decay per kind of parameter;
    `lr` instead of optimizer.lr when given (the range test's first LR)."""
    o = cfg.optimizer
    params = optim.decay_groups(model, params, o.weight_decay, o.norm_weight_decay, o.bias_weight_decay)
    return optim.build(o.name, params, **o.model_dump(exclude={"name"}) | ({"lr": lr} if lr is not None else {}))


def lr_find(cfg: PipelineConfig, ds: sources.Dataset, manifest: pd.DataFrame, norm: normalize.NormStats | None, *,
            rows: np.ndarray | None = None, train_data: Data | None = None, updates: int = lr_finder.UPDATES,
            start: float = lr_finder.START, end: float = lr_finder.END) -> lr_finder.Sweep:
    """The LR range test (trainlib.lr_finder) of a fresh model of `cfg` on its train split (or `rows`, or
    `train_data`), with the configured optimizer, batch size, augmentation and mixing; one device, no transfer."""
    ds = labelled(ds, manifest)
    configure_threads(cfg.training.threads or cpu_quota())
    model = build_model(cfg, ds, norm)
    if train_data is None:
        train_data = subset(ds, indices(manifest, "train") if rows is None else rows, cfg.data.workers)
    optimizer = build_optimizer(cfg, model, model.parameters(), lr=start)
    step = Step(optimizer, batch_size=cfg.training.batch_size, l1=cfg.regularization.l1, l2=cfg.regularization.l2,
                label_smoothing=cfg.training.label_smoothing, grad_clip=cfg.training.grad_clip,
                augment=augmenter(cfg.augment, ds), mix=mixer(cfg.augment, len(ds.classes)))
    # not compiled: 200 updates would mostly pay the compilation
    runtime = Runtime(resolve_device(cfg.training.device), cfg.training.precision, seed=cfg.training.seed,
                      seeds=cfg.training.seeds.of(cfg.training.seed))
    return lr_finder.sweep(model, train_data, step, runtime, start=start, end=end, updates=updates)


def _data_parallel(cfg: PipelineConfig, ds: sources.Dataset, manifest: pd.DataFrame, norm, rows, train_data,
                   callbacks, logger, checkpoint, resume) -> tuple[models.Classifier, engine.FitResult]:
    """`train` in training.devices processes; the trained model and result come back to this one."""
    out = distributed.run(cfg.training.devices, resolve_device(cfg.training.device), _train_rank,
                          (cfg, ds, manifest, norm, rows, train_data, checkpoint, resume), logger=logger,
                          callbacks=callbacks)
    model = build_model(cfg, ds, norm)
    model.load_state_dict(out["model"])
    return model, engine.FitResult(**out["fit"])


def _train_rank(shard: distributed.Shard, relay: distributed.Relay | None, cfg: PipelineConfig, ds, manifest, norm,
                rows, train_data, checkpoint, resume) -> dict:
    """One rank of a data-parallel `train` (in its own process); rank 0 reports through `relay`."""
    model, fit = train(cfg, ds, manifest, norm, rows=rows, train_data=train_data, callbacks=[relay] if relay else [],
                       logger=relay, checkpoint=checkpoint, resume=resume, shard=shard)
    return {"model": model.state_dict(), "fit": dataclasses.asdict(dataclasses.replace(fit, cost=None))}


def test(cfg: PipelineConfig, model: torch.nn.Module, ds: sources.Dataset, manifest: pd.DataFrame,
         split_name: str = "test") -> Evaluation:
    """Evaluate on one split (the test split by default)."""
    return evaluate(model, part(ds, manifest, split_name, cfg.data.workers), ds.classes,
                    resolve_device(cfg.training.device), cfg.training.precision)


def probabilities(cfg: PipelineConfig, model: torch.nn.Module, ds: sources.Dataset, rows: np.ndarray) -> np.ndarray:
    """The model's class probabilities (N, K) for the dataset `rows`, in order."""
    logits, _ = predict_logits(model, subset(ds, rows, cfg.data.workers), resolve_device(cfg.training.device),
                               cfg.training.precision)
    return torch.softmax(logits, 1).numpy()


@dataclass
class Outcome:
    dataset: sources.Dataset
    manifest: pd.DataFrame
    norm: normalize.NormStats
    model: models.Classifier
    fit: engine.FitResult
    evaluation: Evaluation  # on the test split


def run(cfg: PipelineConfig, callbacks=(), logger=None) -> Outcome:
    """Every stage in memory: ingest, split, normalize, (augment), train, evaluate on test."""
    ds = ingest(cfg.data, signal=cfg.data_dims == 2)
    manifest = split(ds, cfg.split, cfg.data.label_noise)
    norm = fit_normalizer(ds, manifest, cfg.normalize, cfg.data.workers)
    model, result = train(cfg, ds, manifest, norm, callbacks=callbacks, logger=logger)
    return Outcome(ds, manifest, norm, model, result, test(cfg, model, ds, manifest))
