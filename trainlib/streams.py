"""The random streams of one training. Each is a generator of its own, never torch's global RNG (which threads
training side by side share), so that a seed gives the same training whatever runs beside it, and a checkpoint
holds every stream's state for an exact resume."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainlib.distributed import SINGLE, Shard


@dataclass
class Streams:
    shuffle: torch.Generator  # CPU: the order of the batches, the same on every data-parallel rank
    augment: torch.Generator  # on the device: the augmentation's draws, each rank its own
    dropout: torch.Generator  # on the device: trainlib's dropout layers
    mix: torch.Generator  # CPU: batch mixing (trainlib.data.mix)

    @classmethod
    def seeded(cls, seed: int, device: torch.device, shard: Shard = SINGLE,
               sources: dict[str, int] | None = None) -> Streams:
        """The streams of `seed`, or of each source's own seed in `sources` (order, augment, dropout: see
        trainlib/sections.py SeedsConfig); the same seed gives the same streams either way."""
        own = sources or {}

        def on(where, source: str, offset: int) -> torch.Generator:
            base = own.get(source, seed)
            return torch.Generator(device=where).manual_seed(shard.seed(base + offset) if offset else base)

        return cls(on("cpu", "order", 0), on(device, "augment", 1), on(device, "dropout", 2), on("cpu", "augment", 3))

    def state(self) -> dict:
        state = {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state(),
                 "augment": self.augment.get_state(), "dropout": self.dropout.get_state(), "mix": self.mix.get_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        self.shuffle.set_state(state["shuffle"])
        self.augment.set_state(state["augment"])
        self.dropout.set_state(state["dropout"])
        if "mix" in state:  # checkpoints from before batch mixing have none
            self.mix.set_state(state["mix"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
