"""Model builders: name -> function(in_shape, n_classes, **model options) -> nn.Module."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from trainlib.checkpoint import load_checkpoint, save_checkpoint
from trainlib.data.normalize import Normalize, NormStats
from trainlib.errors import ConfigError
from trainlib.registry import Registry


class Dropout(nn.Module):
    """Dropout whose masks come from `generator` (set by the engine per training run) instead of torch's
    global RNG, so runs training in parallel threads stay reproducible; global RNG when unset."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p, self.generator = p, None

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        if self.generator is None:
            return nn.functional.dropout(x, self.p, True)
        keep = torch.rand(x.shape, generator=self.generator, device=x.device) >= self.p
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def mlp(in_shape: Sequence[int], n_classes: int, *, hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0, **_unused) -> nn.Module:
    """Fully connected net on flattened inputs: [Linear, ReLU, Dropout] per hidden size, then Linear."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(in_shape)
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True), Dropout(dropout)]
        width = size
    return nn.Sequential(*layers, nn.Linear(width, n_classes))


def _need_image(name: str, in_shape: Sequence[int]) -> int:
    if len(in_shape) != 3:
        raise ConfigError(f"model.name: {name} needs image inputs (C, H, W); this data has shape "
                          f"{tuple(in_shape)} (use mlp for tabular data)")
    return in_shape[0]


def cnn(in_shape: Sequence[int], n_classes: int, *, channels: Sequence[int] = (32, 64),
        dropout: float = 0.0, **_unused) -> nn.Module:
    """Small conv net for 8x8 to 32x32 images: per width, two 3x3 conv-BN-ReLU and a 2x2 max-pool
    (while the map is at least 2 pixels), then global average pooling, dropout and a linear head."""
    c_in = _need_image("cnn", in_shape)
    side = min(in_shape[1:])
    layers: list[nn.Module] = []
    for width in channels:
        layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                   nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        if side >= 2:
            layers.append(nn.MaxPool2d(2))
            side //= 2
        c_in = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), Dropout(dropout),
                         nn.Linear(c_in, n_classes))


def resnet18(in_shape: Sequence[int], n_classes: int, *, dropout: float = 0.0, **_unused) -> nn.Module:
    """torchvision's ResNet-18 with its stem adapted to small images and any channel count:
    a 3x3 stride-1 first conv and no max-pool; dropout before the classifier."""
    from torchvision.models import resnet18 as tv_resnet18

    channels = _need_image("resnet18", in_shape)
    net = tv_resnet18(weights=None, num_classes=n_classes)
    net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Sequential(Dropout(dropout), nn.Linear(net.fc.in_features, n_classes))
    return net


MODELS = Registry("model", {"mlp": mlp, "cnn": cnn, "resnet18": resnet18})


class Classifier(nn.Module):
    """Normalization followed by the network: takes raw inputs, returns logits. Modules listed in `frozen`
    (by transfer learning) stay in eval mode when the model trains."""

    def __init__(self, normalize: nn.Module, net: nn.Module):
        super().__init__()
        self.normalize, self.net = normalize, net
        self.frozen: list[nn.Module] = []

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def forward(self, x):
        return self.net(self.normalize(x))


def build(name: str, in_shape: Sequence[int], n_classes: int, norm: NormStats | None = None,
          **options) -> Classifier:
    """The named network behind the fitted normalization (a plain float cast when `norm` is None).
    The model keeps the arguments that built it in `.spec`, so it can be saved without pickling code."""
    net = MODELS[name](tuple(in_shape), n_classes, **options)
    model = Classifier(norm.module() if norm else Normalize([0.0], [1.0], image=len(in_shape) == 3), net)
    model.spec = {"name": name, "in_shape": list(in_shape), "n_classes": n_classes,
                  "norm": norm.to_json() if norm else None, "options": options}
    return model


def save_model(path: str | Path, model: Classifier, **extra) -> None:
    """Weights plus the spec that rebuilds the architecture (and any `extra` plain values)."""
    save_checkpoint(path, spec=model.spec, state=model.state_dict(), **extra)


def load_model(path: str | Path) -> tuple[Classifier, dict]:
    """Rebuild a model written by `save_model` (read with weights_only=True); returns (model, file contents)."""
    saved = load_checkpoint(path)
    spec = saved["spec"]
    norm = NormStats.from_json(spec["norm"]) if spec["norm"] else None
    model = build(spec["name"], spec["in_shape"], spec["n_classes"], norm, **spec["options"])
    model.load_state_dict(saved["state"])
    return model.eval(), saved
