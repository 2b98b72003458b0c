"""tasks.tracking.RunLogger's batching: metrics held for `every` seconds arrive whole, in order, with their steps,
before anything else the logger writes and when its block ends (also on an error). A recording client stands in
for MLflow's, so no store is opened; one test opens a real one, for stop signals during a write."""

from __future__ import annotations

import signal
import time

import pytest

from tasks import tracking


class Recorder:
    def __init__(self):
        self.calls = []

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.calls.append(("batch", [(m.key, m.value, m.step) for m in metrics], [(t.key, t.value) for t in tags]))

    def log_artifact(self, run_id, path, folder=None):
        self.calls.append(("artifact", path))


@pytest.fixture
def recorder(monkeypatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(tracking, "client", lambda: rec)
    return rec


def test_without_every_each_call_is_sent_at_once(recorder):
    log = tracking.RunLogger("r")
    log.log_metrics({"loss": 1.0, "acc": None}, step=1)
    log.log_metrics({"loss": 0.5}, step=2)
    assert recorder.calls == [("batch", [("loss", 1.0, 1)], []), ("batch", [("loss", 0.5, 2)], [])]


def test_held_metrics_arrive_whole_before_the_next_write_and_at_the_end(recorder):
    with tracking.RunLogger("r", every=60) as log:
        for epoch in (1, 2, 3):
            log.log_metrics({"loss": 1 / epoch}, step=epoch)
        assert recorder.calls == []
        log.log_artifact("model.pt")
        log.log_metrics({"loss": 0.1}, step=4)
        log.set_tags({"stop_reason": "max_epochs"})  # one call: the tags with what waits
        log.log_metrics({"test_loss": 0.2}, step=4)
    assert recorder.calls == [("batch", [("loss", 1.0, 1), ("loss", 0.5, 2), ("loss", 1 / 3, 3)], []),
                              ("artifact", "model.pt"),
                              ("batch", [("loss", 0.1, 4)], [("stop_reason", "max_epochs")]),
                              ("batch", [("test_loss", 0.2, 4)], [])]


def test_held_metrics_are_sent_when_the_block_breaks_off(recorder):
    with pytest.raises(RuntimeError), tracking.RunLogger("r", every=60) as log:
        log.log_metrics({"loss": 1.0}, step=1)
        raise RuntimeError("training failed")
    assert recorder.calls == [("batch", [("loss", 1.0, 1)], [])]


def test_more_metrics_than_one_call_takes_go_in_several(recorder):
    with tracking.RunLogger("r", every=60) as log:
        for epoch in range(1, 302):
            log.log_metrics({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}, step=epoch)  # 1204 rows
    sizes = [len(metrics) for _, metrics, _ in recorder.calls]
    assert sizes == [1000, 204] and all(n <= tracking.METRICS_PER_BATCH for n in sizes)


def test_a_stop_signal_during_a_store_write_takes_effect_once_the_write_is_whole(tmp_path, monkeypatch):
    """Ctrl+C in the middle of a metrics write (a real SQLite store): the write goes in whole, then the
    KeyboardInterrupt ends the block and the run is marked FAILED with it, at once. Broken off half-way, the write
    could leave the store locked and the FAILED mark waiting 20 s and failing (seen in CI)."""
    from mlflow import MlflowClient
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    run_id = tracking.start_run("signals", "held", {"lr": 0.1}, {})
    fired = []

    def ctrl_c_mid_write(*_):
        if not fired:
            fired.append(time.monotonic())
            signal.raise_signal(signal.SIGINT)

    event.listen(Engine, "before_cursor_execute", ctrl_c_mid_write)
    try:
        with pytest.raises(KeyboardInterrupt), tracking.finishing(run_id), tracking.RunLogger(run_id) as log:
            log.log_metrics({"loss": 0.5}, step=1)
            log.log_metrics({"loss": 0.25}, step=2)
    finally:
        event.remove(Engine, "before_cursor_execute", ctrl_c_mid_write)
        signal.signal(signal.SIGINT, previous)
    assert fired and time.monotonic() - fired[0] < 5
    client = MlflowClient()
    run = client.get_run(run_id)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(1, 0.5)]
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == "KeyboardInterrupt: stopped by SIGINT"


def test_a_store_that_cannot_mark_the_run_failed_does_not_hide_what_broke_the_run(monkeypatch, capsys):
    class Gone:
        def set_tag(self, *_):
            raise ConnectionError("tracking server at http://127.0.0.1:5000 is gone")

    monkeypatch.setattr(tracking, "client", Gone)
    with pytest.raises(RuntimeError, match="training diverged"), tracking.finishing("r1"):
        raise RuntimeError("training diverged")
    assert "MLflow run r1 could not be marked FAILED and stays RUNNING: tracking server" in capsys.readouterr().err
