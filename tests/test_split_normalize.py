"""Split (stratified, disjoint, deterministic) and normalization (train-only statistics)."""

import json

import numpy as np
import pytest
import torch

from trainlib.data import normalize
from trainlib.data.normalize import NORMALIZERS
from trainlib.data.split import indices, load_manifest, save_manifest, split_manifest
from trainlib.errors import DataError


def test_split_is_stratified_disjoint_and_complete(digits):
    labels = digits.labels.numpy()
    m = split_manifest(labels, 0.7, 0.15, 0.15, stratify=True, seed=0)
    parts = {s: set(indices(m, s)) for s in ("train", "val", "test")}
    assert not (parts["train"] & parts["val"] or parts["train"] & parts["test"] or parts["val"] & parts["test"])
    assert set().union(*parts.values()) == set(range(len(labels)))
    for c in range(10):
        n = (labels == c).sum()
        for s, ratio in (("val", 0.15), ("test", 0.15)):
            count = (labels[list(parts[s])] == c).sum()
            assert abs(count - n * ratio) <= 1, (c, s, count)
    assert (m["label"].to_numpy() == labels).all()


def test_split_is_deterministic_per_seed(digits):
    labels = digits.labels.numpy()
    a, b = split_manifest(labels, seed=3), split_manifest(labels, seed=3)
    assert a.equals(b)
    assert not a["split"].equals(split_manifest(labels, seed=4)["split"])


def test_unstratified_split_sizes():
    m = split_manifest(np.array([0] * 90 + [1] * 10), 0.8, 0.1, 0.1, stratify=False, seed=0)
    assert m["split"].value_counts().to_dict() == {"train": 80, "val": 10, "test": 10}


def test_manifest_round_trip(tmp_path, digits):
    m = split_manifest(digits.labels.numpy())
    save_manifest(m, tmp_path / "m.csv")
    assert load_manifest(tmp_path / "m.csv").equals(m)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a split manifest"):
        load_manifest(tmp_path / "bad.csv")


def test_too_few_samples_per_class_for_stratified_split():
    labels = np.array([0] * 20 + [1] * 2)
    with pytest.raises(DataError, match="class 'b' has 2 samples: too few for a stratified split into train/val/test"):
        split_manifest(labels, classes=["a", "b"])


def _images(seed=0, n=50):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.rand(n, 8, 8, generator=g) * 5 + 2, torch.rand(n, 8, 8, generator=g) * 100], 1)


def test_statistics_come_from_train_only():
    train = _images()
    val = _images(1) * 1000  # wildly different: must not matter
    stats = normalize.fit("standardize", train, dims=3)
    assert stats.moments.max[1] < 100 + 1e-4
    assert stats == normalize.fit("standardize", iter([train[:20], train[20:]]), dims=3)
    assert stats != normalize.fit("standardize", torch.cat([train, val]), dims=3)


@pytest.mark.parametrize("method", sorted(NORMALIZERS))
def test_each_method_maps_train_to_its_promise(method):
    train = _images()
    y = normalize.fit(method, train, dims=3).module()(train)
    per_channel = y.transpose(0, 1).reshape(2, -1)
    if method == "none":
        assert torch.equal(y, train)
    elif method == "minmax":
        assert torch.allclose(per_channel.min(1).values, torch.zeros(2), atol=1e-6)
        assert torch.allclose(per_channel.max(1).values, torch.ones(2), atol=1e-6)
    elif method == "symmetric":
        assert torch.allclose(per_channel.min(1).values, -torch.ones(2), atol=1e-6)
        assert torch.allclose(per_channel.max(1).values, torch.ones(2), atol=1e-6)
    else:
        assert torch.allclose(per_channel.mean(1), torch.zeros(2), atol=1e-5)
        assert torch.allclose(per_channel.std(1, unbiased=False), torch.ones(2), atol=1e-4)


def test_tabular_is_per_feature_and_constant_features_stay_finite():
    x = torch.tensor([[1.0, 5.0, 10.0], [3.0, 5.0, 30.0], [5.0, 5.0, 20.0]])
    stats = normalize.fit("minmax", x, dims=1)
    y = stats.module()(x)
    assert torch.allclose(y[:, 0], torch.tensor([0.0, 0.5, 1.0])) and torch.equal(y[:, 1], torch.zeros(3))


def test_stats_json_round_trip_and_raw_uint8_inputs(tmp_path):
    stats = normalize.fit("standardize", torch.randint(0, 255, (10, 3, 4, 4)).to(torch.uint8), dims=3)
    stats.save(tmp_path / "n.json")
    back = normalize.NormStats.load(tmp_path / "n.json")
    assert back == stats and json.loads(stats.to_json())["method"] == "standardize"
    raw = torch.randint(0, 255, (2, 3, 4, 4), dtype=torch.uint8)
    assert back.module()(raw).dtype == torch.float32


def test_label_noise_flips_that_fraction_of_train_labels_only(digits):
    from trainlib import recipe
    from trainlib.config import SplitConfig

    clean = recipe.split(digits, SplitConfig(seed=4))
    noisy = recipe.split(digits, SplitConfig(seed=4), label_noise=0.3)
    assert (noisy[["index", "split"]] == clean[["index", "split"]]).all().all()  # the split itself is unchanged
    assert (noisy["clean_label"] == clean["label"]).all()
    flipped = noisy["label"] != noisy["clean_label"]
    train = noisy["split"] == "train"
    assert not flipped[~train].any()  # val and test labels are never touched
    assert flipped[train].sum() == round(0.3 * train.sum())  # the fraction asked for, every one another class
    assert noisy["label"].between(0, len(digits.classes) - 1).all()
    again = recipe.split(digits, SplitConfig(seed=4), label_noise=0.3)
    other = recipe.split(digits, SplitConfig(seed=5), label_noise=0.3)
    assert (again["label"] == noisy["label"]).all()  # the same seed flips the same rows to the same classes
    assert set(np.flatnonzero(flipped)) != set(np.flatnonzero(other["label"] != other["clean_label"]))
    # what training sees: the flipped train labels; validation and test: the true ones
    train_part, val_part = recipe.part(digits, noisy, "train"), recipe.part(digits, noisy, "val")
    assert (train_part.labels.numpy() == noisy.loc[train, "label"].to_numpy()).all()
    assert (val_part.labels.numpy() == digits.labels.numpy()[indices(noisy, "val")]).all()
    assert recipe.labelled(digits, clean) is digits  # no noise: the dataset itself


def test_a_noisy_manifest_round_trips(tmp_path, digits):
    from trainlib import recipe
    from trainlib.config import SplitConfig

    noisy = recipe.split(digits, SplitConfig(), label_noise=0.2)
    save_manifest(noisy, tmp_path / "m.csv")
    back = load_manifest(tmp_path / "m.csv")
    assert list(back.columns) == ["index", "label", "split", "clean_label"]
    assert (back["label"] == noisy["label"]).all()


def test_imbalance_leaves_a_long_tail_of_train_samples_and_balanced_val_test(digits):
    labels = digits.labels.numpy()
    flat = split_manifest(labels, seed=2)
    tail = split_manifest(labels, seed=2, imbalance=20)
    kept_rows = tail["split"] != "unused"
    assert (tail.loc[kept_rows, "split"].astype(str) == flat.loc[kept_rows, "split"].astype(str)).all()
    for s in ("val", "test"):  # untouched
        assert (indices(tail, s) == indices(flat, s)).all()
    full = np.bincount(labels[indices(flat, "train")])
    kept = np.bincount(labels[indices(tail, "train")], minlength=10)
    expected = [max(1, round(n * 20 ** (-i / 9))) for i, n in enumerate(full)]
    assert kept.tolist() == expected and kept[0] == full[0] and kept[9] == round(full[9] / 20)
