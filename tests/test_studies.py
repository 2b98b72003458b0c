"""Study storages shared by several askers (tasks.tuning.storage): the ask lock, the shared budget, heartbeats."""

import threading
import time
import warnings

import optuna
import pytest

from tasks.results import TrialRun
from tasks.tuning import storage as studies
from trainlib.config import PipelineConfig, validate
from trainlib.errors import ConfigError, TrainingError
from trainlib.tuning import SearchConfig

States = optuna.trial.TrialState
GRID = {"x": [1, 2, 3], "y": ["a", "b"]}


def _grid_study(url: str, name: str) -> optuna.Study:
    return studies.create(url, name, ["maximize"], optuna.samplers.GridSampler(GRID, seed=0),
                          optuna.pruners.NopPruner())


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_askers_sharing_a_study_take_every_grid_point_once_within_the_budget(tmp_path, kind):
    url = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else studies.journal_url(tmp_path / "s.log")
    _grid_study(url, "grid")
    taken, errors = [], []

    def asker():  # another process would do the same: its own study object, its own lock handle
        try:
            study, lock = studies.load(url, "grid", optuna.samplers.GridSampler(GRID, seed=0), None), \
                studies.AskLock(url, "grid")
            while (t := studies.ask(study, lock, budget=6)) is not None:
                taken.append((t.suggest_categorical("x", GRID["x"]), t.suggest_categorical("y", GRID["y"])))
                time.sleep(0.01)  # still running when the other asks
                studies.tell(study, t, 1.0)
            lock.close()
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=asker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(taken) == sorted((x, y) for x in GRID["x"] for y in GRID["y"])


@pytest.mark.parametrize("sampler", ["random", "bayesian"])
def test_n_trials_bounds_a_shared_study_whatever_the_sampler(tmp_path, sampler):
    """Not only a grid, which ends itself: a random or Bayesian search shared by three askers holds n_trials in all."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    made = {"random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
            "bayesian": lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=2)}[sampler]
    studies.create(url, "shared", ["maximize"], made(0), optuna.pruners.NopPruner())
    taken, errors = [], []

    def asker(seed: int):
        try:
            study, lock = studies.load(url, "shared", made(seed), None), studies.AskLock(url, "shared")
            while (t := studies.ask(study, lock, budget=5)) is not None:
                taken.append(t.suggest_float("x", 0, 1))
                time.sleep(0.01)  # still running when the others ask
                studies.tell(study, t, taken[-1])
            lock.close()
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=asker, args=(seed,)) for seed in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(taken) == 5
    assert len(optuna.load_study(study_name="shared", storage=url).trials) == 5


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # retried_trial_number
def test_a_trial_whose_process_died_fails_and_frees_its_place(tmp_path, monkeypatch):
    monkeypatch.setattr(studies, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(studies, "GRACE_SECONDS", 3)  # SQLite keeps heartbeats to the second
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = studies.create(url, "stale", ["maximize"], optuna.samplers.RandomSampler(seed=0), None)
    lock = studies.AskLock(url, "stale")
    alive, dead = studies.ask(study, lock, 10), studies.ask(study, lock, 10)
    alive.suggest_float("x", 0, 1), dead.suggest_float("x", 0, 1)
    with studies.heartbeats(study, lambda: [alive._trial_id]):  # only one trial's process still beats
        time.sleep(6)
        assert studies.held(study) == 1
        assert study.trials[dead.number].state == States.FAIL
        assert study.trials[alive.number].state == States.RUNNING
        retry = studies.ask(study, lock, 10)  # the dead trial again, with its parameters
        assert retry.params == study.trials[dead.number].params and retried(study.trials[retry.number]) == dead.number
        assert studies.held(study) == 2
        failed = studies.ask(study, lock, 10)
        failed.set_user_attr("error", "RuntimeError: a failure the flow saw")
        studies.tell(study, failed, state=States.FAIL)
        study.enqueue_trial({})  # waiting: it counts once asked
        assert studies.held(study) == 3  # the two running and the failure with its error
    lock.close()


def retried(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the trial `trial` retries, if it is a retry."""
    with warnings.catch_warnings():  # Optuna calls its heartbeat experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def test_a_trial_whose_processes_keep_dying_is_queued_again_twice_then_left_failed(tmp_path, monkeypatch):
    """storage.RETRIES: the same parameters are tried by a third process at most; a trial that kills every process
    that takes it (say it runs out of memory) must not take the study's workers down one after another for ever."""
    monkeypatch.setattr(studies, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(studies, "GRACE_SECONDS", 2)
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = studies.create(url, "deadly", ["maximize"], optuna.samplers.RandomSampler(seed=0), None)
    lock = studies.AskLock(url, "deadly")
    first = studies.ask(study, lock, None)
    params, taken = first.suggest_float("x", 0, 1), [first.number]
    while True:  # each process that takes it dies: no heartbeat from it
        time.sleep(studies.GRACE_SECONDS + 2)  # SQLite keeps heartbeats to the second
        nxt = studies.ask(study, lock, None)
        if retried(study.trials[nxt.number]) is None:
            break
        assert nxt.params == {"x": params}
        taken.append(nxt.number)
    lock.close()
    assert len(taken) == 1 + studies.RETRIES == 3
    assert [study.trials[n].state for n in taken] == [States.FAIL] * 3


def test_an_unreachable_storage_is_one_error_naming_it_without_its_password():
    with pytest.raises(ConfigError) as caught:
        studies.storage("postgresql://trainer:hunter2@127.0.0.1:9/db")
    assert "postgresql://trainer:***@127.0.0.1:9/db: cannot open the study database" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_ask_tell_runs_a_grid_within_its_budget_and_records_every_outcome(tmp_path):
    space = {"optimizer.name": {"type": "categorical", "choices": ["sgd", "adam"]},
             "optimizer.nesterov": {"type": "categorical", "choices": [True, False]}}  # adam with nesterov: refused
    search = validate({"strategy": "grid", "pruner": "none", "min_complete": 3, "space": space,
                       "storage": f"sqlite:///{tmp_path / 's.db'}"}, SearchConfig)
    study = studies.create_study(search, "drive", epochs=3)
    with studies.AskTell(study, search, "drive", PipelineConfig()) as trials:
        asked = [trials.ask() for _ in range(3)]  # three trials running at once
        assert trials.ask() is None  # the fourth grid point was refused (told as failed): the budget of 4 is spent
        assert sorted(trials.running) == sorted(t.trial_id for t in asked)
        assert all(t.config.optimizer.name == t.params["optimizer.name"] for t in asked)
        trials.tell(asked[0], TrialRun(asked[0].number, "r0", asked[0].params, "complete", 0.9, 3, 2, 1.0))
        trials.tell(asked[1], TrialRun(asked[1].number, "r1", asked[1].params, "pruned", None, 1, None, 0.5))
        trials.tell(asked[2], RuntimeError("out of memory"))
    assert trials.run_ids == ["r0", "r1"] and trials.running == {}
    states = {t.number: (t.state, t.user_attrs.get("error")) for t in studies.open_study(search, "drive", 3).trials}
    assert states[asked[0].number] == (States.COMPLETE, None) and states[asked[1].number] == (States.PRUNED, None)
    assert states[asked[2].number] == (States.FAIL, "RuntimeError: out of memory")
    refused = [error for state, error in states.values() if state == States.FAIL and "nesterov" in (error or "")]
    assert len(refused) == 1
    with pytest.raises(TrainingError, match=r"1 trial\(s\) of study drive completed, fewer than search.min_complete"):
        trials.check_complete()
