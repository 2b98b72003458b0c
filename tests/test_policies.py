"""Augmentation policies (trainlib.data.policies): every batched per-sample operation against torchvision's
per-image one, and each policy's shape, dtype, reproducibility and effect."""

import pytest
import torch
import torchvision.transforms.functional as TF

from trainlib.config import load_config
from trainlib.data.augment import Augmenter
from trainlib.data.policies import OPS, POLICIES, apply
from trainlib.errors import ConfigError


def _images(n=6, c=3, h=12, w=10, seed=0) -> torch.Tensor:
    """8-bit levels as floats in [0, 1] (what the 8-bit operations read exactly)."""
    return torch.randint(0, 256, (n, c, h, w), generator=torch.Generator().manual_seed(seed)).float() / 255


def _one(x: torch.Tensor, name: str, magnitudes: list[float]) -> torch.Tensor:
    return apply(x, torch.full((len(x),), OPS.index(name)), torch.tensor(magnitudes, dtype=torch.float32))


@pytest.mark.parametrize("name, reference", [
    ("Brightness", lambda img, m: TF.adjust_brightness(img, 1 + m)),
    ("Color", lambda img, m: TF.adjust_saturation(img, 1 + m)),
    ("Contrast", lambda img, m: TF.adjust_contrast(img, 1 + m)),
    ("Sharpness", lambda img, m: TF.adjust_sharpness(img, 1 + m)),
    ("Solarize", lambda img, m: TF.solarize(img, m)),
    ("AutoContrast", lambda img, m: TF.autocontrast(img)),
    ("Invert", lambda img, m: TF.invert(img)),
])
def test_each_colour_operation_is_torchvisions_per_image(name, reference):
    x = _images()
    magnitudes = [-0.9, -0.3, 0.0, 0.2, 0.5, 0.9] if name != "Solarize" else [0.0, 0.2, 0.4, 0.5, 0.8, 1.0]
    out = _one(x, name, magnitudes)
    for i, m in enumerate(magnitudes):  # each sample at its own magnitude, in one call
        assert torch.allclose(out[i], reference(x[i], m), atol=1e-5), (name, m)


@pytest.mark.parametrize("name, reference", [
    ("Posterize", lambda img, bits: TF.posterize(img, int(bits))),
    ("Equalize", lambda img, _: TF.equalize(img)),
])
def test_eight_bit_operations_are_torchvisions_on_uint8(name, reference):
    x = _images()
    x[2] = torch.full_like(x[2], 0.5)  # a flat image: equalize leaves it alone
    bits = [8.0, 6.0, 5.0, 4.0, 3.0, 2.0]
    out = _one(x, name, bits)
    for i, b in enumerate(bits):
        expected = reference((x[i] * 255).round().to(torch.uint8), b).float() / 255
        assert torch.allclose(out[i], expected, atol=1e-6), (name, b)


def test_geometric_operations_move_pixels_as_named():
    x = torch.zeros(4, 1, 9, 9)
    x[:, 0, 4, 6] = 1.0  # one bright pixel, two right of the centre
    out = apply(x, torch.tensor([OPS.index(k) for k in ("TranslateX", "TranslateY", "Rotate", "Identity")]),
                torch.tensor([2.0, -3.0, 90.0, 5.0]))
    assert out[0, 0, 4, 8] == pytest.approx(1.0)  # 2 pixels right
    assert out[1, 0, 1, 6] == pytest.approx(1.0)  # 3 pixels up
    assert torch.allclose(out[2], TF.rotate(x[2], 90.0), atol=1e-5)  # counter-clockwise, as torchvision
    assert torch.equal(out[3], x[3])  # identity ignores its magnitude
    shear = apply(torch.ones(1, 1, 9, 9), torch.tensor([OPS.index("ShearX")]), torch.tensor([0.5]))
    assert shear[0, 0, 4].min() == 1.0 and shear[0, 0, 0, 8] == 0.0 == shear[0, 0, 8, 0]  # the centre row stays


@pytest.mark.parametrize("policy", ["autoaugment", "randaugment", "trivialaugment", "augmix"])
def test_each_policy_keeps_shape_and_dtype_draws_per_sample_and_is_reproducible(policy):
    fn, x = POLICIES[policy], _images(n=64, c=3, h=16, w=16)

    def run(seed):
        return fn(x, torch.Generator().manual_seed(seed), 2, 9)

    a, b, c = run(0), run(0), run(1)
    assert a.shape == x.shape and a.dtype == x.dtype and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    changed = (a != x).flatten(1).any(1)
    assert changed.sum() >= 32  # most samples changed
    if policy in ("autoaugment", "trivialaugment"):  # a draw per sample: samples changed in different ways
        assert len({tuple(d.flatten().tolist()[:5]) for d in (a - x)[changed]}) > 10


def test_a_policy_runs_inside_augmenter_on_raw_units_and_through_the_config():
    x = torch.randint(0, 17, (32, 1, 8, 8)).float()  # digits: 0..16
    aug = Augmenter(policy="trivialaugment", value_max=16.0)
    out = aug(x, torch.Generator().manual_seed(0))
    assert aug.active and out.shape == x.shape and 0 <= out.min() and out.max() <= 16 and not torch.equal(out, x)
    cfg = load_config(None, ["augment.policy=randaugment", "augment.policy_ops=1", "augment.policy_magnitude=20"])
    assert cfg.augment.active and not load_config(None, []).augment.active
    with pytest.raises(ConfigError, match="unknown augmentation policy 'autoaug'"):
        load_config(None, ["augment.policy=autoaug"])
