"""The techniques of today's reference recipes in trainlib: batch mixing (mixup, cutmix), weight averaging (EMA,
SWA) and SWA's learning rate, each against hand-computed cases, and through the config into a training."""

import re

import pytest
import torch
from torch import nn

from trainlib import recipe
from trainlib.averaging import EMA, SWA, recompute_batch_norm
from trainlib.config import load_config
from trainlib.data.mix import Mixer
from trainlib.errors import ConfigError
from trainlib.schedules import LRSchedule

# ---------------------------------------------------------------- mixup, cutmix


def _mixed(mixer: Mixer, x: torch.Tensor, n: int, seed: int = 0):
    return mixer(x, torch.arange(n), torch.Generator().manual_seed(seed))


def test_mixup_targets_are_the_mixing_ratios_of_the_inputs():
    n = 16
    x = torch.eye(n)  # sample i is the one-hot code of its class: a mixed input is its own target
    out, targets = _mixed(Mixer(n, mixup=0.4), x, n)
    assert torch.allclose(out, targets, atol=1e-6)  # weight on each class == share of that sample in the input
    assert torch.allclose(targets.sum(1), torch.ones(n))
    assert (targets.diagonal() < 1).all()  # every sample mixed (mix_prob 1)
    partners = (targets - torch.diag(targets.diagonal())).argmax(1)
    assert (partners != torch.arange(n)).all() and sorted(partners.tolist()) == list(range(n))  # one cycle


def test_cutmix_ratio_is_the_area_kept_and_the_box_is_the_partners():
    n, h, w = 12, 10, 14
    x = (torch.arange(n, dtype=torch.float32) + 1).view(n, 1, 1, 1).expand(n, 2, h, w).clone()  # sample i: i + 1
    out, targets = _mixed(Mixer(n, cutmix=1.0), x, n, seed=3)
    assert out.shape == x.shape and out.dtype == torch.float32
    for i in range(n):
        own = (out[i] == i + 1).float().mean()
        partner = int(targets[i].clone().index_fill_(0, torch.tensor([i]), 0).argmax())
        assert targets[i, i] == pytest.approx(float(own), abs=1e-6)  # the ratio is the area kept
        assert ((out[i] == i + 1) | (out[i] == partner + 1)).all()  # the rest is the partner's, both channels
        assert targets[i].sum() == pytest.approx(1.0)
    assert (targets.diagonal() < 1).any()


def test_mixing_is_reproducible_and_mix_prob_zero_mixes_nothing():
    n, x = 8, torch.rand(8, 1, 6, 6)
    both = Mixer(n, mixup=0.2, cutmix=1.0, switch=0.5)
    a, b, c = _mixed(both, x, n, 1), _mixed(both, x, n, 1), _mixed(both, x, n, 2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    out, targets = _mixed(Mixer(n, mixup=0.4, cutmix=1.0, prob=0.0), x, n)
    assert torch.equal(out, x) and torch.equal(targets, torch.eye(n))


def test_cutmix_on_tabular_data_is_a_config_error():
    with pytest.raises(ConfigError, match=r"augment.cutmix: applies to images; data.source csv is a table \(F,\), "
                                          "which takes only mixup"):
        load_config(None, ["data.source=csv", "data.path=x.csv", "model.name=mlp", "augment.cutmix=1"])
    load_config(None, ["data.source=csv", "data.path=x.csv", "model.name=mlp", "augment.mixup=0.2"])  # any inputs


# ---------------------------------------------------------------- EMA, SWA


def _scalar(value: float) -> nn.Module:
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(value)
    return m


def _set(m: nn.Module, value: float) -> nn.Module:
    with torch.no_grad():
        m.weight.fill_(value)
    return m


def test_ema_of_a_known_sequence_and_decay_zero():
    model = _scalar(0.0)
    ema = EMA(model, decay=0.5, warmup=False)
    for v in (4.0, 8.0, 2.0):
        ema.update(_set(model, v))
    assert ema.model.weight.item() == pytest.approx(((0 * 0.5 + 4 * 0.5) * 0.5 + 8 * 0.5) * 0.5 + 2 * 0.5)  # 4.0
    warm, decays = EMA(_scalar(0.0), decay=0.99), []  # warm-up: decay min(0.99, (1 + n) / (10 + n)) at update n
    for n in (0, 1, 90, 10_000):
        warm.updates = n
        decays.append(warm.current_decay())
    assert decays == pytest.approx([0.1, 2 / 11, 0.91, 0.99])
    raw = EMA(_scalar(1.0), decay=0.0)
    for v in (3.0, -1.5):
        raw.update(_set(model, v))
        assert raw.model.weight.item() == v  # decay 0: the average is the weights


def test_swa_of_two_checkpoints_is_their_mean_and_counts_follow():
    a, b = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        b.weight.copy_(torch.tensor([3.0, 0.0, -3.0]))
    a.num_batches_tracked.fill_(5)
    b.num_batches_tracked.fill_(9)
    swa = SWA(a)
    swa.update(a)
    swa.update(b)
    assert torch.equal(swa.model.weight, torch.tensor([2.0, 1.0, 0.0])) and swa.updates == 2
    assert int(swa.model.num_batches_tracked) == 9  # integer buffers are not averaged


def test_batch_norm_statistics_are_recomputed_over_the_data():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.zero_()
    data = [torch.tensor([[1.0, 10.0], [3.0, 30.0]]), torch.tensor([[5.0, 50.0], [7.0, 70.0]])]
    assert recompute_batch_norm(net, iter(data))
    assert torch.allclose(net[1].running_mean, torch.tensor([4.0, 40.0]))  # the mean over every batch
    assert net[1].momentum == 0.1 and not recompute_batch_norm(nn.Linear(2, 2), iter(data))


def test_swa_lr_anneals_from_the_schedules_lr_to_swa_lr_then_stays():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = LRSchedule(opt, "step", epochs=6, updates_per_epoch=2, step_size=2, gamma=0.5, swa_start=4,
                       swa_lr=0.01, swa_anneal=1)
    lrs = []
    for _ in range(6):
        for _ in range(2):
            lrs.append(opt.param_groups[0]["lr"])
            sched.step_batch()
        sched.step_epoch({})
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.03, 0.01, 0.01, 0.01, 0.01])


@pytest.mark.parametrize("sets, message", [
    (["training.ema.decay=0.9", "training.swa.start=3", "training.early_stopping.enabled=false"],
     "training.ema and training.swa: average the weights one way at a time"),
    (["training.swa.start=31", "training.early_stopping.enabled=false"],
     "training.swa.start: epoch 31 is after the last (training.epochs 30)"),
    (["training.swa.start=20"], "set training.early_stopping.enabled: false"),
    (["training.ema.decay=1"], "training.ema.decay: Input should be less than 1"),
])
def test_what_weight_averaging_refuses(sets, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, sets)


SMALL = ["split.shots=20", "training.batch_size=32", "training.epochs=6", "training.device=cpu", "training.threads=1",
         "model.channels=[8,16]", "training.early_stopping.enabled=false"]


def test_ema_validates_and_ends_with_the_average_and_records_the_raw_weights(digits):
    cfg = load_config(None, [*SMALL, "training.ema.decay=0.9"])
    ds = digits
    manifest = recipe.split(ds, cfg.split)
    norm = recipe.fit_normalizer(ds, manifest, cfg.normalize)
    model, fit = recipe.train(cfg, ds, manifest, norm)
    last = fit.history[-1]
    assert {"raw_val_loss", "raw_val_accuracy"} <= set(last) and last["raw_val_loss"] != last["val_loss"]
    val = recipe.test(cfg, model, ds, manifest, "val")
    assert val.accuracy == pytest.approx(last["val_accuracy"])  # the model is the average validated last


def test_swa_ends_with_the_average_and_its_val_metrics(digits):
    cfg = load_config(None, [*SMALL, "training.swa.start=4", "training.swa.lr=0.0005"])
    manifest = recipe.split(digits, cfg.split)
    model, fit = recipe.train(cfg, digits, manifest, recipe.fit_normalizer(digits, manifest, cfg.normalize))
    assert set(fit.averaged) == {"swa_val_loss", "swa_val_accuracy"}
    assert recipe.test(cfg, model, digits, manifest, "val").accuracy == pytest.approx(fit.averaged["swa_val_accuracy"])
    assert fit.lrs[-1] == pytest.approx(0.0005)  # annealed to swa.lr


def test_compiled_training_learns_as_the_plain_one(digits):
    runs = {}
    for compiled in (False, True):
        cfg = load_config(None, [*SMALL, "model.dropout=0", f"training.compile={str(compiled).lower()}"])
        manifest = recipe.split(digits, cfg.split)
        model, fit = recipe.train(cfg, digits, manifest, recipe.fit_normalizer(digits, manifest, cfg.normalize))
        runs[compiled] = fit.history, type(model).__name__
    (plain, plain_type), (compiled, compiled_type) = runs[False], runs[True]
    assert plain_type == compiled_type == "Classifier"  # the trained model is the plain module, not the compiled
    for a, b in zip(plain, compiled, strict=True):  # the same maths, fused differently
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=0.01)


# ---------------------------------------------------------------- through the config, into a training


def _fit(digits, *sets):
    cfg = load_config(None, [*SMALL, *sets])
    manifest = recipe.split(digits, cfg.split)
    model, fit = recipe.train(cfg, digits, manifest, recipe.fit_normalizer(digits, manifest, cfg.normalize))
    return cfg, manifest, model, fit


def test_configured_mixing_changes_the_targets_the_loss_sees_and_never_validation(digits):
    sets = ["model.name=mlp", "training.epochs=15", "optimizer.lr=0.01"]
    _, _, _, plain = _fit(digits, *sets)
    cfg, manifest, model, mixed = _fit(digits, *sets, "augment.mixup=1.0")
    # soft targets have entropy: mixed with a uniform ratio (mixup alpha 1), two classes leave 0.5 nats on average
    # that no network can remove; on the hard targets the same network's loss falls below 0.2
    assert plain.history[-1]["train_loss"] < 0.2 < 0.5 < mixed.history[-1]["train_loss"]
    val = recipe.test(cfg, model, digits, manifest, "val")  # the clean validation split, scored again
    assert val.loss == pytest.approx(mixed.history[-1]["val_loss"], rel=1e-5)  # as training validated it: unmixed


def test_configured_accumulation_makes_one_update_per_n_batches(digits):
    *_, one = _fit(digits, "training.epochs=1", "training.batch_size=16")
    *_, four = _fit(digits, "training.epochs=1", "training.batch_size=16", "training.accumulate=4")
    batches = one.history[0]["updates"]
    assert batches == 13 and four.history[0]["updates"] == -(-batches // 4) == four.updates_per_epoch  # 200 samples


def test_a_configured_policy_transforms_the_training_batches(digits):
    *_, plain = _fit(digits, "training.epochs=2")
    *_, policy = _fit(digits, "training.epochs=2", "augment.policy=trivialaugment")
    assert policy.history[0]["train_loss"] != plain.history[0]["train_loss"]  # same seeds: only the inputs differ
    cfg = load_config(None, [*SMALL, "augment.policy=trivialaugment"])
    x = digits.inputs[:64].float()
    augmented = recipe.augmenter(cfg.augment, digits)(x, torch.Generator().manual_seed(0))
    assert augmented.shape == x.shape and (augmented != x).flatten(1).any(1).float().mean() > 0.5
