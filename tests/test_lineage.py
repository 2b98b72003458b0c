"""Lineage a user can act on (issue 36), the parts with no Prefect or MLflow: what a training cost (trainlib.cost),
temperature scaling (trainlib.calibration) and the model card's text (trainlib.card)."""

from __future__ import annotations

import threading
import time

import pytest

from trainlib import cost


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
