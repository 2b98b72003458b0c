"""Configs all the way through trainlib: every technique selectable by config trains and evaluates."""

import math

import numpy as np
import pytest
import torch
from conftest import digits_csv, write_images

from trainlib import plots, recipe
from trainlib.calibration import METHODS
from trainlib.config import load_config
from trainlib.data.normalize import NORMALIZERS
from trainlib.engine import GD_MODES, updates_per_epoch
from trainlib.metrics import from_logits
from trainlib.models import MODELS
from trainlib.optim import OPTIMIZERS
from trainlib.schedules import SCHEDULES

QUICK = ["training.epochs=2", "model.channels=[8]", "model.hidden=[32]"]


def _run(*overrides):
    return recipe.run(load_config(None, QUICK + list(overrides)))


def test_default_config_learns_digits():
    out = recipe.run(load_config())
    assert out.evaluation.accuracy >= 0.97  # the closing note records the exact figure (target 0.985)
    assert out.fit.best_epoch is not None and out.fit.stopped_epoch >= out.fit.best_epoch


def test_same_config_and_seed_give_identical_metrics():
    sets = ["model.dropout=0.3", "augment.rotation=10", "split.shots=20"]  # shots: 20 train samples per class
    a, b = _run(*sets), _run(*sets)
    drop = ("epoch_seconds", "samples_per_second")
    assert [{k: v for k, v in h.items() if k not in drop} for h in a.fit.history] == \
           [{k: v for k, v in h.items() if k not in drop} for h in b.fit.history]
    assert a.evaluation.summary() == b.evaluation.summary()


CHOICES = [("model.name", n) for n in sorted(MODELS)] + [("optimizer.name", n) for n in sorted(OPTIMIZERS)] + [
    ("schedule.name", n) for n in sorted(SCHEDULES)] + [("normalize.method", n) for n in sorted(NORMALIZERS)] + [
    ("training.mode", n) for n in sorted(GD_MODES)] + [("calibrate.method", n) for n in sorted(METHODS)]


def test_runs_in_parallel_threads_equal_sequential_runs():
    """Weight init, data order, augmentation and dropout must not share RNG state between threads."""
    from concurrent.futures import ThreadPoolExecutor

    cfg = load_config(None, [*QUICK, "training.epochs=3", "model.dropout=0.5", "augment.rotation=10",
                             "training.threads=1"])
    ds = recipe.ingest(cfg.data)
    manifest = recipe.split(ds, cfg.split)
    norm = recipe.fit_normalizer(ds, manifest, cfg.normalize)

    def val_losses(_=None):
        return [h["val_loss"] for h in recipe.train(cfg, ds, manifest, norm)[1].history]

    sequential = val_losses()
    with ThreadPoolExecutor(3) as pool:
        parallel = list(pool.map(val_losses, range(3)))
    assert parallel == [sequential] * 3


# Enough updates for every choice to learn: chance on digits is 0.1, and each choice must reach 0.6.
LEARNS = ["training.epochs=8", "optimizer.lr=0.01"]
LEARNS_WITH = {
    ("model.name", "resnet18"): ["training.epochs=4", "optimizer.lr=0.001", "split.shots=20"],  # slow on a CPU
    ("optimizer.name", "sgd"): ["optimizer.lr=0.05"],  # plain SGD needs a larger step than the adaptive ones
    ("training.mode", "batch"): ["training.epochs=20", "optimizer.lr=0.03"],  # one update per epoch
    ("training.mode", "stochastic"): ["model.name=mlp", "split.shots=20"],  # one update per sample
}


@pytest.mark.parametrize("key, name", CHOICES, ids=[f"{k}={n}" for k, n in CHOICES])
def test_every_registry_choice_trains_from_config(key, name, tmp_path):
    overrides = [*LEARNS, f"{key}={name}", *LEARNS_WITH.get((key, name), [])]
    if key == "model.name" and 3 not in MODELS[name].dims:  # a signal model: the digits as 8 channels of 8 steps
        overrides += ["data.source=csv", f"data.path={digits_csv(tmp_path / 'digits.csv')}", "data.channels=8"]
    out = _run(*overrides)
    epochs = load_config(None, QUICK + overrides).training.epochs
    assert out.evaluation.accuracy >= 0.6 and len(out.fit.history) == epochs
    assert out.fit.history[-1]["train_loss"] < out.fit.history[0]["train_loss"]
    if key == "calibrate.method":  # the method ran, and the model carries what it fitted
        fitted = out.fit.calibration
        assert (fitted is None) == (name == "none")
        assert float(out.model.temperature) == pytest.approx(fitted.temperature if fitted else 1.0, rel=1e-6)
        assert fitted is None or fitted.val_loss <= fitted.val_loss_before


def test_augmentation_online_and_expanded():
    few = ["training.epochs=1", "split.shots=20"]  # one epoch on 20 train samples per class shows both
    online = _run("augment.rotation=15", "augment.erasing=0.3", *few)
    expanded = _run("augment.rotation=15", "augment.expand=2", *few)
    n_train = int((online.manifest["split"] == "train").sum())
    assert online.fit.history[0]["samples_per_second"] > 0
    assert expanded.fit.updates_per_epoch == updates_per_epoch("minibatch", 3 * n_train, 64)  # 3x the train split


def test_regularization_dropout_and_early_stopping_from_config():
    out = _run("regularization.l1=1e-4", "regularization.l2=1e-3", "model.dropout=0.5", "training.epochs=3",
               "training.early_stopping.patience=1", "training.early_stopping.monitor=val_accuracy")
    assert all(h["penalty"] > 0 for h in out.fit.history) and out.fit.monitor == "val_accuracy"


def test_tabular_csv_with_mlp(csv_file):
    out = _run("data.source=csv", f"data.path={csv_file}", "model.name=mlp", "training.epochs=20",
               "optimizer.lr=0.01", "training.batch_size=16")
    assert out.dataset.classes == ["a", "b", "c"] and out.evaluation.accuracy >= 0.8


@pytest.mark.parametrize("stream", [False, True])
def test_imagefolder_in_memory_and_streamed(tmp_path, stream):
    root = write_images(tmp_path / "img", per_class=12)
    out = _run("data.source=imagefolder", f"data.path={root}", "data.image_size=[16,16]", f"data.stream={stream}",
               "data.workers=0", "training.batch_size=8", "augment.hflip=0.5", "split.train=0.5", "split.val=0.25",
               "split.test=0.25")
    assert out.dataset.streamed == stream and out.evaluation.confusion.sum() == len(out.evaluation.labels) == 9


def test_evaluation_metrics_and_report():
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 3.0, 0], [0, 0, 3.0]])
    ev = from_logits(logits, torch.tensor([0, 1, 2, 2]), ["a", "b", "c"])
    assert ev.accuracy == 0.75 and ev.confusion.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert ev.report["c"]["recall"] == 0.5 and ev.report["b"]["precision"] == 0.5
    assert ev.recall == pytest.approx((1 + 1 + 0.5) / 3) and ev.probabilities.shape == (4, 3)
    assert set(ev.summary()) == {"test_loss", "test_accuracy", "test_precision", "test_recall", "test_f1", "test_ece"}
    # every sample at confidence e^3 / (e^3 + 2) = 0.909, 3 of 4 right: one bin, |0.75 - 0.909|
    assert ev.summary()["test_ece"] == pytest.approx(abs(0.75 - math.exp(3) / (math.exp(3) + 2)))


def test_the_calibration_error_weighs_each_confidence_bins_gap_by_its_share_of_samples():
    from trainlib.metrics import calibration_error

    over = np.array([[0.99, 0.01]] * 100)  # says 0.99, right 90 times in 100
    assert calibration_error(over, np.array([0] * 90 + [1] * 10)) == pytest.approx(0.09)
    honest = np.array([[0.6, 0.4]] * 100)  # says 0.6, right 60 times
    assert calibration_error(honest, np.array([0] * 60 + [1] * 40)) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(0)  # against the definition written as a loop over the 15 bins
    p = rng.dirichlet([0.5] * 4, 500)
    y = rng.integers(0, 4, 500)
    conf, right = p.max(1), (p.argmax(1) == y)
    expected = sum(abs(right[m].mean() - conf[m].mean()) * m.sum() / 500 for b in range(15)
                   if (m := (conf >= b / 15) & ((conf < (b + 1) / 15) | (b == 14))).any())
    assert calibration_error(p, y) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
def test_metrics_equal_sklearns(seed):
    from sklearn.metrics import classification_report, confusion_matrix, precision_recall_fscore_support

    g = torch.Generator().manual_seed(seed)
    k, n = 6, 50
    labels = torch.randint(0, k - 1, (n,), generator=g)  # class 5 never occurs: divisions by zero
    logits = torch.randn(n, k, generator=g) + 2 * torch.nn.functional.one_hot(labels, k) * (seed % 3)
    ev = from_logits(logits, labels, [f"c{i}" for i in range(k)])
    y, pred, ks = labels.numpy(), logits.argmax(1).numpy(), list(range(k))
    p, r, f1, _ = precision_recall_fscore_support(y, pred, labels=ks, average="macro", zero_division=0)
    assert (ev.precision, ev.recall, ev.f1) == pytest.approx((p, r, f1))
    assert ev.confusion.tolist() == confusion_matrix(y, pred, labels=ks).tolist()
    expected = classification_report(y, pred, labels=ks, target_names=[f"c{i}" for i in ks], output_dict=True,
                                     zero_division=0)
    assert ev.report.keys() == expected.keys()
    for key, value in expected.items():
        assert ev.report[key] == pytest.approx(value), key


def test_plots_render(tmp_path):
    out = _run("schedule.name=onecycle")
    figures = {"curves": plots.learning_curves(out.fit.history, out.fit.best_epoch),
               "lr": plots.lr_schedule(out.fit.lrs, out.fit.updates_per_epoch),
               "confusion": plots.confusion(out.evaluation.confusion, out.dataset.classes)}
    for name, fig in figures.items():
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 5000


def test_means_with_long_variant_labels_keep_their_axes(tmp_path):
    """A study's labels ("augment.policy=randaugment, augment.mixup=0.2, ...") collapsed the axes of the means
    chart to nothing: matplotlib warned and drew no layout."""
    import warnings

    from trainlib.evidence import Estimate, Group

    labels = ["baseline", "augment.policy=randaugment, augment.mixup=0.2, model.dropout=0.3, training.ema.decay=0.999",
              "a-label-with-no-space-to-break-at-" * 2]
    rows = [Group(label, 3, 0, {"test_accuracy": Estimate(3, 0.8 + i / 100, 0.02, 0.78, 0.85)})
            for i, label in enumerate(labels)]
    for measures in (("test_accuracy",), ("test_accuracy", "test_accuracy")):
        fig = plots.compare_means(rows, measures)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "constrained_layout not applied because axes sizes collapsed to zero"
            fig.savefig(tmp_path / "means.png")
        first = fig.axes[0].get_position()
        assert first.width > 0.3 and first.height > 0.5, first
        shown = [t.get_text() for t in fig.axes[0].get_yticklabels()]  # wrapped, every character kept
        assert ["".join(t.split()) for t in shown] == ["".join(label.split()) for label in labels]


def test_a_claims_figure_shows_means_and_differences_under_its_whole_title(tmp_path):
    """The study's figure per entry: the means beside the paired differences against zero and the margin; its
    title (the claim's text) wrapped to the figure, not cut at both ends."""
    import warnings

    from trainlib.evidence import Estimate, Group

    groups = [Group(f"model.dropout={d}", 3, 0, {"train_val_gap": Estimate(3, 0.1 - d / 10, 0.01, 0.08 - d / 10,
                                                                           0.12 - d / 10)})
              for d in (0, 0.3, 0.5)]
    rows = [("model.dropout=0.3", -0.03, -0.05, -0.01, "supported"), ("model.dropout=0.5", None, None, None, "-")]
    title = "dropout: Dropout narrows the gap between train and validation accuracy in the few labels regime " * 2
    fig = plots.claim(groups, rows, "train_val_gap", 0.01, "model.dropout=0", title.strip())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig.savefig(tmp_path / "claim.png")
    shown = fig._suptitle.get_text()
    assert "".join(shown.split()) == "".join(title.split()) and "\n" in shown  # wrapped, every character kept
    left, right = fig.axes[:2]
    assert [t.get_text() for t in right.texts] == ["supported"]  # the verdict beside its interval
    assert right.get_xlim()[0] < -0.01 and right.get_xlim()[1] > 0.01  # the margin is in view
