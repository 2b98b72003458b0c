"""The LR range test (trainlib.lr_finder): the sweep's LRs, the smoothing, the suggestion rule on a made-up loss
curve, and a real sweep on digits that diverges at the top of its range."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from trainlib import lr_finder, optim
from trainlib.data.batches import TensorData
from trainlib.loop import Step


def test_the_sweep_grows_exponentially_from_start_to_end():
    lrs = [lr_finder.lr_at(i, 5, 1e-4, 1.0) for i in range(5)]
    assert lrs == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])


def test_smoothing_is_a_bias_corrected_moving_average():
    assert lr_finder.smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0 at the start
    two = lr_finder.smooth([1.0, 3.0], beta=0.5)
    assert two == pytest.approx([1.0, (0.25 * 1 + 0.5 * 3) / 0.75])
    step = [1.0] * 30 + [0.0] * 30  # a drop at update 30: the one-way average lags it, both ways does not
    one, both = lr_finder.smooth(step), lr_finder.smooth_both_ways(step)
    assert one[35] > 0.5 and both[29] > 0.5 > both[30] and both[::-1] == pytest.approx([1 - v for v in both], abs=0.05)


def test_the_suggestion_is_where_the_loss_falls_fastest():
    lrs = list(np.logspace(-6, 0, 61))
    centre = 1e-3  # a loss falling as a logistic step in log LR, steepest at its centre, rising at the end
    losses = [2.0 / (1 + math.exp(4 * (math.log10(lr) - math.log10(centre)))) + 10 * max(0.0, math.log10(lr) + 0.5)
              for lr in lrs]
    assert lr_finder.steepest(lrs, losses) == pytest.approx(centre, rel=0.13)  # within one grid step (10^0.1)
    assert lr_finder.steepest(lrs[:12], losses[:12]) is None  # too few updates past the skipped ones


def test_a_sweep_on_digits_descends_then_diverges_and_suggests_an_lr_inside_its_range(small_digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # softmax regression: a too-large LR blows its loss up
    train = TensorData(small_digits.inputs[:300].float(), small_digits.labels[:300])
    out = lr_finder.sweep(model, train, Step(optim.build("sgd", model.parameters(), lr=1.0), batch_size=32),
                          start=1e-5, end=100.0, updates=150)
    assert out.stopped == "diverged" and 30 < len(out.lrs) < 150  # lr 100 on raw pixels blows up
    assert out.lrs == sorted(out.lrs) and len(out.losses) == len(out.raw) == len(out.lrs)
    assert min(out.losses) < 0.8 * out.losses[0]  # it learned somewhere in the range
    assert out.suggestion is not None and 1e-5 < out.suggestion < out.lrs[-1]
    best = out.lrs[int(np.argmin(out.losses))]
    assert out.suggestion < best  # the steepest fall comes before the lowest loss
    with pytest.raises(Exception, match="needs 0 < start < end"):
        lr_finder.sweep(model, train, Step(optim.build("sgd", model.parameters(), lr=1.0)), start=1.0, end=0.1)


def test_the_sweep_updates_by_the_training_step_s_rules(small_digits):
    """The sweep's updates are a training's (trainlib.loop.Loop): gradient clipping holds there too (and so do
    penalties, precision, channels_last and the run's random streams)."""
    train = TensorData(small_digits.inputs[:300].float(), small_digits.labels[:300])

    def moved(**rules) -> float:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        before = [p.detach().clone() for p in model.parameters()]
        step = Step(optim.build("sgd", model.parameters(), lr=1.0), batch_size=32, **rules)
        lr_finder.sweep(model, train, step, start=1e-3, end=1e-1, updates=20)
        return sum(float((p.detach() - b).norm()) for p, b in zip(model.parameters(), before, strict=True))

    free, clipped = moved(), moved(grad_clip=1e-4)  # clipped: each update moves the weights by 1e-4 x lr at most
    assert clipped < 20 * 1e-4 * 0.1 * 2 < 0.01 * free
