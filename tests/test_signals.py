"""1-D signals: NumPy and table sources, per-channel normalization, the signal augmentations, the waveform set."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from trainlib import recipe
from trainlib.config import AugmentConfig, load_config
from trainlib.data import normalize, signals, sources
from trainlib.data.kinds import SIGNAL_KEYS, kind
from trainlib.data.signal_augment import SignalAugmenter
from trainlib.errors import DataError


def _npz(path, x, y, **more):
    np.savez(path, x=x, y=y, **more)
    return path


# ---------------------------------------------------------------- sources


def test_numpy_reads_n_l_and_n_c_l_arrays_in_order(tmp_path):
    x = np.arange(6 * 5, dtype=np.float64).reshape(6, 5)
    ds = sources.load("numpy", path=_npz(tmp_path / "a.npz", x, np.array(["b", "a", "b", "a", "c", "c"])))
    assert ds.sample_shape == (1, 5) and ds.dims == 2 and ds.inputs.dtype == torch.float32
    assert torch.equal(ds.inputs[:, 0], torch.tensor(x, dtype=torch.float32))
    assert ds.classes == ["a", "b", "c"] and ds.labels.tolist() == [1, 0, 1, 0, 2, 2]
    x3 = np.random.default_rng(0).normal(size=(6, 3, 7)).astype(np.float32)
    np.save(tmp_path / "x.npy", x3)
    np.save(tmp_path / "y.npy", np.arange(6) % 2)
    ds3 = sources.load("numpy", path=tmp_path / "x.npy", labels=tmp_path / "y.npy")
    assert ds3.sample_shape == (3, 7) and torch.equal(ds3.inputs, torch.from_numpy(x3))
    named = sources.load("numpy", path=_npz(tmp_path / "n.npz", x3, np.zeros(6), target=np.arange(6) % 2),
                         target="target")  # data.target names the labels array
    assert named.labels.tolist() == [0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: _npz(p / "a.npz", np.zeros((4, 3, 2, 2)), np.arange(4) % 2),
     r"signals must be an \(N, L\) or \(N, C, L\) array; this one has shape \(4, 3, 2, 2\)"),
    (lambda p: _npz(p / "a.npz", np.zeros((4, 8)), np.arange(3)), "4 signals but labels of shape \\(3,\\)"),
    (lambda p: _npz(p / "a.npz", np.array([[0.0, np.nan]] * 4), np.arange(4) % 2),
     "4 signals hold NaN or infinite values \\(the first: row 0\\)"),
    (lambda p: (np.savez(p / "a.npz", x=np.zeros((4, 8))), p / "a.npz")[1],
     "has no labels array named 'label' \\(data.target\\) or y, labels, label; its arrays: x"),
    (lambda p: (np.savez(p / "a.npz", a=np.zeros((4, 8)), b=np.zeros((4, 8)), y=np.arange(4) % 2), p / "a.npz")[1],
     "which array holds the signals\\? name it one of x, inputs, signals \\(its arrays: a, b, y\\)"),
    (lambda p: (np.save(p / "a.npy", np.zeros((4, 8))), p / "a.npy")[1],
     "is an .npy of signals: give its labels as data.labels"),
    (lambda p: ((p / "a.npz").write_bytes(b"not a zip"), p / "a.npz")[1], "numpy: cannot read"),
    (lambda p: ((p / "a.txt").write_text("1,2"), p / "a.txt")[1], "neither an .npz nor an .npy file"),
])
def test_bad_numpy_files_give_one_readable_error(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        sources.load("numpy", path=make(tmp_path))


def _table(tmp_path, columns):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(12, len(columns))), columns=columns)
    frame["label"] = np.arange(12) % 2
    frame.to_csv(tmp_path / "t.csv", index=False)
    return frame


def test_a_table_read_as_signals_keeps_the_columns_order_and_folds_channels(tmp_path):
    frame = _table(tmp_path, ["t2", "extra", "t0", "t1", "t3"])  # a permutation, and a column that is no step
    ds = sources.load("csv", path=tmp_path / "t.csv", features=["t0", "t1", "t2", "t3"], signal=True)
    assert ds.sample_shape == (1, 4)
    assert np.allclose(ds.inputs[:, 0].numpy(), frame[["t0", "t1", "t2", "t3"]].to_numpy())
    pattern = sources.load("csv", path=tmp_path / "t.csv", features="t*", signal=True, channels=2)
    assert pattern.sample_shape == (2, 2) and pattern.feature_names == ["t2", "t0", "t1", "t3"]  # the table's order
    assert np.allclose(pattern.inputs.numpy(), frame[["t2", "t0", "t1", "t3"]].to_numpy().reshape(12, 2, 2))
    with pytest.raises(DataError, match=r"csv: 4 feature columns \(t2 .. t3\) do not fold into data.channels=3"):
        sources.load("csv", path=tmp_path / "t.csv", features="t*", signal=True, channels=3)
    with pytest.raises(DataError, match="no column matches data.features 'x\\*'; columns are: t2, extra"):
        sources.load("csv", path=tmp_path / "t.csv", features="x*", signal=True)


def test_a_signal_model_on_a_table_needs_no_other_setting(tmp_path):
    _table(tmp_path, ["a", "b", "c", "d", "e", "f"])
    cfg = load_config(None, ["data.source=csv", f"data.path={tmp_path / 't.csv'}", "model.name=cnn1d"])
    assert cfg.data_dims == 2
    assert recipe.ingest(cfg.data, signal=cfg.data_dims == 2).sample_shape == (1, 6)
    mlp = load_config(None, ["data.source=csv", f"data.path={tmp_path / 't.csv'}", "model.name=mlp"])
    assert mlp.data_dims == 1  # the mlp keeps a table a table (per-feature normalization)
    folded = load_config(None, ["data.source=csv", f"data.path={tmp_path / 't.csv'}", "model.name=mlp",
                                "data.channels=2"])
    assert folded.data_dims == 2 and recipe.ingest(folded.data, signal=True).sample_shape == (2, 3)


def test_signal_datasets_save_and_load_with_their_shape(tmp_path):
    ds = sources.load("waveforms")
    sources.save_dataset(ds, tmp_path / "d.pt")
    back = sources.load_dataset(tmp_path / "d.pt")
    assert back.sample_shape == (1, signals.WAVE_LENGTH) and torch.equal(back.inputs, ds.inputs)
    assert back.digest == ds.digest and back.classes == list(signals.WAVE_CLASSES)


def test_the_waveform_set_is_the_same_every_time_and_balanced(tmp_path):
    a, b = signals.waveforms(per_class=20), signals.waveforms(per_class=20)
    assert a.shape == (100, 1, signals.WAVE_LENGTH) and a.dtype == np.float32 and np.array_equal(a, b)
    assert np.bincount(signals.waveform_labels(20)).tolist() == [20] * 5
    npz, csv = signals.write_waveforms(tmp_path / "w.npz", 20), signals.write_waveforms(tmp_path / "w.csv", 20)
    from_npz, from_csv = sources.load("numpy", path=npz), sources.load("csv", path=csv, signal=True)
    assert torch.equal(from_npz.inputs, torch.from_numpy(a)) and from_npz.classes == sorted(signals.WAVE_CLASSES)
    assert torch.allclose(from_csv.inputs, from_npz.inputs, atol=1e-4) and torch.equal(from_csv.labels, from_npz.labels)


# ---------------------------------------------------------------- normalization


def test_signal_statistics_are_per_channel_and_from_the_train_split_only():
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(0, 1, (200, 16)), rng.normal(100, 5, (200, 16))], 1).astype(np.float32)
    x[140:] += 50  # val and test rows are shifted: statistics from them would show
    ds = sources._signals(x, np.arange(200) % 2)
    manifest = pd.DataFrame({"index": range(200), "split": ["train"] * 140 + ["val"] * 30 + ["test"] * 30,
                             "label": np.arange(200) % 2})
    stats = recipe.fit_normalizer(ds, manifest, load_config(None, []).normalize)
    assert stats.dims == 2 and len(stats.shift) == 2
    assert np.allclose(stats.shift, x[:140].mean((0, 2)), atol=1e-3)
    out = stats.module()(torch.from_numpy(x[:140]))
    assert out.shape == (140, 2, 16) and np.allclose(out.mean((0, 2)).numpy(), 0, atol=1e-4)
    assert np.allclose(out.std((0, 2), unbiased=False).numpy(), 1, atol=1e-3)


def test_models_saved_before_signals_read_their_normalization():
    old = json.dumps({"method": "none", "shift": [0.0], "scale": [1.0], "image": True,
                      "moments": {"mean": [0.0], "std": [1.0], "min": [0.0], "max": [1.0]}})
    assert normalize.NormStats.from_json(old).dims == 3
    assert normalize.NormStats.from_json(old.replace('"image": true', '"image": false')).dims == 1


# ---------------------------------------------------------------- augmentation

TRANSFORMS = [{"translate": 0.2}, {"translate": 0.2, "wrap": True}, {"scale": (0.8, 1.25)}, {"hflip": 0.5},
              {"amplitude": 0.3}, {"noise": 0.2}, {"erasing": 1.0}]


def test_every_signal_transform_of_the_config_is_covered():
    covered = {key for options in TRANSFORMS for key in options}
    assert covered == set(AugmentConfig().transforms()) & SIGNAL_KEYS == SIGNAL_KEYS


@pytest.mark.parametrize("options", TRANSFORMS, ids=lambda o: "+".join(o))
def test_each_signal_augmentation_keeps_shape_and_dtype_and_repeats_for_a_seed(options):
    x = torch.randn(16, 3, 40) * 5 + 2
    aug = SignalAugmenter(**options)
    a = aug(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(4))) and not torch.equal(a, x)


def test_a_shift_moves_a_spike_by_the_drawn_amount():
    length, at = 64, 20
    x = torch.zeros(32, 1, length)
    x[:, 0, at] = 1.0
    aug = SignalAugmenter(translate=0.25)
    drawn = aug.draw(32, torch.Generator().manual_seed(7))["shift"] * length  # in steps, +-16
    out = aug(x, torch.Generator().manual_seed(7))
    where = (out[:, 0] * torch.arange(length)).sum(1) / out[:, 0].sum(1)  # the spike's centre after interpolation
    assert torch.allclose(where, at + drawn, atol=1e-4)
    assert torch.allclose(out.sum((1, 2)), torch.ones(32), atol=1e-5)  # moved, not lost (it stays inside)
    assert drawn.abs().max() <= 16 and drawn.std() > 4


def test_shifts_past_the_end_pad_with_zeros_or_wrap_around():
    x = torch.arange(1.0, 9.0).view(1, 1, 8)
    flat = {"stretch": torch.ones(1), "flip": torch.ones(1)}
    padded = SignalAugmenter().warp(x, shift=torch.tensor([0.25]), **flat)  # 2 steps later
    assert padded[0, 0].tolist() == [0, 0, 1, 2, 3, 4, 5, 6]
    wrapped = SignalAugmenter(wrap=True).warp(x, shift=torch.tensor([0.25]), **flat)
    assert wrapped[0, 0].tolist() == [7, 8, 1, 2, 3, 4, 5, 6]
    flipped = SignalAugmenter().warp(x, shift=torch.zeros(1), stretch=torch.ones(1), flip=-torch.ones(1))
    assert flipped[0, 0].tolist() == list(range(8, 0, -1))
    slow = SignalAugmenter().warp(torch.arange(9.0).view(1, 1, 9), shift=torch.zeros(1), stretch=torch.tensor([2.0]),
                                  flip=torch.ones(1))  # twice as slow about the middle (step 4)
    assert slow[0, 0].tolist() == [2, 2.5, 3, 3.5, 4, 4.5, 5, 5.5, 6]


def test_amplitude_noise_and_erasing_do_what_they_say():
    x = torch.randn(400, 2, 50)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    factor = SignalAugmenter(amplitude=0.3)(x, g()) / x
    per_sample = factor[:, 0, 0]
    assert torch.allclose(factor, per_sample.view(-1, 1, 1).expand_as(factor), atol=1e-4)  # one factor a sample
    assert per_sample.min() >= 0.7 - 1e-6 and per_sample.max() <= 1.3 + 1e-6 and per_sample.std() > 0.1
    noise = SignalAugmenter(noise=0.5)(x * 10, g()) - x * 10
    assert noise.std().item() == pytest.approx(5.0, rel=0.05)  # 0.5 of the samples' own std (10)
    erased = SignalAugmenter(erasing=1.0)(x + 100, g())
    zeros = (erased == 0).all(1).sum(1).float() / 50  # erased fraction of each sample, every channel alike
    assert ((erased == 0).any(1) == (erased == 0).all(1)).all()
    assert zeros.min() >= 0.01 and zeros.max() <= 0.34


def test_the_signal_preview_is_a_plot_of_traces(tmp_path):
    x, y = torch.randn(20, 2, 30), torch.arange(20) % 4
    fig = kind(2).preview(SignalAugmenter(translate=0.1), x, y, None, seed=0)
    fig.savefig(tmp_path / "p.png")
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert (tmp_path / "p.png").stat().st_size > 5000 and len(fig.axes) == 6 and len(lines) == 6 * 4 * 2
    assert kind(1).preview(None, torch.randn(4, 3), torch.arange(4), None, seed=0) is None


# ---------------------------------------------------------------- transfer


def test_a_cnn1d_trained_on_some_waveforms_transfers_to_the_others(tmp_path):
    from trainlib import transfer
    from trainlib.models import save_model

    common = ["data.source=waveforms", "model.name=cnn1d", "model.channels=[8,16]", "training.epochs=2"]
    source = recipe.run(load_config(None, [*common, "data.classes=[sine,square,triangle]"]))
    save_model(tmp_path / "source.pt", source.model, classes=source.dataset.classes)
    cfg = load_config(None, [*common, "data.classes=[sawtooth,chirp]", "split.shots=20", "training.batch_size=16",
                             "transfer.strategy=feature_extraction", "training.early_stopping.enabled=false"])
    ds = recipe.ingest(cfg.data)
    manifest = recipe.split(ds, cfg.split)
    model, fit = recipe.train(cfg, ds, manifest, recipe.fit_normalizer(ds, manifest, cfg.normalize),
                              source=tmp_path / "source.pt")
    top = {id(p) for p in transfer.head(model).parameters()}
    kept = {n: p for n, p in model.net.named_parameters() if id(p) not in top}
    assert kept and all(torch.equal(p, source.model.net.get_parameter(n)) for n, p in kept.items())
    assert transfer.head(model).out_features == 2 and len(fit.history) == 2
