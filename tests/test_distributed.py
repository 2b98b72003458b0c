"""Data-parallel training (training.devices): real processes on the gloo backend, one per CPU device, against
training in one process."""

import multiprocessing
import os
import signal

import pytest
import torch
import torch.distributed as dist
from mlflow import MlflowClient

from trainlib import distributed, recipe
from trainlib.config import load_config
from trainlib.errors import ConfigError, TrainingError

EXACT = ["model.name=mlp", "model.hidden=[64]", "model.dropout=0", "training.epochs=4",
         "training.early_stopping.enabled=false"]


def _setup(sets: list[str]):
    cfg = load_config(None, sets)
    ds = recipe.ingest(cfg.data)
    manifest = recipe.split(ds, cfg.split)
    return cfg, ds, manifest, recipe.fit_normalizer(ds, manifest, cfg.normalize)


def _train(sets: list[str], **options):
    cfg, ds, manifest, norm = _setup(sets)
    return recipe.train(cfg, ds, manifest, norm, **options)


def _largest_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)


class Epochs:
    def __init__(self, fail_at: int | None = None):
        self.seen, self.fail_at = [], fail_at

    def on_epoch_end(self, epoch, metrics):
        self.seen.append(epoch)
        if epoch == self.fail_at:
            raise RuntimeError(f"stopped after epoch {epoch}")


class Metrics:
    def __init__(self):
        self.steps = []

    def log_metrics(self, metrics, step):
        self.steps.append(step)

    def log_artifact(self, path):
        pass


@pytest.mark.parametrize("mode", ["minibatch", "batch"])  # batch: full-batch GD, chunks accumulated, one update
def test_two_processes_train_the_same_model_as_one(mode):
    one_model, one = _train([*EXACT, f"training.mode={mode}", "training.devices=1"])
    epochs, logger = Epochs(), Metrics()
    two_model, two = _train([*EXACT, f"training.mode={mode}", "training.devices=2"], callbacks=[epochs],
                            logger=logger)
    assert _largest_difference(one_model, two_model) < 1e-5
    assert len(two.lrs) == len(one.lrs) and two.updates_per_epoch == one.updates_per_epoch
    for a, b in zip(one.history, two.history, strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert epochs.seen == logger.steps == [1, 2, 3, 4]  # rank 0's reports reached this process, once each


def test_batch_norm_and_dropout_per_rank_still_train_about_as_well():
    sets = ["training.epochs=6", "training.early_stopping.enabled=false"]
    _, one = _train([*sets, "training.devices=1"])
    _, two = _train([*sets, "training.devices=2"])
    assert two.history[-1]["val_accuracy"] > 0.9
    assert two.history[-1]["val_accuracy"] == pytest.approx(one.history[-1]["val_accuracy"], abs=0.05)


def test_a_stopped_data_parallel_training_continues_from_its_checkpoint(tmp_path):
    sets = ["model.name=mlp", "model.hidden=[64]", "model.dropout=0.3", "training.epochs=15",
            "training.early_stopping.enabled=false", "training.devices=2"]  # dropout: each rank's RNG is restored
    straight, _ = _train(sets)
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(RuntimeError, match="stopped after epoch 2"):
        _train(sets, callbacks=[Epochs(fail_at=2)], checkpoint=checkpoint, resume=True)
    # rank 0 reports an epoch before it writes its checkpoint, and runs on while the report travels
    saved = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= saved < 15
    epochs, logger = Epochs(), Metrics()
    resumed, fit = _train(sets, checkpoint=checkpoint, resume=True, callbacks=[epochs], logger=logger)
    remaining = list(range(saved + 1, 16))
    assert epochs.seen == logger.steps == remaining, f"trained after resuming from epoch {saved}: {epochs.seen}"
    assert [h["epoch"] for h in fit.history] == list(range(1, 16)) and fit.stopped_epoch == 15
    assert len(fit.lrs) == 15 * fit.updates_per_epoch  # the updates of the saved epochs, then of the remaining ones
    assert _largest_difference(straight, resumed) == 0


class KillsRank1:
    """At the end of epoch 2, SIGKILL to rank 1's process: no exception, no clean-up of its own."""

    def on_epoch_end(self, epoch, metrics):
        if epoch == 2:
            [rank] = [p for p in multiprocessing.active_children() if p.name == "trainlib-rank-1"]
            os.kill(rank.pid, signal.SIGKILL)


def test_a_rank_killed_outright_fails_as_unexpected_and_the_retry_ends_at_the_uninterrupted_weights(tmp_path):
    """The train task retries an unexpected failure (RankFailed, not bad input) from the checkpoint: a rank killed by
    SIGKILL mid-training, then the retry, end where the uninterrupted training ends."""
    sets = ["model.name=mlp", "model.hidden=[64]", "model.dropout=0.3", "training.epochs=8",
            "training.early_stopping.enabled=false", "training.devices=2"]
    straight, _ = _train(sets)
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(distributed.RankFailed, match=r"^data-parallel training: rank 1 was killed \(SIGKILL\)$"):
        _train(sets, callbacks=[KillsRank1()], checkpoint=checkpoint, resume=True)
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("trainlib-rank")]
    saved = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= saved < 8
    resumed, fit = _train(sets, checkpoint=checkpoint, resume=True)
    assert [h["epoch"] for h in fit.history] == list(range(1, 9))
    assert _largest_difference(straight, resumed) == 0


def test_a_failing_rank_fails_the_training_with_its_error():
    with pytest.raises(TrainingError, match=r"became NaN or infinite in epoch 1 at batch \d+"):
        _train(["model.name=mlp", "optimizer.name=sgd", "optimizer.lr=1e12", "training.devices=2",
                "training.epochs=2"])


def _fails_on_rank_1(shard, relay):
    if shard.rank == 1:
        raise RuntimeError("rank 1 lost its device")
    dist.barrier()  # rank 0 waits for rank 1 for ever: the caller must stop it
    return {}


def test_one_failing_rank_fails_the_training_without_leaving_the_others_waiting():
    with pytest.raises(distributed.RankFailed, match="rank failed: RuntimeError: rank 1 lost its device") as caught:
        distributed.run(2, torch.device("cpu"), _fails_on_rank_1, ())
    assert not isinstance(caught.value, TrainingError)  # unexpected: the train task's retry takes it
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("trainlib-rank")]


def test_a_checkpoint_continues_only_on_as_many_devices(tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    _train([*EXACT, "training.epochs=1", "training.devices=2"], checkpoint=checkpoint)
    with pytest.raises(ConfigError, match="written by a training on 2 device"):
        _train([*EXACT, "training.epochs=2"], checkpoint=checkpoint, resume=True)


@pytest.mark.parametrize("sets, message", [
    (["training.mode=stochastic"], "training.mode stochastic trains on one sample per update"),
    (["training.batch_size=2", "training.devices=3"], "training.batch_size 2 leaves some of them no sample"),
    (["transfer.source=model.pt"], "transfer learning changes which layers train"),
    (["training.device=cuda"], "CUDA is not available here"),
])
def test_what_data_parallel_training_refuses(sets, message):
    with pytest.raises(ConfigError, match=message):
        cfg, ds, manifest, norm = _setup(["training.devices=2", *sets])
        recipe.train(cfg, ds, manifest, norm)


def test_the_pipeline_trains_on_two_processes_and_tracks_every_epoch(prefect_api):
    from flows.training import training_pipeline

    cfg = load_config(None, ["name=ddp", "training.devices=2", "training.epochs=3",
                             "training.early_stopping.enabled=false"])
    summary = training_pipeline(cfg).json()
    assert summary["metrics"]["test_accuracy"] > 0.85 and summary["version"] == 1
    client = MlflowClient()
    assert [m.step for m in client.get_metric_history(summary["run_id"], "val_loss")] == [1, 2, 3]
    assert client.get_run(summary["run_id"]).data.params["training.devices"] == "2"
