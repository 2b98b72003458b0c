"""The kinds of data, by a sample's dimensions: images (C, H, W), signals (C, L), tables (F,). Each kind carries
what differs between them: its words, the augment keys that apply to it, its augmenter and its preview plot."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainlib.data.augment import Augmenter
from trainlib.data.signal_augment import SignalAugmenter
from trainlib.errors import ConfigError

MIXES = frozenset({"mixup", "mix_prob", "mix_switch"})  # batch mixing: any kind of input


@dataclass(frozen=True)
class Kind:
    name: str  # "images"
    shape: str  # "(C, H, W)"
    augment_keys: frozenset[str]  # the augment keys that apply (besides MIXES and expand)
    augmenter: Callable[..., Augmenter | SignalAugmenter] | None  # (**transforms, value_max=...) -> an augmenter
    picture: Callable | None  # (augmenter or None, x, y, value_max, generator) -> the preview figure

    def describe(self, shape=None) -> str:
        """`signals (C, L)`, or with a shape `signals (C, L) of shape (1, 128)`."""
        return f"{self.name} {self.shape}" + (f" of shape {tuple(shape)}" if shape is not None else "")

    def check_augment(self, keys, where: str) -> None:
        """ConfigError naming the first of the augment `keys` set (the ones not at their defaults) that this kind
        does not take."""
        for key in keys:
            if key in self.augment_keys or key in MIXES or key == "expand":
                continue
            takers = [k.name for k in KINDS.values() if key in k.augment_keys]
            takes = ", ".join(sorted(self.augment_keys)) or "only mixup"
            raise ConfigError(f"augment.{key}: applies to {' and '.join(takers)}; {where} is {self.describe()}, "
                              f"which takes {takes}")

    def preview(self, aug, x: torch.Tensor, y: torch.Tensor, value_max: float | None, seed: int):
        """A figure of some train samples and augmented versions of them (originals only when `aug` is None),
        or None for a kind with no picture (tables)."""
        if self.picture is None:
            return None
        return self.picture(aug, x, y, value_max, torch.Generator().manual_seed(seed))


def _image_grid(aug, x, y, value_max, generator):
    from trainlib import plots

    shown = aug or Augmenter(value_max=value_max)
    return plots.augmentation_grid(shown.preview(x, y, rows=4 if aug else 0, generator=generator), value_max)


def _signal_traces(aug, x, y, value_max, generator):
    from trainlib import plots

    shown = aug or SignalAugmenter()
    return plots.signal_traces(shown.preview(x, y, rows=3 if aug else 0, generator=generator))


IMAGE_KEYS = frozenset({"rotation", "scale", "translate", "hflip", "vflip", "brightness", "contrast", "saturation",
                        "hue", "noise", "erasing", "policy", "policy_ops", "policy_magnitude", "cutmix"})
SIGNAL_KEYS = frozenset({"translate", "scale", "hflip", "wrap", "amplitude", "noise", "erasing"})

KINDS: dict[int, Kind] = {
    3: Kind("images", "(C, H, W)", IMAGE_KEYS, Augmenter, _image_grid),
    2: Kind("signals", "(C, L)", SIGNAL_KEYS, SignalAugmenter, _signal_traces),
    1: Kind("a table", "(F,)", frozenset(), None, None),
}


def kind(dims: int) -> Kind:
    """The kind of data whose samples have `dims` dimensions."""
    return KINDS[dims]
