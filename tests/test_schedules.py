"""LR schedules: closed-form values, equal to torch's own schedulers, with linear warmup."""

import math

import pytest
import torch
from torch.optim import lr_scheduler as tls
from torch.optim.optimizer import register_optimizer_step_pre_hook

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


# ---------------------------------------------------------------- in the engine: the LR of every update of a run

# A run of the pipeline's training step (config -> recipe -> engine), small enough to take a fraction of a second:
# an mlp on digits, 10 updates per epoch. lr 0.05 makes the validation metrics wander, so plateaus happen.
RUN = ["model.name=mlp", "model.hidden=[16]", "model.dropout=0", "optimizer.lr=0.05", "training.epochs=8",
       "training.batch_size=128", "training.early_stopping.enabled=false", "training.device=cpu",
       "training.threads=1"]
ENGINE_CASES = {  # schedule name -> its knobs, chosen so that the LR moves within the run
    "none": [],
    "step": ["schedule.step_size=3", "schedule.gamma=0.5"],
    "exponential": ["schedule.decay=0.7"],
    "cosine": ["schedule.min_lr=0.005"],
    "cyclical": ["schedule.max_lr=0.2", "schedule.cycle_epochs=3", "schedule.cycle_mode=triangular2"],
    "onecycle": [],  # every knob its default, max_lr too: 10 x optimizer.lr
    "plateau": ["schedule.plateau_patience=0", "schedule.plateau_factor=0.5"],  # on val_loss
}
MODE = {"val_loss": "min", "val_accuracy": "max"}  # the direction torch's ReduceLROnPlateau is told, in its words


def _torch_scheduler(opt, s, lr: float, upe: int, epochs: int):
    """torch's own scheduler for the config's schedule section `s` -> (scheduler, stepped per update?)."""
    peak = s.max_lr or 10 * lr  # the documented default max_lr
    return {
        "none": lambda: (tls.LambdaLR(opt, lambda e: 1.0), False),
        "step": lambda: (tls.StepLR(opt, s.step_size, s.gamma), False),
        "exponential": lambda: (tls.ExponentialLR(opt, s.decay), False),
        "cosine": lambda: (tls.CosineAnnealingLR(opt, epochs, eta_min=s.min_lr), False),
        "plateau": lambda: (tls.ReduceLROnPlateau(opt, MODE[s.plateau_monitor], factor=s.plateau_factor,
                                                  patience=s.plateau_patience, min_lr=s.min_lr), False),
        "cyclical": lambda: (tls.CyclicLR(opt, lr, peak, step_size_up=round(s.cycle_epochs * upe / 2),
                                          mode=s.cycle_mode, gamma=s.cycle_gamma ** (1 / upe), cycle_momentum=False),
                             True),
        "onecycle": lambda: (tls.OneCycleLR(opt, peak, total_steps=epochs * upe, pct_start=s.pct_start,
                                            div_factor=s.div_factor, final_div_factor=s.final_div_factor,
                                            cycle_momentum=False), True),
    }[s.name]()


def _torch_warmup(updates: int, n: int) -> list[float]:
    """torch's LinearLR factor (1/updates up to 1, per update) for n updates: warmup multiplies the schedule."""
    opt = _opt(1.0)
    warm = tls.LinearLR(opt, 1 / updates, 1.0, total_iters=updates - 1) if updates > 1 else None
    factors = []
    for _ in range(n):
        factors.append(opt.param_groups[0]["lr"])
        opt.step()
        if warm:
            warm.step()
    return factors


def _replay_in_torch(cfg, fit) -> list[float]:
    """The LR of every update of the run `fit`, from torch's schedulers on a dummy optimizer stepped as the engine
    steps (after every update, or after every epoch with the validation metrics the engine saw)."""
    s, lr, upe = cfg.schedule, cfg.optimizer.lr, fit.updates_per_epoch
    opt = _opt(lr)
    scheduler, per_update = _torch_scheduler(opt, s, lr, upe, cfg.training.epochs)
    lrs = []
    for metrics in fit.history:
        for _ in range(upe):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            if per_update:
                scheduler.step()
        if isinstance(scheduler, tls.ReduceLROnPlateau):
            scheduler.step(metrics[s.plateau_monitor])
        elif not per_update:
            scheduler.step()
    return [lr * w for lr, w in zip(lrs, _torch_warmup(round(s.warmup_epochs * upe), len(lrs)), strict=True)]


@pytest.fixture(scope="module")
def digits_parts():
    from trainlib import recipe
    from trainlib.config import load_config

    cfg = load_config(None, RUN)
    ds = recipe.ingest(cfg.data)
    manifest = recipe.split(ds, cfg.split)
    return ds, manifest, recipe.fit_normalizer(ds, manifest, cfg.normalize)


def _engine_run(digits_parts, sets):
    from trainlib import recipe
    from trainlib.config import load_config

    cfg = load_config(None, [*RUN, *sets])
    stepped = []  # the LR each optimizer.step() of the run used, read at the step (any optimizer: a global hook)
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: stepped.append(opt.param_groups[0]["lr"]))
    try:
        _, fit = recipe.train(cfg, *digits_parts)
    finally:
        hook.remove()
    assert len(stepped) == cfg.training.epochs * fit.updates_per_epoch == 80
    assert fit.lrs == stepped  # what the engine records is what the optimizer used
    return cfg, fit


@pytest.mark.parametrize("warmup", [0, 2])
@pytest.mark.parametrize("name", sorted(SCHEDULES))  # a schedule without an ENGINE_CASES entry fails here
def test_the_engine_trains_every_update_at_torchs_lr(name, warmup, digits_parts):
    cfg, fit = _engine_run(digits_parts, [f"schedule.name={name}", f"schedule.warmup_epochs={warmup}",
                                          *ENGINE_CASES[name]])
    assert fit.lrs == pytest.approx(_replay_in_torch(cfg, fit), rel=1e-9, abs=1e-15)
    assert len(set(fit.lrs)) > 1 or (name == "none" and not warmup), "the case should move the LR"
    assert [h["lr"] for h in fit.history] == fit.lrs[::fit.updates_per_epoch]  # the logged LR: each epoch's first


@pytest.mark.parametrize("sets, lowest", [
    pytest.param(["schedule.plateau_monitor=val_accuracy"], None, id="val_accuracy"),  # improves upwards: mode max
    pytest.param(["schedule.plateau_monitor=val_accuracy", "schedule.min_lr=0.01"], 0.01, id="val_accuracy-min_lr"),
    pytest.param(["schedule.min_lr=0.01"], 0.01, id="val_loss-min_lr"),
])
def test_the_engine_reduces_on_a_plateau_as_torch_does(sets, lowest, digits_parts):
    cfg, fit = _engine_run(digits_parts, ["schedule.name=plateau", "schedule.plateau_patience=0",
                                          "schedule.plateau_factor=0.5", *sets])
    assert fit.lrs == pytest.approx(_replay_in_torch(cfg, fit), rel=1e-9, abs=1e-15)
    assert len(set(fit.lrs)) >= 3, "the case should reduce the LR at least twice"
    if lowest is not None:
        assert min(fit.lrs) == pytest.approx(lowest), "the case should reach min_lr"
