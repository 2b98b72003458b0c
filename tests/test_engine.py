"""The engine: gradient-descent modes, early stopping, checkpoints and resume, callbacks, determinism."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.module import register_module_forward_hook
from torch.optim.optimizer import register_optimizer_step_pre_hook

from trainlib import engine, models, optim
from trainlib.averaging import averaging as average
from trainlib.checkpoint import load_checkpoint
from trainlib.data.batches import TensorData, batch_bounds
from trainlib.data.mix import Mixer
from trainlib.earlystop import EarlyStopping
from trainlib.engine import GD_MODES, Checkpointing, StopTraining, fit
from trainlib.errors import ConfigError, TrainingError
from trainlib.loop import Loop, Runtime, Step
from trainlib.schedules import LRSchedule
from trainlib.tally import Tally


def _data(small_digits, lo=0, hi=300):
    return TensorData(small_digits.inputs[lo:hi], small_digits.labels[lo:hi])


def _model(name="mlp", seed=0, **options):
    torch.manual_seed(seed)
    return models.build(name, (1, 8, 8), 10, None, **({"hidden": [32], "dropout": 0.0} | options))


def _options(opt, **kw) -> dict:
    """fit's keywords from flat ones: Step's and Runtime's fields go into those objects."""
    step = {k: kw.pop(k) for k in list(kw) if k in Step.__dataclass_fields__}
    runtime = {k: kw.pop(k) for k in list(kw) if k in Runtime.__dataclass_fields__}
    return {"step": Step(opt, **step), "runtime": Runtime(**runtime), **kw}


def _fit(model, train, val=None, lr=0.01, **kw):
    opt = optim.build(kw.pop("optimizer", "adam"), model.parameters(), lr=lr)
    return fit(model, train, val, **_options(opt, **({"epochs": 2} | kw))), opt


class Steps:
    def __init__(self, opt):
        self.count = 0
        opt.register_step_post_hook(lambda *_: setattr(self, "count", self.count + 1))


@pytest.mark.parametrize("mode", sorted(GD_MODES))
def test_updates_per_epoch_by_mode(mode, small_digits):
    train = _data(small_digits, 0, 100)
    model = _model()
    opt = optim.build("sgd", model.parameters(), lr=0.01)
    steps = Steps(opt)
    result = fit(model, train, epochs=3, step=Step(opt, batch_size=32, mode=mode))
    expected = {"batch": 1, "minibatch": math.ceil(100 / 32), "stochastic": 100}[mode]
    assert steps.count == 3 * expected
    assert [h["updates"] for h in result.history] == [expected] * 3
    assert engine.updates_per_epoch(mode, 100, 32) == expected and len(result.lrs) == 3 * expected


@pytest.mark.parametrize("n, batch_size, sizes", [(10, 3, [3, 3, 4]), (9, 3, [3, 3, 3]), (4, 1, [1, 1, 1, 1]),
                                                   (1, 5, [1]), (6, 5, [6])])
def test_a_last_batch_of_one_sample_joins_the_one_before(n, batch_size, sizes):
    assert [b - a for a, b in batch_bounds(n, batch_size)] == sizes
    data = TensorData(torch.arange(n), torch.arange(n))
    batches = list(data.batches(batch_size, torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in batches] == sizes
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(n))


def test_resnet18_trains_when_the_train_split_leaves_one_sample(small_digits):
    model = models.build("resnet18", (1, 8, 8), 10, None, dropout=0.0)  # 8x8 -> 1x1 before its last batch norm
    _fit(model, _data(small_digits, 0, 65), batch_size=32, epochs=1)  # 32 + 33, not 32 + 32 + 1
    with pytest.raises(ConfigError, match="batch norm .* single value"):
        _fit(models.build("resnet18", (1, 8, 8), 10, None, dropout=0.0), _data(small_digits, 0, 8), epochs=1,
             mode="stochastic")


def test_full_batch_accumulation_equals_one_big_batch(small_digits):
    train = _data(small_digits, 0, 100)
    a, b = _model(), _model()
    _fit(a, train, mode="batch", batch_size=100, epochs=3, optimizer="sgd", lr=0.1)
    _fit(b, train, mode="batch", batch_size=7, epochs=3, optimizer="sgd", lr=0.1)  # 15 chunks, 1 update
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_accumulated_minibatches_equal_one_batch_of_their_size(small_digits):
    train = _data(small_digits, 0, 100)  # 100 = 3 x 32 + 4: the last update is the 4 left, in both
    a, b = _model(), _model()
    _fit(a, train, batch_size=32, epochs=2, optimizer="sgd", lr=0.1, seed=3)
    opt = optim.build("sgd", b.parameters(), lr=0.1)
    steps = Steps(opt)
    # 13 batches, 4 updates an epoch
    fit(b, train, epochs=2, step=Step(opt, batch_size=8, accumulate=4), runtime=Runtime(seed=3))
    assert steps.count == 8 == 2 * engine.updates_per_epoch("minibatch", 100, 8, accumulate=4)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)
    with pytest.raises(ConfigError, match="training.accumulate: 2 batches per update needs training.mode minibatch"):
        _fit(_model(), train, mode="batch", accumulate=2)


def test_same_seed_same_metrics(small_digits):
    train, val = _data(small_digits), _data(small_digits, 300, 400)
    runs = [_fit(_model("cnn", channels=[8], dropout=0.3), train, val, epochs=3, seed=4)[0].history for _ in range(2)]
    strip = lambda h: [{k: v for k, v in e.items() if k not in ("epoch_seconds", "samples_per_second")} for e in h]  # noqa: E731
    assert strip(runs[0]) == strip(runs[1])


def test_early_stopping_on_a_scripted_plateau_restores_the_best_weights(small_digits):
    script = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]

    class Scripted:  # replaces the real val_loss with a plateau, and snapshots the weights of every epoch
        def __init__(self, model):
            self.model, self.snapshots = model, {}

        def on_epoch_end(self, epoch, metrics):
            metrics["val_loss"] = script[epoch - 1]
            self.snapshots[epoch] = {k: v.clone() for k, v in self.model.state_dict().items()}

    model = _model()
    scripted = Scripted(model)
    result, _ = _fit(model, _data(small_digits), _data(small_digits, 300, 400), epochs=8, callbacks=[scripted],
                     early_stopping=EarlyStopping("val_loss", patience=3))
    assert (result.best_epoch, result.stopped_epoch, result.stop_reason) == (2, 5, "early_stopping")
    assert result.restored_best and len(result.history) == 5
    best, last = scripted.snapshots[2], scripted.snapshots[5]
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, last[k]) for k, v in model.state_dict().items())


def test_early_stopping_min_delta_and_accuracy_mode():
    es = EarlyStopping("val_accuracy", patience=2, min_delta=0.05, restore_best=False)
    model = torch.nn.Linear(1, 1)
    stops = [es.update(e, {"val_accuracy": v}, model) for e, v in enumerate([0.5, 0.54, 0.53, 0.6], 1)]
    assert stops == [False, False, True, False] and es.best_epoch == 4  # 0.54 is not 0.05 better than 0.5


def test_no_early_stop_when_disabled_but_best_epoch_is_reported(small_digits):
    result, _ = _fit(_model(), _data(small_digits), _data(small_digits, 300, 400), lr=0.0, epochs=4,
                     early_stopping=EarlyStopping(patience=1, enabled=False))
    assert result.stopped_epoch == 4 and result.stop_reason == "completed" and result.best_epoch == 1
    assert not result.restored_best  # early stopping off: training ends with the last epoch's weights


@pytest.mark.parametrize("averaging", [{}, {"ema_decay": 0.9}, {"swa_start": 2}, {"precision": "fp16"}],
                         ids=["plain", "ema", "swa", "fp16"])
def test_resume_from_checkpoint_equals_uninterrupted(small_digits, tmp_path, averaging):
    train, val = _data(small_digits), _data(small_digits, 300, 400)

    def run(ckpt, callbacks=(), resume=False):
        model = _model("cnn", channels=[8], dropout=0.3)
        opt = optim.build("sgd", model.parameters(), lr=0.05, momentum=0.9)
        sched = LRSchedule(opt, "cosine", epochs=6, updates_per_epoch=engine.updates_per_epoch("minibatch", 300, 32),
                           swa_start=averaging.get("swa_start", 0), swa_lr=0.01, swa_anneal=1)
        aug = lambda x, g: x + torch.rand(x.shape, generator=g)  # noqa: E731 - uses the engine's RNG
        result = fit(model, train, val, epochs=6,
                     step=Step(opt, sched, batch_size=32, augment=aug, mix=Mixer(10, mixup=0.2, cutmix=1.0)),
                     runtime=Runtime(precision=averaging.get("precision", "auto")),
                     averaging=average(averaging.get("ema_decay", 0.0), swa_start=averaging.get("swa_start", 0)),
                     early_stopping=EarlyStopping(patience=10, enabled="swa_start" not in averaging),
                     checkpoint=Checkpointing(ckpt, resume, {"config": {"name": "t"}}), callbacks=callbacks)
        return model, result

    class Crash:
        def on_epoch_end(self, epoch, metrics):
            if epoch == 3:
                raise RuntimeError("killed")

    full_model, full = run(tmp_path / "full.pt")
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "part.pt", [Crash()])
    assert load_checkpoint(tmp_path / "part.pt")["epoch"] == 2  # the crash came before epoch 3 was saved
    resumed_model, resumed = run(tmp_path / "part.pt", resume=True)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]
    assert resumed.averaged == full.averaged and resumed.lrs == full.lrs
    for k, v in full_model.state_dict().items():
        assert torch.equal(v, resumed_model.state_dict()[k]), k
    saved = load_checkpoint(tmp_path / "full.pt")
    assert saved["meta"]["config"] == {"name": "t"} and saved["epoch"] == 6
    scaler = load_checkpoint(tmp_path / "part.pt")["scaler"]  # fp16: the scaler went on where it was
    assert scaler == saved["scaler"] and (scaler is None) == ("precision" not in averaging)


def test_callback_can_stop_training(small_digits):
    class StopAt2:
        def on_epoch_end(self, epoch, metrics):
            if epoch == 2:
                raise StopTraining

    result, _ = _fit(_model(), _data(small_digits), epochs=10, callbacks=[StopAt2()])
    assert result.stopped_epoch == 2 and result.stop_reason == "callback"


def test_metrics_every_epoch_reach_the_logger(small_digits):
    class Recorder:
        def __init__(self):
            self.calls = []

        def log_metrics(self, metrics, step):
            self.calls.append((step, metrics))

        def log_artifact(self, path):
            pass

    rec = Recorder()
    _fit(_model(), _data(small_digits), _data(small_digits, 300, 400), epochs=3, logger=rec, l2=1e-3)
    assert [s for s, _ in rec.calls] == [1, 2, 3]
    expected = {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "penalty", "updates",
                "epoch_seconds", "samples_per_second"}
    assert all(set(m) == expected for _, m in rec.calls) and rec.calls[0][1]["penalty"] > 0


def test_penalty_is_reported_apart_from_the_data_loss(small_digits):
    train = _data(small_digits)
    plain, _ = _fit(_model(), train, lr=0.0, epochs=1)
    heavy, _ = _fit(_model(), train, lr=0.0, epochs=1, l2=10.0)
    assert heavy.history[0]["train_loss"] == pytest.approx(plain.history[0]["train_loss"])
    weights = optim.penalized_weights(_model())
    assert heavy.history[0]["penalty"] == pytest.approx(optim.penalty(weights, l2=10.0).item(), rel=1e-5)


def test_l1_yields_more_near_zero_weights(small_digits):
    train = _data(small_digits)

    def near_zero(l1):
        model = _model(hidden=[64])
        _fit(model, train, optimizer="sgd", lr=0.05, epochs=15, l1=l1)
        w = torch.cat([p.detach().flatten() for p in optim.penalized_weights(model)])
        return (w.abs() < 1e-2).float().mean().item()

    none, l1 = near_zero(0.0), near_zero(1e-2)
    assert l1 > none + 0.2, (none, l1)


def test_nan_loss_stops_with_epoch_and_batch(small_digits):
    x = small_digits.inputs[:64].float().clone()
    x[:, :, 0, 0] = float("inf")  # every sample: the very first batch already fails
    with pytest.raises(TrainingError, match="NaN or infinite in epoch 1 at batch 1"):
        _fit(_model(), TensorData(x, small_digits.labels[:64]), batch_size=16, epochs=3)


def test_a_later_non_finite_batch_is_named_also_across_reductions(small_digits, monkeypatch):
    monkeypatch.setattr(Tally, "BATCHES", 2)  # reduce every 2 batches: the 5th is in the third chunk
    x = small_digits.inputs[:80].float().clone()
    x[64:, :, 0, 0] = float("inf")  # only the 5th batch of 16 (batches in order: no shuffle generator)
    data, model = TensorData(x, small_digits.labels[:80]), _model()
    loop = Loop(model, Step(torch.optim.SGD(model.parameters(), lr=0.0)))
    with pytest.raises(TrainingError, match="NaN or infinite in epoch 2 at batch 5"):
        loop.train_epoch(data.batches(16), 80, 16, 1, LRSchedule(loop.optimizer, epochs=1, updates_per_epoch=5),
                         [], 2)


def test_train_metrics_are_the_same_whatever_the_reduction_interval(small_digits, monkeypatch):
    train = _data(small_digits)
    whole = _fit(_model(), train, epochs=2, batch_size=16)[0].history
    monkeypatch.setattr(Tally, "BATCHES", 3)
    chunked = _fit(_model(), train, epochs=2, batch_size=16)[0].history
    for a, b in zip(whole, chunked, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["train_accuracy"] == b["train_accuracy"]
    # the epoch's accuracy is the share of the epoch's predictions that were right, in (0, 1]
    assert 0 < whole[-1]["train_accuracy"] <= 1


def test_batch_size_larger_than_train_split_is_a_config_error(small_digits):
    with pytest.raises(ConfigError, match=r"training.batch_size \(500\) is larger than the train split \(300"):
        _fit(_model(), _data(small_digits), batch_size=500)


# ---------------------------------------------------------------- training.grad_clip, label_smoothing, precision
# Through the config (config -> recipe -> fit), on 280 training samples of digits, so that the fields are proven
# to reach the engine, not only the engine's arguments.

SMALL_RUN = ["model.name=mlp", "model.hidden=[32]", "model.dropout=0", "training.epochs=2", "training.batch_size=32",
             "training.early_stopping.enabled=false", "training.device=cpu", "training.threads=1"]


def _train_config(ds, *sets):
    from trainlib import recipe
    from trainlib.config import load_config

    cfg = load_config(None, [*SMALL_RUN, *sets])
    manifest = recipe.split(ds, cfg.split)
    norm = recipe.fit_normalizer(ds, manifest, cfg.normalize)
    model, result = recipe.train(cfg, ds, manifest, norm)
    return cfg, manifest, norm, model, result


def _differ(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


def test_grad_clip_bounds_the_gradient_norm_of_every_update(small_digits):
    def run(*sets):
        norms = []  # total gradient norm at every optimizer.step() of the run, after any clipping

        def read(opt, args, kwargs):
            grads = [p.grad.flatten() for g in opt.param_groups for p in g["params"] if p.grad is not None]
            norms.append(torch.linalg.vector_norm(torch.cat(grads)).item())

        hook = register_optimizer_step_pre_hook(read)
        try:
            model = _train_config(small_digits, "optimizer.name=sgd", "optimizer.lr=0.1", *sets)[3]
        finally:
            hook.remove()
        return model, norms

    free_model, free = run()
    clip = sorted(free)[len(free) // 2]  # the median unclipped norm: many updates exceed it
    clipped_model, clipped = run(f"training.grad_clip={clip!r}")
    assert len(clipped) == len(free) == 2 * 9 and sum(n > clip * 1.01 for n in free) >= 5
    assert max(clipped) <= clip * (1 + 1e-5), (clip, clipped)
    assert max(clipped) == pytest.approx(clip, rel=1e-5)  # scaled to the bound, not below it
    assert clipped[0] == pytest.approx(min(free[0], clip), rel=1e-5)  # the same first batch: its norm, clipped
    assert (change := _differ(free_model, clipped_model)) > 1e-3, change  # and the training changes


def test_label_smoothing_trains_on_torchs_smoothed_cross_entropy(small_digits):
    from trainlib import recipe

    sets = ["optimizer.name=sgd", "optimizer.momentum=0", "optimizer.lr=0.5", "training.mode=batch",
            "training.epochs=1"]  # one full-batch update: its loss and its step are computed by hand below
    cfg, manifest, norm, smoothed, result = _train_config(small_digits, *sets, "training.label_smoothing=0.2")
    plain = _train_config(small_digits, *sets)[3]
    start = recipe.build_model(cfg, small_digits, norm)  # the same seed: the weights the update started from
    x, y = next(iter(recipe.part(small_digits, manifest, "train").batches(10_000)))
    loss = F.cross_entropy(start(x), y, label_smoothing=0.2)
    assert result.history[0]["train_loss"] == pytest.approx(loss.item(), rel=1e-5)
    loss.backward()
    with torch.no_grad():
        for p in start.parameters():
            p -= 0.5 * p.grad  # plain SGD on torch's smoothed loss
    by_hand, by_smoothing = _differ(start, smoothed), _differ(plain, smoothed)
    assert by_hand < 1e-5 and by_smoothing > 1e-3, (by_hand, by_smoothing)


def test_precision_bf16_and_fp16_autocast_on_cpu_and_fp32_and_auto_do_not(small_digits):
    def run(precision):
        dtypes = set()  # (training?, output dtype) of every linear layer's forward pass, training and validating
        hook = register_module_forward_hook(
            lambda m, args, out: dtypes.add((m.training, out.dtype)) if isinstance(m, torch.nn.Linear) else None)
        try:
            history = _train_config(small_digits, "model.name=cnn", "model.channels=[8]",
                                    f"training.precision={precision}")[4].history
        finally:
            hook.remove()
        return dtypes, history

    runs = {p: run(p) for p in ("fp32", "auto", "bf16", "fp16")}
    (fp32, fp32_history), (auto, auto_history) = runs["fp32"], runs["auto"]
    assert fp32 == auto == {(True, torch.float32), (False, torch.float32)}  # auto is fp32 on CPU
    for low, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):  # fp16: with a gradient scaler
        assert runs[low][0] == {(True, dtype), (False, dtype)}
    assert [h["train_loss"] for h in auto_history] == [h["train_loss"] for h in fp32_history]  # the same maths
    for low, tolerance in (("bf16", 1e-2), ("fp16", 1e-3)):  # they round: different numbers, fp16 finer
        for a, b in zip(fp32_history, runs[low][1], strict=True):
            for key in ("train_loss", "val_loss"):
                assert a[key] != b[key] and b[key] == pytest.approx(a[key], rel=tolerance), (low, key, a[key], b[key])
