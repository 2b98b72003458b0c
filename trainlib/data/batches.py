"""Batch iterators the engine trains on: in-memory tensors sliced by a shuffled index, or streamed
ImageFolder files through a DataLoader."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from trainlib.data.decoded import PackedImages
from trainlib.data.folders import ImageFiles
from trainlib.data.sources import Dataset
from trainlib.distributed import SINGLE, Shard

Batch = tuple[torch.Tensor, torch.Tensor]

EVAL_BATCH = 2048  # most samples per forward pass when evaluating (no gradients held)
EVAL_ELEMENTS = 1 << 16  # most input elements per such pass. A network's activations grow with them: a pass of
# 2048 28x28 images held 600 MiB of them. And passes much larger than training batches leave the C heap fragmented
# (their buffers fit no hole the training steps left): with passes of 334 such images, peak RSS still rose by 90 MiB
# from 5,000 to 20,000 streamed images; with 83, near a training batch's 64, it did not rise at all.


def rows_per_pass(shape: tuple[int, ...], elements: int = EVAL_ELEMENTS, most: int = EVAL_BATCH) -> int:
    """Samples of `shape` in one pass that holds at most `elements` input elements (at most `most`, at least 1)."""
    per = max(1, int(np.prod(shape)))
    return max(1, min(most, elements // per))


def batch_bounds(n: int, batch_size: int, world: int = 1) -> list[tuple[int, int]]:
    """(start, stop) of each batch over n samples. A last batch of a single sample joins the one before
    it: batch norm cannot train on one sample, and one sample makes a very noisy update anyway; so does
    one too small to give each of `world` data-parallel processes a sample."""
    starts, least = list(range(0, n, batch_size)), max(2, world)
    if batch_size >= least and len(starts) > 1 and n - starts[-1] < least:
        starts.pop()
    return [(a, b) for a, b in zip(starts, [*starts[1:], n], strict=True)]


class TensorData:
    """Samples held in memory (on the training device once `to` is called). Batches are slices of a
    shuffled index: 5-10x faster than a per-sample DataLoader over the same tensors. With `rows`, the samples
    are those rows of `inputs` (a split of a dataset: the dataset is not copied, each batch gathers its rows, so
    a training holds its data once rather than the dataset plus copies of its train and val splits)."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None = None):
        if len(inputs if rows is None else rows) != len(labels):
            raise ValueError(f"{len(inputs if rows is None else rows)} inputs but {len(labels)} labels")
        self.base, self.labels, self.rows = inputs, labels, rows

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def inputs(self) -> torch.Tensor:
        """The samples' inputs as one tensor (a copy when they are rows of a larger one)."""
        return self.base if self.rows is None else self.base[self.rows]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.base.shape[1:])

    def to(self, device: torch.device) -> TensorData:
        tensors = [t for t in (self.base, self.labels, self.rows) if t is not None]
        if device.type == "cuda" and self.base.device != device:
            # from pinned pages the copies run asynchronously (from pageable memory non_blocking does nothing)
            tensors = [(t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True) for t in tensors]
        else:
            tensors = [t.to(device) for t in tensors]
        return TensorData(*tensors)

    def _take(self, a: int, b: int) -> torch.Tensor:
        return self.base[a:b] if self.rows is None else self.base[self.rows[a:b]]

    def batches(self, batch_size: int, shuffle: torch.Generator | None = None,
                shard: Shard = SINGLE) -> Iterator[Batch]:
        """Batches in a random order drawn from the CPU generator `shuffle`, or in order without it; of each,
        only the `shard` of this data-parallel rank."""
        bounds = [shard.bounds(a, b) for a, b in batch_bounds(len(self), batch_size, shard.world)]
        if shuffle is None:
            for a, b in bounds:
                yield self._take(a, b), self.labels[a:b]
            return
        order = torch.randperm(len(self), generator=shuffle).to(self.base.device)
        rows = order if self.rows is None else self.rows[order]  # one gather per batch either way
        for a, b in bounds:
            yield self.base[rows[a:b]], self.labels[order[a:b]]


class _IndexBatches:
    """The batch sampler of a persistent DataLoader: the index arrays of the current epoch."""

    def __init__(self):
        self.lists: list[list[int]] = []

    def __iter__(self):
        return iter(self.lists)

    def __len__(self) -> int:
        return len(self.lists)


class StreamData:
    """Images read per batch (data too large for memory). Decoded rows of a pack (trainlib.data.decoded) are read
    here, a batch ahead, by one thread (pread releases the GIL, and reading rows costs little beside a training
    step: worker processes would only compete with training for the CPUs). Image files are decoded by DataLoader
    workers, which start once (from a forkserver: this process runs threads) and serve every epoch."""

    def __init__(self, files: ImageFiles | PackedImages, indices, workers: int = 2, device: torch.device | None = None):
        self.files, self.indices, self.workers = files, np.asarray(indices, dtype=np.int64), workers
        self.device = device or torch.device("cpu")
        self._sampler, self._loader = _IndexBatches(), None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.files.channels, *self.files.size)

    def to(self, device: torch.device) -> StreamData:
        return StreamData(self.files, self.indices, self.workers, device)

    def batches(self, batch_size: int, shuffle: torch.Generator | None = None,
                shard: Shard = SINGLE) -> Iterator[Batch]:
        order = self.indices
        if shuffle is not None:
            order = order[torch.randperm(len(self), generator=shuffle).numpy()]
        bounds = [shard.bounds(a, b) for a, b in batch_bounds(len(self), batch_size, shard.world)]
        lists = [order[a:b] for a, b in bounds]  # arrays: 8 bytes an index, not a Python int
        cuda = self.device.type == "cuda"
        if isinstance(self.files, PackedImages):
            yield from self._read_ahead(lists, cuda)
            return
        self._sampler.lists = lists
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                self.files, batch_sampler=self._sampler, num_workers=self.workers,
                persistent_workers=self.workers > 0, pin_memory=self.device.type == "cuda",
                multiprocessing_context="forkserver" if self.workers > 0 else None)
        for x, y in self._loader:
            yield x.to(self.device, non_blocking=cuda), y.to(self.device, non_blocking=cuda)

    def _read_ahead(self, lists: list[np.ndarray], cuda: bool) -> Iterator[Batch]:
        if not lists:
            return
        with ThreadPoolExecutor(1) as pool:
            ahead = deque(pool.submit(self.files.batch, items) for items in lists[:2])
            for items in lists[2:] + [None, None]:
                x, y = ahead.popleft().result()
                if items is not None:
                    ahead.append(pool.submit(self.files.batch, items))
                if cuda:  # from pinned pages the copy runs asynchronously
                    x, y = x.pin_memory(), y.pin_memory()
                yield x.to(self.device, non_blocking=cuda), y.to(self.device, non_blocking=cuda)
                if not ahead:
                    return


Data = TensorData | StreamData


def subset(ds: Dataset, indices: np.ndarray, workers: int = 2) -> Data:
    """The samples of `ds` at `indices` (a split), in memory or streamed like the dataset."""
    if ds.streamed:
        return StreamData(ds.inputs, indices, workers)
    idx = torch.tensor(np.asarray(indices), dtype=torch.int64)  # a copy: pandas arrays may be read-only
    return TensorData(ds.inputs, ds.labels[idx], rows=idx)


def input_chunks(data: Data) -> Iterator[torch.Tensor]:
    """Inputs only, in order, a few MiB at a time (for fitting statistics)."""
    for x, _ in data.batches(rows_per_pass(data.sample_shape, elements=1 << 22, most=4096)):
        yield x
