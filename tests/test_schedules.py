"""LR schedules: closed-form values, equal to torch's own schedulers, with linear warmup."""

import math

import pytest
import torch
from torch.optim import lr_scheduler as tls

from trainlib.schedules import CYCLE_MODES, SCHEDULES, LRSchedule

LR, EPOCHS, UPE = 0.1, 12, 5  # base LR, epochs, updates per epoch


def _opt(lr=LR):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _ours(name, metrics=None, **knobs):
    """LR of every update over the run (as the engine drives the schedule)."""
    opt = _opt()
    s = LRSchedule(opt, name, epochs=EPOCHS, updates_per_epoch=UPE, **knobs)
    lrs = []
    for epoch in range(EPOCHS):
        for _ in range(UPE):
            lrs.append(opt.param_groups[0]["lr"])
            s.step_batch()
        s.step_epoch(metrics[epoch] if metrics else {"val_loss": 1.0})
    return lrs


def _torch(make, per_batch, metrics=None):
    opt = _opt()
    sched = make(opt)
    lrs = []
    for epoch in range(EPOCHS):
        for _ in range(UPE):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            if per_batch:
                sched.step()
        if not per_batch:
            sched.step(metrics[epoch]["val_loss"]) if metrics else sched.step()
    return lrs


TOTAL = EPOCHS * UPE
PLATEAU = [{"val_loss": v} for v in (1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.7)]
CASES = {
    "none": ({}, lambda o: tls.LambdaLR(o, lambda e: 1.0), False, None),
    "step": ({"step_size": 4, "gamma": 0.5}, lambda o: tls.StepLR(o, 4, 0.5), False, None),
    "exponential": ({"decay": 0.8}, lambda o: tls.ExponentialLR(o, 0.8), False, None),
    "cosine": ({"min_lr": 0.01}, lambda o: tls.CosineAnnealingLR(o, EPOCHS, eta_min=0.01), False, None),
    "cyclical": ({"max_lr": 0.5, "cycle_epochs": 2, "cycle_mode": "triangular2"},
                 lambda o: tls.CyclicLR(o, LR, 0.5, step_size_up=UPE, mode="triangular2", cycle_momentum=False),
                 True, None),
    "onecycle": ({"max_lr": 1.0, "pct_start": 0.25},
                 lambda o: tls.OneCycleLR(o, 1.0, total_steps=TOTAL, pct_start=0.25, cycle_momentum=False),
                 True, None),
    "plateau": ({"plateau_factor": 0.5, "plateau_patience": 2},
                lambda o: tls.ReduceLROnPlateau(o, factor=0.5, patience=2), False, PLATEAU),
}


def test_cases_cover_the_registry():
    assert set(CASES) == set(SCHEDULES)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_equals_torch(name):
    knobs, make, per_batch, metrics = CASES[name]
    assert _ours(name, metrics, **knobs) == pytest.approx(_torch(make, per_batch, metrics), rel=1e-9, abs=1e-12)


def test_closed_form_values():
    step = _ours("step", step_size=4, gamma=0.5)
    assert step[0] == LR and step[4 * UPE] == LR * 0.5 and step[8 * UPE] == LR * 0.25
    assert step[4 * UPE - 1] == LR  # per epoch: unchanged inside an epoch
    cos = _ours("cosine")
    assert cos[6 * UPE] == pytest.approx(LR / 2)  # half way: (1 + cos(pi/2)) / 2
    exp = _ours("exponential", decay=0.9)
    assert exp[3 * UPE] == pytest.approx(LR * 0.9**3)
    tri = _ours("cyclical", max_lr=0.3, cycle_epochs=2)
    assert tri[0] == pytest.approx(0.1) and tri[UPE] == pytest.approx(0.3) and tri[2 * UPE] == pytest.approx(0.1)
    assert tri[UPE // 2] == pytest.approx(0.1 + 0.2 * (UPE // 2) / UPE)
    one = _ours("onecycle", max_lr=1.0, div_factor=10, pct_start=0.5)
    assert one[0] == pytest.approx(0.1) and max(one) == pytest.approx(1.0)
    assert one[-1] == pytest.approx(0.1 / 1e4)


@pytest.mark.parametrize("mode", sorted(CYCLE_MODES))
def test_every_cycle_mode_equals_torch(mode):
    gamma = 0.9  # per epoch; torch's CyclicLR takes it per update
    ours = _ours("cyclical", max_lr=0.5, cycle_epochs=2, cycle_mode=mode, cycle_gamma=gamma)
    theirs = _torch(lambda o: tls.CyclicLR(o, LR, 0.5, step_size_up=UPE, mode=mode, gamma=gamma ** (1 / UPE),
                                           cycle_momentum=False), per_batch=True)
    assert ours == pytest.approx(theirs, rel=1e-9)


def test_exp_range_decays_per_epoch():
    lrs = _ours("cyclical", max_lr=0.5, cycle_epochs=2, cycle_mode="exp_range", cycle_gamma=0.5)
    peaks = [lrs[UPE * (1 + 2 * k)] for k in range(3)]  # top of each cycle
    assert peaks[0] == pytest.approx(LR + 0.4 * 0.5) and peaks[1] == pytest.approx(LR + 0.4 * 0.5**3)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_linear_warmup_multiplies_every_schedule(name):
    knobs, _, _, metrics = CASES[name]
    plain, warm = _ours(name, metrics, **knobs), _ours(name, metrics, warmup_epochs=2, **knobs)
    for t in range(2 * UPE):
        assert warm[t] == pytest.approx(plain[t] * (t + 1) / (2 * UPE))
    assert warm[2 * UPE:] == pytest.approx(plain[2 * UPE:])


def test_param_groups_keep_their_ratio():
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.01},
                           {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1}])
    s = LRSchedule(opt, "exponential", epochs=5, updates_per_epoch=1, decay=0.5)
    s.step_epoch()
    s.step_epoch()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0025, 0.025])


def test_state_round_trip_resumes_the_schedule():
    opt = _opt()
    s = LRSchedule(opt, "plateau", epochs=EPOCHS, updates_per_epoch=UPE, plateau_factor=0.5, plateau_patience=0)
    s.step_epoch({"val_loss": 1.0})
    s.step_epoch({"val_loss": 2.0})
    fresh = LRSchedule(_opt(), "plateau", epochs=EPOCHS, updates_per_epoch=UPE, plateau_factor=0.5,
                       plateau_patience=0)
    fresh.load_state_dict(s.state_dict())
    assert fresh.lrs() == s.lrs() == [pytest.approx(LR * 0.5)]
    assert not math.isnan(fresh.factor())
