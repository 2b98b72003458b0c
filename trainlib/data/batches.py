"""Batch iterators the engine trains on: in-memory tensors sliced by a shuffled index, or streamed
ImageFolder files through a DataLoader."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from trainlib.data.sources import Dataset, ImageFiles

Batch = tuple[torch.Tensor, torch.Tensor]


class TensorData:
    """Samples held in memory (on the training device once `to` is called). Batches are slices of a
    shuffled index: 5-10x faster than a per-sample DataLoader over the same tensors."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor):
        if len(inputs) != len(labels):
            raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels")
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> TensorData:
        pin = device.type == "cuda"
        return TensorData(self.inputs.to(device, non_blocking=pin), self.labels.to(device, non_blocking=pin))

    def batches(self, batch_size: int, shuffle: torch.Generator | None = None) -> Iterator[Batch]:
        """Batches in a random order drawn from the CPU generator `shuffle`, or in order without it."""
        n = len(self)
        if shuffle is None:
            for i in range(0, n, batch_size):
                yield self.inputs[i:i + batch_size], self.labels[i:i + batch_size]
            return
        order = torch.randperm(n, generator=shuffle).to(self.inputs.device)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            yield self.inputs[idx], self.labels[idx]


class StreamData:
    """Image files decoded per batch by DataLoader workers (data too large for memory)."""

    def __init__(self, files: ImageFiles, indices, workers: int = 2, device: torch.device | None = None):
        self.files, self.indices, self.workers = files, [int(i) for i in indices], workers
        self.device = device or torch.device("cpu")

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device: torch.device) -> StreamData:
        return StreamData(self.files, self.indices, self.workers, device)

    def batches(self, batch_size: int, shuffle: torch.Generator | None = None) -> Iterator[Batch]:
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.files, self.indices), batch_size=batch_size, shuffle=shuffle is not None,
            generator=shuffle, num_workers=self.workers, pin_memory=self.device.type == "cuda")
        cuda = self.device.type == "cuda"
        for x, y in loader:
            yield x.to(self.device, non_blocking=cuda), y.to(self.device, non_blocking=cuda)


Data = TensorData | StreamData


def subset(ds: Dataset, indices: np.ndarray, workers: int = 2) -> Data:
    """The samples of `ds` at `indices` (a split), in memory or streamed like the dataset."""
    if isinstance(ds.inputs, ImageFiles):
        return StreamData(ds.inputs, indices, workers)
    idx = torch.tensor(np.asarray(indices), dtype=torch.int64)  # a copy: pandas arrays may be read-only
    return TensorData(ds.inputs[idx], ds.labels[idx])


def input_chunks(data: Data, batch_size: int = 4096) -> Iterator[torch.Tensor]:
    """Inputs only, in order (for fitting statistics)."""
    for x, _ in data.batches(batch_size):
        yield x
