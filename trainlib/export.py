"""A module saved as a torch.export program (.pt2), and loaded back: the file holds the computation and the
weights, loads with torch alone and runs no pickled code. The combined ensemble travels this way, and so
do registered models reused as voting members (MLflow logs every network in this format too).

A program runs on the device its weights are on, unless a node of its graph names a device: tracing records the
tracing device wherever the module's code creates a tensor or casts (`torch.zeros(...)`, an RNN's own initial
state, `x.float()` of a float input). trainflow's modules create none (trainlib.device.pinned lists them: the tests
check every architecture), so a model exported on a CPU runs on a GPU once trainlib.device.to_device has moved its
weights; to_device also rewrites the nodes of programs exported before that (they named the CPU)."""

from __future__ import annotations

import threading

import torch
import torch._dynamo  # noqa: F401 - imported once up front: export's first import of it, racing another
from torch import nn  # thread's (optimizers import it too), fails with a circular-import error

# torch.export keeps the program it traces, writes or reads in module globals, and fails when a second thread
# starts meanwhile ("_CURRENT_DESERIALIZER is already set", "Trying to pop empty mode stack", and saving:
# "Refusing to stomp on existing FakeTensor reducer", a copyreg entry it sets and removes): threads (members in
# parallel) export, save and load one at a time
EXPORTING = threading.Lock()


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
        # exported from float inputs; raw data may be stored as uint8 (no cast of a float input: see above)
        return self.program(x if x.dtype == torch.float32 else x.float())


def load_exported(path) -> Program:
    """A module saved by `export` (on the CPU; trainlib.device.to_device moves it)."""
    with EXPORTING:
        return Program(torch.export.load(str(path)).module())
