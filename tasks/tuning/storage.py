"""Where tuning studies live, and how several processes share one. The orchestrating layer's, not the
training library's: it holds database connections, file locks and a heartbeat thread.

A study's storage is a URL: none (this process's memory), an RDB (`sqlite:///study.db`,
`postgresql://user:pw@host/db`), or `journal:///path/study.log` (Optuna's append-only journal file, for
processes on one machine or a shared filesystem). Processes that share a study ask for trials one at a time
under a lock the storage holds (a PostgreSQL advisory lock, or a file lock beside a SQLite or journal file),
so that each sees the trials the others started and the budget holds for all of them together. RDB studies
keep a heartbeat per running trial: a trial whose process died fails once its heartbeat is older than
GRACE_SECONDS, does not count against the budget, and is queued again with the same parameters (a grid point
is not lost). A journal file keeps no heartbeats: there a dead process's running trials keep their place.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.exc import SQLAlchemyError

from tasks.results import TrialRun
from trainlib.config import PipelineConfig, override
from trainlib.errors import ConfigError, TrainingError
from trainlib.redact import redact
from trainlib.tuning import PRUNERS, SAMPLERS, SearchConfig, suggest

HEARTBEAT_SECONDS = 20  # how often the process running a trial says it is alive
GRACE_SECONDS = 60  # a running trial without a heartbeat for this long was left by a dead process
RETRIES = 2  # how often a trial left by dead processes is queued again
States = optuna.trial.TrialState

_IN_MEMORY: dict[str, optuna.Study] = {}  # studies without storage, reachable by name in this process


def journal_url(path: str | Path) -> str:
    return f"journal://{Path(path).resolve()}"


def _file_of(url: str) -> Path | None:
    """The file a journal or SQLite storage writes (None for a server database or SQLite in memory)."""
    if url.startswith("journal://"):
        return Path(url.removeprefix("journal://"))
    if url.startswith("sqlite:"):
        database = sqlalchemy.engine.make_url(url).database
        return Path(database) if database and database != ":memory:" else None
    return None


def storage(url: str | None) -> BaseStorage | None:
    """The Optuna storage a URL names (None: in memory); a bad URL, a missing driver or a database that does
    not answer is one ConfigError naming the URL (without its password)."""
    if url is None:
        return None
    try:
        if url.startswith("journal://"):
            path = _file_of(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        with warnings.catch_warnings():  # Optuna calls its heartbeat experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=RETRIES)
            return RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
                              heartbeat_stale_trial_callback=retry)
    except ImportError:
        raise ConfigError(f"search.storage {redact(url)}: {NO_DRIVER}") from None
    except (SQLAlchemyError, ValueError, OSError) as exc:  # a bad URL, a refused login, no server, no folder
        raise ConfigError(f"search.storage {redact(url)}: cannot open the study database ({_reason(exc)})") \
            from None


NO_DRIVER = "no database driver for this URL is installed (PostgreSQL: pip install 'psycopg[binary]')"


def _reason(exc: Exception) -> str:
    return redact(str(getattr(exc, "orig", None) or exc).strip().splitlines()[0])


def create(url: str | None, name: str, directions: list[str], sampler, pruner) -> optuna.Study:
    """A new study, or the existing one of that name in the storage `url` (to resume or share it)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lock = AskLock(url, "")  # processes starting together: one at a time creates the tables and the study
    try:
        with lock:
            study = optuna.create_study(storage=storage(url), study_name=name, load_if_exists=url is not None,
                                        sampler=sampler, directions=directions, pruner=pruner)
    finally:
        lock.close()
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:  # Optuna keeps a stored study's directions whatever is asked: its trials would fail
        raise ConfigError(f"search: the study {name} in {redact(url or '')} {_objectives(stored)}, this search "
                          f"{_objectives(directions)}; give another study_name (or the same second_metric)")
    if url is None:
        _IN_MEMORY[name] = study
    return study


def _objectives(directions: list[str]) -> str:
    return f"has {len(directions)} objective{'s' if len(directions) > 1 else ''} ({', '.join(directions)})"


def load(url: str | None, name: str, sampler, pruner) -> optuna.Study:
    """The study created by `create`: from its storage (any process), or this process's memory."""
    if url is None:
        return _IN_MEMORY[name]
    return optuna.load_study(study_name=name, storage=storage(url), sampler=sampler, pruner=pruner)


def create_study(search: SearchConfig, name: str, epochs: int) -> optuna.Study:
    """A new study, or the existing one of that name in `search.storage` (to resume or share it)."""
    return create(search.storage, name, search.directions, SAMPLERS[search.strategy](search),
                  PRUNERS[search.pruning](search, epochs))


def open_study(search: SearchConfig, name: str, epochs: int) -> optuna.Study:
    """The study created by `create_study`: from its storage (any process), or this process's memory."""
    return load(search.storage, name, SAMPLERS[search.strategy](search), PRUNERS[search.pruning](search, epochs))


def release(name: str) -> None:
    """Forget an in-memory study once its flow is done."""
    _IN_MEMORY.pop(name, None)


class AskLock:
    """Held while asking for one trial: no other process sharing the study asks at the same time."""

    def __init__(self, url: str | None, name: str):
        """The lock of study `name` in the storage `url` ("": of the whole storage)."""
        self.key = int.from_bytes(hashlib.sha256(f"trainflow-study:{name}".encode()).digest()[:8], "big", signed=True)
        self.connection, self.file = None, None
        if url and url.startswith("postgresql"):
            try:
                self.connection = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool).connect()
            except ImportError:
                raise ConfigError(f"search.storage {redact(url)}: {NO_DRIVER}") from None
            except (SQLAlchemyError, ValueError) as exc:  # a refused login, no server, a malformed URL
                raise ConfigError(f"search.storage {redact(url)}: cannot open the study database "
                                  f"({_reason(exc)})") from None
        elif url and (path := _file_of(url)):
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path.with_name(path.name + ".ask-lock"), "a")  # noqa: SIM115 - closed by close()

    def __enter__(self) -> AskLock:
        if self.connection is not None:
            self.connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
        elif self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.connection is not None:
            self.connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            self.connection.commit()
        elif self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)

    def close(self) -> None:
        for handle in (self.connection, self.file):
            if handle is not None:
                handle.close()


def _heartbeat_storage(study: optuna.Study):
    store = study._storage  # Optuna keeps it private; its own heartbeat functions take the study's storage
    return store if getattr(store, "get_heartbeat_interval", lambda: None)() else None


def ask(study: optuna.Study, lock: AskLock, budget: int | None) -> optuna.Trial | None:
    """The next trial, or None once the study holds `budget` trials (with every process's counted)."""
    with lock:
        if budget is not None and held(study) >= budget:
            return None
        if budget is None:  # held() does it otherwise: a dead process's trials fail, and are queued again
            _fail_stale(study)
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with Study.optimize": ask/tell here
            warnings.simplefilter("ignore")
            trial = study.ask()
        if (beat := _heartbeat_storage(study)) is not None:
            beat.record_heartbeat(trial._trial_id)
        return trial


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def held(study: optuna.Study) -> int:
    """Trials that count against the budget: those running or finished, except the ones that failed because
    their process died (they fail with no error recorded; the flow records one for every failure it sees).
    Enqueued trials count once asked."""
    _fail_stale(study)
    return sum(t.state not in (States.WAITING, States.FAIL) or "error" in t.user_attrs
               for t in study.get_trials(deepcopy=False))


@contextlib.contextmanager
def heartbeats(study: optuna.Study, running: Callable[[], Iterable[int]]) -> Iterator[None]:
    """While the block runs, record a heartbeat every HEARTBEAT_SECONDS for the trial ids `running()` gives."""
    beat = _heartbeat_storage(study)
    if beat is None:
        yield
        return
    stop = threading.Event()

    def loop():
        while not stop.wait(HEARTBEAT_SECONDS):
            for trial_id in list(running()):
                with contextlib.suppress(Exception):  # a database that is briefly away: the next beat will do
                    beat.record_heartbeat(trial_id)

    thread = threading.Thread(target=loop, name="study-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def tell(study: optuna.Study, trial: optuna.Trial, value: float | list[float] | None = None,
         state: States | None = None, attrs: dict | None = None) -> None:
    """Record a trial's `attrs` (user attributes) and result. A trial already finished elsewhere (failed as
    stale while its heartbeat could not be written, and queued again) is left as it is. The grid sampler's
    request to stop once its grid is covered is tolerated (Optuna allows that only inside `optimize`); the
    result is stored before that request either way."""
    try:
        for key, value_ in (attrs or {}).items():
            trial.set_user_attr(key, value_)
        study.tell(trial, value, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


@dataclass(frozen=True)
class Asked:
    """A trial asked for and ready to run: its id in the study's storage (what reopens it in any process),
    its number, the parameters drawn for it and the config they make."""

    trial_id: int
    number: int
    params: dict[str, Any]
    config: PipelineConfig


class AskTell:
    """One process's ask-and-tell loop over a study that other processes may share. Trials are asked for one
    at a time under the storage's lock until the budget (every process's trials counted) or the search's
    timeout is spent; the running ones keep a heartbeat; results are told as they come. A block
    (`with AskTell(...) as trials:`) holds the lock's connection and the heartbeat thread."""

    def __init__(self, study: optuna.Study, search: SearchConfig, name: str, base: PipelineConfig):
        """Trials of `study` (named `name`) drawn from `search.space`, each a change of the config `base`."""
        self.study, self.search, self.name, self.base = study, search, name, base
        self.budget = search.budget()
        self.deadline = time.monotonic() + search.timeout if search.timeout else None
        self.running: dict[int, optuna.Trial] = {}  # by trial id
        self.run_ids: list[str] = []  # the MLflow runs of the trials told (a failed task has none)
        self._held = contextlib.ExitStack()
        self.lock: AskLock | None = None

    def __enter__(self) -> AskTell:
        self.lock = self._held.enter_context(contextlib.closing(AskLock(self.search.storage, self.name)))
        self._held.enter_context(heartbeats(self.study, lambda: list(self.running)))
        return self

    def __exit__(self, *exc) -> None:
        self._held.close()

    def ask(self) -> Asked | None:
        """The next trial to run, or None once the budget or the time is spent. A combination of values that
        the config refuses (each value alone was valid) is told as failed, and the next trial asked for."""
        while self.deadline is None or time.monotonic() < self.deadline:
            trial = ask(self.study, self.lock, self.budget)
            if trial is None:
                return None
            params = suggest(trial, self.search.space)
            try:
                config = override(self.base, params)
            except ConfigError as exc:
                tell(self.study, trial, state=States.FAIL, attrs={"error": str(exc)})
                continue
            trial_id = trial._trial_id  # Optuna keeps it private; optuna.trial.Trial(study, id) reopens the trial
            self.running[trial_id] = trial
            return Asked(trial_id, trial.number, params, config)
        return None

    def tell(self, asked: Asked, result: TrialRun | BaseException) -> None:
        """Record what a trial's task returned, or the exception it failed with."""
        trial = self.running.pop(asked.trial_id)
        if isinstance(result, BaseException):
            tell(self.study, trial, state=States.FAIL, attrs={"error": f"{type(result).__name__}: {result}"})
            return
        self.run_ids.append(result.run_id)
        if result.state == "pruned":
            tell(self.study, trial, state=States.PRUNED)
        else:
            values = result.value if result.second is None else [result.value, result.second]
            tell(self.study, trial, values, attrs={"best_epoch": result.best_epoch})

    def check_complete(self) -> None:
        """Fail unless `search.min_complete` trials of the study completed (those of every process count)."""
        complete = len(self.study.get_trials(deepcopy=False, states=(States.COMPLETE,)))
        if complete < self.search.min_complete:
            raise TrainingError(f"{complete} trial(s) of study {self.name} completed, fewer than "
                                f"search.min_complete ({self.search.min_complete}); see the failed trials' runs")
