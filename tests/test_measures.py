"""The derived measures of trainlib/measures.py on runs and weights made by hand."""

import pytest
import torch

from trainlib.engine import FitResult
from trainlib.evidence import HIGHER, paired
from trainlib.measures import MEASURES, NEAR_ZERO, Trained, derived


def _fit(val_accuracies, best_epoch, train_accuracy=1.0):
    history = [{"epoch": i + 1, "train_accuracy": train_accuracy, "val_accuracy": v, "epoch_seconds": 0.5}
               for i, v in enumerate(val_accuracies)]
    return FitResult(history, best_epoch, val_accuracies[best_epoch - 1], "val_accuracy", len(history), "completed",
                     True, [], 10)


def _model(weights):
    model = torch.nn.Linear(len(weights), 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([weights]))
        model.bias.fill_(100.0)  # biases are not weights: left out of the norm and the sparsity
    return model


def test_each_measure_on_a_run_made_by_hand():
    fit, model = _fit([0.5, 0.85, 0.92, 0.95, 0.94], best_epoch=4, train_accuracy=0.7), _model([3.0, 4.0, 0.0, 1e-4])
    m = derived(Trained(fit, model, train_accuracy=0.99, val_accuracy=0.93))
    assert m["train_val_gap"] == pytest.approx(0.99 - 0.93)  # evaluated, not the history's (dropout on) 0.7
    assert m["model_val_accuracy"] == 0.93  # the model as tested, not its best epoch's 0.95
    assert m["weight_norm"] == pytest.approx(5.0, abs=1e-3)
    assert m["near_zero_weights"] == 0.5 and NEAR_ZERO > 1e-4
    assert m["epochs_to_val_90"] == 3 and m["updates_to_val_90"] == 30 and m["seconds_to_val_90"] == 1.5


def test_a_run_that_never_reaches_the_target_has_no_time_to_it():
    m = derived(Trained(_fit([0.5, 0.6], best_epoch=2), _model([1.0])))
    assert m["epochs_to_val_90"] is m["updates_to_val_90"] is m["seconds_to_val_90"] is None
    assert m["train_val_gap"] is None  # not evaluated


def test_a_property_measure_gets_a_direction_not_a_judgement():
    assert MEASURES["weight_norm"].better is None and MEASURES["train_val_gap"].better == "lower"
    assert paired("weight_norm", [2.0, 3.0, 4.0], [1.0, 2.0, 3.0], better=None).verdict == HIGHER
    assert paired("near_zero_weights", [0.1, 0.2, 0.3], [0.2, 0.3, 0.4], better="higher").verdict == "worse"
