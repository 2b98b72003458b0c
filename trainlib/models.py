"""Model builders: name -> function(in_shape, n_classes, **model options) -> nn.Module."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainlib.checkpoint import load_checkpoint, save_checkpoint
from trainlib.data.kinds import kind
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
        raise ConfigError(f"model.name: {name} needs images (C, H, W); this data is "
                          f"{kind(len(in_shape)).describe(in_shape)} (use {_for(len(in_shape))})")
    return in_shape[0]


def _need_signal(name: str, in_shape: Sequence[int]) -> tuple[int, list[nn.Module]]:
    """(channels, the layers in front): a table's F feature columns are read as one signal of length F."""
    if len(in_shape) == 1:
        return 1, [nn.Unflatten(1, (1, in_shape[0]))]
    if len(in_shape) != 2:
        raise ConfigError(f"model.name: {name} needs signals (C, L); this data is "
                          f"{kind(len(in_shape)).describe(in_shape)} (use {_for(len(in_shape))})")
    return in_shape[0], []


def takers(dims: int) -> list[str]:
    """The models that take samples of `dims` dimensions, sorted."""
    return sorted(n for n, a in MODELS.items() if dims in a.dims)


def _for(dims: int) -> str:
    names = takers(dims)
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


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


def cnn1d(in_shape: Sequence[int], n_classes: int, *, channels: Sequence[int] = (32, 64), kernel_size: int = 5,
          dropout: float = 0.0, **_unused) -> nn.Module:
    """Conv net for 1-D signals: per width, a conv1d-BN-ReLU block of `kernel_size` (same length) and a max-pool
    halving the length (while it is at least 2), then global average pooling, dropout and a linear head."""
    c_in, layers = _need_signal("cnn1d", in_shape)
    length = in_shape[-1]
    for width in channels:
        layers += [nn.Conv1d(c_in, width, kernel_size, padding=kernel_size // 2, bias=False), nn.BatchNorm1d(width),
                   nn.ReLU(inplace=True)]
        if length >= 2:
            layers.append(nn.MaxPool1d(2))
            length //= 2
        c_in = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten(), Dropout(dropout), nn.Linear(c_in, n_classes))


class Recurrent(nn.Module):
    """A GRU or LSTM over the time steps of (N, C, L) signals (C features per step); the last step's output of
    the top layer (both directions' when bidirectional) goes through dropout to a linear head."""

    def __init__(self, cell: type[nn.RNNBase], in_shape: Sequence[int], n_classes: int, hidden_size: int, layers: int,
                 bidirectional: bool, dropout: float):
        super().__init__()
        channels, front = _need_signal(cell.__name__.lower(), in_shape)
        self.front = nn.Sequential(*front)
        self.rnn = cell(channels, hidden_size, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.dropout = Dropout(dropout)
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), n_classes)

    def forward(self, x):
        steps = self.front(x).transpose(1, 2)  # (N, L, C)
        # the initial state made from the input (the cell's own would be created on the tracing device, pinning an
        # exported model to it)
        h = steps.new_zeros(self.rnn.num_layers * (2 if self.rnn.bidirectional else 1), steps.shape[0],
                            self.rnn.hidden_size)
        out, _ = self.rnn(steps, (h, h) if isinstance(self.rnn, nn.LSTM) else h)  # (N, L, directions x hidden)
        if self.rnn.bidirectional:  # forward direction at the last step, backward at the first (each has seen all)
            half = self.rnn.hidden_size
            last = torch.cat([out[:, -1, :half], out[:, 0, half:]], 1)
        else:
            last = out[:, -1]
        return self.head(self.dropout(last))


def _recurrent(cell: type[nn.RNNBase]):
    def build(in_shape: Sequence[int], n_classes: int, *, hidden_size: int = 64, layers: int = 1,
              bidirectional: bool = False, dropout: float = 0.0, **_unused) -> nn.Module:
        return Recurrent(cell, in_shape, n_classes, hidden_size, layers, bidirectional, dropout)

    build.__doc__ = f"{cell.__name__} over the signal's time steps: `hidden_size` units, `layers` stacked, " \
                    "optionally bidirectional; a linear head on the last step."
    return build


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


@dataclass(frozen=True)
class Architecture:
    build: Callable[..., nn.Module]  # (in_shape, n_classes, **model options) -> the network
    dims: tuple[int, ...]  # the sample dimensions it takes: 1 a table (F,), 2 signals (C, L), 3 images (C, H, W)

    @property
    def signal(self) -> bool:
        """Reads a table's feature columns as a signal (so a table source is ingested as (C, L) signals for it)."""
        return 2 in self.dims and 3 not in self.dims


MODELS: Registry[Architecture] = Registry("model", {
    "mlp": Architecture(mlp, (1, 2, 3)),
    "cnn": Architecture(cnn, (3,)),
    "resnet18": Architecture(resnet18, (3,)),
    "cnn1d": Architecture(cnn1d, (1, 2)),
    "gru": Architecture(_recurrent(nn.GRU), (1, 2)),
    "lstm": Architecture(_recurrent(nn.LSTM), (1, 2)),
})


class Classifier(nn.Module):
    """Normalization followed by the network: takes raw inputs, returns logits. Modules listed in `frozen`
    (by transfer learning) stay in eval mode when the model trains."""

    def __init__(self, normalize: nn.Module, net: nn.Module):
        super().__init__()
        self.normalize, self.net = normalize, net
        self.frozen: list[nn.Module] = []
        # trainlib.calibration: divides the logits (1: as trained). Not in the state dict (checkpoints and transfer
        # sources stay as they were); the spec carries it, so a saved or registered model keeps it.
        self.register_buffer("temperature", torch.ones(()), persistent=False)

    def calibrated(self, temperature: float) -> Classifier:
        """Divide the logits by `temperature` from now on (trainlib.calibration); kept by save_model."""
        self.temperature.fill_(temperature)
        self.spec = {**getattr(self, "spec", {}), "temperature": float(temperature)}
        return self

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def forward(self, x):
        return self.net(self.normalize(x)) / self.temperature


def build(name: str, in_shape: Sequence[int], n_classes: int, norm: NormStats | None = None,
          **options) -> Classifier:
    """The named network behind the fitted normalization (a plain float cast when `norm` is None).
    The model keeps the arguments that built it in `.spec`, so it can be saved without pickling code."""
    net = MODELS[name].build(tuple(in_shape), n_classes, **options)
    model = Classifier(norm.module() if norm else Normalize([0.0], [1.0], dims=len(in_shape)), net)
    model.spec = {"name": name, "in_shape": list(in_shape), "n_classes": n_classes,
                  "norm": norm.to_json() if norm else None, "options": options}
    return model


def parameter_count(model: nn.Module) -> int:
    """How many numbers the model learns (the `model_parameters` metric)."""
    return sum(p.numel() for p in model.parameters())


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
    model.calibrated(spec.get("temperature", 1.0))
    return model.eval(), saved
