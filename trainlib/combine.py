"""How members' predictions become one: the ensemble as a single torch module (raw inputs in, log-probabilities
out), so the flow evaluates exactly what is registered and it exports as one program.

Log-probabilities keep the ensemble interchangeable with a single model's logits: argmax is the class,
softmax gives the probabilities.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
import torch._dynamo  # noqa: F401 - imported once up front: export's first import of it, racing another
from torch import nn  # thread's (optimizers import it too), fails with a circular-import error

from trainlib.registry import Registry

FLOOR = 1e-6  # smallest probability: keeps log-probabilities (and the meta-learner's inputs) finite
TIE = 1e-3  # hard votes: weight of the averaged probabilities that breaks ties between equally voted classes
# torch.export keeps the program it traces or reads in module globals, and fails when a second thread
# starts meanwhile ("_CURRENT_DESERIALIZER is already set", "Trying to pop empty mode stack"): threads
# (members in parallel) export and load one at a time
EXPORTING = threading.Lock()


def soft(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of the members' probabilities (M, N, K) -> (N, K)."""
    return (probs * weights[:, None, None]).sum(0) / weights.sum()


def hard(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted share of the members' votes per class (N, K), ties broken by the mean probabilities.
    With SAMME's member weights this is discrete multi-class AdaBoost's decision."""
    votes = nn.functional.one_hot(probs.argmax(2), probs.shape[2]).to(probs.dtype)
    return (soft(votes, weights) + TIE * soft(probs, weights)) / (1 + TIE)


RULES = Registry("combination rule", {"soft": soft, "hard": hard, "stacking": None})


def meta_features(probs: torch.Tensor) -> torch.Tensor:
    """The stacking meta-learner's inputs: every member's log-probabilities side by side, (M, N, K) -> (N, M*K)."""
    return torch.log(probs.clamp_min(FLOOR)).permute(1, 0, 2).flatten(1)


class Ensemble(nn.Module):
    """Members (each a raw-input -> logits module, normalization inside) and how they are combined:
    `rule` soft | hard with per-member `weights`, or stacking through a linear `meta` learner."""

    def __init__(self, members: Sequence[nn.Module], rule: str, weights: Sequence[float] | None = None,
                 meta: nn.Linear | None = None):
        super().__init__()
        RULES.check(rule)
        if (rule == "stacking") != (meta is not None):
            raise ValueError("a meta-learner goes with rule 'stacking', and only with it")
        self.members, self.rule, self.stacker = nn.ModuleList(members), rule, meta
        self.register_buffer("weights", torch.tensor(list(weights or [1.0] * len(members)), dtype=torch.float32))
        self.eval()  # never trained as a whole: members are fitted first, the meta-learner on their outputs

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's class probabilities: (M, N, K)."""
        return torch.stack([torch.softmax(member(x).float(), 1) for member in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.probabilities(x)
        if self.stacker is not None:  # not named `meta`: exported programs' modules have a `meta` dict
            return torch.log_softmax(self.stacker(meta_features(probs)), 1)
        return torch.log(RULES[self.rule](probs, self.weights).clamp_min(FLOOR))


def export(module: nn.Module, example: torch.Tensor, path) -> None:
    """Save `module` as a torch.export program (.pt2) with a dynamic batch size: loadable with torch alone."""
    with EXPORTING:
        program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))


class Program(nn.Module):
    """An exported program as a module that, like any other, accepts train()/eval() (a no-op: it is
    frozen in the mode it was exported in) and any numeric input dtype."""

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> Program:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x.float())  # exported from float inputs; raw data may be stored as uint8


def load_exported(path) -> Program:
    """A module saved by `export`."""
    with EXPORTING:
        return Program(torch.export.load(str(path)).module())
