"""Lineage a user can act on (issue 36), the parts with no Prefect or MLflow: what a training cost (trainlib.cost),
temperature scaling (trainlib.calibration) and the model card's text (trainlib.card)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from trainlib import calibration, cost, models
from trainlib.config import PipelineConfig, override
from trainlib.errors import ConfigError


def _spin(seconds: float) -> None:
    """Burn CPU in this thread for `seconds` of wall time."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_training_alone_gets_the_process_cpu_and_its_own_peak_memory():
    with cost.measured() as meter:
        _spin(0.3)
        block = bytearray(300 * cost.MB)  # touched: resident
        block[:: 4096] = b"x" * len(block[:: 4096])
    c = meter.cost
    assert c.shared == 1
    assert 0.25 <= c.wall_seconds < 2
    assert 0.2 <= c.cpu_seconds <= c.wall_seconds * 2 + 0.05  # one spinning thread, at most the 2 cores
    assert c.peak_memory_mb >= 300
    del block
    with cost.measured() as after:  # the peak starts again: the block is gone
        pass
    assert after.cost.peak_memory_mb < c.peak_memory_mb


def test_trainings_at_once_share_the_process_cpu_and_say_so():
    started = cost.process_cpu()
    meters = []

    def train(seconds):
        with cost.measured() as meter:
            _spin(seconds)
        meters.append(meter.cost)

    threads = [threading.Thread(target=train, args=(s,)) for s in (0.4, 0.8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spent = cost.process_cpu() - started
    assert sorted(m.shared for m in meters) == [2, 2]
    # every CPU second of the stretch is given to one training or the other, none twice
    assert sum(m.cpu_seconds for m in meters) == pytest.approx(spent, abs=0.05)
    short, long = sorted(meters, key=lambda m: m.wall_seconds)
    assert long.cpu_seconds > short.cpu_seconds  # the longer ran alone at its end


def test_cost_metrics_are_named_as_the_readme_lists_them():
    c = cost.Cost(1.23456, 2.5, 812.34, 1)
    assert c.metrics() == {"train_wall_seconds": 1.235, "train_cpu_seconds": 2.5, "train_peak_memory_mb": 812.3,
                           "train_shared": 1.0}
    assert "train_peak_gpu_memory_mb" in cost.Cost(1, 1, 1, 1, 64.0).metrics()


def _drawn(logits: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Labels drawn from softmax(logits): a network exactly as often right as it says."""
    return torch.multinomial(torch.softmax(logits, 1), 1, generator=torch.Generator().manual_seed(seed)).squeeze(1)


def test_the_fitted_temperature_is_the_one_that_made_the_labels():
    z = torch.randn(20000, 10, generator=torch.Generator().manual_seed(1)) * 3
    labels = _drawn(z)
    for truth in (0.5, 1.0, 2.5):  # logits truth times too large: over-confident by that factor (or under)
        assert calibration.fit_temperature(z * truth, labels) == pytest.approx(truth, rel=0.05)


def test_temperature_scaling_lowers_the_ece_of_an_over_confident_network_and_keeps_its_predictions():
    z = torch.randn(5000, 10, generator=torch.Generator().manual_seed(2)) * 2
    labels = _drawn(z)
    fitted = calibration.calibrate("temperature", z * 3, labels)
    assert fitted.temperature == pytest.approx(3, rel=0.1)
    assert fitted.val_ece_before > 0.1 > 0.03 > fitted.val_ece
    assert fitted.val_loss < fitted.val_loss_before
    assert calibration.calibrate("none", z, labels) is None
    p = torch.softmax(z * 3 / fitted.temperature, 1).numpy()
    assert (p.argmax(1) == z.argmax(1).numpy()).all()
    assert np.allclose(calibration.uncalibrated(p, fitted.temperature), torch.softmax(z * 3, 1).numpy(), atol=1e-5)


def test_a_calibrated_model_keeps_its_temperature_when_saved_and_predicts_the_same_classes(tmp_path):
    model = models.build("mlp", [1, 8, 8], 10, hidden=[16])
    x = torch.rand(64, 1, 8, 8)
    plain = model.eval()(x)
    model.calibrated(2.0)
    assert torch.allclose(model(x), plain / 2)
    models.save_model(tmp_path / "m.pt", model)
    loaded, _ = models.load_model(tmp_path / "m.pt")
    assert float(loaded.temperature) == 2.0
    assert torch.allclose(loaded(x), plain / 2)
    assert set(loaded.state_dict()) == set(models.build("mlp", [1, 8, 8], 10, hidden=[16]).state_dict())


def test_calibration_needs_a_validation_split():
    with pytest.raises(ConfigError, match=r"calibrate.method: temperature .*split.val > 0"):
        override(PipelineConfig(), {"calibrate.method": "temperature", "split.val": 0, "split.test": 0.3,
                                    "training.early_stopping.enabled": False})
    with pytest.raises(ConfigError, match="unknown calibration method 'temprature'.*did you mean 'temperature'"):
        override(PipelineConfig(), {"calibrate.method": "temprature"})


def test_the_cards_bootstrap_interval_has_the_binomial_width_and_is_the_same_each_time():
    from trainlib import card

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, 500)
    predicted = np.where(rng.random(500) < 0.9, labels, (labels + 1) % 10)
    confidence = np.full(500, 0.9)
    found = card.bootstrap(labels, predicted, confidence, 10)
    low, high = found["test_accuracy"]
    accuracy = (labels == predicted).mean()
    half = 1.96 * np.sqrt(accuracy * (1 - accuracy) / 500)  # the normal approximation's
    assert low < accuracy < high and high - low == pytest.approx(2 * half, rel=0.15)
    assert found == card.bootstrap(labels, predicted, confidence, 10)  # a fixed seed: the card reads the same
    assert found["test_ece"][0] < abs(accuracy - 0.9) + 0.01


def test_the_card_names_the_most_confused_pairs_and_the_changes_from_the_defaults():
    from trainlib import card

    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    predicted = np.array([1, 1, 0, 0, 1, 0, 1, 1, 1])
    assert card.most_confused(labels, predicted, ["a", "b", "c"]) == [("c", "b", 3), ("a", "b", 2), ("b", "a", 1)]
    changes = card.differences({"name": "x", "optimizer.lr": "0.01", "model.name": "cnn"},
                               {"name": "digits-cnn", "optimizer.lr": "0.001", "model.name": "cnn"},
                               {"optimizer.lr": "step size"})
    assert changes == [("optimizer.lr", "0.01", "0.001", "step size")]


def test_a_perfect_test_accuracy_gets_the_exact_binomial_interval_not_a_point():
    from trainlib import card

    labels = np.arange(269) % 10
    found = card.bootstrap(labels, labels.copy(), np.full(269, 0.99), 10)
    assert found["test_accuracy"] == (pytest.approx(0.025 ** (1 / 269)), 1.0)
    assert found["test_accuracy"][0] == pytest.approx(0.9864, abs=1e-4)


def test_nothing_to_fit_leaves_the_temperature_at_one_and_the_card_says_ece_intervals_hold_the_point():
    from trainlib import card

    z = torch.randn(300, 10, generator=torch.Generator().manual_seed(4)) * 3
    assert calibration.fit_temperature(z, z.argmax(1)) == 1.0  # no mistake: the likelihood has no optimum
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 10, 270)
    predicted = np.where(rng.random(270) < 0.95, labels, (labels + 3) % 10)
    confidence = np.clip(rng.normal(0.95, 0.03, 270), 0, 1)
    low, high = card.bootstrap(labels, predicted, confidence, 10)["test_ece"]
    from trainlib.metrics import ece

    assert low <= ece(labels == predicted, confidence) <= high  # the basic interval: resampling's bias taken out
