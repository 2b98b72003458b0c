"""Transfer learning: load a source model, put its weights into a model for the new task (new head,
adapted stem), and freeze / unfreeze its backbone while training as the strategy says (feature extraction,
fine-tuning with gradual unfreezing, or the source's architecture trained from scratch)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainlib.checkpoint import load_checkpoint
from trainlib.errors import ConfigError, DataError
from trainlib.registry import Registry

TORCHVISION_PREFIX = "torchvision:"
TORCHVISION_FILES = {"resnet18": "resnet18-f37072fd.pth"}  # ImageNet weights, as torch.hub names them


def _feature_extraction(groups: int, head_epochs: int, gradual: int) -> Callable[[int], int]:
    return lambda done: groups  # the backbone stays frozen


def _finetune(groups: int, head_epochs: int, gradual: int) -> Callable[[int], int]:
    def frozen(done: int) -> int:
        if done < head_epochs:
            return groups
        return 0 if not gradual else max(0, groups - 1 - (done - head_epochs) // gradual)
    return frozen


def _scratch(groups: int, head_epochs: int, gradual: int) -> Callable[[int], int]:
    return lambda done: 0  # everything trains from the start


@dataclass(frozen=True)
class Strategy:
    """What a transfer strategy does with the source model, for the code that sets training up to ask."""

    # (backbone groups, head_epochs, gradual) -> (epochs done -> how many of the lowest groups stay frozen)
    frozen: Callable[[int, int, int], Callable[[int], int]]
    copies_weights: bool = True  # start from the source's weights; else from its architecture with fresh weights
    backbone_group: bool = False  # the backbone trains in its own optimizer group, at transfer.backbone_lr


STRATEGIES = Registry("transfer strategy", {
    "feature_extraction": Strategy(_feature_extraction),  # the backbone stays frozen; a new head learns
    "finetune": Strategy(_finetune, backbone_group=True),  # the head first, then (gradually) everything
    "scratch": Strategy(_scratch, copies_weights=False),  # the baseline transfer is measured against
})


@dataclass(frozen=True)
class Source:
    """A source model's architecture (`spec`, as trainlib.models.build takes it) and weights."""

    spec: dict
    state: dict[str, torch.Tensor]
    classes: list[str] | None
    origin: str


def torchvision_file(name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[name]


def load_source(source: str | Path) -> Source:
    """A trainflow model file (spec + weights), or `torchvision:<name>` from the local torch cache; read with
    weights_only=True."""
    text = str(source)
    if text.startswith(TORCHVISION_PREFIX):
        name = text[len(TORCHVISION_PREFIX):]
        if name not in TORCHVISION_FILES:
            raise ConfigError(f"transfer.source: no torchvision weights for {name!r}; available: "
                              f"{', '.join(TORCHVISION_PREFIX + n for n in TORCHVISION_FILES)}")
        file = torchvision_file(name)
        if not file.is_file():
            raise ConfigError(f"transfer.source: torchvision {name} weights are not in the local torch cache ({file}) "
                              f"and this machine is offline; download {file.name} from download.pytorch.org/models/ "
                              "where there is internet and copy it there (or set TORCH_HOME), or give a model file")
        state = {f"net.{k}": v for k, v in load_checkpoint(file).items()}
        spec = {"name": name, "in_shape": [3, 224, 224], "n_classes": 1000, "norm": None, "options": {}}
        return Source(spec, state, None, text)
    if not Path(text).is_file():
        raise ConfigError(f"transfer.source: no such file: {text} (give models:/name@alias, a trainflow model "
                          "file, or torchvision:resnet18)")
    saved = load_checkpoint(text)
    if not isinstance(saved, dict) or "spec" not in saved or "state" not in saved:
        raise DataError(f"transfer.source: {text} is not a trainflow model file (architecture spec and weights, "
                        "as `model.pt` in a run's checkpoints/ artifacts)")
    return Source(saved["spec"], saved["state"], saved.get("classes"), text)


def head(model: nn.Module) -> nn.Linear:
    """The classifier head: the network's last linear layer."""
    return [m for m in model.net.modules() if isinstance(m, nn.Linear)][-1]


def groups(model: nn.Module) -> list[list[nn.Module]]:
    """The backbone's parametrized parts, bottom to top, in the units gradual unfreezing releases: each
    conv or linear layer with the norms after it, or a whole block (e.g. a ResNet stage)."""
    top = head(model)
    out: list[list[nn.Module]] = []
    for child in model.net.children():
        if child is top or top in child.modules() or not any(True for _ in child.parameters()):
            continue
        if isinstance(child, nn.modules.batchnorm._NormBase) and out:
            out[-1].append(child)
        else:
            out.append([child])
    return out


class Freezer:
    """A callback keeping the lowest backbone groups frozen as the strategy says for the epochs done:
    no gradients, and eval mode (batch norm keeps the source's statistics, dropout is off). With
    `freeze_norm`, every batch norm keeps the source's statistics, also once its layer trains again."""

    def __init__(self, model: nn.Module, strategy: str, head_epochs: int = 0, gradual: int = 0,
                 freeze_norm: bool = False):
        self.model, self.groups = model, groups(model)
        self.frozen = STRATEGIES[strategy].frozen(len(self.groups), head_epochs, gradual)
        self.norms = [m for m in model.net.modules() if isinstance(m, nn.modules.batchnorm._NormBase)] \
            if freeze_norm else []
        self.apply(0)

    def apply(self, done: int) -> None:
        """Freeze for the epoch after `done` epochs."""
        n = self.frozen(done)
        for i, group in enumerate(self.groups):
            for module in group:
                module.requires_grad_(i >= n)
        frozen = [m for group in self.groups[:n] for m in group]
        self.model.frozen = frozen + [m for m in self.norms if not any(m is f for f in frozen)]
        self.model.train(self.model.training)  # frozen modules switch to eval now

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.apply(epoch)


def _first_weight(state: dict[str, torch.Tensor]) -> str | None:
    return next((k for k, v in state.items() if k.startswith("net.") and k.endswith("weight") and v.ndim >= 2), None)


@dataclass(frozen=True)
class Transplanted:
    """What `transplant` did with each tensor of the model: copied from the source, adapted (a first conv to
    another channel count, with how) or left new (the head, a replaced stem)."""

    copied: list[str]
    adapted: list[str]
    new: list[str]


def transplant(model: nn.Module, source: Source) -> Transplanted:
    """Copy the source's weights into `model` wherever they fit: the head stays new (sized for the new
    classes); a first conv (2-D or 1-D) with another channel count is adapted (its kernels summed over the source's
    channels and spread over the new ones); a torchvision
    stem made for 224-pixel images is replaced by the small-image stem. Anything else that differs is an
    error naming it."""
    name = getattr(model, "spec", {}).get("name")
    if name and name != source.spec["name"]:
        raise ConfigError(f"transfer.source {source.origin}: its architecture is {source.spec['name']}, the model "
                          f"here is {name}; transfer keeps the source's architecture (model.name)")
    target = model.state_dict()
    new_head = {f"net.{n}" for n, p in model.net.named_parameters() if any(p is q for q in head(model).parameters())}
    first = _first_weight(target)
    report = Transplanted([], [], sorted(new_head))
    for key, value in target.items():
        if key in new_head or key.startswith("normalize.") or key.endswith("num_batches_tracked"):
            continue
        if key not in source.state:
            raise ConfigError(f"transfer.source {source.origin}: its {source.spec['name']} has no {key}; the "
                              f"architectures differ (model options {source.spec.get('options')})")
        weight = source.state[key]
        if weight.shape == value.shape:
            target[key] = weight
            report.copied.append(key)
        elif key == first and weight.ndim >= 3 and weight.shape[0] == value.shape[0] and \
                weight.shape[2:] == value.shape[2:]:  # a conv2d's (images) or conv1d's (signals) kernels
            # an input repeated over the new channels gives the source's response to it
            target[key] = weight.sum(1, keepdim=True).expand(-1, value.shape[1], *weight.shape[2:]) / value.shape[1]
            report.adapted.append(f"{key}: {weight.shape[1]} -> {value.shape[1]} input channels")
        elif key == first and weight.ndim == 4 and source.origin.startswith(TORCHVISION_PREFIX):
            report.new.append(f"{key} (the {tuple(weight.shape[2:])} stem for 224-pixel images is replaced)")
        else:
            raise ConfigError(_mismatch(source, key, weight.shape, value.shape, key == first))
    model.load_state_dict(target)
    return report


def _mismatch(source: Source, key: str, had: torch.Size, wants: torch.Size, first: bool) -> str:
    where = f"transfer.source {source.origin}: {key} is {tuple(had)} in the source but {tuple(wants)} here"
    if first and len(had) == 2:
        return (f"{where}: the source {source.spec['name']} takes {had[1]} input features per sample (inputs "
                f"{tuple(source.spec['in_shape'])}), this data gives {wants[1]}; a fully connected first layer cannot "
                "be adapted: resize the data to the source's input shape")
    return f"{where}: the layers differ in size (source model options {source.spec.get('options')})"
