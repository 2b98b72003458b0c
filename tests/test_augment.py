"""Augmentation: per-sample random parameters, on batches, shapes and labels kept."""

import pytest
import torch

from trainlib import plots
from trainlib.config import AugmentConfig
from trainlib.data.augment import Augmenter
from trainlib.data.kinds import IMAGE_KEYS

TRANSFORMS = {"rotation": 30, "scale": (0.7, 1.3), "translate": 0.2, "hflip": 0.5, "vflip": 0.5,
              "brightness": 0.5, "contrast": 0.5, "saturation": 0.8, "hue": 0.3, "noise": 0.1, "erasing": 0.5}


def _batch(n=64, c=3, h=12, w=16):
    g = torch.Generator().manual_seed(0)
    base = torch.rand(c, h, w, generator=g) * 255
    return base.expand(n, c, h, w).clone()  # the same image n times: differences come from the augmenter


def test_every_config_transform_is_covered():  # the policies: tests/test_policies.py
    images = set(AugmentConfig().transforms()) & IMAGE_KEYS  # the signals': tests/test_signals.py
    assert set(TRANSFORMS) == images - {"policy", "policy_ops", "policy_magnitude"}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_each_transform_changes_pixels_per_sample_and_keeps_shape(name):
    x = _batch()
    out = Augmenter(**{name: TRANSFORMS[name]}, value_max=255)(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.float32
    changed = (out - x).abs().flatten(1).amax(1) > 1e-3
    assert changed.any(), f"{name} changed nothing"
    distinct = {tuple(row.tolist()) for row in out.flatten(1)[:, ::7].round(decimals=3)}
    outcomes = 2 if name in ("hflip", "vflip") else 10  # a flip has two outcomes: both must occur
    assert len(distinct) >= outcomes, f"{name} drew the same parameters for every sample"
    assert out.min() >= -1e-4 and out.max() <= 255 + 1e-3


def test_flips_are_exact_mirrors():
    x = _batch(4)
    assert torch.allclose(Augmenter(hflip=1.0, value_max=255)(x), x.flip(-1), atol=1e-3)
    assert torch.allclose(Augmenter(vflip=1.0, value_max=255)(x), x.flip(-2), atol=1e-3)


def test_identity_when_nothing_is_on():
    aug = Augmenter(value_max=16)
    x = _batch(3, 1, 8, 8)
    assert not aug.active and torch.equal(aug(x), x)


def test_same_generator_seed_same_result():
    x, aug = _batch(), Augmenter(**TRANSFORMS, value_max=255)
    a = aug(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(6)))


def test_expand_keeps_labels_and_adds_copies(digits):
    x, y = digits.inputs[:100], digits.labels[:100]
    big_x, big_y = Augmenter(rotation=15, value_max=16).expand(x, y, 3, torch.Generator().manual_seed(0))
    assert big_x.shape == (400, 1, 8, 8) and torch.equal(big_y, y.repeat(4))
    assert torch.equal(big_x[:100], x.float()) and not torch.equal(big_x[100:200], x.float())


def test_preview_grid_renders(digits, tmp_path):
    aug = Augmenter(rotation=20, erasing=0.5, value_max=16)
    grid = aug.preview(digits.inputs, digits.labels, samples=10, rows=3, generator=torch.Generator().manual_seed(0))
    assert grid.shape == (4, 10, 1, 8, 8)
    # originals first, one per class
    assert torch.equal(grid[0], digits.inputs[[int(torch.nonzero(digits.labels == c)[0]) for c in range(10)]].float())
    plots.augmentation_grid(grid, 16).savefig(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 1000
