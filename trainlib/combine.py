"""How members' predictions become one: the combination rules (a fixed weighted average or vote, or a
stacking meta-learner fitted here on held-out predictions), the ensemble as a single torch module (raw inputs
in, log-probabilities out) so the flow evaluates exactly what is registered and trainlib.export saves it as
one program, and how often members disagree.

Log-probabilities keep the ensemble interchangeable with a single model's logits: argmax is the class,
softmax gives the probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainlib.registry import Registry

FLOOR = 1e-6  # smallest probability: keeps log-probabilities (and the meta-learner's inputs) finite
TIE = 1e-3  # hard votes: weight of the averaged probabilities that breaks ties between equally voted classes


def soft(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of the members' probabilities (M, N, K) -> (N, K)."""
    return (probs * weights[:, None, None]).sum(0) / weights.sum()


def hard(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted share of the members' votes per class (N, K), ties broken by the mean probabilities.
    With SAMME's member weights this is discrete multi-class AdaBoost's decision."""
    # each member's vote as a one-hot row, made from probs (a one_hot cast to float would pin an exported program to
    # the device it was exported on: trainlib/export.py)
    votes = torch.zeros_like(probs).scatter_(2, probs.argmax(2, keepdim=True), 1.0)
    return (soft(votes, weights) + TIE * soft(probs, weights)) / (1 + TIE)


@dataclass(frozen=True)
class Rule:
    """How the members' probabilities become the ensemble's: a fixed function of them and the member weights,
    (M, N, K), (M,) -> (N, K); or, when `learned`, a meta-learner fitted on their held-out predictions, which
    weighs the members itself."""

    combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    learned: bool = False


RULES = Registry("combination rule", {"soft": Rule(soft), "hard": Rule(hard), "stacking": Rule(learned=True)})


def meta_features(probs: torch.Tensor) -> torch.Tensor:
    """The stacking meta-learner's inputs: every member's log-probabilities side by side, (M, N, K) -> (N, M*K)."""
    return torch.log(probs.clamp_min(FLOOR)).permute(1, 0, 2).flatten(1)


def fit_meta(features: torch.Tensor, labels: torch.Tensor, n_classes: int, l2: float = 1e-3,
             steps: int = 200) -> torch.nn.Linear:
    """Multinomial logistic regression (full-batch L-BFGS, L2 on the weights) from the members' stacked
    log-probabilities to the class."""
    torch.manual_seed(0)
    meta = torch.nn.Linear(features.shape[1], n_classes)
    with torch.no_grad():  # start from the members' plain average: the sum of their log-probabilities
        meta.weight.copy_(torch.eye(n_classes).repeat(1, features.shape[1] // n_classes) /
                          (features.shape[1] // n_classes))
        meta.bias.zero_()
    opt = torch.optim.LBFGS(meta.parameters(), lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(meta(features), labels) + l2 * meta.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return meta.requires_grad_(False)


class Ensemble(nn.Module):
    """Members (each a raw-input -> logits module, normalization inside) and how they are combined: a fixed
    `rule` (soft | hard) with per-member `weights`, or a learned one (stacking) through a linear `meta` learner."""

    def __init__(self, members: Sequence[nn.Module], rule: str, weights: Sequence[float] | None = None,
                 meta: nn.Linear | None = None):
        super().__init__()
        if RULES[rule].learned != (meta is not None):
            raise ValueError(f"rule {rule!r}: a meta-learner goes with a learned rule, and only with it")
        self.members, self.rule, self.stacker = nn.ModuleList(members), rule, meta
        self.register_buffer("weights", torch.tensor(list(weights or [1.0] * len(members)), dtype=torch.float32))
        self.eval()  # never trained as a whole: members are fitted first, the meta-learner on their outputs

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's class probabilities: (M, N, K)."""
        return torch.stack([torch.softmax(member(x), 1, dtype=torch.float32) for member in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.probabilities(x)
        if self.stacker is not None:  # not named `meta`: exported programs' modules have a `meta` dict
            return torch.log_softmax(self.stacker(meta_features(probs)), 1)
        return torch.log(RULES[self.rule].combine(probs, self.weights).clamp_min(FLOOR))


def disagreement(predictions: np.ndarray) -> np.ndarray:
    """(M, M) share of samples on which members i and j predict different classes, from (M, N) predictions."""
    return (predictions[:, None, :] != predictions[None, :, :]).mean(2)
