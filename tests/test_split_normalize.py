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
    stats = normalize.fit("standardize", train, image=True)
    assert stats.moments.max[1] < 100 + 1e-4
    assert stats == normalize.fit("standardize", iter([train[:20], train[20:]]), image=True)
    assert stats != normalize.fit("standardize", torch.cat([train, val]), image=True)


@pytest.mark.parametrize("method", sorted(NORMALIZERS))
def test_each_method_maps_train_to_its_promise(method):
    train = _images()
    y = normalize.fit(method, train, image=True).module()(train)
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
    stats = normalize.fit("minmax", x, image=False)
    y = stats.module()(x)
    assert torch.allclose(y[:, 0], torch.tensor([0.0, 0.5, 1.0])) and torch.equal(y[:, 1], torch.zeros(3))


def test_stats_json_round_trip_and_raw_uint8_inputs(tmp_path):
    stats = normalize.fit("standardize", torch.randint(0, 255, (10, 3, 4, 4)).to(torch.uint8), image=True)
    stats.save(tmp_path / "n.json")
    back = normalize.NormStats.load(tmp_path / "n.json")
    assert back == stats and json.loads(stats.to_json())["method"] == "standardize"
    raw = torch.randint(0, 255, (2, 3, 4, 4), dtype=torch.uint8)
    assert back.module()(raw).dtype == torch.float32
